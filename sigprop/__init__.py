"""sigprop: signal propagation through randomly initialized deep networks, normalizer by normalizer.

Measure, layer by layer and over many seeds at once, how each normalization layer shapes
activations (variance, cosine similarity, ranks) and gradients (norms) at initialization.

This module is the public facade: it re-exports from the rooms below it (``backend`` < ``util`` <
``metrics`` < ``taps`` < ``nn`` < ``core`` < ``analyses`` < ``sweeps`` < ``paper`` < ``cli``) and
loads the papers' code, the cluster executors and the CLI only when they are asked for.
"""

import importlib

import sigprop.nn as models  # noqa: E402  (sigprop.models: the zoo)

# beyond initialization: sigprop.train(...) and sigprop.coord_check(...) are callable modules
from sigprop import coord_check, hessian, metrics, train  # noqa: E402
from sigprop.analyses import theory
from sigprop.analyses.analyze import analyze, layer_names
from sigprop.backend import devices
from sigprop.backend.compile_cache import enable_cache
from sigprop.core import engine, objective
from sigprop.core.results import LayerMetrics
from sigprop.core.selectors import Taps
from sigprop.nn import cnn, mlp, normalizers, resnet56, transformer, wrn
from sigprop.sweeps.store import load_sweep
from sigprop.sweeps.sweep import sweep
from sigprop.taps import (
    probe,  # noqa: E402  (sigprop.probe: the linen taps, layer naming)
    tap,
)
from sigprop.util import data
from sigprop.util.warnings import NonFiniteWarning

__version__ = "0.1.0"

# loaded on first use (PEP 562): the papers' code, plotting, the executors and the CLI
_LAZY = {
    "experiments": "sigprop.paper.experiments",
    "figures": "sigprop.paper.figures",
    "plot": "sigprop.paper.plot",
    "quickstart": "sigprop.paper.quickstart",
    "cluster": "sigprop.sweeps.executors",
    "cli": "sigprop.cli",
}


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(_LAZY[name])
    if name == "validate":  # a callable module: sigprop.validate(...), sigprop.validate.CLAIMS
        return importlib.import_module("sigprop.validate")
    raise AttributeError(f"module 'sigprop' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY) + ["validate"])


__all__ = [
    # analysis
    "analyze",
    "layer_names",
    "Taps",
    "tap",
    "sweep",
    "load_sweep",
    "validate",
    "NonFiniteWarning",
    # compilation
    "enable_cache",
    # results
    "LayerMetrics",
    # models
    "mlp",
    "transformer",
    "cnn",
    "resnet56",
    "wrn",
    # beyond initialization
    "train",
    "coord_check",
    "hessian",
    # submodules (sigprop.experiments, sigprop.figures, sigprop.plot and sigprop.cluster import on
    # demand)
    "data",
    "devices",
    "engine",
    "metrics",
    "models",
    "normalizers",
    "objective",
    "probe",
    "theory",
]
