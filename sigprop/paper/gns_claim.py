"""Claim 19: the normalization layers' gradient noise scale tracks the whole model's through
early training (Gray et al. 2024), a criterion fixed before the full-size run.

Gray et al. (NeurIPS 2024, arXiv 2411.00999, abstract): "the total GNS of contemporary
transformer models is predicted well by the GNS of only the normalization layers". Tested on
:mod:`sigprop.paper.experiments.gns_tracking`: per seed ``s``, ``rho_s`` is Spearman's rank
correlation between the LayerNorms' ``B_simple`` and the whole model's over the record steps;
the statistic is ``mean_s rho_s``. (A) association: a one-sided permutation test of ``mean
rho > 0`` that shuffles the record order of one series within each seed (every seed
independently), p < 0.05; (B) strength: the 95% bootstrap interval (over seeds) of ``mean
rho`` above 0.5. Pass: A and B's lower bound > 0.5; fail: A significant the other way (p <
0.05 for ``mean rho < 0``) or B's upper bound < 0.5; else inconclusive. The threshold 0.5 and
the tests were fixed after a 3-seed quick smoke run and before the full run. Both series share
their trend in training (the noise scale grows as the loss falls); "tracks" is that shared
trend, as in Gray et al.'s figures, and the ratio ``B_norm / B_model`` is reported, not tested.
"""

from __future__ import annotations

import numpy as np

from sigprop.paper.experiments import Data, gns_tracking  # noqa: F401 (registers it)
from sigprop.util import stats

STRONG = 0.5  # (B): the bootstrap interval of mean rho above this
RESAMPLES = 10000


def per_seed_rho(norm: np.ndarray, model: np.ndarray) -> np.ndarray:
    """``[seeds]``: Spearman's rho of the two ``[seeds, records]`` series, per seed."""
    return np.array([stats.spearman(a, b) for a, b in zip(norm, model)])


def within_seed_test(norm: np.ndarray, model: np.ndarray, *, resamples: int = RESAMPLES,
                     seed: int = 0) -> dict:
    """``mean_s rho_s`` and its one-sided permutation p-values (``p_greater``: ``mean rho > 0``;
    ``p_less``: ``< 0``): the null shuffles the record order of ``norm`` within each seed,
    independently per seed (the observed order counted among the draws)."""
    norm, model = np.asarray(norm, float), np.asarray(model, float)
    observed = float(per_seed_rho(norm, model).mean())
    rng = np.random.default_rng(seed)
    n = norm.shape[1]
    null = np.zeros(resamples + 1)
    for a, b in zip(norm, model):  # Spearman's rho is Pearson's r of the ranks: shuffle ranks
        ra, rb = stats.ranks(a), stats.ranks(b)
        ra, rb = ra - ra.mean(), rb - rb.mean()
        den = np.sqrt((ra @ ra) * (rb @ rb))
        perms = np.argsort(rng.random((resamples, n)), axis=1)
        rho = (ra[perms] @ rb) / den if den > 0 else np.full(resamples, np.nan)
        null[1:] += rho / len(norm)
    null[0] = observed
    tol = 1e-12 * max(1.0, abs(observed))
    return {"mean_rho": observed, "p_greater": float(np.mean(null >= observed - tol)),
            "p_less": float(np.mean(null <= observed + tol)), "seeds": len(norm)}


def tracking_test(d: Data) -> dict:
    """Claim 19's numbers."""
    norm, model = np.asarray(d["norm/b_simple"], float), np.asarray(d["model/b_simple"], float)
    rho = per_seed_rho(norm, model)
    a = within_seed_test(norm, model)
    ci = stats.bootstrap_ci((rho,), lambda r: r.mean())
    if a["p_greater"] < stats.ALPHA and ci[0] > STRONG:
        verdict = "pass"
    elif a["p_less"] < stats.ALPHA or ci[1] < STRONG:
        verdict = "fail"
    else:
        verdict = "inconclusive"
    ratio = norm / model
    return {"rho": rho, "A": a, "ci": ci, "verdict": verdict,
            "median_ratio_per_record": np.median(ratio, axis=0),
            "median_ratio": float(np.median(ratio))}


def claim19(d: Data):
    """Claim 19's :class:`sigprop.paper.validate.ClaimResult`."""
    # imported here: sigprop.paper.validate imports this module (its TABLE)
    from sigprop.paper.validate import ClaimResult

    s = d.sizes
    t = tracking_test(d)
    steps = [int(v) for v in d["steps"]]
    return ClaimResult(
        19, "The normalization layers' gradient noise scale tracks the whole model's through "
        "early training (Gray et al. 2024)",
        f"Pre-LN transformer LM depth {s.depth} width {s.width} heads {s.heads}, "
        f"{d.meta['inputs']}; {s.seeds} seeds, records at steps {steps[0]}..{steps[-1]} every "
        f"{s.record_every}; B_simple of every LayerNorm's scale and bias (sigprop's taps) vs "
        "all parameters (vmap(grad)) on the probe batch",
        {"norm_b_simple_median_per_record": np.median(d["norm/b_simple"], axis=0),
         "model_b_simple_median_per_record": np.median(d["model/b_simple"], axis=0),
         "probe_loss_median_per_record": np.median(d["loss"], axis=0),
         "rho_per_seed": t["rho"], "median_ratio_norm/model": t["median_ratio"],
         "p": {"mean_rho>0": t["A"]["p_greater"], "opposite": t["A"]["p_less"]}},
        "per seed, Spearman rho of the LayerNorms' B_simple vs the whole model's over the "
        "records; (A) mean rho > 0, one-sided permutation p < 0.05 (record order shuffled "
        f"within each seed); (B) its 95% bootstrap CI over seeds above {STRONG:g}; pass: A "
        f"and CI low > {STRONG:g}; fail: mean rho < 0 at p < 0.05 or CI high < {STRONG:g}; "
        "else inconclusive",
        verdict=t["verdict"], statistic={"mean_rho": t["A"]["mean_rho"]},
        p_value=t["A"]["p_greater"], ci={"mean_rho": t["ci"]})


TABLE = {19: (("gns_tracking",), claim19)}
"""Claim 19 for :data:`sigprop.paper.validate.CLAIM_EXPERIMENTS`."""

__all__ = ["claim19", "per_seed_rho", "tracking_test", "within_seed_test", "TABLE"]
