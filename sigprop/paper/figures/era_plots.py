"""Transformer-normalizer figures at initialization, drawn from the experiments' data (claims
15-18): DyT vs LayerNorm (Zhu et al. 2025), QK-norm (Dehghani et al. 2023), DeepNorm vs Post-LN
(Wang et al. 2022), LayerNorm Scaling vs Pre-LN (Sun et al. 2025). Each plot returns what it
drew, ``{"panel/line": y values}``, and the claim's verdict."""

from __future__ import annotations

import numpy as np

from sigprop.paper import era_claims as ec
from sigprop.paper.experiments import era
from sigprop.paper.figures import Figure, band, color, register

NORM_COLORS = {"ln": color("layernorm"), "dyt": color("dyt")}
NORM_NAMES = {"ln": "Pre-LN, LayerNorm", "dyt": "Pre-LN, DyT (alpha0 0.5)"}
QK_COLORS = {"plain": "#d62728", "layernorm": "#1f77b4"}
QK_NAMES = {"plain": "no QK-norm", "layernorm": "QK-norm (LayerNorm)"}
DEEP_COLORS = {"post": "#d62728", "deepnorm": "#2ca02c"}
DEEP_NAMES = {"post": "Post-LN", "deepnorm": "DeepNorm"}
SCALING_COLORS = {"pre": "#1f77b4", "lns": "#ff7f0e"}
SCALING_NAMES = {"pre": "Pre-LN", "lns": "Pre-LN + LayerNorm Scaling"}


def _legend(ax, **kw):
    ax.legend(fontsize=7, frameon=False, **kw)


def _parts(t) -> str:
    return ", ".join(f"{k} {v}" for k, v in t["parts"].items())


def _blocks(n: int) -> np.ndarray:
    return np.arange(1, n + 1)


# ------------------------------------------------------------------ claim 15: DyT vs LayerNorm


def _dyt(d, axes) -> dict:
    t = ec.dyt_test(d)
    drawn = {}
    for k in era.NORMS:
        kw = dict(color=NORM_COLORS[k])
        v, c, g = t["variance"][k], t["cosine"][k], t["grad"][k]
        drawn[f"variance/{k}"] = band(axes[0], v, NORM_NAMES[k], x=_blocks(v.shape[1]), log=True,
                                      **kw)
        drawn[f"cosine/{k}"] = band(axes[1], c, NORM_NAMES[k], x=_blocks(c.shape[1]), **kw)
        # gradient taps: blockNN/attn, blockNN/mlp, in order: sublayer j sits at block j/2 + 1
        drawn[f"grad/{k}"] = band(axes[2], g, NORM_NAMES[k], x=1 + np.arange(g.shape[1]) / 2,
                                  log=True, **kw)
    axes[0].set(xlabel="block", ylabel="stream activation variance",
                title=f"(a) stream variance: part A {t['parts']['A']}")
    axes[1].set(xlabel="block", ylabel="token cosine of the stream",
                title=f"(b) token cosine: part B {t['parts']['B']}")
    axes[2].set(xlabel="block (attention, then MLP)", ylabel="||dL/d(branch output)||",
                title=f"(c) stream gradient: part C {t['parts']['C']}")
    for ax in axes:
        _legend(ax)
    drawn["verdict"] = np.array(t["verdict"])
    drawn["statistic"] = np.array([t["statistic"][k] for k in ("A", "B", "C")])
    return drawn


register(Figure(
    "dyt_init", "dyt_init",
    "Zhu et al. 2025 at init: Pre-LN with LayerNorm vs with DyT (alpha0 0.5), causal byte-level "
    "LM on README bytes:\nstream variance, token cosine and stream gradient per block (claim 15)",
    (1, 3), _dyt,
    lambda d: f"depth {d.sizes.depth} width {d.sizes.width} heads {d.sizes.heads}, batch "
              f"{d.sizes.batch} x {d.sizes.seq_len} bytes, {d.sizes.seeds} seeds (mean, band "
              "min-max) (claim 15)", size=(13.0, 4.8)))


# ------------------------------------------------------------------------- claim 16: QK-norm


def _qk(d, axes) -> dict:
    t = ec.qk_test(d)
    drawn = {}
    for k in era.QK:
        kw = dict(color=QK_COLORS[k])
        m, e = t["logit_max"][k], t["entropy"][k]
        name = f"{QK_NAMES[k]}, width {t['width']}"
        drawn[f"logit_max/{k}"] = band(axes[0], m, name, x=_blocks(m.shape[1]), log=True, **kw)
        drawn[f"entropy/{k}"] = band(axes[1], e, name, x=_blocks(e.shape[1]), **kw)
        widths = np.array(t["widths"])
        last = np.stack([ec.attention(d, w, k, "attention_logit_max")[:, -1] for w in widths], 1)
        drawn[f"width/{k}"] = band(axes[2], last, QK_NAMES[k], x=widths, log=True, **kw)
        axes[2].plot(widths, last.mean(axis=0), "o", ms=3, **kw)
    axes[0].set(xlabel="attention layer (block)", ylabel="max |q.k| / sqrt(d_head)",
                title=f"(a) largest logit vs depth: A {t['parts']['A']}, B {t['parts']['B']}, "
                      f"D {t['parts']['D']}")
    axes[1].set(xlabel="attention layer (block)", ylabel="attention entropy (1 = uniform)",
                title=f"(b) attention entropy: part C {t['parts']['C']}")
    axes[2].set_xscale("log", base=2)
    axes[2].set_xticks(widths, [str(w) for w in widths])
    axes[2].set(xlabel="width (heads fixed)", ylabel="last layer's max |q.k| / sqrt(d_head)",
                title="(c) last layer vs width (reported, untested)")
    for ax in axes:
        _legend(ax)
    drawn["widths"] = np.array(t["widths"])
    drawn["verdict"] = np.array(t["verdict"])
    return drawn


register(Figure(
    "qk_norm", "qk_norm",
    "Dehghani et al. 2023 at init: attention logits and entropy with and without QK-norm, blocks "
    "without normalizers\n(the stream the queries and keys come from grows with depth; claim 16)",
    (1, 3), _qk,
    lambda d: f"depth {d.sizes.depth}, heads {d.sizes.heads}, widths {tuple(d.sizes.widths)}, "
              f"batch {d.sizes.batch} x {d.sizes.seq_len} tokens, {d.sizes.seeds} seeds (mean, "
              "band min-max) (claim 16)", size=(13.0, 4.8)))


# ---------------------------------------------------------------- claim 17: DeepNorm vs Post-LN


def _deepnorm(d, axes) -> dict:
    t = ec.deepnorm_test(d)
    ax, drawn = axes[0], {}
    for k in era.DEEP:
        g = t["grads"][k]
        fit = float(np.exp(t["slopes"][k].mean() * (t["depth"] - 1)))
        drawn[k] = band(ax, g, f"{DEEP_NAMES[k]} (fitted last / first {fit:.2f})",
                        x=_blocks(g.shape[1]), color=DEEP_COLORS[k], log=True)
        drawn[f"{k}_slopes"] = t["slopes"][k]
    ax.set(xlabel="block (input to output)",
           ylabel="block's parameter-gradient norm sqrt(sum ||dL/dW||^2)",
           title=f"claim 17: {t['verdict']} ({_parts(t)})")
    _legend(ax)
    drawn["verdict"] = np.array(t["verdict"])
    return drawn


register(Figure(
    "deepnorm_gradients", "deepnorm_gradients",
    "Wang et al. 2022 at init: per-block parameter-gradient norm, Post-LN vs DeepNorm, causal "
    "byte-level LM on README bytes", (1, 1), _deepnorm,
    lambda d: f"depth {d.sizes.depth} width {d.sizes.width} heads {d.sizes.heads}, batch "
              f"{d.sizes.batch} x {d.sizes.seq_len} bytes, {d.sizes.seeds} seeds (mean, band "
              "min-max) (claim 17)", size=(9.5, 5.6)))


# ---------------------------------------------------------- claim 18: LayerNorm Scaling vs Pre-LN


def _curse(d, axes) -> dict:
    t = ec.lns_test(d)
    drawn = {}
    for k in era.SCALING:
        kw = dict(color=SCALING_COLORS[k])
        v, c = t["variance"][k], t["contribution"][k]
        growth = float(np.exp(t["growth"][k].mean()))
        drawn[f"variance/{k}"] = band(axes[0], v, f"{SCALING_NAMES[k]} (last / first "
                                                  f"{growth:.1f})", x=_blocks(v.shape[1]), **kw)
        drawn[f"contribution/{k}"] = band(axes[1], c, SCALING_NAMES[k],
                                          x=_blocks(c.shape[1] + 1)[1:], log=True, **kw)
    axes[0].set(xlabel="block", ylabel="stream activation variance after the block",
                title=f"(a) claim 18: {t['verdict']} ({_parts(t)})")
    axes[1].set(xlabel="block", ylabel="branch variance / stream variance entering the block",
                title="(b) how identity-like each block is (reported, untested)")
    for ax in axes:
        _legend(ax)
    drawn["verdict"] = np.array(t["verdict"])
    return drawn


register(Figure(
    "curse_of_depth", "curse_of_depth",
    "Sun et al. 2025 at init: residual-stream variance per block, Pre-LN vs LayerNorm Scaling\n"
    "(normalizer outputs x 1/sqrt(l)), causal byte-level LM on README bytes", (1, 2), _curse,
    lambda d: f"depth {d.sizes.depth} width {d.sizes.width} heads {d.sizes.heads}, batch "
              f"{d.sizes.batch} x {d.sizes.seq_len} bytes, {d.sizes.seeds} seeds (mean, band "
              "min-max) (claim 18)", size=(11.0, 5.0)))
