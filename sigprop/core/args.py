"""The boundary of the engine: the arguments every entry point shares (inputs, the metric plan,
``apply_kwargs``, the network of a model, given variables), each checked with a ``ValueError``
naming the parameter before anything is traced or compiled, and the config a result records."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sigprop import metrics
from sigprop.core.adapters import linen_network
from sigprop.core.nnx_adapter import nnx_network
from sigprop.core.plan import DEFAULT_NOISE, Plan
from sigprop.core.selectors import Taps


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


def check_apply_kwargs(apply_kwargs) -> tuple:
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


@functools.lru_cache(maxsize=256)
def _linen_network(model, x_abstract, taps, apply_kwargs):
    """:func:`sigprop.core.adapters.linen_network`, traced once per model, input shape and
    taps."""
    return linen_network(model, x_abstract, taps, apply_kwargs)


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
            return linen_network(model, x_abstract, taps, apply_kwargs), None
    if isinstance(model, nnx.Module) or callable(model):
        return nnx_network(model, x_abstract, taps, apply_kwargs)
    raise ValueError(f"model={model!r}: expected a sigprop zoo model, a flax.linen.Module, a "
                     "flax.nnx.Module, or a callable rngs -> nnx.Module")


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
    return net.check_variables(variables, seeds, x_abstract)


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
