"""The metric registry: every metric's name, what it needs recorded, its layer axis, function and
equation, and :func:`compute`, which turns the taps' records into metrics.

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
   batched LAPACK call (``?syevd`` without eigenvectors on CPU, see :func:`sigprop.backend.lapack.eigvalsh`).

:data:`REGISTRY` names every metric: what it needs, which layer axis it lives on, its function
and docstring. Adding a metric is one :class:`Metric` entry (plus its test).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
from jax import lax

from sigprop.metrics import gns
from sigprop.metrics.gns import GNS, NORM_LAYER, NORM_TOTAL
from sigprop.metrics.record import (
    ACT_METRICS,
    ATTENTION,
    ATTENTION_LAYER,
    ATTENTION_LOGITS,
    BRANCH,
    BRANCH_LAYER,
    GRAD,
    GRAD_LAYER,
    GRAM,
    LAYER,
    MAX_ABS,
    MOMENTS,
    PAIR,
    PAIR_GRAD,
    PARAM_GRAD,
    PARAM_LAYER,
    TOKEN,
    all_finite,
    record_gram,
    record_moments,
)
from sigprop.metrics.spectral import Stats, entropy_rank

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
    with s.float64():
        g = s.gram_hat
        b = g.shape[-1]
        return s.finish(jnp.mean((jnp.sum(g, axis=-1) - jnp.diagonal(g, axis1=-2, axis2=-1))
                                 / (b - 1), axis=-1))


def _m_stable_rank(s):
    with s.float64():
        lam_max = s.eigenvalues("gram_hat")[..., -1]
        tr = jnp.trace(s.gram_hat, axis1=-2, axis2=-1)
        return s.finish(jnp.where(lam_max > 0, tr / jnp.where(lam_max > 0, lam_max, 1.0), 0.0))


def _m_effective_rank(s):
    with s.float64():
        lam = s.eigenvalues("gram")
        return s.finish(entropy_rank(jnp.sqrt(jnp.clip(lam, 0.0))))


def _m_grad_norm(s):
    return s["grad"][..., 0]


def _m_pair(s):
    return s["pair"]


def _m_pair_grad(s):
    return s["pair_grad"][..., 0]


def _m_branch(s):
    return s["branch"][..., 0]


def _per_sequence(fn):
    """A token metric: the sample-wise ``fn`` on each sequence's ``T x T`` Gram matrix (``Stats``
    over ``[..., B, T, T]``), averaged over the sequences."""
    def compute(s):
        return jnp.mean(fn(s), axis=-1)
    return compute


def _m_token_residual(s):
    return s.finish(s.residual_ratio())


def _first(key):
    return lambda s: s[key][..., 0]


def _gns(fn):
    return lambda s: fn(s["gns"])


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
    # token tensors [B, T, D]: per sequence b over its T tokens X_b (T x D), mean over b
    Metric("token_cosine_similarity", TOKEN, LAYER, _per_sequence(_m_cosine),
           "mean_b mean_{i != j} cos(x_bi, x_bj): the tokens of one sequence (Noci et al. 2022)"),
    Metric("token_residual_ratio", TOKEN, LAYER, _per_sequence(_m_token_residual),
           "mean_b ||X_b - 1 mean_t(X_b)^T||_F / ||X_b||_F: Dong et al. 2021's res(X), "
           "Frobenius form; 0 when every token is the same"),
    Metric("token_stable_rank", TOKEN, LAYER, _per_sequence(_m_stable_rank),
           "mean_b trace(G_b) / ||G_b||_2 of the unit-token Gram matrix of X_b, in [1, T]",
           ("gram_hat",)),
    Metric("token_effective_rank", TOKEN, LAYER, _per_sequence(_m_effective_rank),
           "mean_b exp(-sum_i p_i log p_i), p_i = s_i / sum_j s_j over the singular values of "
           "X_b", ("gram",)),
    Metric("max_abs_ratio", MAX_ABS, LAYER, _first("max_abs"),
           "max |x| / median |x| over every entry of the tap (Sun et al. 2024's massive "
           "activations); inf when more than half the entries are 0"),
    Metric("attention_entropy", ATTENTION, ATTENTION_LAYER, _first("attention"),
           "mean over batch, heads and queries (with >= 2 allowed keys) of "
           "-sum_j A_ij log A_ij / log n_i, n_i the keys query i may attend to; 1 = uniform"),
    Metric("attention_logit_max", ATTENTION_LOGITS, ATTENTION_LAYER, _first("attention_logits"),
           "max over batch, heads, queries and allowed keys of |q.k| / sqrt(d_head)"),
    Metric("param_grad_norm", PARAM_GRAD, PARAM_LAYER, _first("param_grad"),
           "||d loss / d W||_F of the kernel (or embedding) W of every dense / conv / einsum / "
           "embed layer (Xiong et al. 2020's per-layer gradient norm)"),
    # per-example gradients of LayerNorm / RMSNorm affine parameters (sigprop.metrics.gns)
    Metric("gns_b_simple", GNS, NORM_LAYER, _gns(gns.b_simple),
           "tr Sigma / |G|^2 of a normalizer's affine parameters from their per-example "
           "gradients G_b = B sum_t delta_bt x_hat_bt (a loss that is a mean over the batch; "
           "McCandlish et al. 2018's B_simple, Gray et al. 2024's normalization-layer GNS)"),
    Metric("gns_trace_sigma", GNS, NORM_LAYER, _gns(gns.trace_sigma),
           "tr Sigma ~ (mean_b |G_b|^2 - |G_mean|^2) / (1 - 1/B) of a normalizer's affine "
           "parameters' per-example gradients"),
    Metric("gns_grad_sq", GNS, NORM_LAYER, _gns(gns.grad_sq),
           "|G|^2 ~ (B |G_mean|^2 - mean_b |G_b|^2) / (B - 1) of a normalizer's affine "
           "parameters' per-example gradients"),
    Metric("gns_b_simple_total", GNS, NORM_TOTAL, _gns(gns.b_simple_total),
           "sum_l tr Sigma_l / sum_l |G_l|^2 over every LayerNorm / RMSNorm l: the "
           "normalization layers' B_simple (one entry, 'total')"),
]}
DEFAULT_METRICS = ("activation_variance", "channel_squared_mean", "cosine_similarity",
                   "stable_rank", "effective_rank", "grad_norm", "residual_variance")
PAIR_METRICS = ("similar_batch_correlation", "gradient_correlation")
TOKEN_METRICS = ("token_cosine_similarity", "token_residual_ratio", "token_stable_rank",
                 "token_effective_rank")
# every metric of a transformer's taps (sigprop.transformer): tokens, attention, parameters
TRANSFORMER_METRICS = TOKEN_METRICS + ("max_abs_ratio", "attention_entropy",
                                       "attention_logit_max", "param_grad_norm")
GNS_METRICS = ("gns_b_simple", "gns_trace_sigma", "gns_grad_sq", "gns_b_simple_total")
# the finite flags of each layer axis (always reported with any metric on that axis)
FLAGS = {LAYER: "finite", GRAD_LAYER: "grad_finite", BRANCH_LAYER: "branch_finite",
         ATTENTION_LAYER: "attention_finite", PARAM_LAYER: "param_finite",
         NORM_LAYER: "norm_finite", NORM_TOTAL: "norm_total_finite"}


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


# the Gram records of each spectral family: (need, hi key, lo key, matrix axes per item)
_GRAM_FAMILIES = ((GRAM, "gram_hi", "gram_lo", 2), (TOKEN, "token_hi", "token_lo", 3))


def compute(records: dict, metric_names) -> dict:
    """``{metric: array}`` of the requested metrics from the taps' records (the spectral step),
    plus the finite flags of each layer axis in use."""
    spectral = {need for need, *_ in _GRAM_FAMILIES}
    out = {m: REGISTRY[m].compute(Stats(records)) for m in metric_names
           if REGISTRY[m].needs not in spectral}
    for need, hi_key, lo_key, item_dims in _GRAM_FAMILIES:
        wanted = [m for m in metric_names if REGISTRY[m].needs == need]
        if wanted:
            out.update(_spectral_step(records[hi_key], records[lo_key], wanted, item_dims))
    return out


def _spectral_step(hi, lo, wanted, item_dims: int) -> dict:
    """The metrics ``wanted`` of Gram records ``hi + lo [..., layers, *item]`` (``item``: one
    ``B x B`` matrix, or ``B`` token matrices ``T x T``), their eigenvalue problems solved once."""
    spectra = tuple(dict.fromkeys(s for m in wanted for s in REGISTRY[m].spectra))

    def one(hi, lo):
        stats = Stats({"gram_hi": hi, "gram_lo": lo}, spectra)
        return {m: REGISTRY[m].compute(stats) for m in wanted}

    if hi.ndim == item_dims + 1:  # [layers, *item]: in chunks, so the float64 copies stay small
        per_layer = max(1, hi[0].size)
        return lax.map(lambda a: one(*a), (hi, lo),
                       batch_size=max(1, _SPECTRAL_CHUNK // per_layer))
    return one(hi, lo)


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
