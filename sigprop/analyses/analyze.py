"""``analyze``: every layer's metrics of a network at initialization, over many seeds at once.

Arguments are checked at the engine's boundary (:mod:`sigprop.core.args`), with a ``ValueError``
naming the parameter, before anything is traced or compiled.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from sigprop.core import engine
from sigprop.core.args import (
    check_apply_kwargs,
    check_inputs,
    given_variables,
    make_plan,
    network,
    run_config,
)
from sigprop.core.plan import DEFAULT_NOISE, Plan
from sigprop.core.results import LayerMetrics
from sigprop.core.selectors import Taps
from sigprop.util.checks import check_key, check_precision, check_seeds
from sigprop.util.keys import seed_keys
from sigprop.util.warnings import NonFiniteWarning
from sigprop.util.warnings import warn_nonfinite as nonfinite


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
        ``"default"`` is an accelerator's fast mode (TF32 operands on a GPU, one bfloat16 pass
        on a TPU; XLA:CPU ignores it): with TF32 emulated on CPU, ResNet-56's activation
        metrics moved by up to 1.3e-4 relative and its ``grad_norm`` by 4e-3, a 6 x 128
        transformer's metrics by up to 4.8e-4 (bfloat16: up to 4.1e-3; the README's table,
        ``tests/test_precision.py``). The Gram records stay float32 (``HIGHEST``) either way.
      similar_batch_noise: also measure each activation's Pearson correlation between the
        outputs for ``x`` and ``x + s * xi`` (``s`` > 0; [U] uses 0.1), ``xi ~ N(0, 1)`` per
        seed (``similar_batch_correlation``).
      gradient_correlation: also measure each gradient tap's correlation between the loss
        gradients for ``x`` and ``x + s * xi``, same labels (``s = similar_batch_noise`` or 0.1).
      mesh: a 1-D ``jax.sharding.Mesh`` (``sigprop.devices.mesh``); default all devices.

    Returns:
      :class:`~sigprop.LayerMetrics`: ``[seeds, layers]`` arrays named by metric. A
      NaN/Inf in a layer is data: flagged in ``finite`` / ``grad_finite``, and a
      :class:`NonFiniteWarning` names the first layer where it appears.
    """
    seeds = check_seeds(seeds)
    root = check_key(key)
    precision = check_precision(precision)
    plan = make_plan(metrics, similar_batch_noise, gradient_correlation, loss)
    kw = check_apply_kwargs(apply_kwargs)
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


def warn_nonfinite(result: LayerMetrics) -> None:
    bad = result.first_nonfinite()
    if bad is not None:
        kind, idx, name = bad
        nonfinite(f"{kind} values first appear at layer {name!r} (index {idx})")


def layer_names(model, inputs, *, taps: Taps | None = None, apply_kwargs=None) -> dict:
    """``{"layer": names, "grad_layer": names, "branch_layer": names, "attention_layer": names,
    "param_layer": names, "norm_layer": names}`` that ``analyze`` would report for ``model``
    (traced abstractly; nothing is computed; an axis without taps has no names; ``norm_layer``:
    the LayerNorm / RMSNorm layers of the ``gns_*`` metrics)."""
    kw = check_apply_kwargs(apply_kwargs)
    shape, dtype, _ = check_inputs(model, inputs)
    net, _ = network(model, jax.ShapeDtypeStruct(shape, dtype), taps, kw)
    optional = ("residual_variance", "attention_entropy", "param_grad_norm", "gns_b_simple")
    plan = Plan(("activation_variance", "grad_norm") + optional, optional=optional)

    def one(key):
        return engine.measure_item(net, shape, dtype, key, None if dtype == jnp.float32 else
                                   jnp.zeros(shape, dtype), None, plan)

    out = jax.eval_shape(one, jax.random.key(0))
    def names(metric):
        return out[metric].names if metric in out else ()

    return {"layer": names("activation_variance"), "grad_layer": names("grad_norm"),
            "branch_layer": names("residual_variance"),
            "attention_layer": names("attention_entropy"), "param_layer": names("param_grad_norm"),
            "norm_layer": names("gns_b_simple")}


__all__ = ["analyze", "layer_names", "NonFiniteWarning", "DEFAULT_NOISE"]
