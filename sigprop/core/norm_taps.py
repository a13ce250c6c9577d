"""Which normalization layers carry the gradient-noise tap (the ``gns_*`` metrics,
:mod:`sigprop.metrics.gns`), and how their normalized input ``x_hat`` is found.

The tap needs a normalizer whose output is ``y = gamma x_hat + beta`` per channel (the last
axis), with ``x_hat`` a function of the example alone: LayerNorm and RMSNorm. Supported:
sigprop's :class:`~sigprop.nn.normalizers.LayerNorm` and
:class:`~sigprop.nn.normalizers.RMSNorm` (both layouts; ``x_hat`` is the module's own
``standardize``), and flax's ``LayerNorm`` / ``RMSNorm`` (linen and nnx) with their default
feature and reduction axes (the last; ``x_hat`` recomputed here with the module's epsilon, as flax does:
``(x - mean) / sqrt(var + eps)``, ``var = mean(x^2) - mean(x)^2`` clipped at 0 under
``use_fast_variance``, else ``mean((x - mean)^2)``; RMS: ``x / sqrt(mean(x^2) + eps)``). A
normalizer without affine parameters has nothing to observe. The linen adapter
(:mod:`sigprop.core.adapters`) calls :func:`observe` on every such module's output, the nnx
adapter (:mod:`sigprop.core.nnx_adapter`) :func:`observe_nnx`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from sigprop.nn import normalizers
from sigprop.taps import probe

_FLAX_LN, _FLAX_RMS = (nn.LayerNorm, nnx.LayerNorm), (nn.RMSNorm, nnx.RMSNorm)


def affine_parts(module) -> tuple[bool, bool]:
    """``(scale, bias)``: which affine parameters ``module`` has (both False: none, or not a
    supported normalizer)."""
    if isinstance(module, (normalizers.LayerNorm, normalizers.RMSNorm)):
        return (bool(module.affine),) * 2
    if isinstance(module, _FLAX_LN):
        return bool(module.use_scale), bool(module.use_bias)
    if isinstance(module, _FLAX_RMS):
        return bool(module.use_scale), False
    return False, False


def observable(module) -> bool:
    """Whether ``module`` carries the gradient-noise tap."""
    return any(affine_parts(module))


def _last_axis_only(axes) -> bool:
    return tuple(axes) == (-1,) if isinstance(axes, (tuple, list)) else axes == -1


def standardized(module, x, where: str = ""):
    """``x_hat`` of the input ``x`` of a supported normalizer ``module`` (module docstring;
    ``where``: its path, for errors)."""
    if isinstance(module, (normalizers.LayerNorm, normalizers.RMSNorm)):
        return module.standardize(x)
    if not (_last_axis_only(module.reduction_axes) and _last_axis_only(module.feature_axes)):
        raise ValueError(f"metrics=: the gns_* metrics observe flax {type(module).__name__} "
                         f"with reduction_axes=-1 and feature_axes=-1 only; {where!r} has "
                         f"reduction_axes={module.reduction_axes!r}, "
                         f"feature_axes={module.feature_axes!r}")
    x = jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))
    mean_sq = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    if isinstance(module, _FLAX_RMS):
        return x * jax.lax.rsqrt(mean_sq + module.epsilon)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    if module.use_fast_variance:
        var = jnp.maximum(0.0, mean_sq - jnp.square(mean))
    else:
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + module.epsilon)


def _x_hat(module, args, kwargs, where: str):
    if kwargs.get("mask") is not None:
        raise ValueError(f"metrics=: the gns_* metrics cannot observe a masked "
                         f"{type(module).__name__} ({where!r})")
    return jax.lax.stop_gradient(standardized(module, args[0] if args else kwargs["x"], where))


def observe(module, args, kwargs, y, active: bool):
    """linen: ``y`` (the output of ``module(*args, **kwargs)``) through the gradient-noise tap
    (:func:`sigprop.taps.probe.observe_norm`): declared in init, applied when ``active``."""
    scale, bias = affine_parts(module)
    if not (scale or bias) or not isinstance(y, jax.Array):
        return y
    x_hat = None
    if active and not module.is_initializing():
        x_hat = _x_hat(module, args, kwargs, "/".join(module.path))
    return probe.observe_norm(module, y, x_hat, scale=scale, bias=bias, active=active)


def observe_nnx(module, args, kwargs, y, zero_probe):
    """nnx: ``y`` through the gradient-noise tap whose zero probe ``[4]`` the engine passes
    (:class:`sigprop.taps.nnx_taps.Context`)."""
    scale, bias = affine_parts(module)
    where = type(module).__name__
    if y.shape[0] < 2:
        raise ValueError(f"metrics=: the gns_* metrics need a batch of at least 2 examples "
                         f"(per-example gradients); got batch {y.shape[0]} at {where!r}")
    return probe.norm_probe(y, _x_hat(module, args, kwargs, where), zero_probe, scale, bias)
