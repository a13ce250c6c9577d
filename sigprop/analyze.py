"""``analyze``: every layer's metrics of a randomly initialized network, over many seeds at once."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sigprop import probe
from sigprop.results import LayerMetrics, from_arrays


class NonFiniteWarning(RuntimeWarning):
    """A layer produced NaN or Inf; the result flags it (``LayerMetrics.finite``)."""


def _seed_keys(key, seeds: int):
    """Seed ``i`` uses ``fold_in(key, i)``: its numbers do not depend on how many seeds run."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(seeds))


def measure(model: nn.Module, variables, x, label_key):
    """One forward pass (activation taps) and one backward pass (gradient taps).

    ``variables`` holds ``'params'`` and the zero ``'probes'`` made by ``model.init``. Returns
    ``(taps, probe_grads)``: the sown activation metrics and, in the ``'probes'`` collection's
    layout, ``[||grad||, finite]`` of every gradient tap. The loss is the mean softmax
    cross-entropy against labels drawn (with ``label_key``) uniformly over the model's outputs,
    plus any sown ``'losses'`` (RegNorm's regularizer).
    """
    params, probes = variables["params"], variables.get(probe.PROBES, {})

    def loss_fn(probes):
        logits, state = model.apply(
            {"params": params, probe.PROBES: probes}, x, mutable=[probe.TAPS, probe.LOSSES]
        )
        labels = jax.random.randint(label_key, logits.shape[:1], 0, logits.shape[-1])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        extra = jax.tree_util.tree_leaves(state.get(probe.LOSSES, {}))
        loss = loss + sum(jnp.sum(e) for e in extra)
        return loss, state.get(probe.TAPS, {})

    probe_grads, taps = jax.grad(loss_fn, has_aux=True)(probes)
    return taps, probe_grads


def forward_backward(model: nn.Module, x, key):
    """One seed: initialize ``model`` with ``key``, then :func:`measure`."""
    k_init, k_label = jax.random.split(key)
    return measure(model, model.init(k_init, x), x, k_label)


def _one_seed(model, shape, key, x):
    k_data, k_run = jax.random.split(key)
    if x is None:
        x = jax.random.normal(k_data, shape, jnp.float32)
    taps, probe_grads = forward_backward(model, x, k_run)
    _, acts = probe.ordered(probe.act_values(taps), getattr(model, "layer_names", None),
                            "activation taps")
    _, grads = probe.ordered(probe.grad_values(probe_grads),
                             getattr(model, "grad_layer_names", None), "gradient taps")
    return acts, grads


@functools.partial(jax.jit, static_argnames=("model", "shape", "precision"))
def _run(model, shape, keys, x, precision):
    with jax.default_matmul_precision(precision):
        return jax.vmap(functools.partial(_one_seed, model, shape), in_axes=(0, None))(keys, x)


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


def analyze(model: nn.Module, inputs, *, seeds: int = 1, key=0,
            precision: str = "highest") -> LayerMetrics:
    """Measure every layer of ``model`` at initialization, for ``seeds`` random seeds at once.

    Each seed initializes its own network (and, when ``inputs`` is a shape, draws its own N(0, 1)
    batch) and runs one forward pass, where every activation tap reduces its activation to
    metrics, and one backward pass, which gives every layer's gradient norm. The whole call is one
    jitted, seed-vmapped computation; a second call with the same model, shape and seed count
    does not recompile.

    Args:
      model: a ``sigprop.models`` network (or any linen module using ``sigprop.probe`` taps).
      inputs: an array ``[batch, ...]`` (the same batch for every seed) or a shape tuple.
      seeds: number of random seeds (>= 1). Seed ``i`` uses ``fold_in(key, i)``.
      key: an int or a ``jax.random`` key.
      precision: matmul/conv precision (``"highest"`` = full float32 also on GPU/TPU).

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
    root = jax.random.key(key) if isinstance(key, (int, np.integer)) else key
    acts, grads = _run(model, shape, _seed_keys(root, int(seeds)), x, precision)
    result = from_arrays(np.asarray(acts), np.asarray(grads), model.layer_names,
                         model.grad_layer_names, _config(model, shape, int(seeds), key, x is not None))
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
