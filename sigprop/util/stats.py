"""Small-sample statistics for the claims: Spearman's rho, permutation p-values, bootstrap
intervals, and the three-way verdict.

Every test is one-sided in the direction a claim predicts, and exact where the permutations
can be enumerated (``<= EXACT_LIMIT``), else Monte Carlo with ``resamples`` draws and the
``(1 + hits) / (1 + draws)`` estimate (never 0). Intervals are percentile bootstraps (95% by
default) from a fixed seed, so a verdict is reproducible.

Where a hypothesis has no exchangeability null (one mean nearer a second than a third),
:func:`bootstrap_test` gives a bootstrap p-value instead.

A claim's verdict (:func:`verdict`): ``"pass"`` when the one-sided p-value of the predicted
direction is below ``alpha``; ``"fail"`` when that of the opposite direction is; otherwise
``"inconclusive"``: the data do not decide at this sample size.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

EXACT_LIMIT = 50_000  # enumerate the permutations when there are at most this many
RESAMPLES = 10_000
ALPHA = 0.05


def ranks(v) -> np.ndarray:
    """Ranks 0..n-1, ties given their average rank."""
    v = np.asarray(v, float)
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(len(v), dtype=float)
    for u in np.unique(v):
        r[v == u] = r[v == u].mean()
    return r


def spearman(a, b) -> float:
    """Spearman's rank correlation: Pearson's r of the ranks (ties: average ranks)."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / den if den > 0 else float("nan")


def _p(null: np.ndarray, observed: float) -> float:
    """One-sided p of ``observed`` against the null draws (larger is more extreme)."""
    hits = int(np.sum(null >= observed - 1e-12 * max(1.0, abs(observed))))
    return hits / len(null)


def spearman_test(a, b, *, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """rho = spearman(a, b) and one-sided permutation p-values for rho > 0 (``p_greater``) and
    rho < 0 (``p_less``): the share of pairings of ``b`` with ``a`` (all ``n!`` when
    ``n! <= EXACT_LIMIT``, the identity included) whose rho is at least (at most) the observed."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 3:
        raise ValueError(f"spearman_test: two equal-length 1-d samples of >= 3 needed; got "
                         f"shapes {a.shape} and {b.shape}")
    rho = spearman(a, b)
    n = len(a)
    if math.factorial(n) <= EXACT_LIMIT:
        perms = np.array(list(itertools.permutations(range(n))))
    else:
        rng = np.random.default_rng(seed)
        perms = np.vstack([np.arange(n)] + [rng.permutation(n) for _ in range(resamples)])
    ra = ranks(a) - (n - 1) / 2
    rb = ranks(b)
    rb = rb - rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    null = (rb[perms] @ ra) / den
    return {"rho": rho, "p_greater": _p(null, rho), "p_less": _p(-null, -rho), "n": n}


def sign_flip_test(d, *, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """One-sample test of mean(d) > 0 (``p_greater``) and < 0 (``p_less``) by flipping the
    signs of the differences ``d`` (symmetric about 0 under the null): all ``2^n`` flips when
    ``2^n <= EXACT_LIMIT``."""
    d = np.asarray(d, float)
    if d.ndim != 1 or len(d) < 2:
        raise ValueError(f"sign_flip_test: a 1-d sample of >= 2 needed; got shape {d.shape}")
    n = len(d)
    if 2 ** n <= EXACT_LIMIT:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        rng = np.random.default_rng(seed)
        signs = np.vstack([np.ones(n), rng.choice((1.0, -1.0), size=(resamples, n))])
    null = signs @ d / n
    m = float(d.mean())
    return {"mean": m, "p_greater": _p(null, m), "p_less": _p(-null, -m), "n": n}


def two_sample_test(x, y, *, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Permutation test of ``mean(x) - mean(y)`` > 0 (``p_greater``) and < 0 (``p_less``),
    relabelling the pooled samples (all splits when there are ``<= EXACT_LIMIT``)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    pooled, nx = np.concatenate([x, y]), len(x)
    n = len(pooled)
    if math.comb(n, nx) <= EXACT_LIMIT:
        splits = [np.array(c) for c in itertools.combinations(range(n), nx)]
    else:
        rng = np.random.default_rng(seed)
        splits = [np.arange(nx)] + [rng.permutation(n)[:nx] for _ in range(resamples)]
    mask = np.zeros((len(splits), n), bool)
    for row, idx in zip(mask, splits):
        row[idx] = True
    null = (mask @ pooled) / nx - (~mask @ pooled) / (n - nx)
    s = float(x.mean() - y.mean())
    return {"statistic": s, "p_greater": _p(null, s), "p_less": _p(-null, -s)}


def _replicates(samples, statistic, resamples: int, seed: int) -> np.ndarray:
    """The finite values of ``statistic(*resampled)``: each array of ``samples`` resampled
    with replacement along its first axis, independently, from ``seed``."""
    rng = np.random.default_rng(seed)
    vals = np.array([statistic(*[s[rng.integers(0, len(s), len(s))] for s in samples])
                     for _ in range(resamples)], float)
    return vals[np.isfinite(vals)]


def bootstrap_ci(samples, statistic, *, level: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*resampled)``: each array of ``samples``
    (a tuple) resampled with replacement along its first axis, independently; arrays that must
    stay paired go in as one 2-d array (rows resampled together)."""
    vals = _replicates([np.asarray(s, float) for s in samples], statistic, resamples, seed)
    if not len(vals):
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


def bootstrap_test(samples, statistic, *, resamples: int = 2000, seed: int = 0) -> dict:
    """A bootstrap test of ``statistic > 0`` for hypotheses with no exchangeability null
    (e.g. "c's mean is nearer a's than b's"): ``p_greater`` = (1 + replicates <= 0) /
    (1 + replicates), ``p_less`` likewise for >= 0, the replicates of :func:`bootstrap_ci`
    (the same seed: the interval and the test agree)."""
    samples = [np.asarray(s, float) for s in samples]
    vals = _replicates(samples, statistic, resamples, seed)
    n = len(vals)
    return {"statistic": float(statistic(*samples)),
            "p_greater": (1 + int(np.sum(vals <= 0))) / (1 + n),
            "p_less": (1 + int(np.sum(vals >= 0))) / (1 + n)}


def verdict(p_predicted: float, p_opposite: float, alpha: float = ALPHA) -> str:
    """``"pass"`` if ``p_predicted < alpha``, ``"fail"`` if ``p_opposite < alpha``, else
    ``"inconclusive"``."""
    if p_predicted < alpha:
        return "pass"
    if p_opposite < alpha:
        return "fail"
    return "inconclusive"


def combine(verdicts) -> str:
    """All parts of a claim must pass (an intersection-union test: its p-value is the largest
    part's): any ``fail`` fails it, else any ``inconclusive`` leaves it inconclusive."""
    verdicts = list(verdicts)
    if "fail" in verdicts:
        return "fail"
    return "pass" if all(v == "pass" for v in verdicts) else "inconclusive"


__all__ = ["ALPHA", "EXACT_LIMIT", "bootstrap_ci", "bootstrap_test", "combine", "ranks",
           "sign_flip_test", "spearman", "spearman_test", "two_sample_test", "verdict"]
