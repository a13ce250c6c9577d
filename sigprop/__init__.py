"""sigprop: signal propagation through randomly initialized deep networks, normalizer by normalizer.

Measure, layer by layer and over many seeds at once, how each normalization layer shapes
activations (variance, cosine similarity, ranks) and gradients (norms) at initialization.
"""

from sigprop import data, devices, engine, metrics, models, normalizers, probe, theory

# analysis
from sigprop.analyze import NonFiniteWarning, analyze, layer_names
from sigprop.probe import tap
from sigprop.selectors import Taps
from sigprop.sweep import load_sweep, sweep
from sigprop.validate import validate

# beyond initialization: sigprop.train(...) and sigprop.coord_check(...) are callable modules
from sigprop import coord_check, hessian, train  # noqa: E402

# results
from sigprop.results import LayerMetrics

# models (also under sigprop.models)
from sigprop.models import cnn, mlp, resnet56, wrn

__version__ = "0.1.0"

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
    # results
    "LayerMetrics",
    # models
    "mlp",
    "cnn",
    "resnet56",
    "wrn",
    # beyond initialization
    "train",
    "coord_check",
    "hessian",
    # submodules (sigprop.experiments, sigprop.figures and sigprop.cluster import on demand)
    "data",
    "devices",
    "engine",
    "metrics",
    "models",
    "normalizers",
    "probe",
    "theory",
]
