"""The zoo transformer's sublayers: self-attention, the MLPs, and the projections they are made of.

This module owns :class:`Attention` (with ``qk_norm`` and nGPT's normalized queries and keys),
the MLPs (:class:`FeedForward`, ``activation(x W_fc1) W_fc2``; :class:`SwiGLU`, nGPT's),
:class:`Projection` (the bias-free projection every sublayer is made of, with the weight
reparametrizations ``sigma_reparam`` and nGPT's unit-norm kernels), and the keyed inits that make
the scanned and the unrolled transformer draw the same params (:func:`keyed`, the ``fold_in``
tags). :mod:`sigprop.nn.transformer` builds the blocks from them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sigprop.nn.layers import SIGMA_ITERATIONS, Activation, transform_weight
from sigprop.nn.normalizers import channel
from sigprop.taps import probe

QK_NORMS = (None, "layernorm", "rmsnorm", "l2")
QK_EPS = 1e-6  # qk_norm's epsilon (flax's LayerNorm / RMSNorm default; l2: added to ||q||^2)
TRANSFORMER_WEIGHTS = ("plain", "sigma_reparam")
"""The transformer's ``weight=`` choices, applied to every projection of every block."""

xavier_uniform = nn.initializers.xavier_uniform()

# fold_in tags of a block's projections (the scanned and the unrolled model draw the same)
QUERY, KEY, VALUE, OUT, FC1, FC2, GATE = range(7)


def keyed(init: Callable, key, tag: int) -> Callable:
    """``init`` drawing from ``fold_in(key, tag)`` instead of the module's own RNG (``key`` None:
    ``init`` unchanged, e.g. in apply, where nothing is drawn)."""
    if key is None:
        return init
    return lambda _rng, shape, dtype=jnp.float32: init(jax.random.fold_in(key, tag), shape, dtype)


def gained(init: Callable, gain: float) -> Callable:
    """``init`` times ``gain`` (Xavier with gain ``gain``: ``U(+-gain sqrt(6 / (fan_in +
    fan_out)))``)."""
    if gain == 1.0:
        return init
    return lambda rng, shape, dtype=jnp.float32: gain * init(rng, shape, dtype)


def split_keys(key, n: int):
    """``n`` keys split from ``key``, or ``n`` Nones (apply: nothing is drawn)."""
    return (None,) * n if key is None else tuple(jax.random.split(key, n))


def l2_normalize(x):
    """``x / sqrt(||x||^2 + QK_EPS)`` over the last axis."""
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + QK_EPS)


def unit(x, axis=-1):
    """nGPT's ``Norm(x) = x / ||x||`` over ``axis`` (no epsilon, as the paper's ``justnorm``)."""
    return x / jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))


def qk_scale_default(t: int) -> float:
    """Henry et al. 2020's ``g0 = log2(T^2 - T)`` for sequences of length ``T`` (``T = 1``: 1)."""
    return math.log2(max(t * t - t, 2))


def scaled_param(module: nn.Module, name: str, shape, init: float, scale: float):
    """nGPT's scaled parameter: stored at ``scale`` (a constant), used as ``p * init / scale``, so
    its effective value starts at ``init`` while the optimizer sees the stored one (Loshchilov et
    al. 2024, section 2.5's ``s_init`` / ``s_scale``)."""
    p = module.param(name, nn.initializers.constant(scale), shape, jnp.float32)
    return p * (init / scale)


class Projection(nn.Module):
    """``y = x W``, no bias, contracting the last ``n_in`` axes of ``x`` into ``features``
    (``W`` of shape ``x.shape[-n_in:] + features``, drawn with ``kernel_init`` over the flattened
    ``[fan_in, fan_out]`` matrix as flax's ``DenseGeneral`` does).

    ``sphere`` (nGPT): ``W`` flattened to ``[fan_in, fan_out]`` and normalized to unit norm
    along the embedding dimension in every call, ``"in"`` over ``fan_in`` (each output unit's
    column; ``query``, ``key``, ``value``, the MLP's input projections), ``"out"`` over
    ``fan_out`` (each input unit's row; the output projections). ``weight="sigma_reparam"``
    (after ``sphere``): ``W <- gamma / sigma(W) W``, ``gamma`` the scalar param ``gain`` (init
    1), ``sigma`` from ``iterations`` power iterations (:func:`sigprop.nn.layers.spectral_norm`).
    """

    features: tuple[int, ...]
    n_in: int = 1
    kernel_init: Callable = xavier_uniform
    weight: str = "plain"
    iterations: int = SIGMA_ITERATIONS
    sphere: str | None = None

    @nn.compact
    def __call__(self, x):
        in_shape = x.shape[x.ndim - self.n_in:]
        fan_in, fan_out = math.prod(in_shape), math.prod(self.features)

        def init(rng, shape, dtype=jnp.float32):
            return self.kernel_init(rng, (fan_in, fan_out), dtype).reshape(shape)

        w = self.param("kernel", init, in_shape + tuple(self.features), jnp.float32)
        w = w.reshape(fan_in, fan_out)
        if self.sphere is not None:
            w = unit(w, axis=0 if self.sphere == "in" else 1)
        if self.weight != "plain":
            gamma = self.param("gain", nn.initializers.ones, (), jnp.float32)
            w = transform_weight(w, self.weight, gamma, self.iterations)
        y = x.reshape(*x.shape[:x.ndim - self.n_in], fan_in) @ w
        return y.reshape(*y.shape[:-1], *self.features)


class Attention(nn.Module):
    """Multi-head self-attention, ``[B, T, D] -> [B, T, D]``, without biases.

    ``q, k, v = x W_query, x W_key, x W_value`` (each ``[B, T, heads, D / heads]``, params
    ``query``, ``key``, ``value``), per head ``logits = q k^T / sqrt(D / heads)``
    ``[B, heads, T, T]``; ``causal``: key ``j`` is masked for query ``i < j``;
    ``probs = softmax(logits)`` over keys with masked entries exactly 0; output
    ``(probs v) W_out`` (``out``, back to ``D``). Taps: the attention tap on ``probs`` (with
    ``logits`` before masking and the mask) and the gradient tap on the output, both under this
    module's name. Vaswani et al. 2017, arXiv 1706.03762.

    ``qk_norm`` (per head, per token, over ``d_head = D / heads``; ``logits`` is what enters the
    softmax, so ``attention_logit_max`` reports the normalized logits):

    - ``"layernorm"`` / ``"rmsnorm"`` (Dehghani et al. 2023, ViT-22B, arXiv 2302.05442):
      ``q <- LN(q)``, ``k <- LN(k)`` (``(q - mean q) / sqrt(var q + eps) * scale + bias``; RMS:
      ``q / sqrt(mean q^2 + eps) * scale``), ``scale``/``bias`` of shape ``[d_head]`` shared by
      the heads (flax's ``LayerNorm`` / ``RMSNorm``, ``eps = 1e-6``, ``query_norm`` /
      ``key_norm``), then ``logits = q k^T / sqrt(d_head)``.
    - ``"l2"`` (Henry et al. 2020, Query-Key Normalization for Transformers, arXiv 2010.04245):
      ``q_hat = q / ||q||``, ``k_hat = k / ||k||`` (``||q||^2 + 1e-6`` under the root),
      ``logits = g q_hat k_hat^T`` with a learnable scalar ``g`` (``qk_scale``), initialized to
      ``qk_scale_init``, or (None) the paper's ``g0 = log2(T^2 - T)`` with ``T`` the sequence
      length the model is initialized on (:func:`qk_scale_default`; ``T = 1``: 1).

    ``ngpt`` (Loshchilov et al. 2024, nGPT, arXiv 2410.01131, section 2.3.2):
    ``q <- Norm(q) s_qk``, ``k <- Norm(k) s_qk`` (``Norm(z) = z / ||z||`` over ``d_head``, no
    epsilon), ``s_qk`` of shape ``[heads, d_head]`` (the paper's ``D``-vector viewed per head;
    param ``qk_scale`` stored at ``1 / sqrt(D)``, effective init 1), then
    ``logits = sqrt(d_head) q k^T`` (``sqrt(d_head)``, not ``1 / sqrt(d_head)``: unit vectors);
    the kernels are unit-norm along ``D`` (:class:`Projection`'s ``sphere``).

    ``gain``: Xavier gain of ``value`` and ``out`` (DeepNorm's ``beta``; ``query``/``key``: 1).
    ``weight``/``iterations``: every projection's reparametrization (:class:`Projection`).
    """

    heads: int
    causal: bool = True
    qk_norm: str | None = None
    qk_scale_init: float | None = None
    gain: float = 1.0
    weight: str = "plain"
    iterations: int = SIGMA_ITERATIONS
    ngpt: bool = False

    @nn.compact
    def __call__(self, x, key=None):
        d = x.shape[-1]
        dh = d // self.heads

        def proj(name, tag, features, n_in=1, gain=1.0, sphere="in"):
            return Projection(features, n_in, keyed(gained(xavier_uniform, gain), key, tag),
                              self.weight, self.iterations, sphere if self.ngpt else None,
                              name=name)

        q = proj("query", QUERY, (self.heads, dh))(x)
        k = proj("key", KEY, (self.heads, dh))(x)
        v = proj("value", VALUE, (self.heads, dh), gain=self.gain)(x)
        if self.qk_norm in ("layernorm", "rmsnorm"):
            norm = nn.LayerNorm if self.qk_norm == "layernorm" else nn.RMSNorm
            q = norm(epsilon=QK_EPS, name="query_norm")(q)
            k = norm(epsilon=QK_EPS, name="key_norm")(k)
        if self.ngpt:
            s_qk = scaled_param(self, "qk_scale", (self.heads, dh), 1.0, 1.0 / math.sqrt(d))
            s_qk = s_qk.reshape(1, 1, self.heads, dh)
            q, k = unit(q) * s_qk, unit(k) * s_qk
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * math.sqrt(dh)
        elif self.qk_norm == "l2":
            g0 = (qk_scale_default(x.shape[-2]) if self.qk_scale_init is None
                  else self.qk_scale_init)
            g = self.param("qk_scale", nn.initializers.constant(g0), (), jnp.float32)
            logits = g * jnp.einsum("bqhd,bkhd->bhqk", l2_normalize(q), l2_normalize(k))
        else:
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (1.0 / math.sqrt(dh))
        mask = None
        masked = logits
        if self.causal:
            t = x.shape[-2]
            mask = jnp.tril(jnp.ones((t, t), bool)).reshape(1, 1, t, t)
            masked = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        probs = jax.nn.softmax(masked, axis=-1)  # exp(finfo.min - max) underflows to exactly 0
        probs = probe.observe_attention(self, probs, logits=logits, mask=mask)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        y = proj("out", OUT, (d,), n_in=2, gain=self.gain, sphere="out")(out)
        return probe.observe_grad(self, y)


class FeedForward(nn.Module):
    """``activation(x W_fc1) W_fc2``, hidden width ``hidden``, no biases, both Xavier uniform
    with gain ``gain``, reparametrized as ``weight`` says (:class:`Projection`); gradient tap on
    the output under this module's name."""

    hidden: int
    activation: Any = "gelu"
    gain: float = 1.0
    weight: str = "plain"
    iterations: int = SIGMA_ITERATIONS

    @nn.compact
    def __call__(self, x, key=None):
        init = gained(xavier_uniform, self.gain)
        h = Projection((self.hidden,), 1, keyed(init, key, FC1), self.weight, self.iterations,
                       name="fc1")(x)
        h = Activation(self.activation)(h)
        y = Projection((x.shape[-1],), 1, keyed(init, key, FC2), self.weight, self.iterations,
                       name="fc2")(h)
        return probe.observe_grad(self, y)


class SwiGLU(nn.Module):
    """nGPT's MLP (Loshchilov et al. 2024, section 2.4.2): ``u = x W_fc1 s_u``,
    ``nu = x W_fc1_gate s_nu sqrt(D)``, ``y = (u * activation(nu)) W_fc2`` (``activation``: SiLU
    by default, Shazeer 2020's SwiGLU), hidden width ``hidden``, no biases; ``s_u`` and ``s_nu``
    (params ``s_u``, ``s_nu``, ``[hidden]``) stored at 1, effective init 1. The kernels are
    Xavier uniform, unit-norm along ``D`` in every call (``fc1``, ``fc1_gate`` over their input,
    ``fc2`` over its output) and reparametrized as ``weight`` says (:class:`Projection`);
    gradient tap on the output under this module's name."""

    hidden: int
    activation: Any = "swish"
    weight: str = "plain"
    iterations: int = SIGMA_ITERATIONS

    @nn.compact
    def __call__(self, x, key=None):
        d = x.shape[-1]

        def proj(name, tag, features, sphere):
            return Projection(features, 1, keyed(xavier_uniform, key, tag), self.weight,
                              self.iterations, sphere, name=name)

        u = proj("fc1", FC1, (self.hidden,), "in")(x)
        nu = proj("fc1_gate", GATE, (self.hidden,), "in")(x)
        u = u * channel(scaled_param(self, "s_u", (self.hidden,), 1.0, 1.0), u.ndim)
        nu = nu * channel(scaled_param(self, "s_nu", (self.hidden,), 1.0, 1.0) * math.sqrt(d),
                          nu.ndim)
        y = proj("fc2", FC2, (d,), "out")(u * Activation(self.activation)(nu))
        return probe.observe_grad(self, y)
