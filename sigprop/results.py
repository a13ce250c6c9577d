"""``LayerMetrics``: the result of an analysis, a frozen pytree of ``[..., seed, layer]`` arrays."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from flax import struct

from sigprop.metrics import ACT_METRICS

GRAD_METRICS = ("grad_norm",)
OPTIONAL_METRICS = ("similar_batch_correlation", "gradient_correlation")
_FORMAT = "sigprop.LayerMetrics/1"


@struct.dataclass
class LayerMetrics:
    """Layerwise metrics of one analysis.

    Activation metrics (after normalizer + activation) are ``[..., seeds, layers]`` over
    ``layer_names``; ``grad_norm`` is ``[..., seeds, grad layers]`` over ``grad_layer_names`` (the
    output of each hidden conv/dense layer, before its normalizer; shortcut convs included, the
    classifier excluded). ``finite`` / ``grad_finite`` flag, per seed and layer, whether every
    value of the activation / gradient was finite. ``config`` records how it was made.

    Optional ([U] section 4, present when ``analyze`` was asked for them, else None):
    ``similar_batch_correlation`` ``[..., seeds, layers]`` over ``layer_names`` and
    ``gradient_correlation`` ``[..., seeds, grad layers]`` over ``grad_layer_names``: the Pearson
    correlation between a batch ``x`` and a similar batch ``x + s xi`` of each activation, and of
    each layer's loss gradient.
    """

    activation_variance: Any
    channel_squared_mean: Any
    cosine_similarity: Any
    stable_rank: Any
    effective_rank: Any
    finite: Any
    grad_norm: Any
    grad_finite: Any
    similar_batch_correlation: Any = None
    gradient_correlation: Any = None
    layer_names: tuple = struct.field(pytree_node=False, default=())
    grad_layer_names: tuple = struct.field(pytree_node=False, default=())
    config: tuple = struct.field(pytree_node=False, default=())

    # ---------------------------------------------------------------------------- access
    @property
    def metric_names(self) -> tuple[str, ...]:
        """The metrics this result holds (the optional ones only when measured)."""
        return ACT_METRICS + GRAD_METRICS + tuple(
            f for f in OPTIONAL_METRICS if getattr(self, f) is not None)

    @property
    def meta(self) -> dict:
        """``config`` as a dict."""
        return dict(self.config)

    @property
    def seeds(self) -> int:
        return int(np.shape(self.cosine_similarity)[-2])

    def __getitem__(self, name: str):
        if name not in self.metric_names:
            raise KeyError(f"unknown metric {name!r}; known: {', '.join(self.metric_names)}")
        return getattr(self, name)

    def names_of(self, metric: str) -> tuple[str, ...]:
        """The layer names of ``metric``'s last axis."""
        grad = metric in GRAD_METRICS or metric == "gradient_correlation"
        return self.grad_layer_names if grad else self.layer_names

    def layer(self, metric: str, name: str):
        """``metric`` at the layer called ``name``: ``[..., seeds]``."""
        names = self.names_of(metric)
        if name not in names:
            raise KeyError(f"no layer {name!r} for {metric}; layers: {', '.join(names[:8])}, ...")
        return np.asarray(self[metric])[..., names.index(name)]

    def first_nonfinite(self) -> tuple[str, int, str] | None:
        """``(kind, index, name)`` of the first layer with a non-finite value, or None.

        ``kind`` is ``'activation'`` (index into ``layer_names``) or ``'gradient'``."""
        for kind, flags, names in (("activation", self.finite, self.layer_names),
                                   ("gradient", self.grad_finite, self.grad_layer_names)):
            bad = ~np.asarray(flags, dtype=bool)
            if bad.any():
                idx = int(np.argmax(bad.reshape(-1, bad.shape[-1]).any(axis=0)))
                return kind, idx, names[idx]
        return None

    # ---------------------------------------------------------------------------- io
    def _arrays(self) -> dict[str, np.ndarray]:
        fields = ACT_METRICS + ("finite",) + GRAD_METRICS + ("grad_finite",) + OPTIONAL_METRICS
        return {f: np.asarray(getattr(self, f)) for f in fields if getattr(self, f) is not None}

    def save(self, path: str | os.PathLike) -> str:
        """Write one ``.npz`` (arrays, plus the names and config as a JSON string; no pickle).

        Returns the path written (``.npz`` appended if missing)."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        meta = dict(format=_FORMAT, layer_names=list(self.layer_names),
                    grad_layer_names=list(self.grad_layer_names), config=dict(self.config))
        with open(path, "wb") as f:
            np.savez(f, __meta__=np.array(json.dumps(meta)), **self._arrays())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LayerMetrics":
        """Read a file written by :meth:`save`."""
        path = os.fspath(path)
        if not path.endswith(".npz") and not os.path.exists(path):
            path += ".npz"
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
            if meta.get("format") != _FORMAT:
                raise ValueError(f"{path} is not a sigprop LayerMetrics file")
            arrays = {k: data[k] for k in data.files if k != "__meta__"}
        return cls(**arrays, layer_names=tuple(meta["layer_names"]),
                   grad_layer_names=tuple(meta["grad_layer_names"]),
                   config=_freeze(meta["config"]))

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

    def __repr__(self) -> str:
        shape = np.shape(self.cosine_similarity)
        return (f"LayerMetrics(seeds={shape[-2]}, layers={len(self.layer_names)}, "
                f"grad_layers={len(self.grad_layer_names)}, config={self.meta})")


def _freeze(d: dict) -> tuple:
    def hashable(v):
        if isinstance(v, list):
            return tuple(hashable(x) for x in v)
        if isinstance(v, dict):
            return tuple(sorted((k, hashable(x)) for k, x in v.items()))
        return v

    return tuple(sorted((k, hashable(v)) for k, v in d.items()))


def from_arrays(acts, grads, layer_names, grad_layer_names, config: dict) -> LayerMetrics:
    """Assemble from the engine's ``acts [..., L, 6]`` and ``grads [..., G, 2]``."""
    fields = {name: acts[..., i] for i, name in enumerate(ACT_METRICS)}
    return LayerMetrics(
        **fields,
        finite=acts[..., len(ACT_METRICS)] > 0.5,
        grad_norm=grads[..., 0],
        grad_finite=grads[..., 1] > 0.5,
        layer_names=tuple(layer_names),
        grad_layer_names=tuple(grad_layer_names),
        config=_freeze(config),
    )


def equal(a, b) -> bool:
    """True if two results have equal arrays (NaN == NaN) and names."""
    if (a.layer_names, a.grad_layer_names) != (b.layer_names, b.grad_layer_names):
        return False
    xa, xb = a._arrays(), b._arrays()
    return xa.keys() == xb.keys() and all(
        np.array_equal(xa[k], xb[k], equal_nan=True) for k in xa)


__all__ = ["LayerMetrics", "from_arrays", "equal"]
