"""Claims 13 and 14: transformers at initialization, each a criterion fixed before the runs.

Claim 13 (Xiong et al. 2020, Fig. 3 / Thm 1): Post-LN's parameter-gradient norm grows toward the
output layers, Pre-LN's stays roughly flat. Per seed ``s``, ``slope_s`` is the least-squares slope
of ``ln ||dL/dW_2^l||_F`` against the block index ``l`` (``W_2`` the MLP's second dense, Xiong's
``W^{FFN,2}``). (A) Post-LN ``slope > 0`` and (B) Post-LN ``slope >`` Pre-LN's (paired over
seeds), each a one-sided sign-flip test at p < 0.05; (C) the 95% bootstrap interval of Pre-LN's
``mean slope x (depth - 1)`` (the log of the fit's last / first ratio) lies inside
``[ln 0.5, ln 2]``. Pass: A, B and C; fail: A or B significant the other way, or C's interval
entirely outside; else inconclusive.

Claim 14 (Dong et al. 2021; Noci et al. 2022): (A) pure attention without skips collapses the
tokens, with skips it does not: per seed ``r_s`` = token residual ratio after the last block /
after the first; median ``r_s`` < 1e-2 without skips and > 0.5 with them (deterministic).
(B1) Pre-LN's unscaled last-block token cosine rises with depth (Spearman rho > 0 over all
(depth, seed) points, one-sided permutation p < 0.05); (B2) at the largest depth branches scaled
by ``1 / sqrt(depth)`` give a lower cosine than unscaled ones (paired sign-flip, p < 0.05). Pass:
A, B1 and B2; fail: A violated, or B1 / B2 significant the other way; else inconclusive.
"""

from __future__ import annotations

import math
import re

import numpy as np

from sigprop.paper.experiments import Data
from sigprop.paper.experiments import transformers as tx
from sigprop.paper.validate import ClaimResult
from sigprop.util import stats

FLAT = (math.log(0.5), math.log(2.0))  # claim 13 (C): Pre-LN's fitted last / first in [1/2, 2]
COLLAPSED = 1e-2  # claim 14 (A): median residual-ratio decay without skips below this
KEPT = 0.5  # ... and with skips above this
_BLOCK = re.compile(r"^block\d+$")
PLACEMENTS = tx.PLACEMENTS


def _mean(v) -> float:
    return float(np.mean(v))


# ------------------------------------------------------------------------------- claim 13


def fc2_grads(d: Data, placement: str) -> np.ndarray:
    """``[seeds, depth]``: ||dL/dW|| of each block's second MLP dense (``blockNN/mlp/fc2``)."""
    run = d.run(placement)
    names = [str(n) for n in run.param_layer_names]
    idx = [i for i, n in enumerate(names) if n.endswith("/mlp/fc2")]
    return np.asarray(run.param_grad_norm, float)[:, idx]


def log_slopes(g: np.ndarray) -> np.ndarray:
    """Per seed, the least-squares slope of ``ln g`` against the layer index ``[seeds]``."""
    g = np.asarray(g, float)
    return np.polyfit(np.arange(g.shape[1]), np.log(g).T, 1)[0]


def _interval_verdict(ci, lo: float, hi: float) -> str:
    """``pass`` if ``ci`` lies inside ``[lo, hi]``, ``fail`` if entirely outside, else
    ``inconclusive``."""
    if lo <= ci[0] and ci[1] <= hi:
        return "pass"
    if ci[1] < lo or ci[0] > hi:
        return "fail"
    return "inconclusive"


def xiong_test(d: Data) -> dict:
    """Claim 13's numbers: per-layer means, per-seed slopes, the three parts' tests."""
    post, pre = fc2_grads(d, "post"), fc2_grads(d, "pre")
    depth = post.shape[1]
    sp, sq = log_slopes(post), log_slopes(pre)
    a, b = stats.sign_flip_test(sp), stats.sign_flip_test(sp - sq)
    c_ci = stats.bootstrap_ci((sq,), lambda x: x.mean() * (depth - 1))
    parts = {"A": stats.verdict(a["p_greater"], a["p_less"]),
             "B": stats.verdict(b["p_greater"], b["p_less"]),
             "C": _interval_verdict(c_ci, *FLAT)}
    return {"post": post, "pre": pre, "depth": depth, "post_slopes": sp, "pre_slopes": sq,
            "parts": parts, "verdict": stats.combine(parts.values()), "A": a, "B": b,
            "pre_log_ratio": float(sq.mean() * (depth - 1)),
            "ci": {"post_slope": stats.bootstrap_ci((sp,), _mean),
                   "post_minus_pre_slope": stats.bootstrap_ci((sp - sq,), _mean),
                   "pre_slope_x_(depth-1)": c_ci}}


def claim13(d: Data) -> ClaimResult:
    s = d.sizes
    t = xiong_test(d)
    ratio = {p: float(np.exp(t[f"{p}_slopes"].mean() * (t["depth"] - 1))) for p in PLACEMENTS}
    return ClaimResult(
        13, "Post-LN's parameter-gradient norm grows toward the output layers, Pre-LN's stays "
        "roughly flat (Xiong et al. 2020)",
        f"causal byte-level LM (vocab 256) depth {s.depth} width {s.width} heads {s.heads}, "
        f"{d.meta['inputs']}; Post-LN and Pre-LN from the same {s.seeds} seeds; "
        "||dL/dW|| of each block's second MLP dense (W^{FFN,2})",
        {"fc2_grad_norm_per_layer": {p: t[p].mean(axis=0) for p in PLACEMENTS},
         "mean_log_slope_per_layer": {p: float(t[f"{p}_slopes"].mean()) for p in PLACEMENTS},
         "fitted_last/first": ratio,
         "seeds_with_post_slope>0": int(np.sum(t["post_slopes"] > 0)),
         "parts": t["parts"],
         "p": {"A_post_slope>0": t["A"]["p_greater"], "A_opposite": t["A"]["p_less"],
               "B_post>pre": t["B"]["p_greater"], "B_opposite": t["B"]["p_less"]}},
        "per seed, slope of ln(grad norm) vs layer: (A) Post-LN slope > 0 and (B) Post-LN slope "
        "> Pre-LN slope (paired), each a one-sided sign-flip test over seeds at p < 0.05; (C) "
        "the 95% bootstrap CI of Pre-LN's mean slope x (depth - 1) inside [ln 0.5, ln 2]; pass: "
        "A, B and C; fail: A or B at p < 0.05 the other way, or C's CI entirely outside; else "
        "inconclusive",
        verdict=t["verdict"],
        statistic={"post_slope": float(t["post_slopes"].mean()),
                   "post_minus_pre_slope": float((t["post_slopes"] - t["pre_slopes"]).mean()),
                   "pre_slope_x_(depth-1)": t["pre_log_ratio"]},
        p_value=max(t["A"]["p_greater"], t["B"]["p_greater"]), ci=t["ci"])


# ------------------------------------------------------------------------------- claim 14


def block_index(run) -> np.ndarray:
    """Indices of the block stream taps (``blockNN``), in order."""
    return run.index(lambda n: bool(_BLOCK.match(n)))


def residual_ratios(d: Data, skip: bool) -> np.ndarray:
    """``[seeds, blocks]``: pure attention's token residual ratio after each block."""
    run = d.run(tx.collapse_label(skip))
    return np.asarray(run.token_residual_ratio, float)[:, block_index(run)]


def last_cosine(d: Data, depth: int, scaled: bool) -> np.ndarray:
    """``[seeds]``: Pre-LN's token cosine at the last block's stream (before the final norm)."""
    run = d.run(tx.depth_label(depth, scaled))
    return np.asarray(run.token_cosine_similarity, float)[:, block_index(run)[-1]]


def collapse_test(d: Data) -> dict:
    """Claim 14's numbers: the residual-ratio decays, the cosines per depth, the parts' tests."""
    depths = [int(x) for x in d.sizes.depths]
    ratios = {k: residual_ratios(d, skip) for k, skip in (("noskip", False), ("skip", True))}
    decay = {k: r[:, -1] / r[:, 0] for k, r in ratios.items()}
    median = {k: float(np.median(v)) for k, v in decay.items()}
    a_ok = median["noskip"] < COLLAPSED and median["skip"] > KEPT
    cos = {k: {n: last_cosine(d, n, k == "scaled") for n in depths}
           for k in ("unscaled", "scaled")}
    x = np.concatenate([np.full(len(cos["unscaled"][n]), n) for n in depths])
    y = np.concatenate([cos["unscaled"][n] for n in depths])
    b1 = stats.spearman_test(x, y)
    top = depths[-1]
    diff = cos["unscaled"][top] - cos["scaled"][top]
    b2 = stats.sign_flip_test(diff)
    parts = {"A": "pass" if a_ok else "fail",
             "B1": stats.verdict(b1["p_greater"], b1["p_less"]),
             "B2": stats.verdict(b2["p_greater"], b2["p_less"])}

    def rho(xy):
        return stats.spearman(xy[:, 0], xy[:, 1])

    return {"decay": decay, "median_decay": median, "cosine": cos, "depths": depths,
            "parts": parts, "verdict": stats.combine(parts.values()), "B1": b1, "B2": b2,
            "ci": {"B1_rho": stats.bootstrap_ci((np.stack([x, y], 1),), rho),
                   f"B2_unscaled_minus_scaled_at_{top}": stats.bootstrap_ci((diff,), _mean)}}


def claim14(d: Data) -> ClaimResult:
    s = d.sizes
    t = collapse_test(d)
    top = t["depths"][-1]
    log10 = {k: np.log10(residual_ratios(d, skip).mean(axis=0))
             for k, skip in (("noskip", False), ("skip", True))}
    return ClaimResult(
        14, "Token collapse: pure attention without skips collapses the tokens, skips prevent "
        "it; 1/sqrt(depth) branches keep deep Pre-LN tokens apart (Dong et al. 2021; Noci et "
        "al. 2022)",
        f"{d.meta['inputs']}; (A) pure attention (no MLP, no normalizer) depth "
        f"{s.attention_depth} width {s.width} heads {s.heads}, with and without skips, "
        f"{s.attention_seeds} seeds; (B) Pre-LN blocks with skips, depths {tuple(t['depths'])}, "
        f"branches unscaled and x 1/sqrt(depth), {s.depth_seeds} seeds; token cosine at the "
        "last block's stream (before the final norm)",
        {"median_residual_ratio_last/first": t["median_decay"],
         "log10_residual_ratio_per_layer": log10,
         "last_block_cosine": {k: {n: float(v.mean()) for n, v in c.items()}
                               for k, c in t["cosine"].items()},
         "parts": t["parts"],
         "p": {"B1_rho>0": t["B1"]["p_greater"], "B1_opposite": t["B1"]["p_less"],
               "B2_scaled<unscaled": t["B2"]["p_greater"], "B2_opposite": t["B2"]["p_less"]}},
        f"(A) median over seeds of the token residual ratio last / first block < {COLLAPSED:g} "
        f"without skips and > {KEPT:g} with skips (deterministic); (B1) unscaled Pre-LN's "
        "last-block token cosine rises with depth: Spearman rho > 0 over all (depth, seed) "
        f"points, one-sided permutation p < 0.05; (B2) at depth {top} the 1/sqrt(depth)-scaled "
        "cosine below the unscaled (paired sign-flip over seeds, p < 0.05); pass: A, B1, B2; "
        "fail: A violated or B1 / B2 at p < 0.05 the other way; else inconclusive",
        verdict=t["verdict"],
        statistic={"B1_rho": t["B1"]["rho"],
                   f"B2_unscaled_minus_scaled_at_{top}": t["B2"]["mean"]},
        p_value=max(t["B1"]["p_greater"], t["B2"]["p_greater"]), ci=t["ci"])


__all__ = ["claim13", "claim14", "collapse_test", "fc2_grads", "last_cosine", "log_slopes",
           "residual_ratios", "xiong_test"]
