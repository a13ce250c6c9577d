"""Attention taps for flax's own attention modules: linen ``MultiHeadDotProductAttention`` (and its
subclasses) and nnx ``MultiHeadAttention`` call ``self.attention_fn(query, key, value, mask=...,
...)``; :func:`observed` wraps that function so that, besides computing the module's output with
the original function, it hands the attention probabilities, the scaled scores and the mask to a
tap (``record(probs, logits, mask)``). The probabilities are recomputed as flax's
``dot_product_attention_weights`` computes them without dropout (what the module attends with at
initialization): ``softmax(q.k / sqrt(d) + bias)`` over the keys the mask allows.

The adapters install the wrapper on the module instance of one traced run only (linen: the bound
module, for the duration of its ``__call__``; nnx: the engine's merged copy): the user's module
and every other call are unchanged.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

# flax's attention modules whose attention_fn the default attention taps wrap
ATTENTION_CLASSES = (nn.MultiHeadDotProductAttention, nnx.MultiHeadAttention)


def scores(query, key, bias=None, mask=None):
    """``(probs, logits)`` of flax's dot-product attention (``query``, ``key``: ``[batch...,
    length, heads, depth]``): ``logits = q.k / sqrt(depth)`` ``[batch..., heads, q, k]`` (float32,
    highest precision), ``probs = softmax(logits + bias)`` with the keys ``mask`` excludes at
    exactly 0."""
    q = query.astype(jnp.float32) / jnp.sqrt(jnp.float32(query.shape[-1]))
    logits = jnp.einsum("...qhd,...khd->...hqk", q, key.astype(jnp.float32),
                        precision=jax.lax.Precision.HIGHEST)
    z = logits if bias is None else logits + bias
    if mask is not None:
        z = jnp.where(mask, z, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(z, axis=-1)
    if mask is not None:
        probs = jnp.where(mask, probs, 0.0)
    return probs, logits


def observed(fn, record):
    """``fn`` (an ``attention_fn``) that also calls ``record(probs, logits, mask)``; flax filters
    the keyword arguments it passes by ``fn``'s signature, which the wrapper keeps."""

    @functools.wraps(fn)
    def wrapped(query, key, value, *args, **kwargs):
        bias = kwargs.get("bias", args[0] if args else None)
        mask = kwargs.get("mask", args[1] if len(args) > 1 else None)
        probs, logits = scores(jax.lax.stop_gradient(query), jax.lax.stop_gradient(key),
                               bias, mask)
        record(probs, logits, mask)
        return fn(query, key, value, *args, **kwargs)

    return wrapped


__all__ = ["ATTENTION_CLASSES", "scores", "observed"]
