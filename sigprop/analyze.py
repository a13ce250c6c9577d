"""``analyze``: every layer's metrics of a network at initialization, over many seeds at once.

The boundary of the engine (:mod:`sigprop.engine`): arguments are checked here, with a
``ValueError`` naming the parameter, before anything is traced or compiled.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sigprop import engine, metrics
from sigprop.engine import DEFAULT_NOISE, Plan, seed_keys
from sigprop.results import LayerMetrics
from sigprop.selectors import Taps

PRECISIONS = ("default", "high", "highest", "float32", "bfloat16", "tensorfloat32")


class NonFiniteWarning(RuntimeWarning):
    """A layer produced NaN or Inf; the result flags it (``LayerMetrics.finite``)."""


def check_seeds(seeds) -> int:
    if isinstance(seeds, bool) or not isinstance(seeds, (int, np.integer)) or seeds < 1:
        raise ValueError(f"seeds={seeds!r} must be an integer >= 1")
    return int(seeds)


def check_key(key):
    """An int or a scalar typed ``jax.random`` key -> a typed key."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) \
            and key.shape == ():
        return key
    if isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(key)  # a raw jax.random.PRNGKey
    raise ValueError(f"key={key!r}: expected an int or a scalar jax.random.key(...)")


def check_precision(precision) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; allowed: default, high, highest")
    return precision


def check_inputs(model, inputs) -> tuple[tuple[int, ...], Any, Any]:
    """Validate ``inputs``; return ``(shape, dtype, array or None)``. Integer arrays (token
    ids) stay integer; everything else is float32."""
    if isinstance(inputs, (tuple, list)) and inputs and all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in inputs):
        shape, x = tuple(int(d) for d in inputs), None
        if min(shape) < 1:
            raise ValueError(f"inputs: a shape needs positive dimensions; got {tuple(inputs)}")
        dtype = jnp.float32
    else:
        try:
            arr = np.asarray(inputs) if not isinstance(inputs, jax.Array) else inputs
            dtype = jnp.int32 if jnp.issubdtype(arr.dtype, jnp.integer) else jnp.float32
            x = jnp.asarray(arr, dtype=dtype)
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
    return shape, dtype, x


def make_plan(metric_names, similar_batch_noise, gradient_correlation, loss) -> Plan:
    """Validate the metric arguments of :func:`analyze`; return the engine's :class:`Plan`."""
    names = metrics.check_metrics(metric_names)
    optional = names if metric_names is None else ()  # dropped where the model has no tap
    if similar_batch_noise is not None:
        if isinstance(similar_batch_noise, bool) or not isinstance(
                similar_batch_noise, (int, float, np.integer, np.floating)):
            raise ValueError(f"similar_batch_noise={similar_batch_noise!r}: expected None or a "
                             "number > 0 (the noise scale s; [U] uses 0.1)")
        similar_batch_noise = float(similar_batch_noise)
        if not (similar_batch_noise > 0 and np.isfinite(similar_batch_noise)):
            raise ValueError(f"similar_batch_noise={similar_batch_noise!r} must be a finite "
                             "number > 0")
        names = names + ("similar_batch_correlation",)
    if gradient_correlation not in (True, False):
        raise ValueError(f"gradient_correlation={gradient_correlation!r}: expected True or False")
    if gradient_correlation:
        names = names + ("gradient_correlation",)
    names = tuple(m for m in metrics.REGISTRY if m in names)
    if loss is not None and not callable(loss):
        raise ValueError(f"loss={loss!r} must be a callable (outputs, key) -> scalar")
    noise = similar_batch_noise
    if noise is None and set(names) & set(metrics.PAIR_METRICS):
        noise = DEFAULT_NOISE
    return Plan(names, noise, loss, optional)


def _check_apply_kwargs(apply_kwargs) -> tuple:
    if apply_kwargs is None:
        return ()
    if not isinstance(apply_kwargs, dict) or not all(isinstance(k, str) for k in apply_kwargs):
        raise ValueError(f"apply_kwargs={apply_kwargs!r} must be a dict of keyword arguments "
                         "(e.g. {'train': True})")
    try:
        items = tuple(sorted(apply_kwargs.items()))
        hash(items)
    except TypeError as e:
        raise ValueError(f"apply_kwargs={apply_kwargs!r}: values must be hashable "
                         "(Python scalars, strings, tuples)") from e
    return items


def _structure_error(what, want, got) -> ValueError:
    return ValueError(f"variables=: the structure does not fit the model ({what}); expected "
                      f"{jax.tree_util.tree_structure(want)}, got "
                      f"{jax.tree_util.tree_structure(got)}")


def _linen_variables(net, variables, seeds: int, x_abstract):
    """The user's linen ``variables`` with zero probes added, checked against the model's
    structure and shapes, as ``[seeds, ...]`` leaves."""
    if not hasattr(variables, "items"):
        raise ValueError(f"variables= must be a dict of collections like model.init returns; "
                         f"got {type(variables).__name__}")
    expected = jax.eval_shape(net.init, jax.random.key(0), x_abstract)
    probes = expected.pop(engine.probe.PROBES, None)
    # Collections the model only sows (RegNorm's extra loss terms, sigprop's records) are
    # outputs: a given value is dropped, or ``sow`` would add the pass's terms to it.
    for c in engine.probe.SOWN:
        expected.pop(c, None)
    given = {c: v for c, v in dict(variables).items()
             if c not in (engine.probe.PROBES,) + engine.probe.SOWN}
    missing = sorted(set(expected) - set(given))
    if missing:
        raise ValueError(f"variables=: the model also needs the collection(s) {missing} (give "
                         f"everything model.init returns); got {sorted(given)}")
    want = {c: v for c, v in expected.items() if c in given}
    if jax.tree_util.tree_structure(want) != jax.tree_util.tree_structure(given):
        raise _structure_error("collections or names differ", want, given)
    lead = None
    for w, g in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(given)):
        gs = np.shape(g)
        if gs == w.shape:
            lead_here = 0
        elif gs[1:] == w.shape:
            lead_here = gs[0]
        else:
            raise ValueError(f"variables=: a leaf of shape {gs} where the model has "
                             f"{w.shape} (or [seeds, *{w.shape}])")
        if lead is None:
            lead = lead_here
        elif lead != lead_here:
            raise ValueError("variables=: some leaves have a leading seed axis and some not")
    if lead == 0:
        if seeds != 1:
            raise ValueError(f"seeds={seeds} with variables= that have no leading seed axis: "
                             "give [seeds, ...] leaves or seeds=1")
        given = jax.tree_util.tree_map(lambda a: np.asarray(a)[None], given)
    elif lead != seeds:
        raise ValueError(f"seeds={seeds}, but variables= have a leading axis of {lead}")
    if probes is not None:
        given[engine.probe.PROBES] = jax.tree_util.tree_map(
            lambda s: np.zeros((seeds,) + s.shape, s.dtype), probes)
    return given


@functools.lru_cache(maxsize=256)
def _linen_network(model, x_abstract, taps, apply_kwargs):
    """:func:`sigprop.engine.linen_network`, traced once per model, input shape and taps."""
    return engine.linen_network(model, x_abstract, taps, apply_kwargs)


def network(model, x_abstract, taps, apply_kwargs=()):
    """The engine's network for ``model`` (see :func:`analyze`); returns ``(net, state of an
    nnx instance or None)``."""
    if taps is not None and not isinstance(taps, Taps):
        raise ValueError(f"taps={taps!r} must be sigprop.Taps(activations=..., gradients=...) "
                         "or None")
    if isinstance(model, nn.Module):
        try:
            return _linen_network(model, x_abstract, taps, apply_kwargs), None
        except TypeError:  # an unhashable module (e.g. a list attribute): not cached
            return engine.linen_network(model, x_abstract, taps, apply_kwargs), None
    if isinstance(model, nnx.Module) or callable(model):
        return engine.nnx_network(model, x_abstract, taps, apply_kwargs)
    raise ValueError(f"model={model!r}: expected a sigprop zoo model, a flax.linen.Module, a "
                     "flax.nnx.Module, or a callable rngs -> nnx.Module")


def analyze(model, inputs, *, seeds: int = 1, key=0, variables=None, taps: Taps | None = None,
            loss: Callable | None = None, metrics=None, apply_kwargs: dict | None = None,
            precision: str = "highest", similar_batch_noise: float | None = None,
            gradient_correlation: bool = False, mesh=None) -> LayerMetrics:
    """Measure every observed layer of ``model`` at initialization, for ``seeds`` seeds at once.

    Each seed initializes its own network (unless ``variables`` are given; and, when ``inputs``
    is a shape, draws its own N(0, 1) batch), runs one forward pass, where every activation tap
    records its statistics, and one backward pass of ``loss``, which gives every gradient tap's
    norm; the spectral step (eigenvalues for the ranks) then runs once, batched over seeds x
    layers. The whole call is one jitted, seed-vmapped computation whose seed axis is sharded
    over every device; a second call with the same model, shape, seeds and options does not
    recompile.

    Args:
      model: a ``sigprop`` zoo model; any ``flax.linen.Module`` (with ``variables=`` it measures
        those weights, else each seed initializes its own; mutable collections such as
        ``batch_stats`` are handled, and batch-statistics layers run in train mode: build or
        call your model so, e.g. ``apply_kwargs={"train": True}`` for Flax's ImageNet ResNet);
        a ``flax.nnx.Module`` instance (its own weights, ``seeds=1``); or a callable
        ``rngs -> nnx.Module`` (a fresh network per seed, all seeds in one vmapped call).
      inputs: an array ``[batch, ...]`` (the same batch for every seed; integer arrays, e.g.
        token ids, stay integer) or a shape tuple (N(0, 1) float32 inputs, drawn per seed).
      seeds: number of random seeds (>= 1). Seed ``i`` uses ``fold_in(key, i)``.
      key: an int or a ``jax.random`` key.
      variables: linen variables as ``model.init`` returns them (``seeds=1``), or with a
        leading seed axis on every leaf.
      taps: :class:`sigprop.Taps`, which submodules are observed (default: the zoo's own taps
        and :func:`sigprop.tap` calls; for models without any, every normalization module's
        output and every Dense/Conv/Einsum output but the last one called).
      loss: ``(outputs, key) -> scalar`` (default: mean softmax cross-entropy against labels
        drawn with ``key`` uniformly over the outputs' last axis). Pass the same function
        object each time: a new one compiles a new program.
      metrics: names from ``sigprop.metrics.names()`` (default: every single-batch metric);
        only what they need is recorded and computed.
      apply_kwargs: keyword arguments for every call of the model (e.g. ``{"train": True}``).
      precision: matmul/conv precision (``"highest"`` = full float32 also on GPU/TPU).
      similar_batch_noise: also measure each activation's Pearson correlation between the
        outputs for ``x`` and ``x + s * xi`` (``s`` > 0; [U] uses 0.1), ``xi ~ N(0, 1)`` per
        seed (``similar_batch_correlation``).
      gradient_correlation: also measure each gradient tap's correlation between the loss
        gradients for ``x`` and ``x + s * xi``, same labels (``s = similar_batch_noise`` or 0.1).
      mesh: a 1-D ``jax.sharding.Mesh`` (``sigprop.devices.mesh``); default all devices.

    Returns:
      :class:`~sigprop.results.LayerMetrics`: ``[seeds, layers]`` arrays named by metric. A
      NaN/Inf in a layer is data: flagged in ``finite`` / ``grad_finite``, and a
      :class:`NonFiniteWarning` names the first layer where it appears.
    """
    seeds = check_seeds(seeds)
    root = check_key(key)
    precision = check_precision(precision)
    plan = make_plan(metrics, similar_batch_noise, gradient_correlation, loss)
    kw = _check_apply_kwargs(apply_kwargs)
    shape, dtype, x = check_inputs(model, inputs)
    if x is not None and jnp.issubdtype(x.dtype, jnp.integer) and plan.pair:
        raise ValueError("similar_batch_noise / gradient_correlation add noise to the inputs: "
                         "they need float inputs, not integer ones")
    x_abstract = jax.ShapeDtypeStruct(shape, dtype)
    net, own_state = network(model, x_abstract, taps, kw)
    given = given_variables(net, own_state, variables, seeds, x_abstract)
    out = engine.execute(net, shape, dtype, seed_keys(root, seeds), x, given, plan, precision,
                         mesh)
    config = run_config(model, shape, seeds, key, x is not None, plan)
    result = LayerMetrics.from_engine(out, config)
    warn_nonfinite(result)
    return result


def given_variables(net, own_state, variables, seeds: int, x_abstract):
    """The weights a run starts from instead of ``init``: an nnx instance's own state (with a
    seed axis of 1), or linen ``variables=`` checked against the network (a seed axis added
    where missing); None when each seed is initialized."""
    if own_state is not None:
        if seeds != 1:
            raise ValueError(f"seeds={seeds} with an nnx.Module instance, which has one set of "
                             "weights: pass seeds=1, or a callable rngs -> nnx.Module for a "
                             "fresh network per seed")
        if variables is not None:
            raise ValueError("variables=: an nnx.Module instance uses its own weights")
        return jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], own_state)
    if variables is None:
        return None
    if net.kind != "linen":
        raise ValueError("variables= is for flax.linen models; an nnx model holds its own")
    return _linen_variables(net, variables, seeds, x_abstract)


def run_config(model, shape, seeds, key, user_inputs: bool, plan: Plan) -> dict:
    spec = getattr(model, "spec", None)
    config = dict(
        model=type(model).__name__,
        norm=getattr(spec, "name", None),
        norm_options={k: v for k, v in getattr(spec, "options", ())},
        activation=str(getattr(model, "activation", None)),
        inputs=list(shape),
        user_inputs=user_inputs,
        seeds=seeds,
        key=key if isinstance(key, int) else None,
        metrics=list(plan.metrics),
    )
    if plan.pair:
        config["options"] = dict(similar_batch_noise=plan.noise,
                                 similar_batch="similar_batch_correlation" in plan.metrics,
                                 gradient_correlation="gradient_correlation" in plan.metrics)
    return config


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


def layer_names(model, inputs, *, taps: Taps | None = None, apply_kwargs=None) -> dict:
    """``{"layer": names, "grad_layer": names, "branch_layer": names}`` that ``analyze`` would
    report for ``model`` (traced abstractly; nothing is computed)."""
    kw = _check_apply_kwargs(apply_kwargs)
    shape, dtype, _ = check_inputs(model, inputs)
    net, _ = network(model, jax.ShapeDtypeStruct(shape, dtype), taps, kw)
    plan = Plan(("activation_variance", "grad_norm", "residual_variance"),
                optional=("residual_variance",))

    def one(key):
        return engine.measure_item(net, shape, dtype, key, None if dtype == jnp.float32 else
                                   jnp.zeros(shape, dtype), None, plan)

    out = jax.eval_shape(one, jax.random.key(0))
    return {"layer": out["activation_variance"].names, "grad_layer": out["grad_norm"].names,
            "branch_layer": out["residual_variance"].names if "residual_variance" in out else ()}


__all__ = ["analyze", "layer_names", "NonFiniteWarning", "DEFAULT_NOISE"]
