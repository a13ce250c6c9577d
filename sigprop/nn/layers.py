"""Building blocks shared by the model zoo: conv/dense with weight reparametrizations (and the
spectral norm that ``sigma_reparam`` divides by), activations.

Init (science.md): He normal (fan_in, untruncated, variance 2 / fan_in) for conv/dense kernels and
zero biases; convs are 3x3 with padding 1 on every side (PyTorch's ``padding=1``, also at stride 2).
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sigprop.backend import cpu
from sigprop.nn.normalizers import channel
from sigprop.taps.collections import KERNEL_KEYS

he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")  # untruncated, like torch
_WN_EPS = 1e-5
SCALED_RELU_SHIFT = 1.0 / math.sqrt(2 * math.pi)
"""``E[relu(z)]``, ``z ~ N(0, 1)``: what ``scaled_relu`` subtracts."""
SCALED_RELU_GAIN = math.sqrt(2 * math.pi / (math.pi - 1))
"""``1 / std(relu(z))`` = ``sqrt(2 pi / (pi - 1))``: ``scaled_relu``'s gain and scaled weight
standardization's (``sws``). :mod:`sigprop.analyses.theory` imports both constants."""


SIGMA_ITERATIONS = 100
"""Power iterations of :func:`spectral_norm` (``sigma_reparam``). Measured against numpy's SVD
(float64) on 200 Xavier-uniform (He-normal for convs) draws of each of the zoo's shapes (16x16,
16x64, 64x64, 64x256, 256x64, 256x256, conv 3x3x16x16 and 3x3x64x64 flattened), the relative
error of ``sigma`` (always an underestimate), median / 90th percentile / worst over all shapes:
32 iterations 3.7e-3 / 1.8e-2 / 6.3e-2; 64: 3.8e-4 / 6.9e-3 / 3.8e-2; 100: 4.8e-5 / 1.9e-3 /
2.5e-2; 200: 1.2e-7 / 5.9e-5 / 1.0e-2. The slow draws are those whose top two singular values
nearly coincide (square random matrices: a gap of order ``n^(-2/3)``); then the spectral norm of
``W / sigma`` is at most about 1.025 instead of 1."""


def power_start(n: int):
    """The fixed start vector of :func:`spectral_norm`: ``u0_i = sin(1 + i)``, ``i = 0..n-1``,
    normalized (stateless: the same on every call)."""
    u = jnp.sin(1.0 + jnp.arange(n, dtype=jnp.float32))
    return u / jnp.linalg.norm(u)


def spectral_norm(w, iterations: int = SIGMA_ITERATIONS):
    """``sigma(W) = u^T W v``, the largest singular value of ``w`` flattened to ``W [fan_in,
    out]`` (every axis but the last is fan-in), by ``iterations`` power iterations from the
    fixed :func:`power_start` vector ``u0``: ``v <- W^T u / ||W^T u||``, ``u <- W v / ||W v||``.
    ``u`` and ``v`` are held constant in the gradient (``stop_gradient``), so
    ``d sigma / dW = u v^T`` (Miyato et al. 2018's spectral normalization; Zhai et al. 2023).
    Accuracy: :data:`SIGMA_ITERATIONS`."""
    w2 = w.reshape(-1, w.shape[-1])
    ws = jax.lax.stop_gradient(w2)

    def step(_, uv):
        u, _v = uv
        v = ws.T @ u
        v = v / jnp.linalg.norm(v)
        u = ws @ v
        return u / jnp.linalg.norm(u), v

    u0 = power_start(w2.shape[0]).astype(w.dtype)
    u, v = jax.lax.fori_loop(0, iterations, step, (u0, jnp.zeros(w2.shape[1], w.dtype)))
    return u @ w2 @ v


def transform_weight(w, weight: str, gamma=None, iterations: int = SIGMA_ITERATIONS):
    """Reparametrize a kernel ``[..., fan_in..., out]`` (per output unit, the last axis).

    - ``plain``: ``w``.
    - ``weightnorm``: ``gamma * w / (||w|| + 1e-5)`` (Salimans & Kingma 2016).
    - ``sws``: ``gamma * sqrt(2 pi / (pi - 1)) / sqrt(fan_in) * (w - mean(w)) / (std(w) + 1e-5)``
      (scaled weight standardization, Brock et al. 2021), biased std.
    - ``sigma_reparam``: ``gamma / sigma(W) * w`` with one scalar ``gamma`` and ``sigma(W)`` the
      spectral norm of the kernel flattened to ``[fan_in, out]`` by ``iterations`` power
      iterations, ``u``, ``v`` constant in the gradient (:func:`spectral_norm`). Zhai et al.
      2023, Stabilizing Transformer Training by Preventing Attention Entropy Collapse, arXiv
      2303.06296.
    """
    if weight == "plain":
        return w
    axes = tuple(range(w.ndim - 1))
    if weight == "weightnorm":
        norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=axes, keepdims=True))
        return channel(gamma, w.ndim) * w / (norm + _WN_EPS)
    if weight == "sws":
        fan_in = math.prod(w.shape[:-1])
        mean = jnp.mean(w, axis=axes, keepdims=True)
        std = jnp.sqrt(jnp.mean(jnp.square(w - mean), axis=axes, keepdims=True))
        gain = channel(gamma, w.ndim) * (SCALED_RELU_GAIN / math.sqrt(fan_in))
        return gain * (w - mean) / (std + _WN_EPS)
    if weight == "sigma_reparam":
        return (gamma / spectral_norm(w, iterations)) * w
    raise ValueError(f"weight={weight!r}; allowed: {', '.join(WEIGHTS)}")


WEIGHTS = ("plain", "weightnorm", "sws", "sigma_reparam")


def gain_shape(weight: str, features: int) -> tuple[int, ...]:
    """The shape of a reparametrized kernel's ``gain`` (``gamma``, init 1): one scalar for
    ``sigma_reparam``, one per output unit for ``weightnorm`` and ``sws``."""
    return () if weight == "sigma_reparam" else (features,)


def _out_size(n, k, s, p):
    return (n + 2 * p - k) // s + 1


_DN = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x, w, stride: int, p: int):
    return lax.conv_general_dilated(x, w, (stride, stride), ((p, p), (p, p)), dimension_numbers=_DN)


@jax.custom_vjp
def _same_conv(x, w):
    """Stride-1 ``_xla_conv`` with padding ``(k - 1) // 2`` (odd ``k``), whose input gradient is
    ``_xla_conv(g, w_t)`` with ``w_t`` the flipped kernel with in/out swapped, as an explicit HWIO
    array. JAX's own transpose rule gives XLA the same conv with an ``01oi`` kernel; inside a
    scan XLA:CPU keeps that layout and runs a naive loop, 10-50x slower than its Eigen conv."""
    return _xla_conv(x, w, 1, (w.shape[0] - 1) // 2)


def _same_conv_fwd(x, w):
    return _same_conv(x, w), (x, w)


def _same_conv_bwd(res, g):
    x, w = res
    p = (w.shape[0] - 1) // 2
    w_t = jnp.swapaxes(jnp.flip(w, (0, 1)), 2, 3)
    _, w_vjp = jax.vjp(lambda w: _xla_conv(x, w, 1, p), w)
    return _xla_conv(g, w_t, 1, p), w_vjp(g)[0]


_same_conv.defvjp(_same_conv_fwd, _same_conv_bwd)


def conv2d(x, w, stride: int, impl: str = "auto"):
    """``x [N, H, W, Cin]`` conv ``w [k, k, Cin, Cout]`` with stride and padding ``(k - 1) // 2``.

    ``impl='xla'`` is ``lax.conv_general_dilated`` (on CPU, a stride-1 odd-kernel conv computes
    its input gradient as an explicit conv with the transposed kernel, see :func:`_same_conv`);
    ``impl='shift'`` sums ``k * k`` strided slices times ``w[dy, dx]`` (plain matmuls, forward
    and backward). ``'auto'`` uses ``shift`` on CPU for strided convs and tiny (<= 2x2) outputs,
    where XLA:CPU's convolution is 10-80x slower (benchmarks/conv_impl.py), and ``xla``
    everywhere else. Both CPU choices are the CPU policy's (:func:`sigprop.backend.cpu.shift_conv`,
    :func:`sigprop.backend.cpu.explicit_conv_transpose`).
    """
    k = w.shape[0]
    p = (k - 1) // 2
    n, h, wd, c = x.shape
    ho, wo = _out_size(h, k, stride, p), _out_size(wd, k, stride, p)
    if impl == "auto":
        impl = "shift" if cpu.shift_conv(stride, ho * wo) else "xla"
    if impl == "xla":
        if cpu.explicit_conv_transpose(stride, k):
            return _same_conv(x, w)
        return _xla_conv(x, w, stride, p)
    if impl != "shift":
        raise ValueError(f"conv_impl={impl!r}; allowed: auto, xla, shift")
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))) if p else x
    out = None
    for dy in range(k):
        for dx in range(k):
            sl = lax.slice(
                xp, (0, dy, dx, 0), (n, dy + (ho - 1) * stride + 1, dx + (wo - 1) * stride + 1, c),
                (1, stride, stride, 1),
            )
            term = jnp.einsum("nhwc,cd->nhwd", sl, w[dy, dx])
            out = term if out is None else out + term
    return out


def center_layer(x):
    """Subtract each sample's layer mean over ``(H, W, C)`` (PreLayerNorm's input centering)."""
    return x - jnp.mean(x, axis=tuple(range(1, x.ndim)), keepdims=True)


class Conv(nn.Module):
    """3x3 (``kernel``) conv, He-normal init, with the ``weight`` reparametrization."""

    features: int
    stride: int = 1
    kernel: int = 3
    weight: str = "plain"
    use_bias: bool = False
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        w = self.param("kernel", he_normal, (self.kernel, self.kernel, cin, self.features), jnp.float32)
        gamma = None
        if self.weight != "plain":
            gamma = self.param("gain", nn.initializers.ones,
                               gain_shape(self.weight, self.features), jnp.float32)
        y = conv2d(x, transform_weight(w, self.weight, gamma), self.stride, self.impl)
        if self.use_bias:
            y = y + channel(self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32),
                            y.ndim)
        return y


def kernel(module: nn.Module, init: Callable, shape: tuple, lazy: bool):
    """``module``'s ``'kernel'`` param, ``init(rng, shape, float32)``. ``lazy``: the
    ``'kernel_keys'`` collection (not ``'params'``, so an optimizer sees only real parameters)
    holds the RNG key that ``init`` would get and the kernel is drawn from it here, on every
    call (the same values); under ``jax.checkpoint`` the backward pass draws it again instead of
    keeping it, so a deep stack of lazy layers stores no kernels."""
    if not lazy:
        return module.param("kernel", init, shape, jnp.float32)
    key = module.variable(KERNEL_KEYS, "kernel", lambda: module.make_rng("params"))
    return init(key.value, shape, jnp.float32)


class Dense(nn.Module):
    """Dense layer, He-normal init, with the ``weight`` reparametrization (``lazy``: see
    :func:`kernel`)."""

    features: int
    weight: str = "plain"
    use_bias: bool = False
    kernel_init: Callable = he_normal
    lazy: bool = False

    @nn.compact
    def __call__(self, x):
        w = kernel(self, self.kernel_init, (x.shape[-1], self.features), self.lazy)
        gamma = None
        if self.weight != "plain":
            gamma = self.param("gain", nn.initializers.ones,
                               gain_shape(self.weight, self.features), jnp.float32)
        y = x @ transform_weight(w, self.weight, gamma)
        if self.use_bias:
            y = y + channel(self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32),
                            y.ndim)
        return y


def classifier_init(key, shape, dtype=jnp.float32):
    """The classifier's weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's nn.Linear default
    used by the [BB] reference code (its hidden layers are He normal)."""
    bound = 1.0 / math.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


# --------------------------------------------------------------------------------------------
# Activations

ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "swish": jax.nn.swish,
    "identity": lambda x: x,
    "scaled_relu": lambda x: SCALED_RELU_GAIN * (jax.nn.relu(x) - SCALED_RELU_SHIFT),
}
"""The models' named elementwise activations, defined here once (``tlu``, learnable, is
:class:`Activation`'s own). :mod:`sigprop.analyses.theory` has the numpy form of each, for its
float64 expectations (tests/test_theory.py checks they agree)."""
ACTIVATION_NAMES = tuple(ACTIVATIONS) + ("tlu",)


def check_activation(activation):
    if callable(activation) and not isinstance(activation, str):
        return activation
    if activation not in ACTIVATION_NAMES:
        raise ValueError(
            f"activation={activation!r}; allowed: {', '.join(ACTIVATION_NAMES)} or a callable"
        )
    return activation


class Activation(nn.Module):
    """An elementwise activation by name or callable.

    ``relu``, ``tanh``, ``gelu`` (exact), ``swish``, ``identity``;
    ``scaled_relu`` = ``sqrt(2 pi / (pi - 1)) * (relu(x) - 1 / sqrt(2 pi))`` (paired with
    weightnorm, Arpit et al. 2016); ``tlu`` = ``max(x, tau)`` with a learnable per-channel
    ``tau = 0`` at init (paired with FRN).
    """

    fn: str | Callable = "relu"

    @nn.compact
    def __call__(self, x):
        if self.fn == "tlu":
            tau = self.param("tau", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
            return jnp.maximum(x, channel(tau, x.ndim))
        if isinstance(self.fn, str):
            return ACTIVATIONS[self.fn](x)
        return self.fn(x)
