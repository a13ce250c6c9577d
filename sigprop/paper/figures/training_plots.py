"""Figures beyond initialization: Hessian densities and outliers through early training ([U]
section 6), the init-time metrics' trajectories ([U] sections 5-6), [BB] Figure 1 at small
scale, and a coordinate check."""

from __future__ import annotations

import numpy as np
from matplotlib.ticker import NullFormatter, ScalarFormatter

from sigprop.paper.experiments import training
from sigprop.paper.figures import Figure, band, color, register


def _legend(ax, **kw):
    ax.legend(fontsize=7, frameon=False, **kw)


BAND = "mean over seeds, band min-max"


def _trained(d, norms) -> list[str]:
    """The normalizers with a tuned rate (a rate that trains); the others were not run."""
    return [n for n in norms if np.isfinite(float(d[f"search/{n}/rate"]))]


def _hessian_caption(d) -> str:
    s = d.sizes
    left = [n for n in s.norms if n not in _trained(d, s.norms)]
    return (f"ReLU MLP {s.depth} x {s.width}, SGD + momentum at tuned rates "
            f"(legend), batch {s.batch}, {s.seeds} seeds ({BAND}); cross-entropy Hessian, "
            f"Lanczos order {s.order}, {s.probes} probes (claim 8)"
            + (f"; no rate trains: {', '.join(left)}" if left else ""))


def _label(d, norm: str) -> str:
    return f"{norm} (lr {float(d[f'search/{norm}/rate']):g})"


def _hessian_density(d, axes) -> dict:
    s, drawn = d.sizes, {}
    shown = (int(s.checkpoints[0]), int(s.claim_step))
    for ax, c, letter in zip(axes, shown, "ab"):
        for norm in _trained(d, s.norms):
            grid = d[f"hessian/{norm}/{c}/grid"]
            dens = d[f"hessian/{norm}/{c}/density"]
            grid = grid[0] if grid.ndim > 1 else grid
            dens = dens.mean(axis=0) if dens.ndim > 1 else dens
            ax.semilogy(grid, np.maximum(dens, 1e-12), color=color(norm), label=_label(d, norm),
                        lw=1.3)
            drawn[f"{c}/{norm}"] = dens
        ax.set_ylim(1e-6, None)
        ax.set(xlabel="eigenvalue", ylabel="SLQ density (mean over seeds)",
               title=f"({letter}) step {c}" + (" (initialization)" if c == 0 else
                                                " ([U] Figure 4's step)"))
    _legend(axes[0])
    return drawn


register(Figure(
    "hessian_density", "hessian_training",
    "[U] Hessian eigenvalue density per normalizer, at initialization and 50 steps into "
    "training", (1, 2), _hessian_density, _hessian_caption))


def _outlier_ratio(d, axes) -> dict:
    s, drawn = d.sizes, {}
    steps = np.array(s.checkpoints)
    for norm in _trained(d, s.norms):
        ratio = np.stack([d[f"hessian/{norm}/{c}/ratio"] for c in s.checkpoints], axis=1)
        drawn[f"ratio/{norm}"] = band(axes[0], ratio, _label(d, norm), x=steps, color=color(norm),
                                      log=True)
        top = np.stack([d[f"hessian/{norm}/{c}/top"][:, 0] for c in s.checkpoints], axis=1)
        drawn[f"lambda_max/{norm}"] = band(axes[1], top, norm, x=steps, color=color(norm),
                                           log=True)
    for ax in axes:
        ax.axvline(s.claim_step, color="0.6", lw=0.8, ls=":")
    axes[0].set(xlabel="training step", ylabel=f"lambda_1 / lambda_{training.K_CLASSES}",
                title=f"(a) outlier ratio (claim 8 tested at step {s.claim_step})")
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
              ("train_loss", None, "(e) train cross-entropy"))
    for ax, (metric, layer, title) in zip(axes, panels):
        for norm in _trained(d, s.norms):
            v = d[f"train/{norm}/{metric}"]
            v = v[..., layer] if layer is not None else v
            drawn[f"{metric}/{norm}"] = band(ax, v, _label(d, norm), x=d[f"train/{norm}/step"],
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
    drawn = {}
    f = training.bb_speed(d)
    ax = axes[0]
    for norm in f["norms"]:
        loss = d[f"train/{norm}/loss"]
        rate = float(d[f"train/{norm}/rate"])
        drawn[f"loss/{norm}"] = band(ax, loss, f"{norm} (lr {rate:g})",
                                     x=d[f"train/{norm}/step"], color=color(norm), log=True)
    ax.set(xlabel="training step", ylabel="train cross-entropy",
           title="(a) each normalizer at its tuned learning rate")
    _legend(ax, ncol=2)
    ax = axes[1]
    for norm, c, m in zip(f["norms"], f["cosine"], f["mean_loss"]):
        ax.scatter(c, m, color=color(norm), s=30, zorder=3)
        ax.annotate(norm, (c, m), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if len(f["norms"]) >= 2:  # a descriptive fit in log-log, drawn solid grey: not theory
        slope, icpt = np.polyfit(np.log(f["cosine"]), np.log(f["mean_loss"]), 1)
        xs = np.geomspace(min(f["cosine"]), max(f["cosine"]), 20)
        ax.plot(xs, np.exp(icpt) * xs ** slope, color="0.55", lw=1.0, ls="-",
                label="least-squares fit (log-log)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(ScalarFormatter())
    untrained = f"; no rate trains: {', '.join(f['untrained'])}" if f["untrained"] else ""
    ax.set(xlabel="final-layer cosine similarity at initialization",
           ylabel="mean train cross-entropy over the run (lower: faster)",
           title=f"(b) Spearman rho = {f['rho']:.2f}, one-sided p = {f['p']:.2g}, "
                 f"n = {f['n']}{untrained}")
    drawn["cosine"], drawn["mean_loss"], drawn["rho"] = f["cosine"], f["mean_loss"], f["rho"]
    drawn["p"] = f["p"]
    _legend(ax)
    return drawn


register(Figure(
    "bb_figure1", "bb_figure1",
    "[BB] Figure 1 at small scale: does the init-time cosine similarity predict training "
    "speed?", (1, 2), _bb_figure1,
    lambda d: f"ReLU MLP {d.sizes.depth} x {d.sizes.width}, SGD + momentum, {d.sizes.steps} "
              f"steps, {d.sizes.seeds} seeds ({BAND}); rates tuned on {d.sizes.search_seeds} "
              "other seeds (learning_rate_search; claim 12)", size=(12.0, 4.6)))


def _coord_check(d, axes) -> dict:
    from sigprop.analyses.coord_check import CoordCheck

    cc = CoordCheck(tuple(int(w) for w in d["coord/widths"]),
                    tuple(int(t) for t in d["coord/steps"]),
                    tuple(str(n) for n in d["coord/layers"]), d["coord/rms_per_seed"],
                    d["coord/l1_per_seed"])
    steps = list(cc.steps)
    # initialization, the first SGD step (where the logits jump with width) and the last step
    show = [steps[0], steps[1], steps[-1]] if len(steps) >= 3 else steps
    slopes = cc.slopes("rms")  # [steps + 1, layers]: log-log slope of RMS vs width
    drawn = {}
    for ax, t in zip(axes, show):
        i = steps.index(t)
        for j, layer in enumerate(cc.layers):
            y = cc.rms[:, i, j]
            ax.loglog(cc.widths, y, marker="o", ms=3, lw=1.3, label=layer)
            drawn[f"{t}/{layer}"] = y
        hidden = slopes[i, :-1]
        ax.set(xlabel="width", ylabel="RMS of the coordinates",
               title=f"step {t}: RMS ~ width^slope; logits {slopes[i, -1]:+.2f},\n"
                     f"hidden layers {hidden.min():+.2f} to {hidden.max():+.2f}")
    drawn["slopes"] = slopes
    drawn["shown_steps"] = np.array(show)
    _legend(axes[0])
    return drawn


register(Figure(
    "coord_check", "coord_check",
    "Coordinate check (muP) of a standard-parametrized ReLU MLP: every layer's scale flat in "
    "width at init, not after SGD steps (log-log slopes in the panel titles)", (1, 3),
    _coord_check,
    lambda d: f"MLP depth {d.sizes.depth}, widths {tuple(d.sizes.widths)}, plain SGD at "
              f"{d.sizes.learning_rate}, batch {d.sizes.batch}, {d.sizes.seeds} seeds",
    size=(13.0, 4.2)))
