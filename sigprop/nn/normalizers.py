"""The normalizer zoo: every normalizer of science.md as a small ``flax.linen`` module.

This module owns the normalizers' statistics and affine parts, the reduction axes of each
``layout``, and the registry (:func:`names`, :func:`spec`, :func:`make`).

Conventions (science.md): inputs are ``[N, ..., C]`` (NHWC images or ``[N, C]`` features).
"Batch statistics" of a channel are over ``(N, H, W)``; "layer statistics" of a sample are over
``(H, W, C)``; "instance statistics" are over ``(H, W)``. That is ``layout="image"`` (the
default, [BB]'s conventions). ``layout="tokens"`` reads ``[B, T, D]`` token tensors as a
transformer does (flax's conventions): layer statistics (and groups) are per token, over ``D``
only; batch and instance statistics are as for images. The reduced axes:

============  =======================================  ================================
name          ``[B, H, W, C]`` image                   ``[B, T, D]`` tokens
============  =======================================  ================================
none          (identity)                               (identity)
batchnorm     B, H, W                                  B, T
layernorm     H, W, C                                  D
instancenorm  H, W                                     T
groupnorm     H, W, channels of a group                channels of a group
frn           H, W (mean of x^2)                       T (mean of x^2)
variancenorm  B, H, W                                  B, T
meancenter    B, H, W                                  B, T
weightnorm    (identity; acts on weights)              (identity; acts on weights)
sws           (identity; acts on weights)              (identity; acts on weights)
evonorm_s0    H, W, channels of a group                channels of a group
evonorm_b0    batch B, H, W; instance H, W             batch B, T; instance T
bmlv          mean B, H, W; var H, W, C                mean B, T; var D
lmbv          mean H, W, C; var B, H, W                mean D; var B, T
prelayernorm  var H, W, C                              var D
regnorm       H, W, C; loss mean_HWC(mean_B(x_hat)^2)  D; loss mean_TD(mean_B(x_hat)^2)
preregnorm    as regnorm                               as regnorm
rmsnorm       H, W, C (mean of x^2)                    D (mean of x^2)
dyt           none (elementwise)                       none (elementwise)
sigma_reparam (identity; acts on weights)              (identity; acts on weights)
============  =======================================  ================================

Every module uses the batch in hand (train mode, never running averages), eps = 1e-5, variances
are biased (divide by the count), and the affine part starts at gamma = 1, beta = 0. Each module
is a *statistic* (the standardizer) followed by an optional per-channel affine (``affine=False``
measures the pure standardizer).

Use :func:`make` to build one by name and :func:`names` for the registered names. Three families
are not a module acting on activations alone, and the model builders (``sigprop.models``) handle
them through :func:`spec`:

- parametric (``weightnorm``, ``sws``, ``sigma_reparam``): they reparametrize the conv/dense
  *weights*; ``make`` returns the identity and the models use the matching weight transform
  (:func:`sigprop.nn.layers.transform_weight`, with conv bias on). ``sigma_reparam`` (Zhai et al.
  2023, arXiv 2303.06296) is ``W_hat = gamma / sigma(W) * W``, one learnable scalar ``gamma``
  (init 1) per layer, ``sigma`` the spectral norm of the kernel flattened to ``[fan_in, out]``
  from ``SIGMA_ITERATIONS`` power iterations (stateless, fixed start).
- wrapping (``prelayernorm``, ``preregnorm``): they also subtract the layer mean of the layer's
  *input* before the conv/dense; ``make`` returns the post-affine part only.
- activation-replacing (``evonorm_s0``, ``evonorm_b0``): the models drop the activation.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

EPS = 1e-5
LAYOUTS = ("image", "tokens")

# --------------------------------------------------------------------------------------------
# Axes and statistics


def _batch_axes(x):  # (N, H, W): every axis but the channel
    return tuple(range(x.ndim - 1))


def _layer_axes(x, layout):  # image (H, W, C): every axis but the batch; tokens (D,)
    return (x.ndim - 1,) if layout == "tokens" else tuple(range(1, x.ndim))


def _instance_axes(x):  # (H, W): the spatial axes (none for [N, C] inputs)
    return tuple(range(1, x.ndim - 1))


def _mean(x, axes):
    return jnp.mean(x, axis=axes, keepdims=True)


def _var(x, axes):
    """Biased variance over ``axes``, two-pass for accuracy at large magnitudes."""
    return jnp.mean(jnp.square(x - _mean(x, axes)), axis=axes, keepdims=True)


def _grouped(x, num_groups):
    """Reshape ``[N, ..., C]`` to ``[N, ..., G, C // G]``."""
    return x.reshape(*x.shape[:-1], num_groups, x.shape[-1] // num_groups)


def _group_axes(xg, layout):  # (spatial axes and) the within-group axis of a grouped array
    if layout == "tokens":
        return (xg.ndim - 1,)
    return tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)


def channel(v, ndim: int):
    """A per-channel vector ``[C]`` shaped to broadcast against ``[N, ..., C]`` explicitly."""
    return v.reshape((1,) * (ndim - 1) + (-1,))


def _affine(module, y):
    c = y.shape[-1]
    y = y * channel(module.param("scale", nn.initializers.ones, (c,), jnp.float32), y.ndim)
    return y + channel(module.param("bias", nn.initializers.zeros, (c,), jnp.float32), y.ndim)


def _check_layout(layout, name):
    if layout not in LAYOUTS:
        raise ValueError(
            f"{name}: layout={layout!r} is not allowed; allowed: {', '.join(map(repr, LAYOUTS))}"
        )


def _check_input(x, name, layout):
    _check_layout(layout, name)
    if x.ndim < 2:
        raise ValueError(f"{name} expects inputs of shape [N, ..., C]; got shape {x.shape}")


def resolve_groups(channels: int, group_size: int | None, num_groups: int | None, owner: str) -> int:
    """Number of groups for ``channels`` from exactly one of ``group_size`` / ``num_groups``.

    With neither given, [BB]'s default of 32 groups is used (``gcd(32, channels)`` groups when 32
    does not divide the width). Raises ValueError naming the parameter and the width otherwise.
    """
    if group_size is not None and num_groups is not None:
        raise ValueError(f"{owner}: pass exactly one of group_size= or num_groups=, not both")
    if group_size is not None:
        if not isinstance(group_size, int) or group_size < 1 or channels % group_size:
            raise ValueError(
                f"{owner}: group_size={group_size!r} must be a positive divisor of the width "
                f"(channels={channels})"
            )
        return channels // group_size
    if num_groups is not None:
        if not isinstance(num_groups, int) or num_groups < 1 or channels % num_groups:
            raise ValueError(
                f"{owner}: num_groups={num_groups!r} must be a positive divisor of the width "
                f"(channels={channels})"
            )
        return num_groups
    return math.gcd(32, channels)


# --------------------------------------------------------------------------------------------
# Affine part


class Normalizer(nn.Module):
    """Base: subclasses implement ``standardize``; ``__call__`` adds the per-channel affine.

    ``layout`` (``"image"`` or ``"tokens"``) picks the reduction axes (the module docstring's
    table); any other value raises ValueError when the module is called.
    """

    affine: bool = True
    eps: float = EPS
    layout: str = "image"

    def standardize(self, x):
        raise NotImplementedError

    @nn.compact
    def __call__(self, x):
        _check_input(x, type(self).__name__, self.layout)
        y = self.standardize(x)
        return _affine(self, y) if self.affine else y


# --------------------------------------------------------------------------------------------
# Activation-based normalizers


class Identity(nn.Module):
    """No normalization ("Plain" in [BB]): ``y = x``. ``layout`` is checked, then ignored."""

    layout: str = "image"

    @nn.compact
    def __call__(self, x):
        _check_layout(self.layout, "identity")
        return x


class BatchNorm(Normalizer):
    """BatchNorm with the batch in hand: ``y = (x - mean_NHW(x)) / sqrt(var_NHW(x) + eps)``.

    Per channel, over the batch and spatial axes. Ioffe & Szegedy 2015, arXiv 1502.03167.
    """

    def standardize(self, x):
        a = _batch_axes(x)
        return (x - _mean(x, a)) / jnp.sqrt(_var(x, a) + self.eps)


class LayerNorm(Normalizer):
    """LayerNorm: ``y = (x - mean_HWC(x)) / sqrt(var_HWC(x) + eps)``, per sample (tokens: per
    token, over ``D``).

    Ba, Kiros & Hinton 2016, arXiv 1607.06450.
    """

    def standardize(self, x):
        a = _layer_axes(x, self.layout)
        return (x - _mean(x, a)) / jnp.sqrt(_var(x, a) + self.eps)


class InstanceNorm(Normalizer):
    """InstanceNorm: ``y = (x - mean_HW(x)) / sqrt(var_HW(x) + eps)``, per sample and channel.

    Equals GroupNorm with ``group_size=1``. On ``[N, C]`` inputs there are no spatial axes and the
    output is 0. Ulyanov, Vedaldi & Lempitsky 2016, arXiv 1607.08022.
    """

    def standardize(self, x):
        a = _instance_axes(x)
        return (x - _mean(x, a)) / jnp.sqrt(_var(x, a) + self.eps)


class GroupNorm(Normalizer):
    """GroupNorm: per sample and group of ``g`` channels,
    ``y = (x - mean_{HW,g}(x)) / sqrt(var_{HW,g}(x) + eps)``.

    Tokens: per token and group (over the group's channels only, not ``T``).

    Args:
      group_size: channels per group ``g`` (``g = 1`` is InstanceNorm, ``g = C`` is LayerNorm).
      num_groups: number of groups ``C / g``. Pass at most one of the two; with neither, 32 groups
        ([BB]'s default).
    Wu & He 2018, arXiv 1803.08494.
    """

    group_size: int | None = None
    num_groups: int | None = None

    def standardize(self, x):
        g = resolve_groups(x.shape[-1], self.group_size, self.num_groups, "groupnorm")
        xg = _grouped(x, g)
        a = _group_axes(xg, self.layout)
        yg = (xg - _mean(xg, a)) / jnp.sqrt(_var(xg, a) + self.eps)
        return yg.reshape(x.shape)


class FRN(nn.Module):
    """Filter Response Normalization: ``y = gamma * x / sqrt(mean_HW(x^2) + |eps|) + beta``.

    ``eps`` is a learnable scalar (initialized to ``eps``). Paired with TLU ``max(y, tau)``,
    ``tau = 0`` at init, instead of ReLU (the models do this). Singh & Krishnan 2019,
    arXiv 1911.09737.
    """

    affine: bool = True
    eps: float = EPS
    layout: str = "image"

    @nn.compact
    def __call__(self, x):
        _check_input(x, "frn", self.layout)
        eps = self.param("eps", nn.initializers.constant(self.eps), (), jnp.float32)
        nu2 = jnp.mean(jnp.square(x), axis=_instance_axes(x), keepdims=True)
        y = x / jnp.sqrt(nu2 + jnp.abs(eps))
        return _affine(self, y) if self.affine else y


class VarianceNorm(Normalizer):
    """Variance normalization (BatchNorm without centering): ``y = x / sqrt(var_NHW(x) + eps)``.

    Daneshmand et al. 2020, arXiv 2003.01652.
    """

    def standardize(self, x):
        return x / jnp.sqrt(_var(x, _batch_axes(x)) + self.eps)


class MeanCenter(Normalizer):
    """Mean centering (BatchNorm without scaling): ``y = x - mean_NHW(x)``."""

    def standardize(self, x):
        return x - _mean(x, _batch_axes(x))


class BMLV(Normalizer):
    """Batch mean, layer variance ([U]): ``y = (x - mean_NHW(x)) / sqrt(var_HWC(x) + eps)``.

    The variance is that of ``x`` over each sample's ``(H, W, C)`` (tokens: each token's ``D``,
    the mean over ``(B, T)``). Rao & Sohl-Dickstein, arXiv 2010.10687.
    """

    def standardize(self, x):
        var = _var(x, _layer_axes(x, self.layout))
        return (x - _mean(x, _batch_axes(x))) / jnp.sqrt(var + self.eps)


class LMBV(Normalizer):
    """Layer mean, batch variance ([U]): ``y = (x - mean_HWC(x)) / sqrt(var_NHW(x) + eps)``.

    The variance is that of ``x`` over each channel's ``(N, H, W)`` (tokens: ``(B, T)``, the mean
    over each token's ``D``). arXiv 2010.10687.
    """

    def standardize(self, x):
        mean = _mean(x, _layer_axes(x, self.layout))
        return (x - mean) / jnp.sqrt(_var(x, _batch_axes(x)) + self.eps)


class DyT(nn.Module):
    """Dynamic Tanh (DyT), a normalizer without statistics: ``y = gamma * tanh(alpha x) + beta``.

    ``alpha`` is one learnable scalar, initialized to ``alpha0`` (default 0.5); ``gamma = 1`` and
    ``beta = 0`` per channel are the usual affine (``affine=False`` drops it). It reduces over no
    axis, so ``layout`` (checked, then ignored) does not change it and it needs no ``eps``.

    Args:
      alpha0: the initial value of ``alpha``.
      affine: apply the per-channel ``gamma``, ``beta``.
      layout: ``"image"`` or ``"tokens"`` (the same computation).
    Zhu, Chen, He, LeCun & Liu 2025, "Transformers without Normalization", arXiv 2503.10622.
    """

    alpha0: float = 0.5
    affine: bool = True
    layout: str = "image"

    @nn.compact
    def __call__(self, x):
        _check_input(x, "dyt", self.layout)
        alpha = self.param("alpha", nn.initializers.constant(self.alpha0), (), jnp.float32)
        y = jnp.tanh(alpha * x)
        return _affine(self, y) if self.affine else y


class RMSNorm(Normalizer):
    """RMSNorm: ``y = x / sqrt(mean_HWC(x^2) + eps)`` (tokens: ``mean_D``).

    Zhang & Sennrich 2019, arXiv 1910.07467.
    """

    def standardize(self, x):
        ms = jnp.mean(jnp.square(x), axis=_layer_axes(x, self.layout), keepdims=True)
        return x / jnp.sqrt(ms + self.eps)


class LayerScale(Normalizer):
    """The post-affine half of PreLayerNorm ([U] section 3.1): ``y = x / sqrt(var_HWC(x) + eps)``
    (tokens: ``var_D``).

    The other half, subtracting the layer mean of the layer's *input* before the conv/dense, is
    done by the model builders (``spec('prelayernorm').center_input``).
    """

    def standardize(self, x):
        return x / jnp.sqrt(_var(x, _layer_axes(x, self.layout)) + self.eps)


class RegNorm(Normalizer):
    """RegNorm ([U] section 3.2): LayerNorm, plus a loss term on the normalized pre-activation.

    ``x_hat = (x - mean_HWC(x)) / sqrt(var_HWC(x) + eps)``, ``y = gamma * x_hat + beta`` and the
    term ``reg_strength * mean_{HWC}(mean_N(x_hat)^2)`` is sown into the ``'losses'`` collection;
    :func:`sigprop.analyze` adds the sum over layers to the loss. The term is minimized only when
    the batch means are 0 (our reading of [U]'s lost equation 3). ``reg_strength`` is [U]'s
    lambda, a hyperparameter (default 1.0). Tokens: ``x_hat`` is per token (over ``D``); the term
    keeps its form, ``mean_{TD}(mean_B(x_hat)^2)``.
    """

    reg_strength: float = 1.0

    def standardize(self, x):
        a = _layer_axes(x, self.layout)
        x_hat = (x - _mean(x, a)) / jnp.sqrt(_var(x, a) + self.eps)
        reg = jnp.mean(jnp.square(jnp.mean(x_hat, axis=0)))
        self.sow("losses", "regnorm", self.reg_strength * reg, init_fn=lambda: 0.0,
                 reduce_fn=lambda a, b: a + b)
        return x_hat


class EvoNormS0(nn.Module):
    """EvoNorm-S0 (replaces normalizer + activation):
    ``y = x * sigmoid(v x) / sqrt(var_{HW,g}(x) + eps) * gamma + beta``, ``v = 1`` at init.

    The group std is over each sample's spatial axes and group of channels (32 groups by
    default, as in [BB]; ``group_size=`` or ``num_groups=`` to change); tokens: each token's
    group of channels. Liu et al. 2020, arXiv 2004.02967.
    """

    group_size: int | None = None
    num_groups: int | None = None
    eps: float = EPS
    layout: str = "image"

    @nn.compact
    def __call__(self, x):
        _check_input(x, "evonorm_s0", self.layout)
        c = x.shape[-1]
        g = resolve_groups(c, self.group_size, self.num_groups, "evonorm_s0")
        v = channel(self.param("v", nn.initializers.ones, (c,), jnp.float32), x.ndim)
        xg = _grouped(x, g)
        var = _var(xg, _group_axes(xg, self.layout))
        std = jnp.broadcast_to(jnp.sqrt(var + self.eps), xg.shape)
        return _affine(self, x * nn.sigmoid(v * x) / std.reshape(x.shape))


class EvoNormB0(nn.Module):
    """EvoNorm-B0 (replaces normalizer + activation):
    ``y = x / max(sqrt(var_NHW(x) + eps), v x + sqrt(var_HW(x) + eps)) * gamma + beta``, ``v = 1``.

    Liu et al. 2020, arXiv 2004.02967.
    """

    eps: float = EPS
    layout: str = "image"

    @nn.compact
    def __call__(self, x):
        _check_input(x, "evonorm_b0", self.layout)
        c = x.shape[-1]
        v = channel(self.param("v", nn.initializers.ones, (c,), jnp.float32), x.ndim)
        batch_std = jnp.sqrt(_var(x, _batch_axes(x)) + self.eps)
        inst_std = jnp.sqrt(_var(x, _instance_axes(x)) + self.eps)
        return _affine(self, x / jnp.maximum(batch_std, v * x + inst_std))


# --------------------------------------------------------------------------------------------
# Registry


@dataclasses.dataclass(frozen=True)
class NormSpec:
    """How a model builder wires a normalizer in.

    Attributes:
      name: the registered name (or the factory's name for user factories).
      factory: ``factory(**options)`` returns the module applied to the conv/dense output.
      options: the options passed to the factory, as a sorted tuple of pairs (hashable).
      weight: ``'plain'``, ``'weightnorm'``, ``'sws'`` or ``'sigma_reparam'``: the conv/dense
        weight transform.
      activation: the paired activation name (``None`` keeps the model's activation).
      center_input: subtract the layer mean of the conv/dense input first (PreLayerNorm).
      bias: conv/dense bias on (the parametric normalizers).
      batch_dependent: uses statistics across the batch (needs a batch of at least 2).
    """

    name: str
    factory: Callable[..., nn.Module]
    options: tuple = ()
    weight: str = "plain"
    activation: str | None = None
    center_input: bool = False
    bias: bool = False
    batch_dependent: bool = False
    grouped: bool = False

    def module(self, **overrides) -> nn.Module:
        return self.factory(**{**dict(self.options), **overrides})

    def check_width(self, width: int) -> None:
        """Raise ValueError if the normalizer cannot act on ``width`` channels."""
        if self.grouped:
            opts = dict(self.options)
            resolve_groups(width, opts.get("group_size"), opts.get("num_groups"), self.name)


_EPS_OPT = ("eps", "layout")
_REGISTRY: dict[str, dict[str, Any]] = {
    "none": dict(factory=Identity, allowed=("layout",)),
    "batchnorm": dict(factory=BatchNorm, batch_dependent=True),
    "layernorm": dict(factory=LayerNorm),
    "instancenorm": dict(factory=InstanceNorm),
    "groupnorm": dict(factory=GroupNorm, grouped=True,
                      allowed=("affine", "eps", "group_size", "layout", "num_groups")),
    "frn": dict(factory=FRN, activation="tlu"),
    "variancenorm": dict(factory=VarianceNorm, batch_dependent=True),
    "meancenter": dict(factory=MeanCenter, batch_dependent=True),
    "weightnorm": dict(factory=Identity, allowed=("layout",), weight="weightnorm",
                       activation="scaled_relu", bias=True),
    "sws": dict(factory=Identity, allowed=("layout",), weight="sws", bias=True),
    "evonorm_s0": dict(factory=EvoNormS0, activation="identity", grouped=True,
                       allowed=("eps", "group_size", "layout", "num_groups")),
    "evonorm_b0": dict(factory=EvoNormB0, activation="identity", batch_dependent=True,
                       allowed=_EPS_OPT),
    "bmlv": dict(factory=BMLV, batch_dependent=True),
    "lmbv": dict(factory=LMBV, batch_dependent=True),
    "prelayernorm": dict(factory=LayerScale, center_input=True),
    "regnorm": dict(factory=RegNorm, allowed=("affine", "eps", "layout", "reg_strength")),
    "preregnorm": dict(factory=RegNorm, center_input=True,
                       allowed=("affine", "eps", "layout", "reg_strength")),
    "rmsnorm": dict(factory=RMSNorm),
    "dyt": dict(factory=DyT, allowed=("affine", "alpha0", "layout")),
    "sigma_reparam": dict(factory=Identity, allowed=("layout",), weight="sigma_reparam",
                          bias=True),
}
_DEFAULT_ALLOWED = ("affine", "eps", "layout")


def names() -> list[str]:
    """The registered normalizer names, in science.md's order."""
    return list(_REGISTRY)


def _unknown(name) -> ValueError:
    close = difflib.get_close_matches(str(name).lower(), names(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown normalizer norm={name!r}.{hint} Known: {', '.join(names())}")


def spec(norm: str | Callable[..., nn.Module], **options) -> NormSpec:
    """The :class:`NormSpec` of a registered name, or of a user module factory.

    A user factory (any callable returning a linen Module mapping ``[N, ..., C]`` to the same
    shape, e.g. ``functools.partial(nn.LayerNorm, epsilon=1e-5)``) is treated as an activation
    normalizer: plain weights, the model's activation, no input centering.
    """
    if isinstance(norm, NormSpec):
        return norm
    if callable(norm) and not isinstance(norm, str):
        name = getattr(norm, "__name__", None) or getattr(getattr(norm, "func", None), "__name__", "custom")
        return NormSpec(name=name, factory=norm, options=tuple(sorted(options.items())))
    if not isinstance(norm, str) or norm.lower() not in _REGISTRY:
        raise _unknown(norm)
    name = norm.lower()
    entry = dict(_REGISTRY[name])
    allowed = entry.pop("allowed", _DEFAULT_ALLOWED)
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise ValueError(
            f"normalizer {name!r} does not take option(s) {', '.join(bad)}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
    if entry.get("grouped"):
        if options.get("group_size") is not None and options.get("num_groups") is not None:
            raise ValueError(f"{name}: pass exactly one of group_size= or num_groups=, not both")
        for k in ("group_size", "num_groups"):
            v = options.get(k)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{name}: {k}={v!r} must be a positive integer")
    if options.get("layout") is not None:
        _check_layout(options["layout"], name)
    options = {k: v for k, v in options.items() if v is not None}
    return NormSpec(name=name, options=tuple(sorted(options.items())), **entry)


def make(name: str, **options) -> nn.Module:
    """Build the normalizer ``name`` as a linen Module mapping ``[N, ..., C]`` to the same shape.

    This is the normalizer alone, without its activation. Batch-statistics normalizers use the
    batch in hand. For the parametric ones (``weightnorm``, ``sws``, ``sigma_reparam``) the
    returned module is the identity: they act on the weights, and ``sigprop.models`` applies them
    there. For ``prelayernorm`` / ``preregnorm`` it is the part applied after the conv/dense;
    the models also center the layer's input. ``groupnorm`` and ``evonorm_s0`` take one of ``group_size=`` or
    ``num_groups=``; every normalizer but ``dyt`` (which takes ``alpha0=``) takes ``eps=``, the
    affine ones ``affine=``, and all ``layout=`` (``"image"`` or ``"tokens"``, the module
    docstring's table).

    Raises:
      ValueError: unknown ``name`` (listing the known names, suggesting the closest), options or
        ``layout``.
    """
    return spec(name, **options).module()
