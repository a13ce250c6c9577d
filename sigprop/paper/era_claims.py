"""Claims 15-18: transformer normalizers of the LLM era at initialization, each a criterion fixed
before the runs (:mod:`sigprop.paper.experiments.era` holds the settings). Every part is a
one-sided test over seeds at p < 0.05 (:mod:`sigprop.util.stats`): a sign-flip test of a mean
(paired where two runs share seeds), or an equivalence test (two one-sided sign-flip tests,
TOST: the mean lies inside ``[lo, hi]`` when both ``mean > lo`` and ``mean < hi`` are
significant, its p the larger; it lies outside when ``mean > hi`` or ``mean < lo`` is). A part
passes when its predicted direction is significant, fails when the opposite one is, and is
inconclusive otherwise (or when a value is not finite); a claim passes when all its parts do,
fails when any fails (its p-value the largest part's). Each reports 95% bootstrap intervals.

Claim 15 (Zhu et al. 2025, Transformers without Normalization, arXiv 2503.10622; abstract:
DyT, ``gamma tanh(alpha x) + beta`` with ``alpha0 = 0.5`` by default, is "a drop-in replacement
for normalization layers in Transformers", with which they "match or exceed the performance of
their normalized counterparts"). The paper states this of trained models and makes no
statement about initialization; what is tested is its init-time consequence for signal
propagation: swapping LayerNorm for DyT in a Pre-LN byte-level LM leaves (A) the last block's
stream variance within a factor 2 (per seed ``ln(var_DyT / var_LN)`` inside
``[ln 0.5, ln 2]``), (B) its token cosine within 0.1 (``cos_DyT - cos_LN`` inside
``[-0.1, 0.1]``) and (C) the stream gradient's first / last block ratio within a factor 2
(``ln(g_first / g_last)``, DyT minus LN, inside ``[ln 0.5, ln 2]``); each an equivalence
test, pass: A, B and C.

Claim 16 (Dehghani et al. 2023, ViT-22B, arXiv 2302.05442, Sec. 2 "QK normalization":
divergence at scale came from "extremely large values in attention logits, which lead to
(almost one-hot) attention weights with near-zero entropy", fixed by LayerNorm on the queries
and keys; Henry et al. 2020 normalize them for the same purpose). Their logit growth happens in
training, as the query/key weights grow; at initialization the same growth is produced by a
stream whose scale grows with depth (no normalizer in the blocks), the queries and keys projected
from it. At the largest width, per seed: (A) without QK-norm the largest logit grows with depth
(least-squares slope of ``ln attention_logit_max`` against the layer > 0); at the last layer
(B) QK-norm's largest logit is below plain attention's (paired, ``ln`` difference > 0) and (C)
its attention entropy above (paired); (D) with QK-norm the largest logit stays put: last / first
layer ``ln`` ratio inside ``[ln 0.5, ln 2]`` (equivalence). Pass: A-D. The other widths are
reported (the paper states no init-time width trend).

Claim 17 (Wang et al. 2022, DeepNet, arXiv 2203.00555; abstract: DeepNorm "modif[ies] the
residual connection", with an init derived so that "model updates can be bounded in a stable
way", combining Post-LN's performance with Pre-LN's stability; Sec. 3, as we read it, traces deep
Post-LN's instability to large early model updates and gradients vanishing through the
LayerNorms toward the bottom layers, measured early in training, not at init; Sec. 4 gives a
decoder's ``alpha = (2N)^(1/4)``, ``beta = (8N)^(-1/4)``). Tested at initialization, on the
per-block parameter-gradient norm ``g_l = sqrt(sum ||dL/dW||^2)`` over the block's six kernels,
per seed the least-squares slope ``s`` of ``ln g_l`` against the block index: (A) Post-LN's
``s > 0`` (its gradients smaller toward the input); (B) DeepNorm's profile flatter,
``|s_Post| - |s_DeepNorm| > 0`` (paired); (C) DeepNorm's fitted last / first
``s (depth - 1)`` inside ``[ln 0.5, ln 2]`` (equivalence). Pass: A, B and C.

Claim 18 (Sun et al. 2025, The Curse of Depth in Large Language Models, arXiv 2502.05795;
abstract and Sec. 3: Pre-LN's "output variance exponentially grows with the model depth";
Sec. 4: LayerNorm Scaling, the block-l normalizer
output times ``1 / sqrt(l)``, "mitigates the output variance explosion"). Per seed
``G = ln(var_L / var_1)`` of the residual stream after the last / first block: (A) Pre-LN's
``G > 0`` and (B) LNS's ``G`` below Pre-LN's (paired). Pass: A and B. How identity-like each
block is (its branches' variance over the stream's before it) is reported, not tested: the
paper's identity-like deep layers are a statement about trained models.

Provenance: the criteria of 15 and 18 were planned before any run, but one timing probe (Pre-LN
depth 24 width 64 with LayerNorm, LNS and DyT) printed stream variances before they were written
here; they were written as planned. Those of 16 and 17 were written before any of their runs.
"""

from __future__ import annotations

import math
import re

import numpy as np

from sigprop.paper.experiments import Data, era
from sigprop.util import stats

FACTOR2 = (math.log(0.5), math.log(2.0))  # "within a factor 2" on a log scale
COSINE_TOL = (-0.1, 0.1)  # claim 15 (B): the token cosine within 0.1
_BLOCK = re.compile(r"^block\d+$")


def _claim(*args, **kw):
    # imported here: sigprop.paper.validate imports this module (its TABLE)
    from sigprop.paper.validate import ClaimResult

    return ClaimResult(*args, **kw)


def _mean(v) -> float:
    return float(np.mean(v))


def _finite(v) -> bool:
    return bool(np.all(np.isfinite(np.asarray(v, float))))


def greater(d) -> dict:
    """The part "mean(d) > 0": a one-sided sign-flip test over seeds; ``verdict``, ``p``
    (predicted direction), ``p_opposite``, ``mean``, ``ci`` (95% bootstrap of the mean)."""
    d = np.asarray(d, float)
    if not _finite(d):
        return {"verdict": "inconclusive", "p": 1.0, "p_opposite": 1.0, "mean": float("nan"),
                "ci": (float("nan"), float("nan"))}
    t = stats.sign_flip_test(d)
    return {"verdict": stats.verdict(t["p_greater"], t["p_less"]), "p": t["p_greater"],
            "p_opposite": t["p_less"], "mean": t["mean"], "ci": stats.bootstrap_ci((d,), _mean)}


def inside(d, lo: float, hi: float) -> dict:
    """The part "lo < mean(d) < hi": two one-sided sign-flip tests (TOST), ``p`` the larger of
    ``mean > lo`` and ``mean < hi``; ``p_opposite`` the smaller of ``mean > hi`` and
    ``mean < lo`` (significantly outside); ``mean``, ``ci`` as :func:`greater`."""
    d = np.asarray(d, float)
    if not _finite(d):
        return {"verdict": "inconclusive", "p": 1.0, "p_opposite": 1.0, "mean": float("nan"),
                "ci": (float("nan"), float("nan")), "bounds": (lo, hi)}
    above_lo, below_hi = stats.sign_flip_test(d - lo), stats.sign_flip_test(d - hi)
    p = max(above_lo["p_greater"], below_hi["p_less"])
    p_out = min(below_hi["p_greater"], above_lo["p_less"])
    return {"verdict": stats.verdict(p, p_out), "p": p, "p_opposite": p_out,
            "mean": float(d.mean()), "ci": stats.bootstrap_ci((d,), _mean), "bounds": (lo, hi)}


def _summary(parts: dict) -> dict:
    """A claim's verdict (all parts pass), its p (the largest part's) and the parts' fields."""
    return {"verdict": stats.combine(p["verdict"] for p in parts.values()),
            "p": max(p["p"] for p in parts.values()),
            "parts": {k: p["verdict"] for k, p in parts.items()},
            "statistic": {k: p["mean"] for k, p in parts.items()},
            "ci": {k: p["ci"] for k, p in parts.items()},
            "p_parts": {k: {"predicted": p["p"], "opposite": p["p_opposite"]}
                        for k, p in parts.items()}}


def stream(d: Data, label: str, metric: str) -> np.ndarray:
    """``[seeds, depth]``: ``metric`` at the residual stream after each block (``blockNN``)."""
    run = d.run(label)
    idx = run.index(lambda n: bool(_BLOCK.match(n)))
    return np.asarray(getattr(run, metric), float)[:, idx]


def log_slopes(y: np.ndarray) -> np.ndarray:
    """Per seed (row), the least-squares slope of ``ln y`` against the column index."""
    y = np.asarray(y, float)
    return np.polyfit(np.arange(y.shape[1]), np.log(y).T, 1)[0]


# ------------------------------------------------------------------------------- claim 15


def dyt_test(d: Data) -> dict:
    var = {k: stream(d, k, "activation_variance") for k in era.NORMS}
    cos = {k: stream(d, k, "token_cosine_similarity") for k in era.NORMS}
    grad = {k: np.asarray(d.run(k).grad_norm, float) for k in era.NORMS}
    ratio = {k: np.log(g[:, 0] / g[:, -1]) for k, g in grad.items()}
    parts = {"A": inside(np.log(var["dyt"][:, -1] / var["ln"][:, -1]), *FACTOR2),
             "B": inside(cos["dyt"][:, -1] - cos["ln"][:, -1], *COSINE_TOL),
             "C": inside(ratio["dyt"] - ratio["ln"], *FACTOR2)}
    return {"variance": var, "cosine": cos, "grad": grad, "grad_log_first/last": ratio,
            **_summary(parts)}


def claim15(d: Data):
    s = d.sizes
    t = dyt_test(d)
    return _claim(
        15, "DyT as a drop-in for LayerNorm in Pre-LN leaves signal propagation at init "
        "unchanged (Zhu et al. 2025)",
        f"causal byte-level LM (vocab 256) depth {s.depth} width {s.width} heads {s.heads}, "
        f"{d.meta['inputs']}; Pre-LN with LayerNorm and with DyT (alpha0 0.5, every normalizer "
        f"incl. the final one) from the same {s.seeds} seeds; the last block's stream, the "
        "stream gradient at the first block's attention and the last block's MLP",
        {"last_block_variance": {k: _mean(v[:, -1]) for k, v in t["variance"].items()},
         "last_block_cosine": {k: _mean(v[:, -1]) for k, v in t["cosine"].items()},
         "grad_first/last": {k: float(np.exp(v.mean())) for k, v in
                             t["grad_log_first/last"].items()},
         "variance_per_block": {k: v.mean(axis=0) for k, v in t["variance"].items()},
         "parts": t["parts"], "p": t["p_parts"]},
        "equivalence tests (two one-sided sign-flip tests over seeds, p < 0.05): (A) ln(var "
        "DyT / var LN) at the last block inside [ln 0.5, ln 2]; (B) cosine DyT - LN at the last "
        "block inside [-0.1, 0.1]; (C) ln(g_first / g_last) DyT - LN inside [ln 0.5, ln 2]; "
        "pass: A, B, C; fail: any significantly outside; else inconclusive",
        verdict=t["verdict"], statistic=t["statistic"], p_value=t["p"], ci=t["ci"])


# ------------------------------------------------------------------------------- claim 16


def attention(d: Data, width: int, qk: str, metric: str) -> np.ndarray:
    """``[seeds, depth]``: ``metric`` of each attention layer."""
    return np.asarray(getattr(d.run(era.qk_label(width, qk)), metric), float)


def qk_test(d: Data) -> dict:
    widths = [int(w) for w in d.sizes.widths]
    top = widths[-1]
    m = {k: attention(d, top, k, "attention_logit_max") for k in era.QK}
    e = {k: attention(d, top, k, "attention_entropy") for k in era.QK}
    parts = {"A": greater(log_slopes(m["plain"])),
             "B": greater(np.log(m["plain"][:, -1] / m["layernorm"][:, -1])),
             "C": greater(e["layernorm"][:, -1] - e["plain"][:, -1]),
             "D": inside(np.log(m["layernorm"][:, -1] / m["layernorm"][:, 0]), *FACTOR2)}
    per_width = {k: {w: {"logit_max": _mean(attention(d, w, k, "attention_logit_max")[:, -1]),
                         "entropy": _mean(attention(d, w, k, "attention_entropy")[:, -1])}
                     for w in widths} for k in era.QK}
    return {"widths": widths, "width": top, "logit_max": m, "entropy": e,
            "last_layer_per_width": per_width, **_summary(parts)}


def claim16(d: Data):
    s = d.sizes
    t = qk_test(d)
    return _claim(
        16, "QK-norm keeps the attention logits bounded and the attention entropy up where the "
        "logits grow (Dehghani et al. 2023; Henry et al. 2020)",
        f"{d.meta['inputs']}; blocks without normalizers (placement none, skips), depth "
        f"{s.depth}, heads {s.heads}, widths {tuple(t['widths'])} (tested at {t['width']}), "
        f"with and without qk_norm='layernorm', the same {s.seeds} seeds",
        {"logit_max_per_layer": {k: v.mean(axis=0) for k, v in t["logit_max"].items()},
         "entropy_per_layer": {k: v.mean(axis=0) for k, v in t["entropy"].items()},
         "last_layer_per_width": t["last_layer_per_width"],
         "parts": t["parts"], "p": t["p_parts"]},
        f"at width {t['width']}, per seed, one-sided sign-flip tests at p < 0.05: (A) without "
        "QK-norm the slope of ln(max logit) against the layer > 0; at the last layer (B) "
        "ln(max logit plain / QK-norm) > 0 and (C) entropy QK-norm - plain > 0; (D) with "
        "QK-norm ln(max logit last / first layer) inside [ln 0.5, ln 2] (equivalence, two "
        "one-sided tests); pass: A-D; fail: any significantly the other way; else inconclusive",
        verdict=t["verdict"], statistic=t["statistic"], p_value=t["p"], ci=t["ci"])


# ------------------------------------------------------------------------------- claim 17


def block_grads(d: Data, label: str) -> np.ndarray:
    """``[seeds, depth]``: per block, the root sum of squares of its kernels' ``||dL/dW||``."""
    run = d.run(label)
    names = [str(n) for n in run.param_layer_names]
    g = np.asarray(run.param_grad_norm, float)
    blocks = sorted({n.split("/")[0] for n in names if n.startswith("block") and "/" in n})
    return np.stack([np.sqrt(np.sum(g[:, [i for i, n in enumerate(names)
                                          if n.startswith(b + "/")]] ** 2, axis=1))
                     for b in blocks], axis=1)


def deepnorm_test(d: Data) -> dict:
    g = {k: block_grads(d, k) for k in era.DEEP}
    depth = g["post"].shape[1]
    s = {k: log_slopes(v) for k, v in g.items()}
    parts = {"A": greater(s["post"]),
             "B": greater(np.abs(s["post"]) - np.abs(s["deepnorm"])),
             "C": inside(s["deepnorm"] * (depth - 1), *FACTOR2)}
    return {"grads": g, "slopes": s, "depth": depth, **_summary(parts)}


def claim17(d: Data):
    s = d.sizes
    t = deepnorm_test(d)
    return _claim(
        17, "DeepNorm evens out the per-block parameter gradients that Post-LN lets fall toward "
        "the input (Wang et al. 2022)",
        f"causal byte-level LM (vocab 256) depth {s.depth} width {s.width} heads {s.heads}, "
        f"{d.meta['inputs']}; Post-LN and DeepNorm (alpha (2N)^(1/4), beta (8N)^(-1/4)) from "
        f"the same {s.seeds} seeds; per block sqrt(sum ||dL/dW||^2) over its six kernels",
        {"grad_norm_per_block": {k: v.mean(axis=0) for k, v in t["grads"].items()},
         "fitted_last/first": {k: float(np.exp(v.mean() * (t["depth"] - 1)))
                               for k, v in t["slopes"].items()},
         "parts": t["parts"], "p": t["p_parts"]},
        "per seed s = slope of ln(block grad norm) against the block index: (A) Post-LN s > 0 "
        "and (B) |s Post-LN| - |s DeepNorm| > 0 (paired), one-sided sign-flip tests at p < "
        "0.05; (C) DeepNorm's s x (depth - 1) inside [ln 0.5, ln 2] (equivalence, two one-sided "
        "tests); pass: A, B, C; fail: any significantly the other way; else inconclusive",
        verdict=t["verdict"], statistic=t["statistic"], p_value=t["p"], ci=t["ci"])


# ------------------------------------------------------------------------------- claim 18


def contribution(d: Data, label: str) -> np.ndarray:
    """``[seeds, depth - 1]``: block ``l >= 1``'s branch variances (attention + MLP) over the
    stream variance entering it (block ``l - 1``'s output): small = identity-like."""
    run = d.run(label)
    rv = np.asarray(run.residual_variance, float)
    names = [str(n) for n in run.branch_layer_names]
    branch = np.stack([rv[:, [i for i, n in enumerate(names) if n.startswith(b + "/")]].sum(1)
                       for b in sorted({n.split("/")[0] for n in names})], axis=1)
    return branch[:, 1:] / stream(d, label, "activation_variance")[:, :-1]


def lns_test(d: Data) -> dict:
    var = {k: stream(d, k, "activation_variance") for k in era.SCALING}
    growth = {k: np.log(v[:, -1] / v[:, 0]) for k, v in var.items()}
    parts = {"A": greater(growth["pre"]), "B": greater(growth["pre"] - growth["lns"])}
    return {"variance": var, "growth": growth,
            "contribution": {k: contribution(d, k) for k in era.SCALING}, **_summary(parts)}


def claim18(d: Data):
    s = d.sizes
    t = lns_test(d)
    n = s.depth
    return _claim(
        18, "LayerNorm Scaling slows Pre-LN's residual-stream variance growth with depth (Sun "
        "et al. 2025)",
        f"causal byte-level LM (vocab 256) depth {n} width {s.width} heads {s.heads}, "
        f"{d.meta['inputs']}; Pre-LN and Pre-LN with LayerNorm Scaling (block l's normalizer "
        f"outputs x 1/sqrt(l)) from the same {s.seeds} seeds; activation variance of the stream "
        "after each block",
        {"stream_variance_last/first": {k: float(np.exp(v.mean())) for k, v in
                                        t["growth"].items()},
         "stream_variance_per_block": {k: v.mean(axis=0) for k, v in t["variance"].items()},
         "branch/stream_variance_at_blocks_2,mid,last (reported, untested)":
             {k: [float(c.mean(axis=0)[i]) for i in (0, c.shape[1] // 2, -1)]
              for k, c in t["contribution"].items()},
         "parts": t["parts"], "p": t["p_parts"]},
        "per seed G = ln(stream variance after the last block / after the first): (A) Pre-LN "
        "G > 0 and (B) G Pre-LN - G LNS > 0 (paired), one-sided sign-flip tests at p < 0.05; "
        "pass: A and B; fail: either significantly the other way; else inconclusive",
        verdict=t["verdict"], statistic=t["statistic"], p_value=t["p"], ci=t["ci"])


# claim -> (its experiments, its check): merged into sigprop.paper.validate.CLAIM_EXPERIMENTS
TABLE = {15: (("dyt_init",), claim15), 16: (("qk_norm",), claim16),
         17: (("deepnorm_gradients",), claim17), 18: (("curse_of_depth",), claim18)}

__all__ = ["TABLE", "attention", "block_grads", "claim15", "claim16", "claim17", "claim18",
           "contribution", "deepnorm_test", "dyt_test", "greater", "inside", "lns_test",
           "log_slopes", "qk_test", "stream"]
