"""Matplotlib helpers shared by the CLI, ``figures/`` and ``notebooks/``.

Measurement: :func:`layer_band` (mean over seeds and a min-max band per layer), :func:`compare`.
Theory beside measurement (``sigprop.theory``): :func:`theory_line`, :func:`with_theory`, and three
ready-made figures, :func:`cosine_vs_arccos`, :func:`grad_vs_bn_rate`,
:func:`resnet_second_moment_plot`. Figures use matplotlib's Agg backend unless another is set.
"""

from __future__ import annotations

import re

import numpy as np

from sigprop.analyses import theory as _theory
from sigprop.core.results import LayerMetrics

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
    line = _band(ax, result[metric], label, log=log, color=color, x=x)
    ax.set_xlabel("layer")
    ax.set_ylabel(("log10 " if log else "") + _LABELS.get(metric, metric))
    return line


def _log10(values):
    values = np.asarray(values, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(np.where(values > 0, values, np.nan))


def _band(ax, values, label=None, *, log=False, color=None, x=None):
    """Mean over all leading axes of ``values [..., layers]`` (seeds, grid) and a min-max band."""
    values = np.asarray(values, dtype=float)
    values = values.reshape(-1, values.shape[-1])
    if log:
        values = _log10(values)
    x = np.arange(values.shape[-1]) if x is None else np.asarray(x)
    mean = np.nanmean(values, axis=0)
    (line,) = ax.plot(x, mean, label=label, color=color, lw=1.6)
    if values.shape[0] > 1:
        ax.fill_between(x, np.nanmin(values, axis=0), np.nanmax(values, axis=0),
                        color=line.get_color(), alpha=0.2, lw=0)
    return line


def pyplot():
    """pyplot, on the Agg backend unless a backend is already chosen (a notebook's inline
    backend, ``MPLBACKEND``, or pyplot imported by the caller): never switch a user's."""
    import os
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def compare(results: dict[str, LayerMetrics], metrics=("cosine_similarity", "stable_rank",
            "grad_norm"), title: str | None = None):
    """One panel per metric, one line (mean, min-max band over seeds) per labelled result."""
    plt = pyplot()
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


# --------------------------------------------------------------------------------------------
# Theory beside measurement


def theory_line(ax, x, y, label: str | None = "theory", **kw):
    """Draw a theory curve: a dashed near-black line over the measurement. ``kw`` (matplotlib
    ``Line2D`` properties: ``color``, ``ls``, ``lw``, ...) override the style. Returns the line."""
    style = dict(color="0.15", ls="--", lw=1.3, zorder=3)
    style.update(kw)
    (line,) = ax.plot(np.asarray(x, dtype=float), np.asarray(y, dtype=float), label=label, **style)
    return line


def _select(names: tuple, layers, metric: str) -> np.ndarray:
    """Indices into ``names`` picked by ``layers``: None (all), a substring, a predicate
    ``name -> bool`` or a sequence of exact names (kept in the given order)."""
    if layers is None:
        idx = list(range(len(names)))
    elif isinstance(layers, str):
        idx = [i for i, n in enumerate(names) if layers in n]
    elif callable(layers):
        idx = [i for i, n in enumerate(names) if layers(n)]
    else:
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ValueError(f"layers: no {metric} layer named {unknown[0]!r}; layers: "
                             f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''}")
        idx = [names.index(n) for n in layers]
    if not idx:
        raise ValueError(f"layers={layers!r} selects none of the {len(names)} {metric} layers "
                         f"({', '.join(names[:4])}, ...)")
    return np.asarray(idx)


def _theory_values(theory_curve, x: np.ndarray) -> np.ndarray:
    if callable(theory_curve):
        return np.array([float(theory_curve(xi)) for xi in x])
    y = np.asarray(theory_curve, dtype=float)
    if y.shape != x.shape:
        raise ValueError(f"theory has shape {y.shape}; it must match the {x.size} plotted layers "
                         "(or be a callable of the layer index)")
    return y


def with_theory(result: LayerMetrics, metric: str, theory, *, log: bool = False, ax=None,
                label: str | None = None, layers=None, x=None,
                theory_label: str | None = "theory"):
    """Draw ``metric`` (mean over seeds and min-max band, as :func:`layer_band`) and a theory
    curve beside it, on the same layers.

    Args:
      result: a :class:`~sigprop.LayerMetrics`.
      metric: one of ``result.metric_names``.
      theory: the prediction in the metric's units: an array with one value per plotted layer,
        or a callable called with each plotted ``x`` (the layer position 0..n-1 by default).
        With ``log=True`` it is drawn as ``log10(theory)``, like the measurement.
      log: plot ``log10`` of the metric (and of the theory).
      ax: the Axes to draw on (a new figure if None).
      label: the measurement's legend label.
      layers: which layers of ``result.names_of(metric)`` to plot: None (all), a substring of
        their names, a predicate ``name -> bool``, or a list of names.
      x: x positions of the plotted layers (default ``0..n-1``).
      theory_label: the theory's legend label.

    Returns:
      the Axes; ``ax.lines[-2]`` is the measurement and ``ax.lines[-1]`` the theory.
    """
    values = np.asarray(result[metric], dtype=float)
    idx = _select(result.names_of(metric), layers, metric)
    values = values[..., idx]
    x = np.arange(idx.size) if x is None else np.asarray(x)
    if x.shape != (idx.size,):
        raise ValueError(f"x has shape {x.shape}; it must give one position per plotted layer "
                         f"({idx.size})")
    y = _theory_values(theory, x)
    if ax is None:
        _, ax = pyplot().subplots(figsize=(5.0, 3.6))
    _band(ax, values, label, log=log, x=x)
    theory_line(ax, x, _log10(y) if log else y, label=theory_label)
    ax.set_xlabel("layer")
    ax.set_ylabel(("log10 " if log else "") + _LABELS.get(metric, metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def _measured_label(result: LayerMetrics) -> str:
    norm = result.meta.get("norm")
    return f"measured ({norm})" if norm else "measured"


def _mean_over_seeds(values, column: int, log: bool = False) -> float:
    v = np.asarray(values, dtype=float)
    v = v.reshape(-1, v.shape[-1])[:, column]
    return float(np.nanmean(_log10(v) if log else v))


def cosine_vs_arccos(result: LayerMetrics, *, layers=None, label: str | None = None):
    """Cosine similarity per layer beside the iterated arc-cosine map (science.md claim 9).

    The theory starts at the first plotted layer's measured mean cosine ``c_0`` (mean over
    seeds) and predicts layer ``k`` as ``relu_correlation_map`` applied ``k`` times to ``c_0``
    (:func:`sigprop.theory.iterate`). Starting from a measured value rather than the inputs'
    cosine uses only what ``LayerMetrics`` records (layer 0 already holds one application of
    the map to the inputs' cosine, e.g. ``1 / pi`` for i.i.d. N(0, 1) inputs) and leaves no free
    parameter for the remaining layers. The map holds for wide He-init ReLU MLPs without
    normalizer and without bias, where post-activation cosines iterate it (see
    :func:`sigprop.theory.relu_post_activation_cosine`); for other normalizers or conv nets the gap
    between the curves is the point of the plot.

    Returns:
      a Figure; on its Axes, ``lines[0]`` is the measurement and ``lines[1]`` the theory.
    """
    fig, ax = pyplot().subplots(figsize=(5.0, 3.6))
    idx = _select(result.layer_names, layers, "cosine_similarity")
    c0 = _mean_over_seeds(np.asarray(result["cosine_similarity"])[..., idx], 0)
    curve = _theory.iterate(_theory.relu_correlation_map, np.clip(c0, -1.0, 1.0), idx.size - 1)
    with_theory(result, "cosine_similarity", curve, ax=ax, layers=layers,
                label=label or _measured_label(result),
                theory_label="arc-cosine map (Cho & Saul), from layer 0")
    ax.set_title("ReLU, He init: cosine similarity vs arc-cosine map", fontsize=9)
    fig.tight_layout()
    return fig


def grad_vs_bn_rate(result: LayerMetrics, *, activation="relu", layers=None,
                    label: str | None = None):
    """log10 gradient norm per layer beside BatchNorm's explosion rate (science.md claim 10).

    The theory: the squared gradient norm grows by ``lambda =``
    :func:`sigprop.theory.bn_gradient_explosion_rate` ``(activation)`` per layer going backward
    (``pi / (pi - 1)`` for ReLU), so ``log10 ||g||`` falls by ``0.5 log10(lambda)`` per layer
    going forward. The line is anchored at the last plotted layer's measured mean ``log10``
    gradient norm (mean over seeds, the value the measured curve shows there): the gradient
    enters the stack there from the classifier, and every layer before it is one
    dense -> batchnorm -> activation step, each predicted to multiply the squared norm by
    ``lambda`` (wide layers, batch >= 64, no skips).

    Returns:
      a Figure; on its Axes, ``lines[0]`` is the measurement and ``lines[1]`` the theory
      (in ``log10`` units).
    """
    rate = _theory.bn_gradient_explosion_rate(activation)
    fig, ax = pyplot().subplots(figsize=(5.0, 3.6))
    idx = _select(result.grad_layer_names, layers, "grad_norm")
    anchor = _mean_over_seeds(np.asarray(result["grad_norm"])[..., idx], -1, log=True)
    steps_back = idx.size - 1 - np.arange(idx.size)
    curve = 10.0 ** (anchor + 0.5 * np.log10(rate) * steps_back)
    with_theory(result, "grad_norm", curve, log=True, ax=ax, layers=layers,
                label=label or _measured_label(result),
                theory_label=f"batchnorm theory: |g|^2 x {rate:.3f} per layer backward")
    ax.set_title("gradient norm vs Yang et al. (2019) explosion rate", fontsize=9)
    fig.tight_layout()
    return fig


def _stage_outputs(result: LayerMetrics, stage: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``layer_names`` of ``stage{stage}/block{b}/out`` and their ``b``, by ``b``."""
    pattern = re.compile(rf"stage{stage}/block(\d+)/out")
    found = sorted((int(m.group(1)), i) for i, n in enumerate(result.layer_names)
                   if (m := pattern.fullmatch(n)))
    blocks = np.array([b for b, _ in found], dtype=int)
    return np.array([i for _, i in found], dtype=int), blocks


def resnet_second_moment_plot(results: dict[str, LayerMetrics], *, stage: int = 1,
                              alpha: float = 1.0):
    """The residual stream's second moment per block beside ``2^l`` and ``l + 1`` (science.md
    claim 11; :func:`sigprop.theory.resnet_second_moment`).

    For each result, the ``stage{stage}/block{b}/out`` layers (the stream after block ``b``'s
    addition) give the second moment ``activation_variance + channel_squared_mean`` (=
    ``mean(x^2)``), divided, seed by seed, by its value at the stage's first block; plotted as
    ``log10`` against ``b`` (mean over seeds and min-max band). The theory curves, unnormalized
    ``(1 + alpha^2)^l`` and normalized ``1 + alpha^2 l`` with ``l = b - b_0``, start at 1 there.

    Anchoring: dividing by block 0's value is exact for the geometric law, whatever the scale
    of the stream entering the stage (``m_l = m_0 2^l`` from any start). The linear law is
    additive: each normalized branch adds a second moment of 1 (normalizer -> ReLU -> He conv),
    so ``m_l = m_0 + alpha^2 l`` and the ratio is ``1 + alpha^2 l / m_0``: the drawn ``l + 1``
    assumes ``m_0 = 1``. In sigprop's pre-activation ResNet with batchnorm, the stem's
    conv-norm-ReLU output has second moment 1/2 and block 0 adds up to 1 (less on small images:
    zero padding), so ``m_0 ~ 1.3-1.5`` and the measured ratio runs along ``1 + l / m_0``: linear
    like ``l + 1``, with slope 2/3 to 3/4 (measured: 1, 1.71, 2.48, 3.19, 3.88, 4.67 for 6 blocks,
    width 32, 8x8 inputs). Without normalizer the measured growth per block scatters around 2
    at small width (2.3, 2.3, 2.4, 2.2, 1.9 in the same setting: the ReLU stem's nonnegative
    output and finite width). The laws are for pre-activation blocks (``preact=True``); the
    post-activation block applies a ReLU to the stream after each addition.

    Args:
      results: ``{label: LayerMetrics}`` of residual networks.
      stage: which stage's blocks to plot (its first block must be present).
      alpha: the branch gain of the theory curves (the models' ``alpha``).

    Returns:
      a Figure; on its Axes, one measured line per result (in ``results`` order), then the
      unnormalized and the normalized theory lines.
    """
    if not results:
        raise ValueError("results is empty; pass {label: LayerMetrics}")
    fig, ax = pyplot().subplots(figsize=(5.0, 3.6))
    longest = 0
    for label, result in results.items():
        idx, blocks = _stage_outputs(result, stage)
        if idx.size == 0:
            raise ValueError(f"results[{label!r}] has no 'stage{stage}/block<b>/out' layers; "
                             f"layers: {', '.join(result.layer_names[:6])}, ...")
        m = (np.asarray(result["activation_variance"], dtype=float)
             + np.asarray(result["channel_squared_mean"], dtype=float))[..., idx]
        m = m.reshape(-1, idx.size)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = m / m[:, :1]
        _band(ax, ratio, label, log=True, x=blocks - blocks[0])
        longest = max(longest, int(blocks[-1] - blocks[0]))
    l = np.arange(longest + 1)
    a2 = f"(1 + {alpha:g}^2)^l" if alpha != 1 else "2^l"
    theory_line(ax, l, np.log10(_theory.resnet_second_moment(longest, "none", alpha)),
                label=f"no norm: {a2}")
    linear = f"1 + {alpha:g}^2 l" if alpha != 1 else "l + 1"
    theory_line(ax, l, np.log10(_theory.resnet_second_moment(longest, "batchnorm", alpha)),
                label=f"normalized: {linear}", ls=":")
    ax.set_xlabel(f"block l (stage {stage})")
    ax.set_ylabel("log10 second moment / block 0's")
    ax.set_title("residual stream second moment (De & Smith 2020)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
