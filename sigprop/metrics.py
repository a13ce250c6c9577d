"""Metrics of one layer and one batch: pure functions of an activation (or gradient) array.

Definitions follow science.md and the [BB] reference code. ``x`` is ``[B, ...]``; ``M`` is ``x``
flattened to ``[B, D]``, ``M_hat`` its rows scaled to unit norm and ``G = M_hat M_hat^T``.
All reductions run in float32 with full-precision matmuls. A row of zeros (a dead sample) has
cosine 0 with every other row instead of 0/0.

Every metric here is scale-invariant except the variance and squared mean, so ``M`` is divided by
``max |M|`` before its Gram matrix is formed: exploding activations (1e30) do not overflow.
Singular values (effective rank) come from a QR of ``M^T``, accurate for rank-collapsed batches.
"""

from __future__ import annotations

import ctypes
import functools
import os

import jax
import jax.numpy as jnp
from jax import lax

ACT_METRICS = (
    "activation_variance",
    "channel_squared_mean",
    "cosine_similarity",
    "stable_rank",
    "effective_rank",
)


def activation_variance(x):
    """Mean over channels of the biased variance over ``(N, H, W)``:
    ``mean_c var_{NHW}(x[..., c])``. ([BB]'s code used torch's unbiased variance; the two differ
    by the factor ``n / (n - 1)``, ``n = N H W``.)"""
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    return jnp.mean(jnp.mean(jnp.square(x - mean), axis=axes))


def channel_squared_mean(x):
    """Mean over channels of the squared channel mean: ``mean_c (mean_{NHW} x[..., c])^2``
    (Brock et al. 2021's signal propagation plots). ``activation_variance + channel_squared_mean``
    is the mean second moment ``mean(x^2)``."""
    axes = tuple(range(x.ndim - 1))
    return jnp.mean(jnp.square(jnp.mean(x, axis=axes)))


def _safe_scale(m):
    s = jnp.max(jnp.abs(m))
    return jnp.where((s > 0) & jnp.isfinite(s), s, 1.0)


def _rows(x):
    """``M / max|M|``: the batch as ``[B, D]`` rows, scaled so that no square overflows."""
    m = x.reshape(x.shape[0], -1).astype(jnp.float32)
    return m / _safe_scale(m)


def _gram(m):
    """``G = M_hat M_hat^T`` of the rows ``m`` (zero rows stay zero)."""
    g_raw = jnp.matmul(m, m.T, precision=lax.Precision.HIGHEST)
    norms = jnp.sqrt(jnp.clip(jnp.diagonal(g_raw), 0.0))
    inv = jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
    return g_raw * inv[:, None] * inv[None, :]


@functools.cache
def _single_threaded_lapack() -> None:
    """Run the OpenBLAS behind jaxlib's CPU LAPACK (scipy's) on one thread.

    Its worker threads spin on cores that XLA's own thread pool keeps busy: a QR of a
    ``[32768, 64]`` matrix took 10x longer (a 64 x 64 ``eigvalsh`` 20x) with OpenBLAS's default
    threads than with one. Left alone when ``OPENBLAS_NUM_THREADS`` is set, off Linux, or when
    scipy is missing.
    """
    if "OPENBLAS_NUM_THREADS" in os.environ or not os.path.exists("/proc/self/maps"):
        return
    try:
        import scipy.linalg.cython_lapack  # noqa: F401  (what jaxlib's LAPACK calls; loads OpenBLAS)

        with open("/proc/self/maps") as maps:
            libs = {line.split()[-1] for line in maps if "openblas" in line.lower()}
        for path in sorted(libs):
            if "scipy" not in path or "numpy" in path:
                continue
            lib = ctypes.CDLL(path)
            for name in ("scipy_openblas_set_num_threads", "openblas_set_num_threads"):
                if hasattr(lib, name):
                    getattr(lib, name)(1)
                    break
    except Exception:  # a performance setting: never fail a computation over it
        pass


def _unbatched(fn):
    """``fn`` whose vmap runs the batch one element after another (``lax.map``).

    jaxlib's CPU LAPACK kernels (QR, eigh, SVD) split a batch over XLA's intra-op thread pool and
    block a pool thread while they wait; two such calls running side by side (two layers' metrics)
    deadlock a 2-thread pool (seen with jax 0.10.2). One matrix at a time never waits on the pool.
    Tracing ``fn`` also calls :func:`_single_threaded_lapack`.
    """
    def traced(*args):
        _single_threaded_lapack()
        return fn(*args)

    wrapped = jax.custom_batching.custom_vmap(traced)

    @wrapped.def_vmap
    def _rule(axis_size, in_batched, *args):
        args = [a if b else jnp.broadcast_to(a, (axis_size,) + a.shape)
                for a, b in zip(args, in_batched)]
        out = lax.map(lambda xs: wrapped(*xs), tuple(args))
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return wrapped


@_unbatched
def _singular_values(m):
    """Singular values of ``m`` through a QR of ``m^T`` (backward stable: a zero singular value
    comes out at ~eps * s_max, where ``sqrt(eigvalsh(m m^T))`` would give ~sqrt(eps) * s_max)."""
    r = jnp.linalg.qr(m.T, mode="r")
    return jnp.linalg.svd(r, compute_uv=False)


@_unbatched
def _largest_eigenvalue(g):
    return jnp.linalg.eigvalsh(g)[-1]


def _cosine(g):
    b = g.shape[0]
    return jnp.mean((jnp.sum(g, axis=1) - jnp.diagonal(g)) / (b - 1))


def _stable_rank(g):
    lam_max = _largest_eigenvalue(g)
    tr = jnp.trace(g)
    return jnp.where(lam_max > 0, tr / jnp.where(lam_max > 0, lam_max, 1.0), 0.0)


def _effective_rank(m):
    sigma = _singular_values(m)
    total = jnp.sum(sigma)
    p = sigma / jnp.where(total > 0, total, 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.where(total > 0, jnp.exp(entropy), 0.0)


def cosine_similarity(x):
    """Mean off-diagonal cosine between samples: ``mean_i (sum_j G_ij - G_ii) / (B - 1)``."""
    return _cosine(_gram(_rows(x)))


def stable_rank(x):
    """Stable rank of the normalized batch: ``trace(G) / ||G||_2``, in ``[1, B]``."""
    return _stable_rank(_gram(_rows(x)))


def effective_rank(x):
    """Effective rank (Roy & Vetterli 2007): ``exp(-sum_i p_i log p_i)``, ``p_i = s_i / sum_j s_j``
    over the singular values ``s_i`` of ``M`` (unnormalized rows)."""
    return _effective_rank(_rows(x))


def grad_norm(g):
    """Frobenius norm of a gradient over the whole batch, computed without overflow."""
    s = _safe_scale(g)
    return s * jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32) / s)))


def all_finite(x):
    """1.0 if every entry of ``x`` is finite, else 0.0."""
    return jnp.all(jnp.isfinite(x)).astype(jnp.float32)


def activation_metrics(x):
    """All of :data:`ACT_METRICS`, plus a finite flag: a ``[6]`` vector.

    The flag is 1.0 when ``x`` and its metrics are all finite, else 0.0."""
    x = x.astype(jnp.float32)
    m = _rows(x)
    g = _gram(m)
    values = jnp.stack(
        [
            activation_variance(x),
            channel_squared_mean(x),
            _cosine(g),
            _stable_rank(g),
            _effective_rank(m),
        ]
    )
    # flagged when the activation or any of its metrics (a variance past 3e38) is not finite
    return jnp.concatenate([values, (all_finite(x) * all_finite(values))[None]])


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
