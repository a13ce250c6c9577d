"""``TrainResult``: the records of a training run, named arrays with a ``step`` axis.

Every array is ``[seed, (rate,) step]`` (a scalar per record: :data:`SCALARS`) or ``[seed,
(rate,) step, <layer axis>]`` (an ``analyze`` metric or finite flag, on ``layer``,
``grad_layer`` or ``branch_layer`` as in :class:`~sigprop.LayerMetrics`); the ``rate``
axis is there only for a learning-rate grid. ``coords`` holds ``step`` (the step of each
record), ``rate`` (the grid) and the layer names.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from sigprop import metrics as _metrics
from sigprop.core.results import (
    LayerAxes,
    LayerMetrics,
    NamedArrays,
    axis_of,
    freeze,
    write_npz,
)
from sigprop.util import npz

_FORMAT = "sigprop.TrainResult/1"

# the per-record scalars, with what they are (see sigprop.train.train)
SCALARS = {
    "train_loss": "mean softmax cross-entropy over confusion_batches fresh minibatches (the "
                  "cross-entropy alone: a model's extra loss terms are train_regularizer)",
    "train_regularizer": "mean of the model's extra loss terms (regnorm's penalty; 0 for "
                         "models without) over the same minibatches; the optimized loss is "
                         "train_loss + train_regularizer",
    "train_accuracy": "mean accuracy (argmax == label) over the same minibatches",
    "gradient_cosine_min": "min over pairs of minibatches of the cosine of their loss "
                           "gradients (all parameters); -it is the normalized gradient "
                           "confusion (Sankararaman et al. 2019)",
    "gradient_cosine_mean": "mean over pairs of minibatches of that cosine",
    "held_out_loss": "mean cross-entropy over the held-out set (train-mode batch statistics)",
    "held_out_accuracy": "mean accuracy over the held-out set",
    "lambda_max": "top Ritz value of the probe batch's loss Hessian (Lanczos)",
}
COORDINATES = "coordinates"  # coord_check's [..., layer + output, 2] records (RMS, l1)


def _layer_axis(name: str) -> str | None:
    if name in SCALARS:
        return None
    if name == COORDINATES:
        return "coord_layer"
    return axis_of(name)


@jax.tree_util.register_pytree_node_class
class TrainResult(LayerAxes, NamedArrays):
    """Records of one training run (see the module doc): ``res["train_loss"]``,
    ``res.cosine_similarity``, ``res.step``, ``res.at(step)``.

    ``variables``: the final weights (leading ``[seed, (rate,)]`` axes), when the result comes
    from :func:`sigprop.train.train` (not saved)."""

    def __init__(self, arrays: dict, coords: dict, config: tuple = ()):
        super().__init__(arrays, coords, config)
        self.variables = None

    def _missing(self, name: str) -> str:
        return f"{name!r} was not recorded; this result has: {', '.join(self)}"

    _PLAIN = ("coords", "config", "variables")

    def _known(self, name: str) -> bool:
        return name in _metrics.REGISTRY or name in SCALARS  # known, not recorded

    # ------------------------------------------------------------------------------ access
    @property
    def step(self) -> np.ndarray:
        """The training step of each record (0 = before any update)."""
        return np.asarray(self.coords["step"], np.int64)

    @property
    def rates(self) -> np.ndarray | None:
        """The learning-rate grid (the ``rate`` axis), or None for one rate."""
        return np.asarray(self.coords["rate"], np.float64) if "rate" in self.coords else None

    @property
    def seeds(self) -> int:
        return int(np.shape(self["train_loss"])[0])

    @property
    def meta(self) -> dict:
        return dict(self.config)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The layerwise ``analyze`` metrics recorded (registry order; no flags)."""
        return tuple(m for m in _metrics.REGISTRY if m in self._arrays)

    @property
    def scalar_names(self) -> tuple[str, ...]:
        return tuple(s for s in SCALARS if s in self._arrays)

    def axes(self, name: str) -> tuple[str, ...]:
        """``("seed", ["rate",] "step", [layer axis])`` of ``name``'s array."""
        lead = ("seed",) + (("rate",) if "rate" in self.coords else ()) + ("step",)
        axis = _layer_axis(name)
        if name == COORDINATES:
            return lead + (axis, "scale")
        return lead + ((axis,) if axis else ())

    def names_of(self, name: str) -> tuple[str, ...]:
        axis = _layer_axis(name)
        return self.coords.get(axis, ()) if axis else ()

    def layer(self, metric: str, name: str) -> np.ndarray:
        """``metric`` at the layer called ``name``: ``[seed, (rate,) step]``."""
        names = self.names_of(metric)
        if name not in names:
            raise KeyError(f"no layer {name!r} for {metric}; layers: {', '.join(names[:8])}, ...")
        return np.asarray(self[metric])[..., names.index(name)]

    def index_of(self, step: int) -> int:
        steps = list(self.coords["step"])
        if step not in steps:
            raise KeyError(f"no record at step {step}; recorded steps: {steps}")
        return steps.index(step)

    def at(self, step: int) -> LayerMetrics:
        """The layerwise metrics recorded at ``step`` as a :class:`LayerMetrics`
        (``[seed, layer]``, or ``[rate, seed, layer]`` for a grid: the rate axis as its grid
        axis), for the plots and tables that take an ``analyze`` result."""
        i = self.index_of(step)
        arrays = {}
        for k, v in self._arrays.items():
            if k in SCALARS or k == COORDINATES:
                continue
            a = np.take(np.asarray(v), i, axis=len(self.axes(k)) - 2)
            arrays[k] = np.moveaxis(a, 0, 1) if "rate" in self.coords else a
        coords = {k: v for k, v in self.coords.items() if k not in ("step", "rate")}
        return LayerMetrics(arrays, coords, freeze({**self.meta, "step": step}))

    def first_nonfinite(self) -> tuple[str, int] | None:
        """``(what, step)`` of the first record with a NaN/Inf loss or a non-finite flag."""
        first = None
        for k, v in self._arrays.items():
            a = np.asarray(v)
            if k in _metrics.FLAGS.values():
                bad = ~a.astype(bool)
            elif k in ("train_loss", "held_out_loss"):
                bad = ~np.isfinite(a)
            else:
                continue
            axis = self.axes(k).index("step")
            per_step = np.moveaxis(bad, axis, 0).reshape(bad.shape[axis], -1).any(axis=1)
            if per_step.any():
                i = int(np.argmax(per_step))
                if first is None or i < first[1]:
                    first = (k, i)
        return None if first is None else (first[0], int(self.coords["step"][first[1]]))

    # ------------------------------------------------------------------------------ making
    @classmethod
    def from_records(cls, recs: dict, steps, rates, config: dict) -> "TrainResult":
        """From the training program's records ``{name: [seed, rate, step, ...] | Named}``
        (``rates`` None: the single rate axis is dropped)."""
        arrays, coords = {}, {"step": tuple(int(s) for s in steps)}
        if rates is not None:
            coords["rate"] = tuple(float(r) for r in rates)
        for name, v in recs.items():
            if hasattr(v, "names"):
                coords[_layer_axis(name)] = tuple(v.names)
                v = v.value
            a = np.asarray(v)
            arrays[name] = a if rates is not None else a[:, 0]
        return cls(arrays, coords, freeze(config))

    # ------------------------------------------------------------------------------ io
    def save(self, path: str | os.PathLike) -> str:
        """One ``.npz``: the arrays, plus coords and config as a JSON string (no pickle).
        Returns the path written (``.npz`` appended if missing)."""
        return write_npz(path, _FORMAT, self.coords, self.config, self._arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainResult":
        """Read a file written by :meth:`save`."""
        path, meta, arrays = npz.read(path, "TrainResult")
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a sigprop TrainResult file (format "
                             f"{meta.get('format')!r})")
        return cls(arrays, meta["coords"], freeze(meta.get("config", {})))

    def to_pandas(self):
        """A long DataFrame: one row per (seed, [rate,] step, [layer,] name) with its value
        (scalars have ``layer`` None and ``layer_index`` -1; flags are left out)."""
        try:
            import pandas as pd
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("to_pandas() needs pandas: pip install pandas") from e
        frames = []
        steps = np.asarray(self.coords["step"])
        for name in self.scalar_names + self.metric_names:
            arr = np.asarray(self[name])
            axes = self.axes(name)
            idx = np.indices(arr.shape).reshape(arr.ndim, -1)
            cols = {"seed": idx[0]}
            if "rate" in self.coords:
                cols["rate"] = np.asarray(self.coords["rate"])[idx[1]]
            cols["step"] = steps[idx[axes.index("step")]]
            if _layer_axis(name):
                names = np.asarray(self.names_of(name), dtype=object)
                cols.update(layer_index=idx[-1], layer=names[idx[-1]])
            else:
                cols.update(layer_index=np.full(arr.size, -1), layer=None)
            cols.update(metric=name, value=arr.reshape(-1))
            frames.append(pd.DataFrame(cols))
        return pd.concat(frames, ignore_index=True)

    def to_xarray(self):
        """An ``xarray.Dataset``: one variable per array, dims ``(seed, [rate,] step, [layer
        axis])``, ``step`` / ``rate`` and the layer names as coordinates."""
        try:
            import xarray as xr
        except ImportError as e:
            raise ImportError("to_xarray() needs xarray: pip install 'sigprop[xarray]'") from e
        data = {k: (self.axes(k), np.asarray(v)) for k, v in self._arrays.items()}
        coords = {axis: list(names) for axis, names in self.coords.items()}
        return xr.Dataset(data, coords=coords, attrs={"config": json.dumps(self.meta)})

    def __repr__(self) -> str:
        return (f"TrainResult(seeds={self.seeds}, steps={list(self.coords['step'])}, "
                f"rates={self.coords.get('rate')}, layers={len(self.layer_names)}, "
                f"recorded={list(self)})")


def equal(a: TrainResult, b: TrainResult) -> bool:
    """True if two results have equal arrays (NaN == NaN), coords and config."""
    if a.coords != b.coords or set(a) != set(b) or a.meta != b.meta:
        return False
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k]), equal_nan=True) for k in a)


__all__ = ["TrainResult", "SCALARS", "equal"]
