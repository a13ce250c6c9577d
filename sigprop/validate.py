"""``sigprop validate``: the papers' claims and closed forms, re-run as experiments.

Each claim of ``science.md`` (1-7 from [BB] and [U], 9-11 closed forms; claim 8, the Hessian, is
not built yet) is an experiment on freshly initialized networks and a pass/fail criterion fixed
in advance, stated in the claim's ``expected`` text. A claim that fails is reported as failed,
with its numbers.

Sizes: ``quick=True`` uses small networks that finish in a few minutes on 2 CPU cores, with
the same criteria; ``quick=False`` uses the papers' sizes (cfg_10, ResNet-56, WRN-26-2, width
1024 MLPs, batch 64-128) and takes much longer on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any, Callable

import jax
import numpy as np

from sigprop import models, theory
from sigprop.analyze import analyze
from sigprop.progress import Progress

CLAIMS = (1, 2, 3, 4, 5, 6, 7, 9, 10, 11)


@dataclasses.dataclass
class ClaimResult:
    """One claim: what was run, what was measured, what was expected, and the verdict."""

    id: int
    title: str
    setting: str
    measured: dict
    expected: str
    passed: bool
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(id=self.id, title=self.title, setting=self.setting, passed=bool(self.passed),
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


@dataclasses.dataclass(frozen=True)
class Sizes:
    seeds: int
    # claim 1: post-activation ResNet, stage 1
    res_widths: tuple
    res_image: int
    res_batch: int
    # claims 2-4: non-residual cnn
    cnn: dict
    cnn_image: int
    cnn_batch: int
    gn_large: int
    gn_small: int
    # claim 3: uniform cnn, group sizes
    rank_width: int
    rank_depth: int
    # claims 5-6: ReLU MLP, similar batches
    pair_depth: int
    pair_width: int
    pair_batch: int
    # claim 7: WideResNet with and without skips
    wrn_depth: int
    wrn_k: int
    wrn_image: int
    wrn_batch: int
    # claims 9-10: wide MLPs
    wide: int
    arccos_depth: int
    arccos_batch: int
    bn_depth: int
    bn_batch: int
    # claim 11: pre-activation ResNet, stage 1
    pre_widths: tuple
    pre_image: int
    pre_batch: int


QUICK = Sizes(
    seeds=3,
    res_widths=(16,), res_image=16, res_batch=8,
    cnn=dict(cfg="uniform", depth=10, width=64), cnn_image=16, cnn_batch=32,
    gn_large=16, gn_small=4,  # with uniform width 64, claim 3 reuses these runs
    rank_width=64, rank_depth=10,
    pair_depth=16, pair_width=256, pair_batch=32,
    wrn_depth=14, wrn_k=1, wrn_image=16, wrn_batch=16,
    wide=1024, arccos_depth=10, arccos_batch=32, bn_depth=16, bn_batch=64,
    pre_widths=(32, 64, 128), pre_image=32, pre_batch=8,
)
FULL = Sizes(
    seeds=8,
    res_widths=(32, 64, 128), res_image=32, res_batch=64,
    cnn=dict(cfg="cfg_10"), cnn_image=32, cnn_batch=64,
    gn_large=64, gn_small=8,
    rank_width=64, rank_depth=10,
    pair_depth=32, pair_width=1024, pair_batch=128,
    wrn_depth=26, wrn_k=2, wrn_image=32, wrn_batch=64,
    wide=2048, arccos_depth=20, arccos_batch=64, bn_depth=32, bn_batch=256,
    pre_widths=(32, 64, 128), pre_image=32, pre_batch=64,
)


class _Runner:
    """Runs (and caches) the analyses the claims share, with one progress bar."""

    def __init__(self, sizes: Sizes, progress: Progress | None):
        self.s = sizes
        self.cache: dict[Any, Any] = {}
        self.progress = progress

    def run(self, key, build: Callable, inputs, seeds: int | None = None, **kw):
        if key not in self.cache:
            self.cache[key] = analyze(build(), inputs, seeds=seeds or self.s.seeds, key=0, **kw)
            if self.progress is not None:
                self.progress.advance(" ".join(map(str, key)))
        return self.cache[key]


def _mean(a) -> np.ndarray:
    return np.asarray(a, dtype=float).mean(axis=0)


def _stage1_out(res) -> np.ndarray:
    """Mean over seeds of a metric array restricted to the stage-1 '/out' layers."""
    return np.array([i for i, n in enumerate(res.layer_names)
                     if n.startswith("stage1/") and n.endswith("/out")])


# ------------------------------------------------------------------------------------ claims


def claim1(r: _Runner) -> ClaimResult:
    s = r.s
    blocks = 9
    shape = (s.res_batch, s.res_image, s.res_image, 3)
    exp_norms = ("none", "weightnorm", "sws")
    lin_norms = ("batchnorm", "layernorm", "instancenorm", "groupnorm", "frn")
    ok, growth = True, {}
    for norm in exp_norms + lin_norms:
        res = r.run(("resnet_post", norm), lambda: models.resnet(blocks, s.res_widths, norm=norm),
                    shape)
        v = _mean(res.activation_variance)[_stage1_out(res)]
        growth[norm] = float(v[-1] / v[0])
        if norm in exp_norms:
            ok &= growth[norm] ** (1 / (blocks - 1)) >= 1.3
        else:
            ok &= growth[norm] <= 1.5 * blocks
    # SkipInit is De & Smith's remedy for pre-activation ResNets, where the identity path carries
    # no activation. (In the post-activation block, weightnorm's scaled ReLU sits on the identity
    # path after the addition and multiplies the stream by ~1.87 per block whatever alpha is.)
    skip = {}
    for norm in ("weightnorm", "sws"):
        res = r.run(("resnet_pre_skipinit", norm), lambda: models.resnet(
            blocks, s.res_widths, norm=norm, preact=True, skipinit=True), shape)
        v = _mean(res.activation_variance)[_stage1_out(res)]
        skip[norm + "+skipinit"] = float(v[-1] / v[0])
        ok &= skip[norm + "+skipinit"] <= 2.0
    return ClaimResult(
        1, "ResNet activation variance: exponential without activation normalizers",
        f"ResNet stage 1 ({blocks} blocks, widths {s.res_widths}; post-activation, and "
        f"pre-activation for SkipInit), {s.res_image}x{s.res_image} inputs, batch {s.res_batch}, "
        f"{s.seeds} seeds; activation variance at the block outputs, last/first",
        {"variance_growth": growth, "skipinit_preact_growth": skip},
        "none/weightnorm/sws: growth per block >= 1.3 (exponential); batchnorm/layernorm/"
        f"instancenorm/groupnorm/frn: last/first <= {1.5 * blocks:g} (at most linear, 1.5 x "
        "blocks); weightnorm/sws + SkipInit (pre-activation): last/first <= 2 (bounded)",
        bool(ok))


def _cnn_runs(r: _Runner):
    """Claims 2 and 4: the non-residual cnn with LN, GN (large, small groups), IN, BN."""
    s = r.s
    shape = (s.cnn_batch, s.cnn_image, s.cnn_image, 3)
    runs = {}
    for label, norm, opts in [("layernorm", "layernorm", {}),
                              (f"groupnorm(g={s.gn_large})", "groupnorm",
                               dict(group_size=s.gn_large)),
                              (f"groupnorm(g={s.gn_small})", "groupnorm",
                               dict(group_size=s.gn_small)),
                              ("instancenorm", "instancenorm", {}),
                              ("batchnorm", "batchnorm", {})]:
        runs[label] = r.run(("cnn", label), lambda: models.cnn(**s.cnn, norm=norm, **opts), shape)
    return runs


def _cnn_setting(s: Sizes) -> str:
    arch = s.cnn.get("cfg") if s.cnn.get("cfg") != "uniform" else \
        f"uniform depth {s.cnn['depth']} width {s.cnn['width']}"
    return (f"non-residual cnn ({arch}), {s.cnn_image}x{s.cnn_image} inputs, batch {s.cnn_batch}, "
            f"{s.seeds} seeds")


def claim2(r: _Runner) -> ClaimResult:
    runs = _cnn_runs(r)
    order = [k for k in runs if k != "batchnorm"]
    cos = {k: float(_mean(runs[k].cosine_similarity)[-1]) for k in order}
    ok = all(cos[a] > cos[b] for a, b in zip(order, order[1:]))
    return ClaimResult(
        2, "Final-layer cosine similarity: layernorm > groupnorm (large > small groups) > "
        "instancenorm", _cnn_setting(r.s), {"final_cosine": cos},
        " > ".join(order) + " (strict, mean over seeds)", bool(ok))


def claim3(r: _Runner) -> ClaimResult:
    s = r.s
    shape = (s.cnn_batch, s.cnn_image, s.cnn_image, 3)
    sizes = [g for g in (1, 4, 16, 64, 256) if g <= s.rank_width and s.rank_width % g == 0]
    eff, stable = {}, {}
    same = s.cnn == dict(cfg="uniform", depth=s.rank_depth, width=s.rank_width)
    runs = _cnn_runs(r) if same else {}
    for g in sizes:
        # groupnorm(g=1) is instancenorm and groupnorm(g=width) layernorm (tested equal)
        label = {1: "instancenorm", s.rank_width: "layernorm"}.get(g, f"groupnorm(g={g})")
        if label in runs:
            res = runs[label]
        else:
            res = r.run(("rank", g), lambda: models.cnn(
                "uniform", depth=s.rank_depth, width=s.rank_width, norm="groupnorm",
                group_size=g), shape)
        eff[g] = float(_mean(res.effective_rank)[-1])
        stable[g] = float(_mean(res.stable_rank)[-1])
    ok = all(eff[a] > eff[b] for a, b in zip(sizes, sizes[1:]))
    bound = {g: float(theory.groupnorm_rank_bound(s.rank_width, g)) for g in sizes}
    return ClaimResult(
        3, "Final-layer rank falls as the group size grows",
        f"uniform cnn depth {s.rank_depth} width {s.rank_width}, groupnorm group sizes {sizes}, "
        f"{s.cnn_image}x{s.cnn_image} inputs, batch {s.cnn_batch}, {s.seeds} seeds",
        {"final_effective_rank": eff, "final_stable_rank": stable,
         "theory_trend_sqrt(width/group)": bound},
        "effective rank strictly decreasing in group size (a trend: the bound's constants are "
        "unknown)", bool(ok))


def claim4(r: _Runner) -> ClaimResult:
    runs = _cnn_runs(r)
    ratio = {k: float(np.mean(np.asarray(v.grad_norm)[:, 0] / np.asarray(v.grad_norm)[:, -1]))
             for k, v in runs.items()}
    order = ["instancenorm", *[k for k in runs if k.startswith("groupnorm")][::-1], "layernorm"]
    ok = all(ratio[a] > ratio[b] for a, b in zip(order, order[1:]))
    ok &= ratio["batchnorm"] > 1.0 and ratio["batchnorm"] > ratio["layernorm"]
    return ClaimResult(
        4, "Early/late gradient norm: instancenorm largest, falling with group size, layernorm "
        "smallest; batchnorm explodes", _cnn_setting(r.s), {"grad_first/last": ratio},
        " > ".join(order) + "; batchnorm > 1 and > layernorm", bool(ok))


def _pair_runs(r: _Runner):
    s = r.s
    runs = {}
    for norm in ("batchnorm", "layernorm", "bmlv", "lmbv"):
        runs[norm] = r.run(("pair", norm), lambda: models.mlp(s.pair_depth, s.pair_width,
                                                              norm=norm),
                           (s.pair_batch, s.pair_width), similar_batch_noise=0.1,
                           gradient_correlation=True)
    return runs


def _pair_setting(s: Sizes) -> str:
    return (f"ReLU MLP depth {s.pair_depth} width {s.pair_width}, batch {s.pair_batch}, "
            f"similar batch x + 0.1 xi, {s.seeds} seeds")


def claim5(r: _Runner) -> ClaimResult:
    runs = _pair_runs(r)
    c = {k: float(_mean(v.similar_batch_correlation)[-1]) for k, v in runs.items()}
    ok = (c["batchnorm"] < c["layernorm"]
          and abs(c["bmlv"] - c["batchnorm"]) < abs(c["bmlv"] - c["layernorm"])
          and abs(c["lmbv"] - c["layernorm"]) < abs(c["lmbv"] - c["batchnorm"]))
    return ClaimResult(
        5, "Similar batches: batchnorm decorrelates most, layernorm least; bmlv ~ batchnorm, "
        "lmbv ~ layernorm", _pair_setting(r.s), {"final_similar_batch_correlation": c},
        "batchnorm < layernorm; bmlv nearer batchnorm, lmbv nearer layernorm", bool(ok))


def claim6(r: _Runner) -> ClaimResult:
    runs = _pair_runs(r)
    c = {k: float(_mean(v.gradient_correlation)[0]) for k, v in runs.items()}
    ok = (c["batchnorm"] < min(c["layernorm"], c["lmbv"])
          and c["layernorm"] > max(c["batchnorm"], c["bmlv"]))
    return ClaimResult(
        6, "Gradient correlation: batchnorm most decorrelated, layernorm highly correlated",
        _pair_setting(r.s) + "; gradients at the first layer", {"first_layer_grad_correlation": c},
        "batchnorm below layernorm and lmbv; layernorm above batchnorm and bmlv", bool(ok))


def _main_path_rate(res) -> float:
    """Per-layer growth factor (backward) of the squared gradient norm along the main path
    (gradient taps other than shortcut convs), from a least-squares fit of log grad_norm."""
    idx = [i for i, n in enumerate(res.grad_layer_names) if not n.endswith("shortcut")]
    g = np.log(_mean(np.asarray(res.grad_norm)[:, idx]))
    slope = np.polyfit(np.arange(len(idx)), g, 1)[0]
    return float(np.exp(-2 * slope))


def claim7(r: _Runner) -> ClaimResult:
    s = r.s
    shape = (s.wrn_batch, s.wrn_image, s.wrn_image, 3)
    blocks = 3 * (s.wrn_depth - 2) // 6
    rate, ratio = {}, {}
    for skip in (False, True):
        res = r.run(("wrn", skip), lambda: models.wrn(s.wrn_depth, s.wrn_k, skip=skip,
                                                      norm="batchnorm"), shape)
        label = "with skips" if skip else "without skips"
        rate[label] = _main_path_rate(res)
        g = np.asarray(res.grad_norm)
        ratio[label] = float(np.mean((g[:, 0] / g[:, -1]) ** 2))
    # without skips: exponential, each BN-ReLU layer multiplies the squared gradient by ~pi/(pi-1)
    # (claim 10); with skips the stream's second moment grows only linearly (claim 11) and the
    # stream gradient scales with its inverse std, so the squared first/last ratio stays within
    # a small multiple of (blocks + 1)
    bound = 2.0 * (blocks + 1)
    ok = rate["without skips"] >= 1.2 and ratio["with skips"] <= bound
    return ClaimResult(
        7, "Batchnorm gradients explode with depth without skips, not with skips",
        f"WRN-{s.wrn_depth}-{s.wrn_k} + batchnorm ({blocks} blocks), {s.wrn_image}x{s.wrn_image} "
        f"inputs, batch {s.wrn_batch}, {s.seeds} seeds",
        {"squared_grad_growth_per_layer": rate, "squared_grad_first/last": ratio},
        "without skips: squared-gradient growth per layer >= 1.2 (exponential; mean field 1.47); "
        f"with skips: squared first/last ratio <= 2 x (blocks + 1) = {bound:g} (polynomial)",
        bool(ok))


def claim9(r: _Runner) -> ClaimResult:
    s = r.s
    x = np.asarray(jax.random.normal(jax.random.key(9), (s.arccos_batch, s.wide)))
    seeds = max(16, s.seeds)  # the second moment of one network random-walks: average many
    res = r.run(("arccos",), lambda: models.mlp(s.arccos_depth, s.wide, norm="none"), x,
                seeds=seeds)
    # theory: the arc-cosine map applied to every pair's input cosine, layer by layer
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    pairs = (xn @ xn.T)[~np.eye(len(x), dtype=bool)]
    predicted = theory.iterate(theory.relu_correlation_map, np.clip(pairs, -1, 1),
                               s.arccos_depth)[1:].mean(axis=1)
    cos = _mean(res.cosine_similarity)
    err = float(np.max(np.abs(cos - predicted)))
    # E[second moment] is preserved exactly; one network's drifts like a random walk (~5% per
    # layer at width 1024), so the mean over seeds is tested against 3 standard errors
    q = np.asarray(res.activation_variance) + np.asarray(res.channel_squared_mean)
    q = q / q[:, :1]
    drift = q.mean(axis=0) - 1
    se = q.std(axis=0, ddof=1) / np.sqrt(seeds)
    z = float(np.max(np.abs(drift[1:]) / se[1:]))
    ok = err <= 0.03 and z <= 3.0
    return ClaimResult(
        9, "ReLU + He init, no normalizer: variance preserved, cosine follows the arc-cosine map",
        f"ReLU MLP depth {s.arccos_depth} width {s.wide}, batch {s.arccos_batch} (one N(0,1) "
        f"batch), {seeds} seeds",
        {"max_abs_cosine_error": err, "cosine_measured": cos, "cosine_theory": predicted,
         "max_second_moment_drift": float(np.max(np.abs(drift))),
         "max_drift_in_standard_errors": z},
        "cosine within 0.03 of the iterated arc-cosine map at every layer; mean second moment "
        "(relative to layer 0) within 3 standard errors of 1 at every layer", bool(ok))


def claim10(r: _Runner) -> ClaimResult:
    s = r.s
    res = r.run(("bn_mlp",), lambda: models.mlp(s.bn_depth, s.wide, norm="batchnorm"),
                (s.bn_batch, s.wide))
    # interior layers: the first and the last two sit at the input / classifier boundaries
    g = np.log(_mean(res.grad_norm))[1:-2]
    rate = float(np.exp(-2 * np.polyfit(np.arange(len(g)), g, 1)[0]))
    lam = theory.bn_gradient_explosion_rate("relu")
    rel = abs(rate - lam) / lam
    return ClaimResult(
        10, "Batchnorm ReLU MLP: squared gradient grows by pi/(pi-1) per layer",
        f"MLP depth {s.bn_depth} width {s.wide}, batch {s.bn_batch}, {s.seeds} seeds; fit over "
        "layers 1..depth-3",
        {"rate": rate, "theory": lam, "relative_error": rel},
        "within 5% of pi/(pi-1) = 1.4669", bool(rel <= 0.05))


def claim11(r: _Runner) -> ClaimResult:
    s = r.s
    blocks = 9
    seeds = max(12, s.seeds)  # exponential growth is noisy per network: test the seed mean
    shape = (s.pre_batch, s.pre_image, s.pre_image, 3)
    out = {}
    for norm in ("none", "batchnorm"):
        res = r.run(("resnet_pre", norm), lambda: models.resnet(
            blocks, s.pre_widths, norm=norm, preact=True), shape, seeds=seeds)
        idx = _stage1_out(res)
        out[norm] = (np.asarray(res.activation_variance)[:, idx]
                     + np.asarray(res.channel_squared_mean)[:, idx])
    per_seed = (out["none"][:, -1] / out["none"][:, 0]) ** (1 / (blocks - 1))
    doubling = float(per_seed.mean())
    se = float(per_seed.std(ddof=1) / np.sqrt(seeds))
    b = out["batchnorm"].mean(axis=0)
    slope, icpt = np.polyfit(np.arange(1, blocks + 1), b, 1)
    fit = slope * np.arange(1, blocks + 1) + icpt
    r2 = float(1 - np.sum((b - fit) ** 2) / np.sum((b - b.mean()) ** 2))
    ok = abs(doubling - 2.0) <= 3 * se and 0.8 <= slope <= 1.2 and r2 >= 0.98
    return ClaimResult(
        11, "Pre-activation ResNet: residual second moment 2^l without normalizer, l + 1 with "
        "batchnorm",
        f"pre-activation {'ResNet-56' if s.pre_widths == (32, 64, 128) else 'ResNet'} stage 1 "
        f"({blocks} blocks, widths {s.pre_widths}), "
        f"{s.pre_image}x{s.pre_image} inputs, batch {s.pre_batch}, {seeds} seeds; "
        "activation_variance + channel_squared_mean at the block outputs",
        {"none_second_moment": out["none"].mean(axis=0), "none_growth_per_block": doubling,
         "none_growth_standard_error": se,
         "batchnorm_second_moment": b, "batchnorm_slope_per_block": float(slope),
         "batchnorm_linear_r2": r2,
         "theory_none_growth": float(theory.resnet_second_moment(1, "none")[1]),
         "theory_batchnorm_increment": float(np.diff(theory.resnet_second_moment(1, True))[0])},
        "none: seed-mean growth per block within 3 standard errors of 2; batchnorm: linear "
        "(R^2 >= 0.98) with slope in [0.8, 1.2] per block (theory 1; zero padding of the 3x3 "
        "convs lowers it ~4% at 32x32)", bool(ok))


_CLAIM_FNS = {1: claim1, 2: claim2, 3: claim3, 4: claim4, 5: claim5, 6: claim6, 7: claim7,
              9: claim9, 10: claim10, 11: claim11}
# analyses each claim needs (for the progress bar)
_N_RUNS = {1: 10, 2: 5, 3: 1, 4: 0, 5: 4, 6: 0, 7: 2, 9: 1, 10: 1, 11: 2}


def validate(quick: bool = True, claims=CLAIMS, progress: bool = True) -> list[ClaimResult]:
    """Run ``claims`` (ids from :data:`CLAIMS`) and return one :class:`ClaimResult` each.

    ``quick=True``: small sizes (minutes on a CPU); ``quick=False``: the papers' sizes."""
    claims = tuple(claims)
    unknown = [c for c in claims if c not in _CLAIM_FNS]
    if unknown:
        raise ValueError(f"claims={unknown}: unknown; allowed: {', '.join(map(str, CLAIMS))} "
                         "(claim 8, the Hessian, is not built yet)")
    bar = Progress(sum(_N_RUNS[c] for c in claims) or 1, "analyses") if progress else None
    runner = _Runner(QUICK if quick else FULL, bar)
    results = []
    for c in claims:
        t0 = time.perf_counter()
        res = _CLAIM_FNS[c](runner)
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
        lines.append(f"[{'PASS' if r.passed else 'FAIL'}] claim {r.id}: {r.title}")
        lines.append(f"    setting:  {r.setting}")
        lines.append(f"    measured: {_brief(r.measured)}")
        lines.append(f"    expected: {r.expected}")
    n = sum(r.passed for r in results)
    lines.append(f"{n}/{len(results)} claims passed")
    return "\n".join(lines)


def to_json(results: list[ClaimResult], quick: bool) -> dict:
    return {"mode": "quick" if quick else "full", "claims": [r.to_dict() for r in results],
            "passed": sum(r.passed for r in results), "total": len(results)}


def write_json(results: list[ClaimResult], path: str, quick: bool) -> None:
    with open(path, "w") as f:
        json.dump(to_json(results, quick), f, indent=1)
