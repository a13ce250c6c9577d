"""Metrics of one layer and one batch: pure functions of an activation (or gradient) array.

Definitions follow science.md and the [BB] reference code. ``x`` is ``[B, ...]``; ``M`` is ``x``
flattened to ``[B, D]``, ``M_hat`` its rows scaled to unit norm and ``G = M_hat M_hat^T``.
A row of zeros (a dead sample) has cosine 0 with every other row instead of 0/0.

Variance and squared mean are float32 reductions. The Gram-matrix metrics (cosine, stable rank,
effective rank) are computed in one of two ways, both accurate for rank-collapsed batches:

- On CPU, from the Gram matrix ``M M^T`` and small ``B x B`` LAPACK calls (its spectrum and
  ``||G||_2``). Its float32 eigenvalues give the singular values of ``M`` when it is well
  conditioned (``lambda_min >= 1e-4 trace``, checked by a Cholesky factorization; the usual
  case); otherwise (rank-collapsed batches, overflow, dead samples) the Gram matrix is
  recomputed in float64 (every product of float32 values exact, float64 sums, nothing
  overflows), whose eigenvalues give singular values to ~1e-8 ``s_max``. One float32 matmul
  per layer in the usual case: about 10% of a conv layer's forward + backward.
- Elsewhere (no fast float64: GPU, TPU), in float32 with full-precision matmuls. Every metric
  here is scale-invariant except the variance and squared mean, so ``M`` is divided by
  ``max |M|`` before its Gram matrix is formed: exploding activations (1e30) do not overflow.
  Singular values (effective rank) come from a QR of ``M^T`` (~1e-7 ``s_max``).
"""

from __future__ import annotations

import ctypes
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
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


def _normalized(g):
    """``G_hat = D^-1/2 G D^-1/2``, ``D = diag(G)``: the Gram matrix of the unit rows (a zero row
    stays zero)."""
    norms = jnp.sqrt(jnp.clip(jnp.diagonal(g), 0.0))
    inv = jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
    return g * inv[:, None] * inv[None, :]


def _gram(m):
    """``G = M_hat M_hat^T`` of the rows ``m`` (zero rows stay zero)."""
    return _normalized(jnp.matmul(m, m.T, precision=lax.Precision.HIGHEST))


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
        if axis_size == 1:  # no loop (and no copy of its operands) for a single element
            out = wrapped(*(a[0] if b else a for a, b in zip(args, in_batched)))
            return jax.tree_util.tree_map(lambda o: o[None], out), \
                jax.tree_util.tree_map(lambda _: True, out)
        args = [a if b else jnp.broadcast_to(a, (axis_size,) + a.shape)
                for a, b in zip(args, in_batched)]
        out = lax.map(lambda xs: wrapped(*xs), tuple(args))
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return wrapped


def _syevd_values(g, mode: str):
    """jaxlib's LAPACK ``?syevd`` FFI target on one symmetric matrix (lower triangle): its
    eigenvalues (ascending) and LAPACK's ``info``. ``mode='N'`` skips the eigenvectors, which
    ``jnp.linalg.eigvalsh`` always computes (``mode='V'``)."""
    from jaxlib import lapack

    target = lapack.prepare_lapack_call("syevd_ffi", np.dtype(g.dtype))  # also loads LAPACK
    n = g.shape[-1]
    _, w, info = jax.ffi.ffi_call(
        target,
        (jax.ShapeDtypeStruct(g.shape, g.dtype), jax.ShapeDtypeStruct((n,), g.dtype),
         jax.ShapeDtypeStruct((), jnp.int32)),
        input_output_aliases={0: 0},
        input_layouts=[(1, 0)],  # column-major, as LAPACK wants (jax's own lowering does this)
        output_layouts=[(1, 0), None, None],
    )(g, mode=np.uint8(ord(mode)), uplo=np.uint8(ord("L")))
    return w, info


@functools.cache
def _eigenvalues_only_works() -> bool:
    """Whether :func:`_syevd_values` without eigenvectors runs here and gives the eigenvalues of
    a known matrix (float32 and float64). It relies on jaxlib's LAPACK FFI target and its
    attributes, which are not public API: any failure (older or newer jaxlib) means
    ``jnp.linalg`` instead."""
    try:
        q, _ = np.linalg.qr(np.arange(1.0, 26.0).reshape(5, 5) ** 0.5)
        want = np.array([0.5, 1.0, 2.0, 3.0, 7.0])
        a = q @ np.diag(want) @ q.T
        for dtype in (np.float32, np.float64):
            # run now, also when first asked while tracing (ops there are staged, not run)
            with jax.ensure_compile_time_eval(), jax.enable_x64(dtype == np.float64):
                w, info = jax.jit(_syevd_values, static_argnums=1)(a.astype(dtype), "N")
                w, info = np.asarray(w), int(info)
            if info != 0 or w.dtype != dtype or not np.allclose(w, want, rtol=1e-5, atol=1e-5):
                return False
        return True
    except Exception:  # a fast path only: any failure falls back to jnp.linalg
        return False


def _eigvalsh(g):
    """Eigenvalues (ascending) of one symmetric ``[n, n]`` matrix, NaN if LAPACK fails.

    On CPU, LAPACK's ``?syevd`` without eigenvectors when jaxlib's FFI target allows it
    (:func:`_eigenvalues_only_works`): about 1.5x faster than the singular values from
    ``gesdd`` (jnp.linalg.svd without vectors) and 1.9-2.5x faster than ``jnp.linalg.eigvalsh``
    for n = 32 ... 256; else ``jnp.linalg.eigvalsh``."""
    if g.ndim == 2 and jax.default_backend() == "cpu" and _eigenvalues_only_works():
        w, info = _syevd_values(g, "N")
        return jnp.where(info == 0, w, jnp.nan)
    return jnp.linalg.eigvalsh(g)


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
    return _entropy_rank(_singular_values(m))


def _entropy_rank(sigma):
    """``exp(-sum_i p_i log p_i)``, ``p_i = sigma_i / sum_j sigma_j`` (0 for all-zero ``sigma``)."""
    total = jnp.sum(sigma)
    p = sigma / jnp.where(total > 0, total, 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.where(total > 0, jnp.exp(entropy), 0.0)


def _cosine_and_stable(g_hat):
    """``[cosine, stable rank]`` from the normalized Gram matrix, in ``g_hat``'s dtype; its
    largest eigenvalue ``||G_hat||_2`` is computed in float32 (accurate to ~1e-7 relative)."""
    lam_max = _eigvalsh(g_hat.astype(jnp.float32))[-1].astype(g_hat.dtype)
    stable = jnp.where(lam_max > 0, jnp.trace(g_hat) / jnp.where(lam_max > 0, lam_max, 1.0), 0.0)
    return jnp.stack([_cosine(g_hat), stable])


# Below this lambda_min / trace of the float32 Gram matrix, its float32 eigenvalues no longer give
# the effective rank to ~2e-6 (measured at lambda_min / lambda_max = 1e-4, for D = 1024 ... 32768;
# 5e-7 at 1e-3): the singular values near sqrt(eps) s_max need the float64 Gram matrix.
_F32_MIN_EIGEN_RATIO = 1e-4


@_unbatched
def _gram_metrics_cpu(m):
    """``[cosine, stable rank, effective rank]`` of the rows ``m [B, D]`` (float32).

    From the float32 Gram matrix ``G`` when it is finite, not tiny and well conditioned:
    ``G - 1e-4 trace(G) I`` has a Cholesky factor, so ``lambda_min >= 1e-4 trace(G) >=
    1e-4 lambda_max`` (its singular values are then its eigenvalues). Otherwise the effective
    rank comes from the float64 Gram matrix (exact products, float64 sums and eigenvalues), and
    cosine and stable rank from its normalized form. NaN where ``m`` is not finite. The branch
    is a real ``lax.cond``: this function runs one matrix at a time (``_unbatched``).
    """
    g = lax.dot_general(m, m, (((1,), (1,)), ((), ())), precision=lax.Precision.HIGHEST)
    finite = jnp.all(jnp.isfinite(g))
    g = jnp.where(finite, g, 0.0)  # LAPACK never sees a NaN
    tr = jnp.trace(g)
    shifted = g - (_F32_MIN_EIGEN_RATIO * tr) * jnp.eye(g.shape[0], dtype=g.dtype)
    fast = finite & (tr > 1e-20) & jnp.all(jnp.isfinite(jnp.linalg.cholesky(shifted)))

    def well_conditioned(m):
        lam = jnp.clip(_eigvalsh(g), 0.0)  # all >= 1e-4 trace here (up to rounding)
        return jnp.concatenate([_cosine_and_stable(_normalized(g)),
                                _entropy_rank(jnp.sqrt(lam))[None]])

    def exact(m):
        with jax.enable_x64(True):
            g = lax.dot_general(m, m, (((1,), (1,)), ((), ())), precision=lax.Precision.HIGHEST,
                                preferred_element_type=jnp.float64)
            finite = jnp.all(jnp.isfinite(g))
            g = jnp.where(finite, g, 0.0)
            lam = _eigvalsh(g)
            out = jnp.concatenate([_cosine_and_stable(_normalized(g)),
                                   _entropy_rank(jnp.sqrt(jnp.clip(lam, 0.0)))[None]])
            return jnp.where(finite, out, jnp.nan).astype(jnp.float32)

    return lax.cond(fast, well_conditioned, exact, m)


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


def _use_f64() -> bool:
    return jax.default_backend() == "cpu"


def _gram_metrics(x):
    """``[cosine, stable rank, effective rank]`` of the batch ``x`` (see the module doc)."""
    if _use_f64():
        return _gram_metrics_cpu(x.reshape(x.shape[0], -1).astype(jnp.float32))
    m = _rows(x)
    g = _gram(m)
    return jnp.stack([_cosine(g), _stable_rank(g), _effective_rank(m)])


def cosine_similarity(x):
    """Mean off-diagonal cosine between samples: ``mean_i (sum_j G_ij - G_ii) / (B - 1)``."""
    if _use_f64():
        return _gram_metrics(x)[0]
    return _cosine(_gram(_rows(x)))


def stable_rank(x):
    """Stable rank of the normalized batch: ``trace(G) / ||G||_2``, in ``[1, B]``."""
    if _use_f64():
        return _gram_metrics(x)[1]
    return _stable_rank(_gram(_rows(x)))


def effective_rank(x):
    """Effective rank (Roy & Vetterli 2007): ``exp(-sum_i p_i log p_i)``, ``p_i = s_i / sum_j s_j``
    over the singular values ``s_i`` of ``M`` (unnormalized rows)."""
    if _use_f64():
        return _gram_metrics(x)[2]
    return _effective_rank(_rows(x))


def grad_norm(g):
    """Frobenius norm of a gradient over the whole batch, computed without overflow: in one
    float64 pass on CPU, else as ``max|g| * ||g / max|g|||`` in float32. It is finite exactly
    when every entry of ``g`` is finite (and the norm fits in float32)."""
    if _use_f64():
        return _norm_f64(g.astype(jnp.float32))
    s = _safe_scale(g)
    return s * jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32) / s)))


def all_finite(x):
    """1.0 if every entry of ``x`` is finite, else 0.0."""
    return jnp.all(jnp.isfinite(x)).astype(jnp.float32)


def activation_metrics(x):
    """All of :data:`ACT_METRICS`, plus a finite flag: a ``[6]`` vector.

    The flag is 1.0 when ``x`` and its metrics are all finite, else 0.0."""
    x = x.astype(jnp.float32)
    values = jnp.concatenate(
        [jnp.stack([activation_variance(x), channel_squared_mean(x)]), _gram_metrics(x)])
    # flagged when any metric is not finite (a variance past 3e38), which covers a non-finite
    # entry of x: it makes its channel's mean, hence the variance, NaN or Inf
    return jnp.concatenate([values, all_finite(values)[None]])


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
