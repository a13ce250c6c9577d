"""nGPT, the normalized transformer: its block and its output head (``placement="ngpt"``).

This module owns what :func:`sigprop.transformer` does differently with ``placement="ngpt"``
(Loshchilov, Hsieh, Sun & Ginsburg 2024, nGPT: Normalized Transformer with Representation
Learning on the Hypersphere, arXiv 2410.01131): the block :class:`NGPTBlock` and the head
:class:`NGPTHead`. The transformer normalizes the embedding output, ``h_0 = Norm(embed(x))``,
before the first block and has no final norm.

``Norm(z) = z / ||z||`` over the feature axis (per token; no epsilon, the paper's ``justnorm``).
Block (``h`` on the unit sphere)::

    h <- Norm(h + alpha_A * (Norm(Attn(h)) - h))
    h <- Norm(h + alpha_M * (Norm(MLP(h)) - h))

``alpha_A``, ``alpha_M`` (params ``alpha_attn``, ``alpha_mlp``, ``[D]``): the paper's
eigen learning rates, stored at ``1 / sqrt(D)`` and used as ``p * alpha_init / (1 / sqrt(D))``
(effective init ``alpha_init``, default 0.05, the paper's). ``Attn``: :class:`Attention` with
``ngpt=True`` (``q``, ``k`` normalized per head and scaled by ``s_qk``, softmax scale
``sqrt(d_head)``); ``MLP``: :class:`SwiGLU` (``s_u``, ``s_nu``, ``nu`` times ``sqrt(D)``). All
kernels are unit-norm along the embedding dimension ``D``, and the logits are ``s_z * (h W)``
(:class:`NGPTHead`).

Implemented as the paper writes it, with these simplifications: the paper's kernels are
renormalized after every optimizer step; here they are normalized in every forward pass (a
reparametrization: the same forward, and at a unit-norm kernel a gradient that differs from the
paper's only along the kernel, which its renormalization removes). Positions are the zoo's
learned ones added before ``Norm`` (no RoPE); token embeddings and the patch / input
projections are not normalized themselves, the stream is (``h_0 = Norm(E[x] + pos)``). The
patch model's head reads the mean over tokens (or the class token). The alphas are used as
they are (the paper's code takes ``|alpha|``; the same at init). Taps as in the other
placements: the stream after each block (activation), the sublayer outputs ``attn``/``mlp``
(gradient, before ``Norm``), the attention logits entering the softmax, and (branch)
``alpha * (Norm(F(h)) - h)``, what the block adds before renormalizing.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sigprop.nn.attention import Attention, SwiGLU, scaled_param, split_keys, unit
from sigprop.nn.layers import SIGMA_ITERATIONS, classifier_init
from sigprop.nn.normalizers import channel
from sigprop.taps import probe

ALPHA_INIT = 0.05
"""nGPT's ``alpha_A`` / ``alpha_M`` effective init (the paper's 0.05, "of order 1 / depth")."""


class NGPTBlock(nn.Module):
    """One nGPT block (the module docstring): attention, then (unless ``attention_only``)
    the SwiGLU MLP, each ``h <- Norm(h + alpha (Norm(F(h)) - h))``; the activation tap on the
    result carries the block's name. ``layer`` is accepted (and ignored) for the scan's sake."""

    heads: int
    mlp_ratio: int = 4
    causal: bool = True
    attention_only: bool = False
    activation: Any = "swish"
    alpha_init: float = ALPHA_INIT
    weight: str = "plain"
    iterations: int = SIGMA_ITERATIONS

    @nn.compact
    def __call__(self, h, key=None, layer=None):
        del layer
        k_attn, k_mlp = split_keys(key, 2)
        d = h.shape[-1]
        attn = Attention(self.heads, self.causal, weight=self.weight, iterations=self.iterations,
                         ngpt=True, name="attn")
        subs = [("attn", "alpha_attn", lambda z: attn(z, k_attn))]
        if not self.attention_only:
            mlp = SwiGLU(self.mlp_ratio * d, self.activation, self.weight, self.iterations,
                         name="mlp")
            subs.append(("mlp", "alpha_mlp", lambda z: mlp(z, k_mlp)))
        for name, alpha_name, f in subs:
            alpha = scaled_param(self, alpha_name, (d,), self.alpha_init, 1.0 / math.sqrt(d))
            step = channel(alpha, h.ndim) * (unit(f(h)) - h)
            h = unit(h + probe.Tap("branch", name=f"{name}_branch", parent=self)(step))
        return probe.observe_act(self, h)


class NGPTHead(nn.Module):
    """nGPT's logits (section 2.2): ``z = s_z * (h W)``, no bias, ``W [D, n_out]`` drawn as the
    zoo's classifier (:func:`sigprop.nn.layers.classifier_init`) and unit-norm along ``D`` (each
    output's column) in every call; ``s_z`` (param ``logit_scale``, ``[n_out]``) stored at
    ``1 / sqrt(D)``, effective init 1. The patch model pools first (the caller)."""

    n_out: int

    @nn.compact
    def __call__(self, h):
        d = h.shape[-1]
        w = self.param("kernel", classifier_init, (d, self.n_out), jnp.float32)
        s_z = scaled_param(self, "logit_scale", (self.n_out,), 1.0, 1.0 / math.sqrt(d))
        z = h @ unit(w, axis=0)
        return z * channel(s_z, z.ndim)
