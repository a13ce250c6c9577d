"""The papers' experiments, defined once: ``sigprop validate``'s claims and ``figures/`` use them.

An :class:`Experiment` is a setting (``quick`` and ``full`` sizes) and a ``measure`` function that
runs ``analyze`` (through a :class:`Runner`) and returns :class:`Data`: named numpy arrays, saved
as one ``.npz`` (no pickle), so a figure re-plots without measuring. A claim
(:mod:`sigprop.validate`) and a figure (:mod:`sigprop.figures`) read the *same* ``Data``, so a
figure and the claim it illustrates can never disagree.

``Data`` keys: ``"<run>/<metric>"`` for a run's ``[seeds, layers]`` metric arrays,
``"<run>/layer_names"`` (and ``grad_layer_names``, ``branch_layer_names``, and where a run has
them ``attention_layer_names``, ``param_layer_names``) for its layer names,
and experiment-level arrays (e.g. ``"theory/..."``) under their own names.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from sigprop.analyses.analyze import analyze
from sigprop.core.results import LayerMetrics
from sigprop.util import npz
from sigprop.util.cache import BoundedDict

FORMAT = "sigprop.experiment/1"
_NAME_FIELDS = ("layer_names", "grad_layer_names", "branch_layer_names")
# the transformer axes' names: written only where a run has them (older data stays as it was)
_OPTIONAL_NAME_FIELDS = ("attention_layer_names", "param_layer_names")


class Run:
    """One analysis inside :class:`Data`: ``run.cosine_similarity`` ``[seeds, layers]``,
    ``run.layer_names``, ``run.mean("grad_norm")`` (mean over seeds)."""

    def __init__(self, data: "Data", label: str):
        self._data, self.label = data, label

    def __getattr__(self, name: str):
        key = f"{self.label}/{name}"
        if key not in self._data:
            raise AttributeError(f"run {self.label!r} has no {name!r}; it has "
                                 f"{', '.join(self._data.fields(self.label))}")
        value = self._data[key]
        return tuple(str(s) for s in value) if name in _NAME_FIELDS + _OPTIONAL_NAME_FIELDS \
            else value

    def mean(self, metric: str) -> np.ndarray:
        return np.asarray(getattr(self, metric), dtype=float).mean(axis=0)

    def index(self, predicate, axis: str = "layer_names") -> np.ndarray:
        """Indices of the layers whose name satisfies ``predicate``."""
        return np.array([i for i, n in enumerate(getattr(self, axis)) if predicate(n)], int)


class Data(Mapping):
    """What an experiment measured: named arrays (``Mapping[str, np.ndarray]``) plus ``meta``
    (the experiment's name, mode and sizes)."""

    def __init__(self, arrays: dict, meta: dict):
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.meta = dict(meta)

    def __getitem__(self, key):
        return self.arrays[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    def run(self, label: str) -> Run:
        if f"{label}/layer_names" not in self.arrays:
            raise KeyError(f"no run {label!r}; runs: {', '.join(self.runs())}")
        return Run(self, label)

    def runs(self) -> list[str]:
        return [k[: -len("/layer_names")] for k in self.arrays if k.endswith("/layer_names")]

    def fields(self, label: str) -> list[str]:
        return [k[len(label) + 1:] for k in self.arrays if k.startswith(label + "/")]

    @property
    def sizes(self) -> types.SimpleNamespace:
        return types.SimpleNamespace(**self.meta["sizes"])

    def save(self, path: str) -> None:
        """Write one ``.npz`` atomically (arrays, and the metadata as JSON)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        npz.write(path, {"format": FORMAT, **self.meta}, self.arrays, atomic=True)

    @classmethod
    def load(cls, path: str) -> "Data":
        path, meta, arrays = npz.read(path, "experiment")
        if meta.pop("format", None) != FORMAT:
            raise ValueError(f"{path}: unknown format; expected {FORMAT}")
        return cls(arrays, meta)


class Runner:
    """Runs the analyses of one experiment (each once; ``label`` names it) and collects them.

    ``progress``: a :class:`sigprop.util.progress.Progress` advanced after each analysis."""

    def __init__(self, sizes: types.SimpleNamespace, progress=None):
        self.s = sizes
        self.progress = progress
        self.arrays: dict[str, np.ndarray] = {}
        self.results: dict[str, LayerMetrics] = {}

    def analyze(self, label: str, model, inputs, *, seeds: int | None = None,
                **kw) -> LayerMetrics:
        if label in self.results:
            return self.results[label]
        res = analyze(model, inputs, seeds=seeds or self.s.seeds, key=0, **kw)
        self.results[label] = res
        for name in res:
            self.arrays[f"{label}/{name}"] = np.asarray(res[name])
        for field in _NAME_FIELDS:
            self.arrays[f"{label}/{field}"] = np.array(getattr(res, field), dtype=str)
        for field in _OPTIONAL_NAME_FIELDS:
            if getattr(res, field):
                self.arrays[f"{label}/{field}"] = np.array(getattr(res, field), dtype=str)
        if self.progress is not None:
            self.progress.advance(label)
        return res

    def put(self, name: str, value) -> None:
        """An experiment-level array (a theory curve, the inputs' description, ...)."""
        self.arrays[name] = np.asarray(value)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A setting with quick and full sizes, and how to measure it.

    ``measure(runner)`` runs the analyses (``runner.s`` holds the sizes); ``points(sizes)``
    counts them (for progress bars); ``inputs(sizes)`` describes the inputs (a figure's title
    states them)."""

    name: str
    title: str
    quick: dict
    full: dict
    measure: Callable[[Runner], None]
    points: Callable[[types.SimpleNamespace], int]
    inputs: Callable[[types.SimpleNamespace], str]

    def sizes(self, quick: bool) -> types.SimpleNamespace:
        return types.SimpleNamespace(**(self.quick if quick else self.full))

    def run(self, quick: bool = True, progress=None) -> Data:
        s = self.sizes(quick)
        runner = Runner(s, progress)
        self.measure(runner)
        meta = {"experiment": self.name, "mode": "quick" if quick else "full",
                "sizes": _jsonable(vars(s)), "inputs": self.inputs(s)}
        return Data(runner.arrays, meta)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


REGISTRY: dict[str, Experiment] = {}


def register(exp: Experiment) -> Experiment:
    REGISTRY[exp.name] = exp
    return exp


def get(name: str) -> Experiment:
    _load_all()
    if name not in REGISTRY:
        raise ValueError(f"experiment={name!r}: unknown; allowed: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def names() -> tuple[str, ...]:
    _load_all()
    return tuple(REGISTRY)


def _load_all() -> None:
    from sigprop.paper.experiments import (  # noqa: F401
        beyond_batchnorm,
        closed_forms,
        era,
        gns_tracking,
        training,
        transformers,
        unique,
    )


# (name, quick) -> Data, the most recently used kept: room for every registered experiment in
# both modes (17 x 2 today), so a validate or figures run measures each once
_MEMO: BoundedDict = BoundedDict(48)


def measure(name: str, quick: bool = True, *, cache: str | None = None,
            recompute: bool = False, progress=None) -> Data:
    """The experiment's :class:`Data`: from this process's memo, from ``cache`` (an ``.npz``
    written by an earlier run with the same mode and sizes), or measured (then cached)."""
    exp = get(name)
    key = (name, bool(quick))
    want = _jsonable(vars(exp.sizes(quick)))
    if not recompute and key in _MEMO:
        data = _MEMO[key]
        if cache and not os.path.exists(cache):
            data.save(cache)
        if progress is not None:
            progress.advance(f"{name} (measured)", exp.points(exp.sizes(quick)))
        return data
    if cache and not recompute and os.path.exists(cache):
        try:
            data = Data.load(cache)
        except (ValueError, OSError, KeyError):
            data = None
        if data is not None and data.meta.get("sizes") == want \
                and data.meta.get("experiment") == name:
            _MEMO[key] = data
            if progress is not None:
                progress.advance(f"{name} (cached)", exp.points(exp.sizes(quick)))
            return data
    data = exp.run(quick, progress)
    _MEMO[key] = data
    if cache:
        data.save(cache)
    return data


def describe(d: Mapping[str, Any]) -> str:
    """``"k=v, ..."``: an experiment's sizes in one line."""
    return ", ".join(f"{k}={v}" for k, v in d.items())
