"""``sigprop validate``: the papers' claims and closed forms, re-run as experiments.

Each claim of ``science.md`` (1-8 and 12 from [BB] and [U], 9-11 closed forms, 13-14 transformers:
:mod:`sigprop.paper.transformer_claims`, 15-18 transformer normalizers:
:mod:`sigprop.paper.era_claims`, 19 the normalization layers' gradient noise scale:
:mod:`sigprop.paper.gns_claim`) is an experiment
and a criterion fixed in advance, stated in the claim's ``expected`` text. A claim that fails
is reported as failed, with its numbers. Deterministic criteria give ``pass`` or ``fail``; the
statistical claims (7, 8, 12-19) also ``inconclusive``, with their statistic, one-sided
permutation p-value and 95% bootstrap interval (:mod:`sigprop.util.stats`): ``pass`` needs
p < 0.05 in the predicted direction, ``fail`` p < 0.05 in the opposite one.

Sizes: ``quick=True`` uses small networks that finish in a few minutes on 2 CPU cores, with
the same criteria; ``quick=False`` uses the papers' sizes (cfg_10, ResNet-56, WRN-26-2, width
1024 MLPs, batch 64-128) and takes much longer on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

import numpy as np

from sigprop.analyses import theory
from sigprop.paper import era_claims, experiments, gns_claim
from sigprop.paper.experiments import Data
from sigprop.paper.experiments import beyond_batchnorm as bb
from sigprop.util import stats
from sigprop.util.progress import Progress

VERDICTS = ("pass", "fail", "inconclusive")


@dataclasses.dataclass
class ClaimResult:
    """One claim: what was run, what was measured, what was expected, and the verdict."""

    id: int
    title: str
    setting: str
    measured: dict
    expected: str
    passed: bool | None = None  # deterministic criteria; statistical ones give ``verdict``
    seconds: float = 0.0
    verdict: str | None = None  # "pass" | "fail" | "inconclusive"
    statistic: dict | float | None = None  # a statistical claim's test statistic(s)
    p_value: float | None = None  # its one-sided permutation p-value (largest part's)
    ci: dict | tuple | None = None  # 95% bootstrap interval(s) of the statistic(s)

    def __post_init__(self):
        if self.verdict is None:
            self.verdict = "pass" if self.passed else "fail"
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict={self.verdict!r}; allowed: {', '.join(VERDICTS)}")
        self.passed = self.verdict == "pass"

    def to_dict(self) -> dict:
        return dict(id=self.id, title=self.title, setting=self.setting, verdict=self.verdict,
                    passed=bool(self.passed), statistic=_jsonable(self.statistic),
                    p_value=_jsonable(self.p_value), ci=_jsonable(self.ci),
                    measured=_jsonable(self.measured), expected=self.expected,
                    seconds=round(self.seconds, 2))


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_jsonable(x) for x in np.asarray(v).tolist()] if isinstance(v, np.ndarray) \
            else [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(float(v)) else round(float(v), 5)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _ordered(values: dict, order) -> bool:
    return all(values[a] > values[b] for a, b in zip(order, order[1:]))


def _stage1_out(run) -> np.ndarray:
    """Indices of the stage-1 block outputs ('stage1/block*/out')."""
    return run.index(lambda n: n.startswith("stage1/") and n.endswith("/out"))


# ------------------------------------------------------------------------------------ claims


def claim1(d: Data) -> ClaimResult:
    s = d.sizes
    blocks = s.blocks
    ok, growth = True, {}
    for norm in bb.POST_EXPONENTIAL + bb.POST_LINEAR:
        run = d.run(f"post/{norm}")
        v = run.mean("activation_variance")[_stage1_out(run)]
        growth[norm] = float(v[-1] / v[0])
        if norm in bb.POST_EXPONENTIAL:
            ok &= growth[norm] ** (1 / (blocks - 1)) >= 1.3
        else:
            ok &= growth[norm] <= 1.5 * blocks
    # SkipInit is De & Smith's remedy for pre-activation ResNets, where the identity path carries
    # no activation. (In the post-activation block, weightnorm's scaled ReLU sits on the identity
    # path after the addition and multiplies the stream by ~1.87 per block whatever alpha is.)
    skip = {}
    for norm in bb.SKIPINIT:
        run = d.run(f"pre_skipinit/{norm}")
        v = run.mean("activation_variance")[_stage1_out(run)]
        skip[norm + "+skipinit"] = float(v[-1] / v[0])
        ok &= skip[norm + "+skipinit"] <= 2.0
    return ClaimResult(
        1, "ResNet activation variance: exponential without activation normalizers",
        f"ResNet stage 1 ({blocks} blocks, widths {tuple(s.post_widths)}; post-activation, and "
        f"pre-activation for SkipInit), {s.post_image}x{s.post_image} inputs, batch "
        f"{s.post_batch}, {s.seeds} seeds; activation variance at the block outputs, last/first",
        {"variance_growth": growth, "skipinit_preact_growth": skip},
        "none/weightnorm/sws: growth per block >= 1.3 (exponential); batchnorm/layernorm/"
        f"instancenorm/groupnorm/frn: last/first <= {1.5 * blocks:g} (at most linear, 1.5 x "
        "blocks); weightnorm/sws + SkipInit (pre-activation): last/first <= 2 (bounded)",
        bool(ok))


def _cnn_claim_runs(d: Data) -> dict:
    """Claims 2 and 4: layernorm, groupnorm (large, small groups), instancenorm, batchnorm."""
    s = d.sizes
    labels = ["layernorm", bb.group_label(s.gn_large), bb.group_label(s.gn_small),
              "instancenorm", "batchnorm"]
    return {k: d.run(f"cnn/{k}") for k in labels}


def _cnn_setting(s) -> str:
    arch = s.cfg if s.cfg != "uniform" else f"uniform depth {s.depth} width {s.width}"
    return (f"non-residual cnn ({arch}), {s.image}x{s.image} inputs, batch {s.batch}, "
            f"{s.seeds} seeds")


def claim2(d: Data) -> ClaimResult:
    runs = _cnn_claim_runs(d)
    order = [k for k in runs if k != "batchnorm"]
    cos = {k: float(runs[k].mean("cosine_similarity")[-1]) for k in order}
    return ClaimResult(
        2, "Final-layer cosine similarity: layernorm > groupnorm (large > small groups) > "
        "instancenorm", _cnn_setting(d.sizes), {"final_cosine": cos},
        " > ".join(order) + " (strict, mean over seeds)", _ordered(cos, order))


def rank_trend(d: Data, sizes=None) -> dict:
    """Final-layer effective and stable rank per group size (default: every measured one), and
    the sqrt(width / g) trend."""
    s = d.sizes
    sizes = list(s.rank_group_sizes if sizes is None else sizes)
    eff = {g: float(d.run(bb.rank_run(s, g)).mean("effective_rank")[-1]) for g in sizes}
    stable = {g: float(d.run(bb.rank_run(s, g)).mean("stable_rank")[-1]) for g in sizes}
    bound = {g: float(theory.groupnorm_rank_bound(s.rank_width, g)) for g in sizes}
    return {"sizes": sizes, "effective": eff, "stable": stable, "bound": bound}


def claim3(d: Data) -> ClaimResult:
    s = d.sizes
    t = rank_trend(d, s.rank_claim_sizes)  # factors of 4 apart: the trend, not the noise
    return ClaimResult(
        3, "Final-layer rank falls as the group size grows",
        f"uniform cnn depth {s.rank_depth} width {s.rank_width}, groupnorm group sizes "
        f"{t['sizes']}, {s.image}x{s.image} inputs, batch {s.batch}, {s.seeds} seeds",
        {"final_effective_rank": t["effective"], "final_stable_rank": t["stable"],
         "theory_trend_sqrt(width/group)": t["bound"]},
        "effective rank strictly decreasing in group size (a trend: the bound's constants are "
        "unknown)", _ordered(t["effective"], t["sizes"]))


def claim4(d: Data) -> ClaimResult:
    runs = _cnn_claim_runs(d)
    ratio = {k: float(np.mean(v.grad_norm[:, 0] / v.grad_norm[:, -1])) for k, v in runs.items()}
    order = ["instancenorm", *[k for k in runs if k.startswith("groupnorm")][::-1], "layernorm"]
    ok = _ordered(ratio, order) and ratio["batchnorm"] > 1.0 \
        and ratio["batchnorm"] > ratio["layernorm"]
    return ClaimResult(
        4, "Early/late gradient norm: instancenorm largest, falling with group size, layernorm "
        "smallest; batchnorm explodes", _cnn_setting(d.sizes), {"grad_first/last": ratio},
        " > ".join(order) + "; batchnorm > 1 and > layernorm", bool(ok))


_PAIR_NORMS = ("batchnorm", "layernorm", "bmlv", "lmbv")


def _pair_setting(d: Data) -> str:
    s = d.sizes
    return (f"ReLU MLP depth {s.depth} width {s.width}, {d.meta['inputs']}, {s.seeds} seeds")


def claim5(d: Data) -> ClaimResult:
    c = {k: float(d.run(f"mlp/{k}").mean("similar_batch_correlation")[-1]) for k in _PAIR_NORMS}
    ok = (c["batchnorm"] < c["layernorm"]
          and abs(c["bmlv"] - c["batchnorm"]) < abs(c["bmlv"] - c["layernorm"])
          and abs(c["lmbv"] - c["layernorm"]) < abs(c["lmbv"] - c["batchnorm"]))
    return ClaimResult(
        5, "Similar batches: batchnorm decorrelates most, layernorm least; bmlv ~ batchnorm, "
        "lmbv ~ layernorm", _pair_setting(d), {"final_similar_batch_correlation": c},
        "batchnorm < layernorm; bmlv nearer batchnorm, lmbv nearer layernorm", bool(ok))


def claim6(d: Data) -> ClaimResult:
    c = {k: float(d.run(f"mlp/{k}").mean("gradient_correlation")[0]) for k in _PAIR_NORMS}
    ok = (c["batchnorm"] < min(c["layernorm"], c["lmbv"])
          and c["layernorm"] > max(c["batchnorm"], c["bmlv"]))
    return ClaimResult(
        6, "Gradient correlation: batchnorm most decorrelated, layernorm highly correlated",
        _pair_setting(d) + "; gradients at the first layer", {"first_layer_grad_correlation": c},
        "batchnorm below layernorm and lmbv; layernorm above batchnorm and bmlv", bool(ok))


def main_path_rate(run, per_seed: bool = False):
    """Per-layer growth factor (backward) of the squared gradient norm along the main path
    (gradient taps other than shortcut convs), from a least-squares fit of log grad_norm (of
    the seed mean, or ``per_seed``: one fit per seed, ``[seeds]``)."""
    idx = run.index(lambda n: not n.endswith("shortcut"), "grad_layer_names")
    g = np.log(np.asarray(run.grad_norm, float)[:, idx])
    g = g if per_seed else np.log(run.mean("grad_norm")[idx])[None]
    slope = np.polyfit(np.arange(len(idx)), g.T, 1)[0]
    rate = np.exp(-2 * slope)
    return rate if per_seed else float(rate[0])


CLAIM7_RATE = 1.2  # squared-gradient growth per layer that counts as exponential


def claim7(d: Data) -> ClaimResult:
    s = d.sizes
    blocks = 3 * (s.depth - 2) // 6
    # without skips: exponential, each BN-ReLU layer multiplies the squared gradient by ~pi/(pi-1)
    # (claim 10); with skips the stream's second moment grows only linearly (claim 11) and the
    # stream gradient scales with its inverse std, so the squared first/last ratio stays within
    # a small multiple of (blocks + 1). The criterion is the one fixed before these runs; each
    # part is a one-sided sign-flip test over seeds.
    bound = 2.0 * (blocks + 1)
    noskip, skip = d.run("noskip/batchnorm"), d.run("skip/batchnorm")
    rates = main_path_rate(noskip, per_seed=True)
    ratio = (np.asarray(skip.grad_norm[:, 0]) / np.asarray(skip.grad_norm[:, -1])) ** 2
    t_rate = stats.sign_flip_test(rates - CLAIM7_RATE)
    t_ratio = stats.sign_flip_test(bound - ratio)
    parts = {"without skips": stats.verdict(t_rate["p_greater"], t_rate["p_less"]),
             "with skips": stats.verdict(t_ratio["p_greater"], t_ratio["p_less"])}
    mean = lambda v: float(np.mean(v))  # noqa: E731
    return ClaimResult(
        7, "Batchnorm gradients explode with depth without skips, not with skips",
        f"WRN-{s.depth}-{s.k} + batchnorm ({blocks} blocks), {d.meta['inputs']}, "
        f"{len(rates)} seeds without skips, {len(ratio)} with",
        {"squared_grad_growth_per_layer": {"without skips": float(np.mean(rates)),
                                           "with skips": main_path_rate(skip)},
         "squared_grad_first/last": {"with skips": float(ratio.mean())},
         "seeds_over_bound": int(np.sum(ratio > bound)), "parts": parts},
        "without skips: seed-mean squared-gradient growth per layer > 1.2 (exponential; mean "
        f"field 1.47); with skips: seed-mean squared first/last ratio < 2 x (blocks + 1) = "
        f"{bound:g} (polynomial); each one-sided sign-flip test over seeds at p < 0.05 "
        "(pass: both; fail: either significantly the other way; else inconclusive)",
        verdict=stats.combine(parts.values()),
        statistic={"growth_without_skips": float(rates.mean()),
                   "ratio_with_skips": float(ratio.mean()), "bound": bound},
        p_value=max(t_rate["p_greater"], t_ratio["p_greater"]),
        ci={"growth_without_skips": stats.bootstrap_ci((rates,), mean),
            "ratio_with_skips": stats.bootstrap_ci((ratio,), mean)})


def claim9(d: Data) -> ClaimResult:
    s = d.sizes
    run = d.run("arccos")
    predicted = d["theory/arccos_cosine"]
    cos = run.mean("cosine_similarity")
    err = float(np.max(np.abs(cos - predicted)))
    # E[second moment] is preserved exactly; one network's drifts like a random walk (~5% per
    # layer at width 1024), so the mean over seeds is tested against 3 standard errors
    q = run.activation_variance + run.channel_squared_mean
    q = q / q[:, :1]
    drift = q.mean(axis=0) - 1
    se = q.std(axis=0, ddof=1) / np.sqrt(len(q))
    z = float(np.max(np.abs(drift[1:]) / se[1:]))
    ok = err <= 0.03 and z <= 3.0
    return ClaimResult(
        9, "ReLU + He init, no normalizer: variance preserved, cosine follows the arc-cosine map",
        f"ReLU MLP depth {s.arccos_depth} width {s.wide}, batch {s.arccos_batch} (one N(0,1) "
        f"batch), {len(q)} seeds",
        {"max_abs_cosine_error": err, "cosine_measured": cos, "cosine_theory": predicted,
         "max_second_moment_drift": float(np.max(np.abs(drift))),
         "max_drift_in_standard_errors": z},
        "cosine within 0.03 of the iterated arc-cosine map at every layer; mean second moment "
        "(relative to layer 0) within 3 standard errors of 1 at every layer", bool(ok))


def bn_rate(run) -> float:
    """Per-layer squared-gradient growth of the BatchNorm MLP, fitted over the interior layers
    (the first and the last two sit at the input / classifier boundaries)."""
    g = np.log(run.mean("grad_norm"))[1:-2]
    return float(np.exp(-2 * np.polyfit(np.arange(len(g)), g, 1)[0]))


def claim10(d: Data) -> ClaimResult:
    s = d.sizes
    rate = bn_rate(d.run("bn_mlp"))
    lam = float(d["theory/bn_rate"])
    rel = abs(rate - lam) / lam
    return ClaimResult(
        10, "Batchnorm ReLU MLP: squared gradient grows by pi/(pi-1) per layer",
        f"MLP depth {s.bn_depth} width {s.wide}, batch {s.bn_batch}, {s.seeds} seeds; fit over "
        "layers 1..depth-3",
        {"rate": rate, "theory": lam, "relative_error": rel},
        "within 5% of pi/(pi-1) = 1.4669", bool(rel <= 0.05))


def resnet_fits(d: Data) -> dict:
    """Claim 11's numbers: the pre-activation stream's second moment per block without a
    normalizer (growth per block, per seed) and with batchnorm (linear fit)."""
    s = d.sizes
    blocks = s.blocks
    out = {}
    for norm in bb.PRE:
        run = d.run(f"pre/{norm}")
        idx = _stage1_out(run)
        out[norm] = run.activation_variance[:, idx] + run.channel_squared_mean[:, idx]
    per_seed = (out["none"][:, -1] / out["none"][:, 0]) ** (1 / (blocks - 1))
    b = out["batchnorm"].mean(axis=0)
    slope, icpt = np.polyfit(np.arange(1, blocks + 1), b, 1)
    fit = slope * np.arange(1, blocks + 1) + icpt
    r2 = float(1 - np.sum((b - fit) ** 2) / np.sum((b - b.mean()) ** 2))
    return {"second_moment": out, "doubling": float(per_seed.mean()),
            "doubling_se": float(per_seed.std(ddof=1) / np.sqrt(len(per_seed))),
            "bn_slope": float(slope), "bn_intercept": float(icpt), "bn_r2": r2}


def claim11(d: Data) -> ClaimResult:
    s = d.sizes
    f = resnet_fits(d)
    seeds = len(f["second_moment"]["none"])
    ok = abs(f["doubling"] - 2.0) <= 3 * f["doubling_se"] and 0.8 <= f["bn_slope"] <= 1.2 \
        and f["bn_r2"] >= 0.98
    return ClaimResult(
        11, "Pre-activation ResNet: residual second moment 2^l without normalizer, l + 1 with "
        "batchnorm",
        f"pre-activation {'ResNet-56' if tuple(s.pre_widths) == (32, 64, 128) else 'ResNet'} "
        f"stage 1 ({s.blocks} blocks, widths {tuple(s.pre_widths)}), "
        f"{s.pre_image}x{s.pre_image} inputs, batch {s.pre_batch}, {seeds} seeds; "
        "activation_variance + channel_squared_mean at the block outputs",
        {"none_second_moment": f["second_moment"]["none"].mean(axis=0),
         "none_growth_per_block": f["doubling"], "none_growth_standard_error": f["doubling_se"],
         "batchnorm_second_moment": f["second_moment"]["batchnorm"].mean(axis=0),
         "batchnorm_slope_per_block": f["bn_slope"], "batchnorm_linear_r2": f["bn_r2"],
         "theory_none_growth": float(theory.resnet_second_moment(1, "none")[1]),
         "theory_batchnorm_increment": float(np.diff(theory.resnet_second_moment(1, True))[0])},
        "none: seed-mean growth per block within 3 standard errors of 2; batchnorm: linear "
        "(R^2 >= 0.98) with slope in [0.8, 1.2] per block (theory 1; zero padding of the 3x3 "
        "convs lowers it ~4% at 32x32)", bool(ok))


def hessian_ratios(d: Data) -> dict:
    """lambda_1 / lambda_K (mean over seeds) per tuned normalizer at each checkpoint."""
    s = d.sizes
    return {int(c): {n: float(np.mean(d[f"hessian/{n}/{c}/ratio"])) for n in s.norms
                     if f"hessian/{n}/{c}/ratio" in d}
            for c in s.checkpoints}


_C8 = ("layernorm", "batchnorm", "prelayernorm")


def hessian_test(d: Data) -> dict:
    """Claim 8 in one setting, at [U]'s step: per seed the log outlier ratio of layernorm,
    batchnorm and prelayernorm; (A) mean log ratio(layernorm) - mean log ratio(batchnorm) > 0,
    a one-sided permutation test relabelling their seeds (exact); (B) prelayernorm's mean log
    ratio nearer batchnorm's than layernorm's, D = |m_pln - m_ln| - |m_pln - m_bn| > 0, a
    one-sided bootstrap test (the three groups' seeds resampled; "nearer" has no
    exchangeability null to permute under). A setting passes when both parts do."""
    s = d.sizes
    c = int(s.claim_step)
    missing = [n for n in _C8 if f"hessian/{n}/{c}/ratio" not in d]
    if missing:  # no rate trains for one of them: no tuned run to test
        return {"verdict": "inconclusive", "p": 1.0, "missing": missing}
    ratios = [np.asarray(d[f"hessian/{n}/{c}/ratio"], float) for n in _C8]
    if not all(np.all(r > 0) for r in ratios):  # lambda_K <= 0: no log ratio to compare
        return {"verdict": "inconclusive", "p": 1.0,
                "reason": "lambda_1 / lambda_K <= 0 for some seed (lambda_K not positive)"}
    ln, bn, pln = (np.log(r) for r in ratios)
    a = stats.two_sample_test(ln, bn)
    def near(x, y, z):
        return abs(z.mean() - x.mean()) - abs(z.mean() - y.mean())

    b = stats.bootstrap_test((ln, bn, pln), near)
    parts = {"A": stats.verdict(a["p_greater"], a["p_less"]),
             "B": stats.verdict(b["p_greater"], b["p_less"])}
    diff = lambda x, y: float(x.mean() - y.mean())  # noqa: E731
    return {"verdict": stats.combine(parts.values()), "parts": parts,
            "p": max(a["p_greater"], b["p_greater"]),
            "log_ratio_ln_minus_bn": a["statistic"], "pln_nearer_bn_by": b["statistic"],
            "ci_ln_minus_bn": stats.bootstrap_ci((ln, bn), diff),
            "ci_pln_nearer_bn_by": stats.bootstrap_ci((ln, bn, pln), near),
            "seeds": len(ln)}


def _hessian_setting(d: Data) -> str:
    s = d.sizes
    arch = (f"WRN-{s.depth}-{s.k} without skips" if s.arch == "wrn" else
            f"ReLU MLP depth {s.depth} width {s.width}")
    rates = {n: float(d[f"search/{n}/rate"]) for n in s.norms if f"search/{n}/rate" in d}
    return (f"{arch} on {d.meta['inputs']}; SGD + momentum at each normalizer's tuned rate "
            f"{rates}, batch {s.batch}; cross-entropy Hessian at step {s.claim_step}, Lanczos "
            f"order {s.order}, {s.probes} probes, {s.seeds} seeds; K = 10")


def claim8(wrn: Data | None, mlp: Data) -> ClaimResult:
    """``wrn`` None (``validate --quick``): [U]'s WRN setting is not run, and the verdict is the
    MLP setting's."""
    settings = {"wrn": wrn, "mlp": mlp} if wrn is not None else {"mlp": mlp}
    tests = {k: hessian_test(v) for k, v in settings.items()}
    ratios = {k: hessian_ratios(v) for k, v in settings.items()}
    main = "wrn" if wrn is not None else "mlp"
    setting = (f"[U]'s setting: {_hessian_setting(wrn)}. Second setting: "
               f"{_hessian_setting(mlp)}" if wrn is not None else
               f"{_hessian_setting(mlp)} ([U]'s WRN setting runs only at full size: "
               "hessian_wrn)")
    statistic = {k: {"log_ratio_ln_minus_bn": t.get("log_ratio_ln_minus_bn"),
                     "pln_nearer_bn_by": t.get("pln_nearer_bn_by")} for k, t in tests.items()}
    ci = {k: {"log_ratio_ln_minus_bn": t.get("ci_ln_minus_bn"),
              "pln_nearer_bn_by": t.get("ci_pln_nearer_bn_by")} for k, t in tests.items()}
    return ClaimResult(
        8, "Hessian: layernorm shows large outliers lambda_1/lambda_K, batchnorm suppresses "
        "them, prelayernorm conditions like batchnorm",
        setting,
        {"outlier_ratio": {k: {f"step {c}": v for c, v in r.items()} for k, r in ratios.items()},
         "verdict_per_setting": {k: t["verdict"] for k, t in tests.items()},
         "p_per_setting": {k: t["p"] for k, t in tests.items()}},
        f"at step {mlp.sizes.claim_step} ([U]'s 50 at full size; each normalizer at its tuned "
        "rate, >= 5 seeds at full size): (A) log "
        "ratio(layernorm) > log ratio(batchnorm) (one-sided permutation test) and (B) log "
        "ratio(prelayernorm) nearer batchnorm's than layernorm's (one-sided bootstrap test), "
        "each at p < 0.05; the "
        "verdict is [U]'s setting's (WRN; at quick sizes the MLP's), the MLP's reported beside "
        "it", verdict=tests[main]["verdict"], statistic=statistic, p_value=tests[main]["p"],
        ci=ci)


def claim12(d: Data) -> ClaimResult:
    from sigprop.paper.experiments import training

    s = d.sizes
    f = training.bb_speed(d)
    return ClaimResult(
        12, "Init-time cosine similarity predicts training speed across normalizers",
        f"ReLU MLP depth {s.depth} width {s.width} on {d.meta['inputs']}; each normalizer at "
        f"its tuned rate (the protocol of sigprop.train.learning_rate_search: grid "
        f"{tuple(s.rates)} extended to bracket, chosen on {s.search_seeds} other seeds), "
        f"{s.steps} steps, {s.seeds} seeds",
        {"spearman_rho": f["rho"], "n": f["n"], "did_not_train": f["untrained"],
         "final_cosine": dict(zip(f["norms"], map(float, f["cosine"]))),
         "mean_train_cross_entropy": dict(zip(f["norms"], map(float, f["mean_loss"]))),
         "rates": {n: float(d[f"train/{n}/rate"]) for n in s.norms},
         "largest_stable": {n: float(d[f"train/{n}/largest_stable"]) for n in s.norms}},
        "Spearman rho > 0 between the final-layer cosine at init and the mean train "
        "cross-entropy over the run, across the normalizers that train (more similar samples, "
        "slower training): one-sided permutation p < 0.05 passes, p < 0.05 for rho < 0 fails, "
        "else inconclusive",
        verdict=stats.verdict(f["p"], f["p_less"]), statistic=f["rho"], p_value=f["p"],
        ci=f["ci"])


def claim13(d: Data) -> ClaimResult:
    from sigprop.paper import transformer_claims  # it imports ClaimResult from here

    return transformer_claims.claim13(d)


def claim14(d: Data) -> ClaimResult:
    from sigprop.paper import transformer_claims

    return transformer_claims.claim14(d)


# experiments validate --quick leaves out (the claim gets None): WRN-26-2's Hessian through
# training is hours on a 2-core CPU, and even a WRN-8-1 version minutes of compiling
FULL_ONLY = frozenset({"hessian_wrn"})

# claim -> (its experiments, its check: one Data per experiment, in that order)
CLAIM_EXPERIMENTS = {1: (("resnet_variance",), claim1), 2: (("cnn_groupnorm",), claim2),
                     3: (("cnn_groupnorm",), claim3), 4: (("cnn_groupnorm",), claim4),
                     5: (("similar_batches",), claim5), 6: (("similar_batches",), claim6),
                     7: (("wrn",), claim7), 8: (("hessian_wrn", "hessian_training"), claim8),
                     9: (("closed_forms",), claim9), 10: (("closed_forms",), claim10),
                     11: (("resnet_variance",), claim11), 12: (("bb_figure1",), claim12),
                     13: (("xiong_gradients",), claim13), 14: (("token_collapse",), claim14),
                     # later claims: each module's TABLE of claim -> (experiments, check)
                     **era_claims.TABLE, **gns_claim.TABLE}
CLAIMS = tuple(sorted(CLAIM_EXPERIMENTS))


def validate(quick: bool = True, claims=CLAIMS, progress: bool = True) -> list[ClaimResult]:
    """Run ``claims`` (ids from :data:`CLAIMS`) and return one :class:`ClaimResult` each.

    ``quick=True``: small sizes (minutes on a CPU); ``quick=False``: the papers' sizes. Each
    claim's experiment (:mod:`sigprop.experiments`, shared with ``figures/``) is measured once
    per process, however many claims read it."""
    claims = tuple(claims)
    unknown = [c for c in claims if c not in CLAIM_EXPERIMENTS]
    if unknown:
        raise ValueError(f"claims={unknown}: unknown; allowed: {', '.join(map(str, CLAIMS))}")
    needed = list(dict.fromkeys(n for c in claims for n in CLAIM_EXPERIMENTS[c][0]
                                if not (quick and n in FULL_ONLY)))
    total = sum(experiments.get(n).points(experiments.get(n).sizes(quick)) for n in needed)
    bar = Progress(total or 1, "analyses") if progress else None
    results, measured = [], set()
    for c in claims:
        names, check = CLAIM_EXPERIMENTS[c]
        t0 = time.perf_counter()
        datas = []
        for name in names:
            if quick and name in FULL_ONLY:
                datas.append(None)
                continue
            datas.append(experiments.measure(name, quick,
                                             progress=None if name in measured else bar))
            measured.add(name)
        res = check(*datas)
        res.seconds = time.perf_counter() - t0
        results.append(res)
    if bar is not None:
        bar.__exit__(None, None, None)
    return results


def _brief(measured: dict, width: int = 70) -> str:
    parts = []
    for k, v in measured.items():
        if isinstance(v, dict):
            inner = ", ".join(f"{a}: {_fmt(b)}" for a, b in v.items())
            parts.append(f"{k} {{{inner}}}")
        elif isinstance(v, (list, tuple, np.ndarray)):
            continue
        else:
            parts.append(f"{k} {_fmt(v)}")
    return "; ".join(parts)


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, (float, np.floating)) else str(v)


def format_table(results: list[ClaimResult]) -> str:
    """A plain-text table: claim, setting, measured, expected, verdict."""
    lines = []
    for r in results:
        lines.append(f"[{r.verdict.upper()}] claim {r.id}: {r.title}")
        lines.append(f"    setting:  {r.setting}")
        lines.append(f"    measured: {_brief(r.measured)}")
        if r.p_value is not None:
            lines.append(f"    test:     statistic {_brief_value(r.statistic)}; p = "
                         f"{r.p_value:.3g}; 95% CI {_brief_value(r.ci)}")
        lines.append(f"    expected: {r.expected}")
    counts = {v: sum(r.verdict == v for r in results) for v in VERDICTS}
    lines.append(f"{counts['pass']}/{len(results)} claims passed, {counts['fail']} failed, "
                 f"{counts['inconclusive']} inconclusive")
    return "\n".join(lines)


def _brief_value(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_brief_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_brief_value(x) for x in v) + "]"
    return _fmt(v)


def to_json(results: list[ClaimResult], quick: bool) -> dict:
    return {"mode": "quick" if quick else "full", "claims": [r.to_dict() for r in results],
            "passed": sum(r.passed for r in results),
            "inconclusive": sum(r.verdict == "inconclusive" for r in results),
            "total": len(results)}


def write_json(results: list[ClaimResult], path: str, quick: bool) -> None:
    with open(path, "w") as f:
        json.dump(to_json(results, quick), f, indent=1)
