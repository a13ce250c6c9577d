"""``analyze``: every layer's metrics of a randomly initialized network, over many seeds at once."""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sigprop import devices, probe, xla_cpu
from sigprop.results import LayerMetrics, from_arrays


class NonFiniteWarning(RuntimeWarning):
    """A layer produced NaN or Inf; the result flags it (``LayerMetrics.finite``)."""


def _seed_keys(key, seeds: int):
    """Seed ``i`` uses ``fold_in(key, i)``: its numbers do not depend on how many seeds run."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(seeds))


class Options(NamedTuple):
    """Optional extra measurements (static: each setting compiles its own program).

    Both come from one extra forward + backward pass over a *similar batch* ([U] section 4): the
    batch ``x`` and ``x + s * xi``, ``xi ~ N(0, 1)``, with the same labels, run as a pair
    (each with its own batch statistics).

    - ``similar_batch_noise``: the noise scale ``s`` (None: no pair pass unless
      ``gradient_correlation``, which then uses :data:`DEFAULT_NOISE`).
    - ``similar_batch``: report every activation tap's Pearson correlation between the two
      batches' outputs ([U] 4.1, information propagation).
    - ``gradient_correlation``: report every gradient tap's Pearson correlation between the two
      batches' loss gradients w.r.t. that layer's output ([U] 4.2, correlation of gradients
      through the layers).
    """

    similar_batch_noise: float | None = None
    similar_batch: bool = False
    gradient_correlation: bool = False


DEFAULT_NOISE = 0.1  # [U]'s s


def _loss(model: nn.Module, params, probes, x, label_key):
    """Mean softmax cross-entropy against labels drawn (with ``label_key``) uniformly over the
    model's outputs, plus any sown ``'losses'`` (RegNorm's regularizer). Returns (loss, taps)."""
    logits, state = model.apply(
        {"params": params, probe.PROBES: probes}, x, mutable=[probe.TAPS, probe.LOSSES]
    )
    labels = jax.random.randint(label_key, logits.shape[:1], 0, logits.shape[-1])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    extra = jax.tree_util.tree_leaves(state.get(probe.LOSSES, {}))
    loss = loss + sum(jnp.sum(e) for e in extra)
    return loss, state.get(probe.TAPS, {})


def measure(model: nn.Module, variables, x, label_key):
    """One forward pass (activation taps) and one backward pass (gradient taps).

    ``variables`` holds ``'params'`` and the zero ``'probes'`` made by ``model.init``. Returns
    ``(taps, probe_grads)``: the sown activation metrics and, in the ``'probes'`` collection's
    layout, ``[||grad||, finite]`` of every gradient tap. The loss is :func:`_loss`.
    """
    params, probes = variables["params"], variables.get(probe.PROBES, {})
    probe_grads, taps = jax.grad(
        lambda pr: _loss(model, params, pr, x, label_key), has_aux=True)(probes)
    return taps, probe_grads


def forward_backward(model: nn.Module, x, key):
    """One seed: initialize ``model`` with ``key``, then :func:`measure`."""
    k_init, k_label = jax.random.split(key)
    return measure(model, model.init(k_init, x), x, k_label)


def pair_correlations(model: nn.Module, variables, x, noise, label_key, grads: bool):
    """Per layer, the correlation between batch ``x`` and batch ``x + noise`` (same labels).

    The two batches run as a ``jax.vmap`` over :data:`probe.PAIR_AXIS`, so each keeps its own
    batch statistics; every tap all-gathers its activation (or, backward, its gradient) over that
    axis and correlates the two (``probe.tap_mode('pair')``). Returns ``(activation
    correlations, gradient correlations or None)`` as ``{layer name: value}`` dicts; a gradient
    value is ``[correlation, finite]``."""
    params, probes = variables["params"], variables.get(probe.PROBES, {})

    def one(xi):
        with probe.tap_mode("pair"):
            if grads:
                probe_grads, taps = jax.grad(
                    lambda pr: _loss(model, params, pr, xi, label_key), has_aux=True)(probes)
                return probe.pair_values(taps), probe.grad_values(probe_grads)
            _, taps = _loss(model, params, probes, xi, label_key)
            return probe.pair_values(taps), None

    acts, grad_values = jax.vmap(one, axis_name=probe.PAIR_AXIS)(jnp.stack([x, x + noise]))
    first = functools.partial(jax.tree_util.tree_map, lambda v: v[0])
    return first(acts), (None if grad_values is None else first(grad_values))


def _one_seed(model, shape, key, x, opts: Options = Options()):
    """Everything measured for one seed: a dict of arrays (``acts [L, 6]``, ``grads [G, 2]``,
    and ``similar [L]`` / ``gcorr [K]`` when ``opts`` asks for them)."""
    k_data, k_run = jax.random.split(key)
    if x is None:
        x = jax.random.normal(k_data, shape, jnp.float32)
    k_init, k_label = jax.random.split(k_run)
    variables = model.init(k_init, x)
    taps, probe_grads = measure(model, variables, x, k_label)
    layer_names = getattr(model, "layer_names", None)
    _, acts = probe.ordered(probe.act_values(taps), layer_names, "activation taps")
    _, grads = probe.ordered(probe.grad_values(probe_grads),
                             getattr(model, "grad_layer_names", None), "gradient taps")
    out = {"acts": acts, "grads": grads}
    if opts.similar_batch or opts.gradient_correlation:
        noise = opts.similar_batch_noise or DEFAULT_NOISE
        xi = jax.random.normal(jax.random.fold_in(k_data, 1), x.shape, jnp.float32)
        act_corr, grad_corr = pair_correlations(model, variables, x, noise * xi, k_label,
                                                opts.gradient_correlation)
        if opts.similar_batch:
            out["similar"] = probe.ordered(act_corr, layer_names, "similar-batch taps")[1]
        if opts.gradient_correlation:
            out["gcorr"] = probe.ordered(grad_corr, getattr(model, "grad_layer_names", None),
                                         "gradient taps")[1][:, 0]
    return out


@xla_cpu.fast_rng
@functools.partial(jax.jit, static_argnames=("model", "shape", "precision", "opts", "impl"))
def _run(model, shape, keys, x, precision, opts: Options = Options(), impl=None):
    """All seeds in one vmapped call. ``keys`` are typed keys or raw key data (``uint32``), whose
    leading axis may be sharded over devices (see :mod:`sigprop.devices`)."""
    if not jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        keys = jax.random.wrap_key_data(keys, impl=impl)
    with jax.default_matmul_precision(precision):
        one = functools.partial(_one_seed, model, shape, opts=opts)
        return jax.vmap(one, in_axes=(0, None))(keys, x)


def run_sharded(model, shape, keys, x, precision: str = "highest", opts: Options = Options(),
                mesh=None) -> dict[str, np.ndarray]:
    """:func:`_run` with the seed axis sharded over ``mesh`` (default: every device).

    The seed axis is padded to a multiple of the device count (extra seeds are computed and
    dropped: each seed depends only on its own key). Returns numpy arrays ``[seeds, ...]``."""
    m = devices.mesh() if mesh is None else mesh
    n = keys.shape[0]
    data = np.asarray(jax.random.key_data(keys))
    padded = devices.padded_size(n, m)
    if padded > n:
        extra = np.repeat(data[-1:], padded - n, axis=0)  # computed, then dropped
        data = np.concatenate([data, extra])
    rep = devices.replicated(m)
    x = None if x is None else jax.device_put(x, rep)
    impl = str(jax.random.key_impl(keys))
    out = _run(model, shape, devices.shard_leading(data, m), x, precision, opts, impl)
    return {k: v[:n] for k, v in devices.to_host(out).items()}


def check_inputs(model, inputs) -> tuple[tuple[int, ...], Any]:
    """Validate ``inputs`` for ``model``; return ``(shape, array or None)``."""
    if isinstance(inputs, (tuple, list)) and all(isinstance(d, (int, np.integer)) for d in inputs):
        shape, x = tuple(int(d) for d in inputs), None
        if not shape or min(shape) < 1:
            raise ValueError(f"inputs: a shape needs positive dimensions; got {tuple(inputs)}")
    else:
        try:
            x = jnp.asarray(inputs, dtype=jnp.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(f"inputs must be an array [batch, ...] or a shape tuple; got "
                             f"{type(inputs).__name__}") from e
        shape = tuple(x.shape)
    if hasattr(model, "check_inputs"):
        model.check_inputs(shape)
    if len(shape) < 2:
        raise ValueError(f"inputs: expected [batch, ...] with at least 2 dims; got shape {shape}")
    spec = getattr(model, "spec", None)
    if shape[0] < 2:
        if spec is not None and spec.batch_dependent:
            raise ValueError(
                f"inputs: batch size {shape[0]} with norm={spec.name!r}, which uses batch "
                "statistics: use a batch of at least 2"
            )
        raise ValueError(f"inputs: batch size {shape[0]}; inter-sample metrics (cosine "
                         "similarity, ranks) need a batch of at least 2")
    return shape, x


def _config(model, shape, seeds, key, user_inputs: bool) -> dict:
    spec = getattr(model, "spec", None)
    return dict(
        model=type(model).__name__,
        norm=getattr(spec, "name", None),
        norm_options={k: v for k, v in getattr(spec, "options", ())},
        activation=str(getattr(model, "activation", None)),
        inputs=list(shape),
        user_inputs=user_inputs,
        seeds=seeds,
        key=key if isinstance(key, int) else None,
    )


def check_options(similar_batch_noise, gradient_correlation) -> Options:
    """Validate the optional-metric arguments of :func:`analyze`; return :class:`Options`."""
    if similar_batch_noise is not None:
        if isinstance(similar_batch_noise, bool) or not isinstance(
                similar_batch_noise, (int, float, np.integer, np.floating)):
            raise ValueError(f"similar_batch_noise={similar_batch_noise!r}: expected None or a "
                             "number > 0 (the noise scale s; [U] uses 0.1)")
        similar_batch_noise = float(similar_batch_noise)
        if not (similar_batch_noise > 0 and np.isfinite(similar_batch_noise)):
            raise ValueError(f"similar_batch_noise={similar_batch_noise!r} must be a finite "
                             "number > 0")
    if gradient_correlation not in (True, False):
        raise ValueError(f"gradient_correlation={gradient_correlation!r}: expected True or False")
    return Options(similar_batch_noise, similar_batch_noise is not None,
                   bool(gradient_correlation))


def _assemble(out: dict, model, config: dict, opts: Options = Options()) -> LayerMetrics:
    """A :class:`LayerMetrics` from :func:`_one_seed`'s arrays (numpy, leading ``[seeds]``)."""
    result = from_arrays(np.asarray(out["acts"]), np.asarray(out["grads"]), model.layer_names,
                         model.grad_layer_names, config)
    extra = {}
    if "similar" in out:
        extra["similar_batch_correlation"] = np.asarray(out["similar"])
    if "gcorr" in out:
        extra["gradient_correlation"] = np.asarray(out["gcorr"])
    return result.replace(**extra) if extra else result


def analyze(model: nn.Module, inputs, *, seeds: int = 1, key=0, precision: str = "highest",
            similar_batch_noise: float | None = None, gradient_correlation: bool = False,
            mesh=None) -> LayerMetrics:
    """Measure every layer of ``model`` at initialization, for ``seeds`` random seeds at once.

    Each seed initializes its own network (and, when ``inputs`` is a shape, draws its own N(0, 1)
    batch) and runs one forward pass, where every activation tap reduces its activation to
    metrics, and one backward pass, which gives every layer's gradient norm. The whole call is one
    jitted, seed-vmapped computation whose seed axis is sharded over every device (a
    ``jax.sharding.Mesh``; see :mod:`sigprop.devices`); a second call with the same model, shape,
    seed count and options does not recompile.

    Args:
      model: a ``sigprop.models`` network (or any linen module using ``sigprop.probe`` taps).
      inputs: an array ``[batch, ...]`` (the same batch for every seed) or a shape tuple.
      seeds: number of random seeds (>= 1). Seed ``i`` uses ``fold_in(key, i)``.
      key: an int or a ``jax.random`` key.
      precision: matmul/conv precision (``"highest"`` = full float32 also on GPU/TPU).
      similar_batch_noise: if set (``s > 0``; [U] uses 0.1), also measure each activation tap's
        Pearson correlation between the outputs for ``x`` and ``x + s * xi``, ``xi ~ N(0, 1)``
        drawn per seed (``LayerMetrics.similar_batch_correlation``, over ``layer_names``).
      gradient_correlation: also measure each gradient tap's Pearson correlation between the
        loss gradients for ``x`` and for ``x + s * xi`` with the same labels
        (``LayerMetrics.gradient_correlation``, over ``grad_layer_names``; ``s`` =
        ``similar_batch_noise`` or 0.1).
      mesh: a 1-D ``jax.sharding.Mesh`` (``sigprop.devices.mesh``) to run on; default all devices.

    Returns:
      :class:`~sigprop.results.LayerMetrics` with ``[seeds, layers]`` arrays. A NaN/Inf in a layer
      is data: it is flagged in ``finite`` / ``grad_finite`` and a :class:`NonFiniteWarning`
      names the first layer where it appears.
    """
    if isinstance(seeds, bool) or not isinstance(seeds, (int, np.integer)) or seeds < 1:
        raise ValueError(f"seeds={seeds!r} must be an integer >= 1")
    if precision not in ("default", "high", "highest", "float32", "bfloat16", "tensorfloat32"):
        raise ValueError(f"precision={precision!r}; allowed: default, high, highest")
    shape, x = check_inputs(model, inputs)
    opts = check_options(similar_batch_noise, gradient_correlation)
    root = jax.random.key(key) if isinstance(key, (int, np.integer)) else key
    out = run_sharded(model, shape, _seed_keys(root, int(seeds)), x, precision, opts, mesh)
    config = _config(model, shape, int(seeds), key, x is not None)
    if opts.similar_batch or opts.gradient_correlation:
        config["options"] = dict(similar_batch_noise=opts.similar_batch_noise or DEFAULT_NOISE,
                                 similar_batch=opts.similar_batch,
                                 gradient_correlation=opts.gradient_correlation)
    result = _assemble(out, model, config, opts)
    warn_nonfinite(result)
    return result


def warn_nonfinite(result: LayerMetrics) -> None:
    bad = result.first_nonfinite()
    if bad is not None:
        kind, idx, name = bad
        warnings.warn(
            f"non-finite {kind} values first appear at layer {name!r} (index {idx}); "
            "they are flagged in LayerMetrics.finite / grad_finite",
            NonFiniteWarning,
            stacklevel=3,
        )
