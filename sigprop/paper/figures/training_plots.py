"""Figures beyond initialization: Hessian densities and outliers through early training ([U]
section 6), the init-time metrics' trajectories ([U] sections 5-6), [BB] Figure 1 at small
scale, and a coordinate check."""

from __future__ import annotations

import numpy as np

from sigprop.paper.experiments import training
from sigprop.paper.figures import Figure, band, color, register, theory


def _legend(ax, **kw):
    ax.legend(fontsize=7, frameon=False, **kw)


def _hessian_caption(d) -> str:
    s = d.sizes
    return (f"ReLU MLP depth {s.depth} width {s.width}, SGD + momentum at {s.learning_rate}, "
            f"batch {s.batch}, {s.seeds} seeds; Lanczos order {s.order}, {s.probes} probes "
            "(claim 8)")


def _hessian_density(d, axes) -> dict:
    s, drawn = d.sizes, {}
    first, last = int(s.checkpoints[0]), int(s.checkpoints[-1])
    for ax, c in ((axes[0], first), (axes[1], last)):
        for norm in s.norms:
            grid = d[f"hessian/{norm}/{c}/grid"]
            dens = d[f"hessian/{norm}/{c}/density"]
            grid = grid[0] if grid.ndim > 1 else grid
            dens = dens.mean(axis=0) if dens.ndim > 1 else dens
            ax.semilogy(grid, np.maximum(dens, 1e-12), color=color(norm), label=norm, lw=1.3)
            drawn[f"{c}/{norm}"] = dens
        ax.set_ylim(1e-6, None)
        ax.set(xlabel="eigenvalue", ylabel="SLQ density",
               title=f"({'ab'[c == last]}) step {c}" + (" (initialization)" if c == 0 else ""))
    _legend(axes[0])
    return drawn


register(Figure(
    "hessian_density", "hessian_training",
    "[U] Hessian eigenvalue density per normalizer, at initialization and after training",
    (1, 2), _hessian_density, _hessian_caption))


def _outlier_ratio(d, axes) -> dict:
    s, drawn = d.sizes, {}
    steps = np.array(s.checkpoints)
    for norm in s.norms:
        ratio = np.stack([d[f"hessian/{norm}/{c}/ratio"] for c in s.checkpoints], axis=1)
        drawn[f"ratio/{norm}"] = band(axes[0], ratio, norm, x=steps, color=color(norm), log=True)
        top = np.stack([d[f"hessian/{norm}/{c}/top"][:, 0] for c in s.checkpoints], axis=1)
        drawn[f"lambda_max/{norm}"] = band(axes[1], top, norm, x=steps, color=color(norm),
                                           log=True)
    axes[0].set(xlabel="training step", ylabel=f"lambda_1 / lambda_{training.K_CLASSES}",
                title="(a) outlier ratio")
    axes[1].set(xlabel="training step", ylabel="lambda_max", title="(b) largest eigenvalue")
    _legend(axes[0])
    return drawn


register(Figure(
    "outlier_ratio", "hessian_training",
    "[U] claim 8: the Hessian's outliers lambda_1 / lambda_K through training, per normalizer",
    (1, 2), _outlier_ratio, _hessian_caption))


def _trajectories(d, axes) -> dict:
    s, drawn = d.sizes, {}
    panels = (("cosine_similarity", -1, "(a) final-layer cosine similarity"),
              ("similar_batch_correlation", -1, "(b) final-layer similar-batch correlation"),
              ("grad_norm", 0, "(c) first-layer gradient norm"),
              ("gradient_cosine_mean", None, "(d) mean gradient cosine between minibatches"),
              ("train_loss", None, "(e) train loss"))
    for ax, (metric, layer, title) in zip(axes, panels):
        for norm in s.norms:
            v = d[f"train/{norm}/{metric}"]
            v = v[..., layer] if layer is not None else v
            drawn[f"{metric}/{norm}"] = band(ax, v, norm, x=d[f"train/{norm}/step"],
                                             color=color(norm),
                                             log=metric in ("grad_norm", "train_loss"))
        ax.set(xlabel="training step", title=title)
    _legend(axes[0])
    axes[-1].axis("off")
    return drawn


register(Figure(
    "training_trajectories", "hessian_training",
    "[U] The init-time metrics through early training on real MNIST", (2, 3), _trajectories,
    _hessian_caption, size=(13.0, 7.5)))


def _bb_figure1(d, axes) -> dict:
    s, drawn = d.sizes, {}
    f = training.bb_speed(d)
    ax = axes[0]
    for norm in f["norms"]:
        loss = d[f"train/{norm}/loss"]
        rate = float(d[f"train/{norm}/rate"])
        drawn[f"loss/{norm}"] = band(ax, loss, f"{norm} (lr {rate:g})",
                                     x=d[f"train/{norm}/step"], color=color(norm), log=True)
    ax.set(xlabel="training step", ylabel="train loss",
           title="(a) at each normalizer's largest stable learning rate")
    _legend(ax, ncol=2)
    ax = axes[1]
    for norm, c, m in zip(f["norms"], f["cosine"], f["mean_loss"]):
        ax.scatter(c, m, color=color(norm), s=30, zorder=3)
        ax.annotate(norm, (c, m), fontsize=7, xytext=(3, 3), textcoords="offset points")
    slope, icpt = np.polyfit(f["cosine"], f["mean_loss"], 1)
    xs = np.linspace(min(f["cosine"]), max(f["cosine"]), 2)
    theory(ax, xs, slope * xs + icpt, "least-squares line")
    ax.set(xlabel="final-layer cosine similarity at initialization",
           ylabel="mean train loss over the run (lower: faster)",
           title=f"(b) Spearman rho = {f['rho']:.2f} across {len(f['norms'])} normalizers")
    drawn["cosine"], drawn["mean_loss"], drawn["rho"] = f["cosine"], f["mean_loss"], f["rho"]
    _legend(ax)
    return drawn


register(Figure(
    "bb_figure1", "bb_figure1",
    "[BB] Figure 1 at small scale: does the init-time cosine similarity predict training "
    "speed?", (1, 2), _bb_figure1,
    lambda d: f"ReLU MLP depth {d.sizes.depth} width {d.sizes.width}, SGD + momentum, "
              f"{d.sizes.steps} steps, batch {d.sizes.batch}, {d.sizes.seeds} seeds, rates "
              f"{tuple(d.sizes.rates)} (claim 12)", size=(12.0, 4.6)))


def _coord_check(d, axes) -> dict:
    from sigprop.analyses.coord_check import CoordCheck

    cc = CoordCheck(tuple(int(w) for w in d["coord/widths"]),
                    tuple(int(t) for t in d["coord/steps"]),
                    tuple(str(n) for n in d["coord/layers"]), d["coord/rms_per_seed"],
                    d["coord/l1_per_seed"])
    steps = list(cc.steps)
    show = [steps[0], steps[len(steps) // 2], steps[-1]]
    drawn = {}
    for ax, t in zip(axes, show):
        i = steps.index(t)
        for j, layer in enumerate(cc.layers):
            y = cc.rms[:, i, j]
            ax.loglog(cc.widths, y, marker="o", ms=3, lw=1.3, label=layer)
            drawn[f"{t}/{layer}"] = y
        ax.set(xlabel="width", ylabel="RMS of the coordinates", title=f"step {t}")
    drawn["slopes"] = cc.slopes("rms")
    _legend(axes[0])
    return drawn


register(Figure(
    "coord_check", "coord_check",
    "Coordinate check (muP) of a standard-parametrized ReLU MLP: the logits grow with width "
    "after a few SGD steps", (1, 3), _coord_check,
    lambda d: f"MLP depth {d.sizes.depth}, widths {tuple(d.sizes.widths)}, plain SGD at "
              f"{d.sizes.learning_rate}, batch {d.sizes.batch}, {d.sizes.seeds} seeds",
    size=(13.0, 4.2)))
