"""Transformer figures at initialization, drawn from the experiments' data (claims 13, 14):
Xiong et al.'s per-layer gradient norms (Post-LN vs Pre-LN) and token collapse (Dong et al.,
Noci et al.). Each plot returns what it drew, ``{"panel/line": y values}``."""

from __future__ import annotations

import numpy as np

from sigprop.paper import transformer_claims as tc
from sigprop.paper.figures import Figure, band, register

PLACEMENT_COLORS = {"post": "#d62728", "pre": "#1f77b4"}
SKIP_COLORS = {"noskip": "#000000", "skip": "#2ca02c"}
SCALE_COLORS = {"unscaled": "#ff7f0e", "scaled": "#9467bd"}


def _legend(ax, **kw):
    ax.legend(fontsize=7, frameon=False, **kw)


# ------------------------------------------------------------------- Xiong et al. 2020 Fig. 3


def _xiong(d, axes) -> dict:
    t = tc.xiong_test(d)
    ax, drawn = axes[0], {}
    layers = np.arange(1, t["depth"] + 1)
    for p, name in (("post", "Post-LN"), ("pre", "Pre-LN")):
        slope = float(t[f"{p}_slopes"].mean())
        drawn[p] = band(ax, t[p], f"{name} (mean log slope {slope:+.3f} per layer)", x=layers,
                        color=PLACEMENT_COLORS[p], log=True)
        drawn[f"{p}_slopes"] = t[f"{p}_slopes"]
    drawn["verdict"] = np.array(t["verdict"])
    parts = ", ".join(f"{k} {v}" for k, v in t["parts"].items())
    ax.set(xlabel="block (input to output)", ylabel="||dL/dW|| of the block's second MLP dense",
           title=f"claim 13: {t['verdict']} ({parts})")
    ax.set_xticks(layers)
    _legend(ax)
    return drawn


register(Figure(
    "xiong_gradients", "xiong_gradients",
    "Xiong et al. 2020 Fig. 3 at init: per-layer gradient norm of W^{FFN,2},\nPost-LN vs Pre-LN, "
    "causal byte-level LM on README bytes", (1, 1), _xiong,
    lambda d: f"causal transformer depth {d.sizes.depth} width {d.sizes.width} heads "
              f"{d.sizes.heads}, batch {d.sizes.batch} x {d.sizes.seq_len} bytes, "
              f"{d.sizes.seeds} seeds (mean, band min-max) (claim 13)", size=(9.5, 5.6)))


# ------------------------------------------------------------ Dong et al. 2021, Noci et al. 2022


def _collapse(d, axes) -> dict:
    drawn = {}
    t = tc.collapse_test(d)
    ax = axes[0]
    eps = float(np.finfo(np.float32).eps)  # below it: the float32 tokens' rounding, not a law
    for k, skip, name in (("noskip", False, "without skips"), ("skip", True, "with skips")):
        r = tc.residual_ratios(d, skip)
        m = t["median_decay"][k]
        drawn[f"ratio/{k}"] = band(ax, r, f"{name} (median last/first "
                                          f"{'< float32 eps' if m < eps else f'{m:.2g}'})",
                                   x=np.arange(1, r.shape[1] + 1), color=SKIP_COLORS[k],
                                   log=True)
    ax.axhline(eps, color="0.5", ls=":", lw=1.0, label=f"float32 eps {eps:.1e} (rounding floor)")
    ax.set(xlabel="block", ylabel="token residual ratio ||X - 1 mean(X)|| / ||X||",
           title=f"(a) pure attention (no MLP, no normalizer): part A {t['parts']['A']}")
    _legend(ax)
    ax = axes[1]
    depths = np.array(t["depths"])
    for k, name in (("unscaled", "branches x 1"), ("scaled", "branches x 1/sqrt(depth)")):
        c = np.stack([t["cosine"][k][n] for n in t["depths"]], axis=1)
        drawn[f"cosine/{k}"] = band(ax, c, name, x=depths, color=SCALE_COLORS[k])
        ax.plot(depths, c.mean(axis=0), "o", color=SCALE_COLORS[k], ms=3)
    ax.set_xscale("log", base=2)
    ax.set_xticks(depths, [str(n) for n in depths])
    ax.set(xlabel="depth (blocks)", ylabel="token cosine at the last block (before final norm)",
           title=f"(b) Pre-LN with skips: part B1 {t['parts']['B1']} (rho {t['B1']['rho']:.2f}), "
                 f"B2 {t['parts']['B2']}")
    _legend(ax)
    drawn["depths"] = depths
    drawn["median_decay"] = np.array([t["median_decay"]["noskip"], t["median_decay"]["skip"]])
    drawn["verdict"] = np.array(t["verdict"])
    return drawn


register(Figure(
    "token_collapse", "token_collapse",
    "Token collapse at init (Dong et al. 2021; Noci et al. 2022): pure attention with and without "
    "skips;\nPre-LN last-block token cosine vs depth, branches unscaled or x 1/sqrt(depth)",
    (1, 2), _collapse,
    lambda d: f"width {d.sizes.width}, heads {d.sizes.heads}; (a) depth "
              f"{d.sizes.attention_depth}, {d.sizes.attention_seeds} seeds; (b) "
              f"{d.sizes.depth_seeds} seeds (mean, band min-max) (claim 14)",
    size=(11.0, 5.0)))
