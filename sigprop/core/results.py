"""``LayerMetrics``: the result of an analysis, a mapping of named arrays with named axes."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax
import numpy as np

from sigprop import metrics as _metrics
from sigprop.util import npz

_FORMAT = "sigprop.LayerMetrics/2"
_OLD_FORMAT = "sigprop.LayerMetrics/1"
_FLAG_AXES = {flag: axis for axis, flag in _metrics.FLAGS.items()}
# sigprop 0.1's files: every array is [..., seed, layer | grad_layer]
_V1_GRAD = ("grad_norm", "grad_finite", "gradient_correlation")


def axis_of(name: str) -> str:
    """The layer axis of a metric or flag name."""
    if name in _metrics.REGISTRY:
        return _metrics.REGISTRY[name].axis
    if name in _FLAG_AXES:
        return _FLAG_AXES[name]
    raise KeyError(name)


def write_npz(path, fmt: str, coords: Mapping, config: Mapping, arrays: Mapping) -> str:
    """One ``.npz`` of a named-arrays result: ``arrays`` plus ``{"format", "coords", "config"}``
    (:func:`sigprop.util.npz.write`). Returns the path written (``.npz`` appended if missing)."""
    meta = dict(format=fmt, coords={k: list(v) for k, v in coords.items()}, config=dict(config))
    return npz.write(path, meta, arrays)


class NamedArrays(Mapping):
    """``{name: array}`` with ``coords`` (axis name -> labels) and a frozen ``config``: a
    mapping, and a pytree whose leaves are the arrays (so results pass through ``jax.jit`` and
    ``jax.tree_util``). The base of :class:`LayerMetrics` and ``sigprop.train.TrainResult``."""

    def __init__(self, arrays: dict, coords: dict, config: tuple = ()):
        self._arrays = dict(arrays)
        self.coords = {k: tuple(v) for k, v in coords.items()}
        self.config = config

    # ------------------------------------------------------------------------------ pytree
    def tree_flatten(self):
        keys = tuple(self._arrays)
        return [self._arrays[k] for k in keys], (keys, tuple(self.coords.items()), self.config)

    @classmethod
    def tree_unflatten(cls, aux, children):
        keys, coords, config = aux
        return cls(dict(zip(keys, children)), dict(coords), config)

    # ------------------------------------------------------------------------------ mapping
    def __getitem__(self, name: str):
        if name not in self._arrays:
            raise KeyError(self._missing(name))
        return self._arrays[name]

    def __iter__(self):
        return iter(self._arrays)

    def __len__(self):
        return len(self._arrays)

    def _missing(self, name: str) -> str:
        return f"no {name!r} here; there are: {', '.join(self)}"

    # attribute access: an array by name; a known name that was not measured reads as None
    _PLAIN = ("coords", "config")  # attributes, never array names

    def _known(self, name: str) -> bool:
        return False

    def __getattr__(self, name: str):
        if name.startswith("_") or name in self._PLAIN:
            raise AttributeError(name)
        arrays = self.__dict__.get("_arrays", {})
        if name in arrays:
            return arrays[name]
        if self._known(name):
            return None
        raise AttributeError(f"{type(self).__name__} has no {name!r}; it has: "
                             f"{', '.join(arrays)}")


class LayerAxes:
    """The layer names of each layer axis, from ``coords``: ``layer_names`` (activation taps),
    ``grad_layer_names`` (gradient taps), ``branch_layer_names`` (residual branches),
    ``attention_layer_names`` (attention taps), ``param_layer_names`` (weights) and
    ``norm_layer_names`` (LayerNorm / RMSNorm with affine parameters: the ``gns_*`` metrics)."""

    coords: dict

    @property
    def layer_names(self) -> tuple[str, ...]:
        return self.coords.get(_metrics.LAYER, ())

    @property
    def grad_layer_names(self) -> tuple[str, ...]:
        return self.coords.get(_metrics.GRAD_LAYER, ())

    @property
    def branch_layer_names(self) -> tuple[str, ...]:
        return self.coords.get(_metrics.BRANCH_LAYER, ())

    @property
    def attention_layer_names(self) -> tuple[str, ...]:
        return self.coords.get(_metrics.ATTENTION_LAYER, ())

    @property
    def param_layer_names(self) -> tuple[str, ...]:
        return self.coords.get(_metrics.PARAM_LAYER, ())

    @property
    def norm_layer_names(self) -> tuple[str, ...]:
        return self.coords.get(_metrics.NORM_LAYER, ())


@jax.tree_util.register_pytree_node_class
class LayerMetrics(LayerAxes, NamedArrays):
    """Layerwise metrics of one analysis: ``{name: array}`` with named axes.

    Every array is ``[..., seed, <layer axis>]``: ``layer`` (activation taps, names in
    ``layer_names``), ``grad_layer`` (gradient taps, ``grad_layer_names``), ``branch_layer``
    (residual branches, ``branch_layer_names``), ``attention_layer`` (attention taps,
    ``attention_layer_names``) or ``param_layer`` (weights, ``param_layer_names``); leading axes
    (a sweep's grid) come first. ``finite`` / ``grad_finite`` / ``branch_finite`` /
    ``attention_finite`` / ``param_finite`` flag, per seed and layer, whether the
    observed values and their metrics were finite. Metrics are read as items
    (``res["cosine_similarity"]``) or attributes (``res.cosine_similarity``); a registered
    metric that was not measured reads as None. ``config`` records how it was made.
    """

    def _known(self, name: str) -> bool:
        return name in _metrics.REGISTRY or name in _FLAG_AXES  # registered, not measured

    def _missing(self, name: str) -> str:
        return f"unknown metric {name!r} for this result; it has: {', '.join(self)}"

    # ------------------------------------------------------------------------------ access
    def axes(self, name: str) -> tuple[str, ...]:
        """The axis names of ``name``'s array: ``(grid0, ..., "seed", <layer axis>)``."""
        nd = np.ndim(self[name])
        return tuple(f"grid{i}" for i in range(nd - 2)) + ("seed", axis_of(name))

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The metrics this result holds (in registry order; the flags excluded)."""
        return tuple(m for m in _metrics.REGISTRY if m in self._arrays)

    @property
    def meta(self) -> dict:
        """``config`` as a dict."""
        return dict(self.config)

    @property
    def seeds(self) -> int:
        return int(np.shape(next(iter(self._arrays.values())))[-2])

    def names_of(self, metric: str) -> tuple[str, ...]:
        """The layer names of ``metric``'s last axis."""
        return self.coords.get(axis_of(metric), ())

    def layer(self, metric: str, name: str):
        """``metric`` at the layer called ``name``: ``[..., seeds]``."""
        names = self.names_of(metric)
        if name not in names:
            raise KeyError(f"no layer {name!r} for {metric}; layers: {', '.join(names[:8])}, ...")
        return np.asarray(self[metric])[..., names.index(name)]

    def replace(self, **arrays) -> "LayerMetrics":
        """A copy with some arrays replaced or added (None removes one)."""
        new = dict(self._arrays)
        for k, v in arrays.items():
            if k == "config":
                return LayerMetrics(new, self.coords, v)
            if v is None:
                new.pop(k, None)
            else:
                new[k] = v
        return LayerMetrics(new, self.coords, self.config)

    def first_nonfinite(self) -> tuple[str, int, str] | None:
        """``(kind, index, name)`` of the first layer with a non-finite value, or None.

        ``kind`` is ``'activation'`` (index into ``layer_names``), ``'gradient'`` or
        ``'branch'``."""
        for kind, flag in (("activation", "finite"), ("gradient", "grad_finite"),
                           ("branch", "branch_finite")):
            if flag not in self._arrays:
                continue
            bad = ~np.asarray(self._arrays[flag], dtype=bool)
            if bad.any():
                idx = int(np.argmax(bad.reshape(-1, bad.shape[-1]).any(axis=0)))
                return kind, idx, self.names_of(flag)[idx]
        return None

    # ------------------------------------------------------------------------------ making
    @classmethod
    def from_engine(cls, out: dict, config: dict) -> "LayerMetrics":
        """From :func:`sigprop.engine.execute`'s ``{name: Named}``."""
        arrays, coords = {}, {}
        for name, named in out.items():
            arrays[name] = np.asarray(named.value)
            coords[axis_of(name)] = named.names
        return cls(arrays, coords, freeze(config))

    # ------------------------------------------------------------------------------ io
    def save(self, path: str | os.PathLike) -> str:
        """Write one ``.npz`` (arrays, plus the names and config as a JSON string; no pickle).

        Returns the path written (``.npz`` appended if missing)."""
        return write_npz(path, _FORMAT, self.coords, self.config, self._arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LayerMetrics":
        """Read a file written by :meth:`save` (also sigprop 0.1's files)."""
        path, meta, arrays = npz.read(path, "LayerMetrics")
        fmt = meta.get("format")
        if fmt == _FORMAT:
            coords = meta["coords"]
        elif fmt == _OLD_FORMAT:
            coords = {_metrics.LAYER: meta["layer_names"],
                      _metrics.GRAD_LAYER: meta["grad_layer_names"]}
        else:
            raise ValueError(f"{path} is not a sigprop LayerMetrics file (format {fmt!r})")
        unknown = [k for k in arrays if k not in _metrics.REGISTRY and k not in _FLAG_AXES]
        if unknown:
            raise ValueError(f"{path}: unknown arrays {unknown} (written by a newer sigprop?)")
        return cls(arrays, coords, freeze(meta.get("config", {})))

    def to_pandas(self):
        """A long DataFrame: one row per (grid index..., seed, layer, metric) with its value."""
        try:
            import pandas as pd
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("to_pandas() needs pandas: pip install pandas") from e
        frames = []
        for metric in self.metric_names:
            arr = np.asarray(self[metric])
            names = self.names_of(metric)
            idx = np.indices(arr.shape).reshape(arr.ndim, -1)
            cols = {f"grid{i}": idx[i] for i in range(arr.ndim - 2)}
            cols.update(seed=idx[-2], layer_index=idx[-1],
                        layer=np.asarray(names, dtype=object)[idx[-1]],
                        metric=metric, value=arr.reshape(-1))
            frames.append(pd.DataFrame(cols))
        return pd.concat(frames, ignore_index=True)

    def to_xarray(self):
        """An ``xarray.Dataset``: one variable per metric and flag, dims ``(grid..., seed,
        layer | grad_layer | branch_layer)``, the layer names as coordinates."""
        try:
            import xarray as xr
        except ImportError as e:
            raise ImportError("to_xarray() needs xarray: pip install 'sigprop[xarray]'") from e
        data = {k: (self.axes(k), np.asarray(v)) for k, v in self._arrays.items()}
        coords = {axis: list(names) for axis, names in self.coords.items()}
        return xr.Dataset(data, coords=coords, attrs={"config": json.dumps(self.meta)})

    def __repr__(self) -> str:
        return (f"LayerMetrics(seeds={self.seeds}, layers={len(self.layer_names)}, "
                f"grad_layers={len(self.grad_layer_names)}, metrics={list(self.metric_names)}, "
                f"config={self.meta})")


def freeze(d: dict) -> tuple:
    def hashable(v):
        if isinstance(v, list):
            return tuple(hashable(x) for x in v)
        if isinstance(v, dict):
            return tuple(sorted((k, hashable(x)) for k, x in v.items()))
        return v

    return tuple(sorted((k, hashable(v)) for k, v in d.items()))


def equal(a, b) -> bool:
    """True if two results have equal arrays (NaN == NaN) and names."""
    if a.coords != b.coords or set(a) != set(b):
        return False
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k]), equal_nan=True) for k in a)


__all__ = ["LayerMetrics", "LayerAxes", "equal", "axis_of", "from_arrays"]


def from_arrays(acts, grads, layer_names, grad_layer_names, config: dict) -> LayerMetrics:
    """A result from ``acts [..., L, 6]`` (:data:`~sigprop.metrics.ACT_METRICS` then the finite
    flag) and ``grads [..., G, 2]`` (norm, finite): hand-made results for plots and tests."""
    acts, grads = np.asarray(acts), np.asarray(grads)
    arrays = {name: acts[..., i] for i, name in enumerate(_metrics.ACT_METRICS)}
    arrays.update(finite=acts[..., len(_metrics.ACT_METRICS)] > 0.5, grad_norm=grads[..., 0],
                  grad_finite=grads[..., 1] > 0.5)
    return LayerMetrics(arrays, {_metrics.LAYER: tuple(layer_names),
                                 _metrics.GRAD_LAYER: tuple(grad_layer_names)}, freeze(config))
