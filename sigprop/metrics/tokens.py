"""Token-level records: what a tap on a ``[B, T, D]`` token tensor or on attention probabilities
records inside the network, and the token metrics' spectral step after it.

- **Token Gram matrices** (:func:`record_token_gram`): per sequence ``b`` the ``T x T`` Gram matrix
  ``X_b X_b^T`` of its tokens (rows scaled by ``max |X_b|``), with the same float32 / float64
  ``hi + lo`` scheme as the sample-wise Gram record (:func:`sigprop.metrics.record.gram_pairs`),
  batched over sequences and seeds in one call (without float64: ``(G, R)``, ``R`` the float32
  QR factor, as there). The token metrics are the sample-wise ones applied
  to each sequence's tokens, then averaged over sequences (Dong et al. 2021, Noci et al. 2022).
- **Massive activations** (:func:`max_abs_ratio`): ``max |x| / median |x|`` over a tap's entries
  (Sun et al. 2024), the median found exactly by bisection on the float bits (no sort).
- **Attention** (:func:`record_attention`, :func:`record_attention_logits`): the normalized entropy
  of the attention probabilities and the largest allowed ``|q.k| / sqrt(d_head)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from sigprop.metrics.record import all_finite, gram_pairs

# ------------------------------------------------------------------------------------------------
# Token Gram matrices


def check_tokens(x, where: str, metric_names=()) -> None:
    """Raise ValueError unless ``x`` is a ``[batch, tokens, features]`` tensor."""
    if x.ndim != 3:
        wanted = ", ".join(metric_names) or "token metrics"
        raise ValueError(f"metrics=: {wanted} need [batch, tokens, features] activations; the "
                         f"tap {where!r} has shape {tuple(x.shape)} (no token axis)")


def _sequence_rows(x):
    """``X_b / max |X_b|`` per sequence, float32 (no square overflows)."""
    x = x.astype(jnp.float32)
    s = jnp.max(jnp.abs(x), axis=(-2, -1), keepdims=True)
    return x / jnp.where((s > 0) & jnp.isfinite(s), s, 1.0)


@jax.custom_batching.custom_vmap
def _token_record(m):
    return gram_pairs(m)


@_token_record.def_vmap
def _token_record_vmap(axis_size, in_batched, m):
    """Batched over seeds (or any outer axis): every sequence of every seed in one stack, so the
    float64 check is one predicate for all of them."""
    (batched,) = in_batched
    if not batched:
        out = _token_record(m)
        return jax.tree_util.tree_map(lambda o: jnp.broadcast_to(o, (axis_size,) + o.shape),
                                      out), (True, True)
    lead = m.shape[:2]
    hi, lo = _token_record(m.reshape((-1,) + m.shape[2:]))
    return (hi.reshape(lead + hi.shape[1:]), lo.reshape(lead + lo.shape[1:])), (True, True)


def record_token_gram(x):
    """``(hi, lo) [B, T, T]``: per sequence the Gram matrix of its tokens, ``G_b = hi + lo``
    (rows scaled by ``max |X_b|``; every token metric is invariant to that scale)."""
    return _token_record(_sequence_rows(x))


def token_residual_ratio(g):
    """``||X - 1 mean_t(X)^T||_F / ||X||_F`` from ``G = X X^T [..., T, T]``:
    ``sqrt((tr G - 1^T G 1 / T) / tr G)`` (0 for an all-zero ``X``)."""
    t = g.shape[-1]
    tr = jnp.trace(g, axis1=-2, axis2=-1)
    centered = jnp.clip(tr - jnp.sum(g, axis=(-2, -1)) / t, 0.0)
    return jnp.where(tr > 0, jnp.sqrt(centered / jnp.where(tr > 0, tr, 1.0)), 0.0)


# ------------------------------------------------------------------------------------------------
# Massive activations


def _kth_bits(bits, k):
    """The ``k``-th smallest (0-based) of non-negative int32 ``bits``: bisection on the value
    (31 counting passes, no sort)."""
    def step(_, lohi):
        lo, hi = lohi
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(bits <= mid) >= k + 1
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    lo, _ = lax.fori_loop(0, 31, step, (jnp.int32(0), jnp.int32(2**31 - 1)))
    return lo


def median_abs(x):
    """``median |x|`` over every entry (the mean of the two middle values for an even count), exact:
    the order of non-negative float32 values is the order of their bit patterns."""
    a = jnp.abs(x.reshape(-1).astype(jnp.float32))
    bits = lax.bitcast_convert_type(a, jnp.int32)
    n = a.shape[0]
    lower = _kth_bits(bits, (n - 1) // 2)
    if n % 2:
        return lax.bitcast_convert_type(lower, jnp.float32)
    # the upper middle value: ``lower`` again if it repeats, else the next larger value
    repeats = jnp.sum(bits <= lower) >= n // 2 + 1
    upper = jnp.where(repeats, lower, jnp.min(jnp.where(bits > lower, bits, 2**31 - 1)))
    return 0.5 * (lax.bitcast_convert_type(lower, jnp.float32)
                  + lax.bitcast_convert_type(upper, jnp.float32))


def max_abs_ratio(x):
    """``max |x| / median |x|`` over every entry of a tap (Sun et al. 2024's *massive
    activations*); ``inf`` when more than half the entries are 0 (e.g. after a ReLU)."""
    x = lax.stop_gradient(x).astype(jnp.float32)
    top = jnp.max(jnp.abs(x))
    med = median_abs(x)
    return jnp.where(med > 0, top / jnp.where(med > 0, med, 1.0),
                     jnp.where(top > 0, jnp.inf, 0.0))


def record_max_abs(x):
    """``[max |x| / median |x|, finite(x)]``."""
    return jnp.stack([max_abs_ratio(x), all_finite(x)])


# ------------------------------------------------------------------------------------------------
# Attention


def _allowed(probs, mask):
    if mask is None:
        return probs > 0
    return jnp.broadcast_to(jnp.asarray(mask, bool), probs.shape)


def attention_entropy(probs, mask=None):
    """Mean over every leading axis (batch, heads) and query of the normalized entropy
    ``-sum_j A_ij log A_ij / log n_i``, ``n_i`` the number of keys query ``i`` may attend to (from
    ``mask``, broadcastable to ``probs [..., Tq, Tk]``; without a mask, the keys with ``A_ij >
    0``). 1 is uniform attention, 0 one key. Queries with a single allowed key (the first query
    of causal attention) have no choice and are left out of the mean."""
    p = probs.astype(jnp.float32)
    allowed = _allowed(p, mask)
    n = jnp.sum(allowed, axis=-1)
    plogp = jnp.where(allowed & (p > 0), p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    h = -jnp.sum(plogp, axis=-1)
    valid = n >= 2
    ratio = h / jnp.log(jnp.where(valid, n, 2).astype(jnp.float32))
    count = jnp.sum(valid)
    return jnp.where(count > 0, jnp.sum(jnp.where(valid, ratio, 0.0))
                     / jnp.maximum(count, 1), jnp.nan)


def attention_logit_max(logits, mask=None):
    """``max |q.k| / sqrt(d_head)`` over every leading axis, query and allowed key (``logits``:
    the scaled scores before masking; ``mask``: True where a key may be attended to)."""
    a = jnp.abs(logits.astype(jnp.float32))
    if mask is not None:
        a = jnp.where(jnp.broadcast_to(jnp.asarray(mask, bool), a.shape), a, 0.0)
    return jnp.max(a)


def record_attention(probs, mask=None):
    """``[attention_entropy, finite(probs)]``."""
    probs = lax.stop_gradient(probs)
    return jnp.stack([attention_entropy(probs, mask), all_finite(probs)])


def record_attention_logits(logits, mask=None):
    """``[attention_logit_max, finite(logits)]``."""
    logits = lax.stop_gradient(logits)
    return jnp.stack([attention_logit_max(logits, mask), all_finite(logits)])


__all__ = ["check_tokens", "record_token_gram", "token_residual_ratio", "median_abs",
           "max_abs_ratio", "record_max_abs", "attention_entropy", "attention_logit_max",
           "record_attention", "record_attention_logits"]
