"""The papers' figures: each one an experiment (:mod:`sigprop.experiments`) plus a plot.

``python figures/<name>.py [--quick] [--recompute]`` or ``sigprop figures [--quick] [--only
NAME ...]`` writes ``<out>/<name>.png`` and ``.pdf`` and caches the measured arrays as
``<out>/data/<name>.npz`` (re-plotting is instant; ``--recompute`` measures again). Full-size
runs write into ``figures/`` (the committed PNGs); ``--quick`` runs into ``figures/quick/`` so
they never overwrite them.

Style (one for every figure): a fixed colour per normalizer (:func:`color`, keyed by the names
of ``sigprop.normalizers.names()``), GroupNorm group sizes in shades of groupnorm's purple, log axes
where growth is exponential, the mean over seeds with a min-max band, theory dashed, and a
caption line with model, batch, seeds and inputs. Each plot returns the data it drew
(``{panel/line: y values}``), which the tests check against what the figure claims.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import time
from typing import Callable

import numpy as np

from sigprop.nn import normalizers
from sigprop.paper import experiments

_NAMES = normalizers.names()
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39",
            "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363"]
COLORS = {n: _PALETTE[i % len(_PALETTE)] for i, n in enumerate(_NAMES)}
COLORS["none"] = "#000000"
THEORY = dict(color="0.35", ls="--", lw=1.3)


def color(label: str):
    """The colour of a normalizer (``"layernorm"``), also through a variant (``"sws+skipinit"``,
    ``"groupnorm(g=4)"``); group sizes get :func:`group_color` when drawn as a family."""
    base = label.split("+")[0].split("(")[0]
    return COLORS.get(base, "0.5")


def group_color(g: int, sizes) -> tuple:
    """GroupNorm's group sizes in shades of purple (groupnorm's colour): small groups light,
    large groups dark."""
    import matplotlib

    sizes = sorted(sizes)
    t = sizes.index(g) / max(len(sizes) - 1, 1)
    return matplotlib.colormaps["Purples"](0.35 + 0.6 * t)


def band(ax, values, label=None, *, x=None, color=None, ls="-", log=False):
    """Mean over seeds of ``values [seeds, points]`` and a min-max band; returns the mean drawn
    (log10 of it when ``log``: then the axis is log-scaled and the band is in the data)."""
    v = np.asarray(values, dtype=float).reshape(-1, np.shape(values)[-1])
    x = np.arange(v.shape[-1]) if x is None else np.asarray(x)
    mean = v.mean(axis=0)
    (line,) = ax.plot(x, mean, label=label, color=color, ls=ls, lw=1.6)
    if len(v) > 1:
        ax.fill_between(x, v.min(axis=0), v.max(axis=0), color=line.get_color(), alpha=0.18,
                        lw=0)
    if log:
        ax.set_yscale("log")
    return mean


def theory(ax, x, y, label="theory"):
    ax.plot(x, y, label=label, **THEORY)
    return np.asarray(y, dtype=float)


@dataclasses.dataclass(frozen=True)
class Figure:
    """A figure: the experiment it reads, its panels, its plot and a caption."""

    name: str
    experiment: str
    title: str
    panels: tuple[int, int]
    plot: Callable  # (data, axes) -> {key: drawn values}
    caption: Callable  # data -> model / batch / seeds line
    size: tuple[float, float] = (11.0, 4.2)


REGISTRY: dict[str, Figure] = {}


def register(fig: Figure) -> Figure:
    REGISTRY[fig.name] = fig
    return fig


def names() -> tuple[str, ...]:
    _load_all()
    return tuple(REGISTRY)


def get(name: str) -> Figure:
    _load_all()
    if name not in REGISTRY:
        raise ValueError(f"figure={name!r}: unknown; allowed: {', '.join(REGISTRY)}")
    return REGISTRY[name]


# the plot modules, in gallery order (each registers its figures on import)
_PLOT_MODULES = ("plots", "training_plots", "transformer_plots", "era_plots", "gns_plots")


def _load_all() -> None:
    for name in _PLOT_MODULES:
        importlib.import_module(f"sigprop.paper.figures.{name}")


def default_out(quick: bool) -> str:
    return os.path.join("figures", "quick") if quick else "figures"


def make(name: str, quick: bool = False, *, out: str | None = None, recompute: bool = False,
         progress=None, formats=("png", "pdf")) -> dict:
    """Measure (or load) and draw figure ``name``; returns ``{"paths": [...], "drawn": {...},
    "data": Data}``."""
    from sigprop.paper.plot import pyplot

    fig_def = get(name)
    out = default_out(quick) if out is None else out
    cache = os.path.join(out, "data", f"{name}.npz")
    data = experiments.measure(fig_def.experiment, quick, cache=cache, recompute=recompute,
                               progress=progress)
    plt = pyplot()
    rows, cols = fig_def.panels
    fig, axes = plt.subplots(rows, cols, figsize=fig_def.size, squeeze=False)
    drawn = fig_def.plot(data, axes.ravel())
    mode = "quick sizes" if quick else "full sizes"
    fig.suptitle(f"{fig_def.title}\ninputs: {data.meta['inputs']}", fontsize=10)
    fig.text(0.5, 0.005, f"{fig_def.caption(data)} ({mode}; sigprop figures"
             f"{' --quick' if quick else ''} --only {name})", ha="center", va="bottom",
             fontsize=7.5, color="0.3")
    fig.tight_layout(rect=(0, 0.03, 1, 0.93))
    os.makedirs(out, exist_ok=True)
    paths = []
    for ext in formats:
        path = os.path.join(out, f"{name}.{ext}")
        fig.savefig(path, dpi=130)
        paths.append(path)
    plt.close(fig)
    return {"paths": paths, "drawn": drawn, "data": data}


def make_all(quick: bool = False, only=None, *, out: str | None = None, recompute: bool = False,
             progress: bool = True, formats=("png", "pdf")) -> dict:
    """Every figure (or those in ``only``), with one progress bar over the analyses."""
    from sigprop.util.progress import Progress

    todo = list(only) if only else list(names())
    for n in todo:
        get(n)
    exps = list(dict.fromkeys(get(n).experiment for n in todo))
    total = sum(experiments.get(e).points(experiments.get(e).sizes(quick)) for e in exps)
    bar = Progress(total, "analyses") if progress else None
    results, seen = {}, set()
    try:
        for n in todo:
            e = get(n).experiment
            results[n] = make(n, quick, out=out, recompute=recompute and e not in seen,
                              progress=bar if e not in seen else None, formats=formats)
            seen.add(e)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    return results


def parser(prog: str | None = None, sub=None) -> argparse.ArgumentParser:
    kw = dict(help="regenerate the papers' figures (figures/*.png, .pdf; data cached)")
    p = sub.add_parser("figures", **kw) if sub is not None else argparse.ArgumentParser(prog=prog)
    p.add_argument("--quick", action="store_true",
                   help="small sizes (minutes on a CPU), written to figures/quick/")
    p.add_argument("--recompute", action="store_true", help="measure again (ignore the cache)")
    p.add_argument("--out", default=None, help="output folder (default figures/ or "
                   "figures/quick/)")
    if sub is not None:
        p.add_argument("--only", nargs="+", default=None, metavar="NAME",
                       help=f"figures to make (default all): {', '.join(names())}")
    return p


def cli_main(args) -> int:
    only = getattr(args, "only", None)
    if only:
        bad = [n for n in only if n not in names()]
        if bad:
            print(f"error: --only {' '.join(bad)}: unknown; allowed: {', '.join(names())}",
                  file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    res = make_all(args.quick, only, out=args.out, recompute=args.recompute)
    for n, r in res.items():
        print(f"{n}: {', '.join(r['paths'])}")
    print(f"{len(res)} figures in {time.perf_counter() - t0:.0f} s")
    return 0


def script(name: str, here: str | None = None, argv=None) -> int:
    """The body of ``figures/<name>.py``: ``[--quick] [--recompute] [--out DIR]``; by default
    it writes next to the script (``here``, its ``__file__``), quick runs into ``quick/``."""
    args = parser(prog=f"figures/{name}.py").parse_args(argv)
    args.only = [name]
    if args.out is None and here is not None:
        folder = os.path.dirname(os.path.abspath(here))
        args.out = os.path.join(folder, "quick") if args.quick else folder
    return cli_main(args)
