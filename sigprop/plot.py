"""Matplotlib helpers shared by the CLI, ``figures/`` and ``notebooks/``."""

from __future__ import annotations

import numpy as np

from sigprop.results import LayerMetrics

_LABELS = {
    "activation_variance": "activation variance",
    "channel_squared_mean": "channel squared mean",
    "cosine_similarity": "cosine similarity",
    "stable_rank": "stable rank",
    "effective_rank": "effective rank",
    "grad_norm": "gradient norm",
}


def layer_band(ax, result: LayerMetrics, metric: str, label: str | None = None, *,
               log: bool = False, color=None, x=None):
    """Draw ``metric`` over layers: the mean over seeds and a min-max band.

    ``result`` holds ``[seeds, layers]`` arrays. Returns the line.
    """
    values = np.asarray(result[metric], dtype=float)
    values = values.reshape(-1, values.shape[-1])
    if log:
        values = np.log10(np.where(values > 0, values, np.nan))
    x = np.arange(values.shape[-1]) if x is None else np.asarray(x)
    mean = np.nanmean(values, axis=0)
    (line,) = ax.plot(x, mean, label=label, color=color, lw=1.6)
    if values.shape[0] > 1:
        ax.fill_between(x, np.nanmin(values, axis=0), np.nanmax(values, axis=0),
                        color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("layer")
    ax.set_ylabel(("log10 " if log else "") + _LABELS.get(metric, metric))
    return line


def compare(results: dict[str, LayerMetrics], metrics=("cosine_similarity", "stable_rank",
            "grad_norm"), title: str | None = None):
    """One panel per metric, one line (mean, min-max band over seeds) per labelled result."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, res in results.items():
            layer_band(ax, res, metric, label, log=(metric == "grad_norm"))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
