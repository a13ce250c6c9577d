"""What a tap records inside the network: moments, the Gram matrix of a batch, gradient norms and
correlations, with the names of the records and of the layer axes.

Definitions follow science.md and the [BB] reference code. ``x`` is ``[B, ...]``; ``M`` is ``x``
flattened to ``[B, D]``. The Gram matrix ``M M^T`` of the rows scaled by ``max |M|`` (no square
overflows) is a float32 matmul when it is well conditioned (``lambda_min >= 1e-4 trace``, tested
by a Cholesky factorization: in jnp, vectorized over seeds, for batches up to 64; else one LAPACK
call per seed and layer, 0.4 ms at 256 x 256, as
:func:`sigprop.backend.cpu.lapack_one_matrix_per_call` asks); otherwise it is recomputed with
float64 sums of the (exact) float32 products and stored as a float32 pair ``hi + lo``
(``~2^-48`` relative). Without float64 (a TPU, or inside
:func:`sigprop.backend.cpu.without_float64`: :func:`sigprop.backend.cpu.has_float64`) the pair
is ``(G, R)`` instead: ``G`` the float32 Gram matrix and ``R [B, B]`` the triangular factor of a
float32 Householder QR of ``M^T`` (``R^T R = M M^T``), whose singular values are those of ``M``
to ``~eps_32 s_max`` where the Gram matrix's eigenvalues give them only to ``~sqrt(eps_32)
s_max`` (:mod:`sigprop.metrics.spectral` states the accuracy that follows). What is done with
the records after the network is :mod:`sigprop.metrics.spectral` and
:mod:`sigprop.metrics.registry`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from sigprop.backend import cpu

# What a tap records (the engine asks taps for the needs of the requested metrics only)
MOMENTS, GRAM, GRAD, PAIR, PAIR_GRAD, BRANCH = "moments", "gram", "grad", "pair", "pair_grad", "branch"
# token tensors and attention (sigprop.metrics.tokens), parameter gradients
TOKEN, MAX_ABS, ATTENTION, ATTENTION_LOGITS, PARAM_GRAD = (
    "token", "max_abs", "attention", "attention_logits", "param_grad")
NEEDS = (MOMENTS, GRAM, GRAD, PAIR, PAIR_GRAD, BRANCH, TOKEN, MAX_ABS, ATTENTION,
         ATTENTION_LOGITS, PARAM_GRAD)
# what an activation tap records in the main pass (the rest: gradients, branches, attention)
ACT_NEEDS = frozenset({MOMENTS, GRAM, TOKEN, MAX_ABS})
# The layer axes metrics live on
LAYER, GRAD_LAYER, BRANCH_LAYER = "layer", "grad_layer", "branch_layer"
ATTENTION_LAYER, PARAM_LAYER = "attention_layer", "param_layer"

ACT_METRICS = (
    "activation_variance",
    "channel_squared_mean",
    "cosine_similarity",
    "stable_rank",
    "effective_rank",
)



has_f64 = cpu.has_float64
"""Whether float64 arithmetic is available (CPU, GPU; not TPU): the CPU policy's
:func:`sigprop.backend.cpu.has_float64`, public as ``sigprop.metrics.has_f64``."""


# ------------------------------------------------------------------------------------------------
# Record: moments


def activation_variance(x):
    """Mean over channels of the biased variance over ``(N, H, W)``:
    ``mean_c var_{NHW}(x[..., c])`` (Brock et al. 2021's *average channel variance*). ([BB]'s code
    used torch's unbiased variance; the two differ by the factor ``n / (n - 1)``, ``n = N H W``.)"""
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    return jnp.mean(jnp.mean(jnp.square(x - mean), axis=axes))


def channel_squared_mean(x):
    """Mean over channels of the squared channel mean: ``mean_c (mean_{NHW} x[..., c])^2``
    (Brock et al. 2021's *average channel squared mean*). ``activation_variance +
    channel_squared_mean`` is the mean second moment ``mean(x^2)``."""
    axes = tuple(range(x.ndim - 1))
    return jnp.mean(jnp.square(jnp.mean(x, axis=axes)))


def all_finite(x):
    """1.0 if every entry of ``x`` is finite, else 0.0."""
    return jnp.all(jnp.isfinite(x)).astype(jnp.float32)


def record_moments(x):
    """``[activation_variance, channel_squared_mean, finite(x)]`` of one activation (float32)."""
    x = x.astype(jnp.float32)
    return jnp.stack([activation_variance(x), channel_squared_mean(x), all_finite(x)])


# ------------------------------------------------------------------------------------------------
# Record: the Gram matrix


def _safe_scale(m):
    s = jnp.max(jnp.abs(m))
    return jnp.where((s > 0) & jnp.isfinite(s), s, 1.0)


def _rows(x):
    """``M / max|M|``: the batch as ``[B, D]`` float32 rows, scaled so that no square overflows."""
    m = x.reshape(x.shape[0], -1).astype(jnp.float32)
    return m / _safe_scale(m)


def _gram32(m):
    return lax.dot_general(m, m, (((1,), (1,)), ((), ())), precision=lax.Precision.HIGHEST)


# Below this lambda_min / trace of the float32 Gram matrix, its float32 entries no longer give
# the effective rank to ~2e-6 (measured at lambda_min / lambda_max = 1e-4, for D = 1024 ... 32768;
# 5e-7 at 1e-3): the singular values near sqrt(eps) s_max need float64 sums.
_F32_MIN_EIGEN_RATIO = 1e-4


# up to this batch size the conditioning check is a jnp Cholesky, vectorized over seeds (its
# n sequential steps are short); above it, LAPACK's potrf one matrix at a time (256 x 256: 0.4 ms
# where the jnp loop took 17 ms)
_JNP_CHOLESKY_MAX = 64


def _positive_definite(a):
    """Whether the symmetric ``a [n, n]`` has a Cholesky factor (every pivot > 0): an
    unpivoted right-looking factorization in jnp."""
    n = a.shape[-1]
    idx = jnp.arange(n)

    def step(k, carry):
        a, ok = carry
        d = a[k, k]
        ok = ok & (d > 0)
        col = jnp.where(idx > k, a[:, k] / jnp.sqrt(jnp.where(d > 0, d, 1.0)), 0.0)
        return a - col[:, None] * col[None, :], ok

    return lax.fori_loop(0, n, step, (a, jnp.array(True)))[1]


def _well_conditioned(g):
    """``g`` is finite, not tiny, and ``lambda_min(g) >= 1e-4 trace(g)``."""
    finite = jnp.all(jnp.isfinite(g))
    g = jnp.where(finite, g, 0.0)
    tr = jnp.trace(g)
    shifted = g - (_F32_MIN_EIGEN_RATIO * tr) * jnp.eye(g.shape[0], dtype=g.dtype)
    if g.shape[-1] <= _JNP_CHOLESKY_MAX:
        return finite & (tr > 1e-20) & _positive_definite(shifted)
    return finite & (tr > 1e-20) & jnp.all(jnp.isfinite(jnp.linalg.cholesky(shifted)))


def _gram64_pair(m):
    """The Gram matrix of ``m`` with float64 sums, as a float32 pair ``(hi, lo)``."""
    with jax.enable_x64(True):
        g = lax.dot_general(m, m, (((1,), (1,)), ((), ())), precision=lax.Precision.HIGHEST,
                            preferred_element_type=jnp.float64)
        hi = g.astype(jnp.float32)
        return hi, (g - hi.astype(jnp.float64)).astype(jnp.float32)


def row_factor(m):
    """``R [B, B]``, upper triangular, ``R^T R = M M^T``: the R of a float32 Householder QR of
    ``M^T [D, B]`` (zero rows below ``D`` when ``D < B``). Backward stable: its singular values
    are those of ``M`` to ``~eps_32 max_i s_i``. The record's second half where float64 is
    unavailable (module doc)."""
    b, d = m.shape
    r = jnp.linalg.qr(m.T, mode="r")
    return r if d >= b else jnp.pad(r, ((0, b - d), (0, 0)))


def _gram_pair(m):
    g = _gram32(m)
    if not cpu.has_float64():
        return g, row_factor(m)
    return lax.cond(_well_conditioned(g), lambda m: (g, jnp.zeros_like(g)), _gram64_pair, m)


@jax.custom_batching.custom_vmap
def _gram_record(m):
    return _gram_pair(m)


@_gram_record.def_vmap
def _gram_record_vmap(axis_size, in_batched, m):
    (batched,) = in_batched
    if not batched:
        out = _gram_record(m)
        return jax.tree_util.tree_map(lambda o: jnp.broadcast_to(o, (axis_size,) + o.shape),
                                      out), (True, True)
    return gram_pairs(m), (True, True)


def gram_pairs(m):
    """``(hi, lo)`` of a stack of row blocks ``m [n, B, D]``: one float32 matmul per block, and
    the float64 recomputation (for the whole stack) only when some matrix needs it (a
    ``lax.cond`` on an unbatched predicate, so the usual case costs no float64 work). Without
    float64: ``(G, R)``, ``R`` from :func:`row_factor` (module doc)."""
    g = jax.vmap(_gram32)(m)
    if not cpu.has_float64():
        return g, jax.vmap(row_factor)(m)
    # above _JNP_CHOLESKY_MAX, LAPACK's potrf: two layers' checks run side by side
    if g.shape[-1] > _JNP_CHOLESKY_MAX and cpu.lapack_one_matrix_per_call(calls_side_by_side=True):
        ok = lax.map(_well_conditioned, g)
    else:
        ok = jax.vmap(_well_conditioned)(g)

    def exact(m):
        hi, lo = jax.vmap(_gram64_pair)(m)
        keep = ok[:, None, None]
        return jnp.where(keep, g, hi), jnp.where(keep, 0.0, lo)

    return lax.cond(jnp.all(ok), lambda m: (g, jnp.zeros_like(g)), exact, m)


def record_gram(x):
    """``(hi, lo)``: the ``B x B`` Gram matrix ``M M^T`` of the rows of ``x`` scaled by
    ``max |x|`` (see the module doc), ``G = hi + lo``; without float64 ``(G, R)``, ``R^T R =
    G`` (:func:`row_factor`)."""
    return _gram_record(_rows(x))



# ------------------------------------------------------------------------------------------------
# float64 reductions


def _in_float64(fn):
    """``fn`` (float32 arrays in and out) traced with float64 enabled, also when it is batched
    later (``vmap`` of a ``scan`` batches the traced body outside any context manager): its vmap
    rule re-enters the float64 context and vmaps ``fn`` there."""

    def run(*args):
        with jax.enable_x64(True):
            return fn(*args)

    wrapped = jax.custom_batching.custom_vmap(run)

    @wrapped.def_vmap
    def _rule(axis_size, in_batched, *args):
        with jax.enable_x64(True):
            out = jax.vmap(run, in_axes=tuple(0 if b else None for b in in_batched))(*args)
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return wrapped


@_in_float64
def _sum_sq_f64(g):
    """``||g||_F`` from the float64 sum of squares (float32 squares fit; no scaling pass)."""
    return jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float64)))).astype(jnp.float32)


@jax.custom_jvp
def _norm_f64(g):
    return _sum_sq_f64(g)


@_norm_f64.defjvp
def _norm_f64_jvp(primals, tangents):  # d||g|| = <g / ||g||, dg> (custom_vmap has no AD rule)
    (g,), (dg,) = primals, tangents
    norm = _sum_sq_f64(g)
    unit = g / jnp.where(norm > 0, norm, 1.0)
    return norm, jnp.sum(unit * dg)






def grad_norm(g):
    """Frobenius norm of a gradient over the whole batch, computed without overflow: in one
    float64 pass where float64 exists, else as ``max|g| * ||g / max|g|||`` in float32. It is
    finite exactly when every entry of ``g`` is finite (and the norm fits in float32)."""
    if cpu.has_float64():
        return _norm_f64(g.astype(jnp.float32))
    s = _safe_scale(g)
    return s * jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32) / s)))


# ------------------------------------------------------------------------------------------------
# Two-array metrics ([U] section 4): similar-batch and gradient correlation


def correlation(a, b):
    """Pearson correlation of two arrays of the same shape, flattened over every axis.

    ``sum((a - mean a)(b - mean b)) / sqrt(sum((a - mean a)^2) sum((b - mean b)^2))``, in float32
    after scaling each array by its ``max |.|`` (exploding values do not overflow). [U] uses it for
    a layer's outputs on two similar batches (``x`` and ``x + s xi``) and for a layer's gradients
    on two minibatches. NaN when either array is constant (the correlation is undefined).
    """
    if a.shape != b.shape:
        raise ValueError(f"correlation: shapes differ, {a.shape} vs {b.shape}")
    a = a.reshape(-1).astype(jnp.float32)
    b = b.reshape(-1).astype(jnp.float32)
    a = a / _safe_scale(a)
    b = b / _safe_scale(b)
    a = a - jnp.mean(a)
    b = b - jnp.mean(b)
    saa, sbb = jnp.sum(a * a), jnp.sum(b * b)
    denom = jnp.sqrt(saa) * jnp.sqrt(sbb)
    return jnp.where(denom > 0, jnp.sum(a * b) / jnp.where(denom > 0, denom, 1.0), jnp.nan)
