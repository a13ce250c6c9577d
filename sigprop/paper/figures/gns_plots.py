"""The gradient-noise-scale figure (claim 19): the LayerNorms' ``B_simple`` and the whole model's
through early training of a small transformer LM (Gray et al. 2024), from
:mod:`sigprop.paper.experiments.gns_tracking`'s data. Returns what it drew."""

from __future__ import annotations

import numpy as np

from sigprop.paper import gns_claim as gc
from sigprop.paper.figures import Figure, band, register

WHO = {"model": ("whole model (all parameters, vmap(grad))", "#000000"),
       "norm": ("LayerNorm scales and biases (sigprop's taps)", "#d62728")}


def _gns(d, axes) -> dict:
    t = gc.tracking_test(d)
    steps = np.asarray(d["steps"], float)
    drawn = {}
    ax = axes[0]
    for who, (name, color) in WHO.items():
        v = np.asarray(d[f"{who}/b_simple"], float)
        drawn[who] = band(ax, v, name, x=steps, color=color)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set(xlabel="training step", ylabel="B_simple = tr(Sigma) / |G|^2 (probe batch)",
           title="(a) through training\n(mean, band min-max over seeds)")
    ax.legend(fontsize=7, frameon=False)
    ax = axes[1]
    norm, model = np.asarray(d["norm/b_simple"], float), np.asarray(d["model/b_simple"], float)
    sc = ax.scatter(model.ravel(), norm.ravel(), c=np.broadcast_to(steps, norm.shape).ravel(),
                    cmap="viridis", s=12)
    ax.figure.colorbar(sc, ax=ax, label="training step")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set(xlabel="whole model's B_simple", ylabel="LayerNorms' B_simple",
           title=f"(b) every seed and record: mean per-seed Spearman rho "
                 f"{t['A']['mean_rho']:.2f}\n(p {t['A']['p_greater']:.2g}, 95% CI "
                 f"{t['ci'][0]:.2f}-{t['ci'][1]:.2f}); claim 19 {t['verdict']}")
    drawn["rho"] = t["rho"]
    drawn["verdict"] = np.array(t["verdict"])
    return drawn


register(Figure(
    "gns_tracking", "gns_tracking",
    "Gradient noise scale of the normalization layers vs the whole model through early "
    "training\n(Gray et al. 2024), a small Pre-LN transformer LM on a synthetic Markov "
    "language", (1, 2), _gns,
    lambda d: f"depth {d.sizes.depth} width {d.sizes.width} heads {d.sizes.heads}, vocab "
              f"{d.sizes.vocab}, batch {d.sizes.batch} x {d.sizes.seq_len}, Adam lr "
              f"{d.sizes.rate:g}, {d.sizes.seeds} seeds, probe batch {d.sizes.probe} "
              "(claim 19)", size=(11.5, 5.0)))
