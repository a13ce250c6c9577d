"""Metrics: what a tap records inside the network, and the registry that turns records into metrics.

Definitions follow science.md and the [BB] reference code. ``x`` is ``[B, ...]``; ``M`` is ``x``
flattened to ``[B, D]``, ``M_hat`` its rows scaled to unit norm and ``G = M_hat M_hat^T``.
A row of zeros (a dead sample) has cosine 0 with every other row instead of 0/0.

Two steps, so that the network never waits on LAPACK:

1. **Record** (inside the network, at each tap; :func:`record_moments`, :func:`record_gram`):
   float32 reductions for the moments, and the ``B x B`` Gram matrix ``M M^T`` of the rows
   scaled by ``max |M|`` (no square overflows). The Gram matrix is a float32 matmul when it is
   well conditioned (``lambda_min >= 1e-4 trace``, tested by a Cholesky factorization: in jnp,
   vectorized over seeds, for batches up to 64; else one LAPACK call per seed and layer,
   0.4 ms at 256 x 256); otherwise it is recomputed with float64 sums of the (exact)
   float32 products and stored as a float32 pair ``hi + lo`` (``~2^-48`` relative). On a TPU
   (no float64) it is always the float32 Gram matrix.
2. **Spectral step** (once, after the network, batched over seeds x layers; :class:`Stats`):
   ``G = hi + lo`` in float64 (float32 on TPU); cosine from ``G_hat``; the eigenvalues of
   ``G`` (effective rank: ``s_i = sqrt(lambda_i)``) and of ``G_hat`` (stable rank) in one
   batched LAPACK call (``?syevd`` without eigenvectors on CPU, see :func:`sigprop.lapack.eigvalsh`).

:data:`REGISTRY` names every metric: what it needs, which layer axis it lives on, its function
and docstring. Adding a metric is one :class:`Metric` entry (plus its test).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from sigprop import lapack

# What a tap records (the engine asks taps for the needs of the requested metrics only)
MOMENTS, GRAM, GRAD, PAIR, PAIR_GRAD, BRANCH = "moments", "gram", "grad", "pair", "pair_grad", "branch"
NEEDS = (MOMENTS, GRAM, GRAD, PAIR, PAIR_GRAD, BRANCH)
# The layer axes metrics live on
LAYER, GRAD_LAYER, BRANCH_LAYER = "layer", "grad_layer", "branch_layer"

ACT_METRICS = (
    "activation_variance",
    "channel_squared_mean",
    "cosine_similarity",
    "stable_rank",
    "effective_rank",
)


def _has_f64() -> bool:
    """float64 arithmetic is available (CPU, GPU; not TPU)."""
    return jax.default_backend() != "tpu"


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


def _gram_pair(m):
    g = _gram32(m)
    if not _has_f64():
        return g, jnp.zeros_like(g)
    return lax.cond(_well_conditioned(g), lambda m: (g, jnp.zeros_like(g)), _gram64_pair, m)


@jax.custom_batching.custom_vmap
def _gram_record(m):
    return _gram_pair(m)


@_gram_record.def_vmap
def _gram_record_vmap(axis_size, in_batched, m):
    """Batched over seeds: one float32 matmul for the batch, and the float64 recomputation (for
    the whole batch) only when some matrix needs it (a ``lax.cond`` on an unbatched predicate,
    so the usual case costs no float64 work)."""
    (batched,) = in_batched
    if not batched:
        out = _gram_record(m)
        return jax.tree_util.tree_map(lambda o: jnp.broadcast_to(o, (axis_size,) + o.shape),
                                      out), (True, True)
    g = jax.vmap(_gram32)(m)
    if not _has_f64():
        return (g, jnp.zeros_like(g)), (True, True)
    if g.shape[-1] <= _JNP_CHOLESKY_MAX:
        ok = jax.vmap(_well_conditioned)(g)
    else:  # LAPACK one matrix at a time: jaxlib's CPU LAPACK kernels split a batch over XLA's
        # intra-op pool and block a pool thread while they wait, and two such calls side by
        # side (two layers) deadlocked a 2-thread pool (jax 0.10.2)
        ok = lax.map(_well_conditioned, g)

    def exact(m):
        hi, lo = jax.vmap(_gram64_pair)(m)
        keep = ok[:, None, None]
        return jnp.where(keep, g, hi), jnp.where(keep, 0.0, lo)

    out = lax.cond(jnp.all(ok), lambda m: (g, jnp.zeros_like(g)), exact, m)
    return out, (True, True)


def record_gram(x):
    """``(hi, lo)``: the ``B x B`` Gram matrix ``M M^T`` of the rows of ``x`` scaled by
    ``max |x|`` (see the module doc), ``G = hi + lo``."""
    return _gram_record(_rows(x))


# ------------------------------------------------------------------------------------------------
# Spectral step


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






def _normalized(g):
    """``G_hat = D^-1/2 G D^-1/2``, ``D = diag(G)``: the Gram matrix of the unit rows (a zero row
    stays zero)."""
    norms = jnp.sqrt(jnp.clip(jnp.diagonal(g, axis1=-2, axis2=-1), 0.0))
    inv = jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
    return g * inv[..., :, None] * inv[..., None, :]


def _entropy_rank(sigma):
    """``exp(-sum_i p_i log p_i)``, ``p_i = sigma_i / sum_j sigma_j`` (0 for all-zero ``sigma``)."""
    total = jnp.sum(sigma, axis=-1, keepdims=True)
    p = sigma / jnp.where(total > 0, total, 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return jnp.where(total[..., 0] > 0, jnp.exp(entropy), 0.0)


class Stats:
    """The records of one analysis (``[..., layers, ...]`` arrays, any leading axes) and the
    quantities derived from them, each computed once when a metric first asks for it. The
    eigenvalue problems that the requested metrics need (``spectra``) run as one batched call.

    Records: ``moments [..., L, 3]``, ``gram_hi`` / ``gram_lo [..., L, B, B]``, ``grad [..., G,
    2]``, ``pair [..., L]``, ``pair_grad [..., G, 2]``, ``branch [..., K, 2]``."""

    def __init__(self, records: dict, spectra: tuple[str, ...] = ()):
        self.records = records
        self._spectra = spectra  # which of "gram", "gram_hat" need eigenvalues
        self._cache: dict = {}

    def __getitem__(self, name):
        return self.records[name]

    def _cached(self, name, fn):
        if name not in self._cache:
            self._cache[name] = fn()
        return self._cache[name]

    def _f64(self):
        return jax.enable_x64(True) if _has_f64() else _nullcontext()

    @property
    def gram(self):
        """``G = hi + lo`` (float64 where available)."""
        def make():
            with self._f64():
                dt = jnp.float64 if _has_f64() else jnp.float32
                return self["gram_hi"].astype(dt) + self["gram_lo"].astype(dt)
        return self._cached("gram", make)

    @property
    def gram_hat(self):
        def make():
            with self._f64():
                return _normalized(self.gram)
        return self._cached("gram_hat", make)

    def eigenvalues(self, which: str):
        """Eigenvalues (ascending) of ``gram`` or ``gram_hat``; every requested spectrum comes
        from one batched call."""
        def make():
            names = self._spectra or (which,)
            with self._f64():
                mats = jnp.stack([getattr(self, n) for n in names])
                lam = lapack.eigvalsh(mats)
            return dict(zip(names, lam))
        return self._cached("spectra", make)[which]

    def finish(self, value):
        return value.astype(jnp.float32)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------------------------------------
# The registry


@dataclasses.dataclass(frozen=True)
class Metric:
    """One metric: ``compute(stats)`` returns ``[..., layers]`` on the layer axis ``axis``.

    ``needs`` is what the taps must record (:data:`NEEDS`); ``spectra`` the eigenvalue problems
    it uses (``"gram"``, ``"gram_hat"``), solved once for all metrics of a call."""

    name: str
    needs: str
    axis: str
    compute: Callable
    doc: str
    spectra: tuple = ()


def _m_variance(s):
    return s["moments"][..., 0]


def _m_squared_mean(s):
    return s["moments"][..., 1]


def _m_cosine(s):
    with s._f64():
        g = s.gram_hat
        b = g.shape[-1]
        return s.finish(jnp.mean((jnp.sum(g, axis=-1) - jnp.diagonal(g, axis1=-2, axis2=-1))
                                 / (b - 1), axis=-1))


def _m_stable_rank(s):
    with s._f64():
        lam_max = s.eigenvalues("gram_hat")[..., -1]
        tr = jnp.trace(s.gram_hat, axis1=-2, axis2=-1)
        return s.finish(jnp.where(lam_max > 0, tr / jnp.where(lam_max > 0, lam_max, 1.0), 0.0))


def _m_effective_rank(s):
    with s._f64():
        lam = s.eigenvalues("gram")
        return s.finish(_entropy_rank(jnp.sqrt(jnp.clip(lam, 0.0))))


def _m_grad_norm(s):
    return s["grad"][..., 0]


def _m_pair(s):
    return s["pair"]


def _m_pair_grad(s):
    return s["pair_grad"][..., 0]


def _m_branch(s):
    return s["branch"][..., 0]


REGISTRY: dict[str, Metric] = {m.name: m for m in [
    Metric("activation_variance", MOMENTS, LAYER, _m_variance,
           "mean_c var_{NHW}(x[..., c]) (biased): Brock et al.'s average channel variance"),
    Metric("channel_squared_mean", MOMENTS, LAYER, _m_squared_mean,
           "mean_c (mean_{NHW} x[..., c])^2: Brock et al.'s average channel squared mean"),
    Metric("cosine_similarity", GRAM, LAYER, _m_cosine,
           "mean_i (sum_j G_ij - G_ii) / (B - 1), G = M_hat M_hat^T: mean off-diagonal cosine"),
    Metric("stable_rank", GRAM, LAYER, _m_stable_rank,
           "trace(G) / ||G||_2 of the unit-row Gram matrix, in [1, B]", ("gram_hat",)),
    Metric("effective_rank", GRAM, LAYER, _m_effective_rank,
           "exp(-sum_i p_i log p_i), p_i = s_i / sum_j s_j over the singular values s of M "
           "(Roy & Vetterli 2007)", ("gram",)),
    Metric("grad_norm", GRAD, GRAD_LAYER, _m_grad_norm,
           "||d loss / d y||_F over the whole batch, y the conv/dense output"),
    Metric("similar_batch_correlation", PAIR, LAYER, _m_pair,
           "Pearson correlation of the activation for batch x and x + s xi ([U] 4.1)"),
    Metric("gradient_correlation", PAIR_GRAD, GRAD_LAYER, _m_pair_grad,
           "Pearson correlation of d loss / d y for batch x and x + s xi, same labels ([U] 4.2)"),
    Metric("residual_variance", BRANCH, BRANCH_LAYER, _m_branch,
           "mean_c var_{NHW} of a residual block's branch output, before the addition "
           "(Brock et al. 2021's residual-branch variance)"),
]}
DEFAULT_METRICS = ("activation_variance", "channel_squared_mean", "cosine_similarity",
                   "stable_rank", "effective_rank", "grad_norm", "residual_variance")
PAIR_METRICS = ("similar_batch_correlation", "gradient_correlation")
# the finite flags of each layer axis (always reported with any metric on that axis)
FLAGS = {LAYER: "finite", GRAD_LAYER: "grad_finite", BRANCH_LAYER: "branch_finite"}


# matrix entries per chunk of the spectral step (float64: 32 MiB a copy): depth 1000 x batch
# 256 would otherwise hold four float64 copies of 1000 Gram matrices (2 GiB) at once
_SPECTRAL_CHUNK = 2**22


def names() -> list[str]:
    """Every registered metric name."""
    return list(REGISTRY)


def check_metrics(metrics) -> tuple[str, ...]:
    """Validate ``analyze``'s ``metrics=``; return the names, in registry order."""
    if metrics is None:
        return DEFAULT_METRICS
    if isinstance(metrics, str):
        metrics = (metrics,)
    try:
        wanted = list(metrics)
    except TypeError:
        raise ValueError(f"metrics={metrics!r}: expected a sequence of metric names; known: "
                         f"{', '.join(names())}") from None
    bad = [m for m in wanted if m not in REGISTRY]
    if bad or not wanted:
        raise ValueError(f"metrics={metrics!r}: unknown {', '.join(map(repr, bad)) or 'none given'}; "
                         f"known: {', '.join(names())}")
    return tuple(m for m in REGISTRY if m in wanted)


def needs_of(metric_names) -> frozenset:
    return frozenset(REGISTRY[m].needs for m in metric_names)


def compute(records: dict, metric_names) -> dict:
    """``{metric: array}`` of the requested metrics from the taps' records (the spectral step),
    plus the finite flags of each layer axis in use."""
    spectra = tuple(dict.fromkeys(s for m in metric_names for s in REGISTRY[m].spectra))
    gram = [m for m in metric_names if REGISTRY[m].needs == GRAM]
    out = {m: REGISTRY[m].compute(Stats(records)) for m in metric_names if m not in gram}
    if gram:
        def one(hi, lo):
            stats = Stats({"gram_hi": hi, "gram_lo": lo}, spectra)
            return {m: REGISTRY[m].compute(stats) for m in gram}

        hi, lo = records["gram_hi"], records["gram_lo"]
        if hi.ndim == 3:  # [layers, B, B]: in chunks, so the float64 copies stay small
            b = hi.shape[-1]
            out.update(lax.map(lambda a: one(*a), (hi, lo),
                               batch_size=max(1, _SPECTRAL_CHUNK // (b * b))))
        else:
            out.update(one(hi, lo))
    return out


# ------------------------------------------------------------------------------------------------
# One array at a time (tests, the torch cross-check): the same two steps


def _one(x, name):
    x = jnp.asarray(x).astype(jnp.float32)
    hi, lo = record_gram(x)
    return compute({"gram_hi": hi, "gram_lo": lo}, (name,))[name]


def cosine_similarity(x):
    """Mean off-diagonal cosine between samples: ``mean_i (sum_j G_ij - G_ii) / (B - 1)``."""
    return _one(x, "cosine_similarity")


def stable_rank(x):
    """Stable rank of the normalized batch: ``trace(G) / ||G||_2``, in ``[1, B]``."""
    return _one(x, "stable_rank")


def effective_rank(x):
    """Effective rank (Roy & Vetterli 2007): ``exp(-sum_i p_i log p_i)``, ``p_i = s_i / sum_j s_j``
    over the singular values ``s_i`` of ``M`` (unnormalized rows)."""
    return _one(x, "effective_rank")


def activation_metrics(x):
    """All of :data:`ACT_METRICS`, plus a finite flag: a ``[6]`` vector.

    The flag is 1.0 when ``x`` and its metrics are all finite, else 0.0."""
    x = jnp.asarray(x).astype(jnp.float32)
    hi, lo = record_gram(x)
    mom = record_moments(x)
    out = compute({"moments": mom, "gram_hi": hi, "gram_lo": lo}, ACT_METRICS)
    values = jnp.stack([out[m] for m in ACT_METRICS])
    return jnp.concatenate([values, (all_finite(values) * mom[2])[None]])


def grad_norm(g):
    """Frobenius norm of a gradient over the whole batch, computed without overflow: in one
    float64 pass where float64 exists, else as ``max|g| * ||g / max|g|||`` in float32. It is
    finite exactly when every entry of ``g`` is finite (and the norm fits in float32)."""
    if _has_f64():
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
