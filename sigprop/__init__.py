"""sigprop: signal propagation through randomly initialized deep networks, normalizer by normalizer.

Measure, layer by layer and over many seeds at once, how each normalization layer shapes
activations (variance, cosine similarity, ranks) and gradients (norms) at initialization.
"""

from sigprop import metrics, models, normalizers, probe

# analysis
from sigprop.analyze import NonFiniteWarning, analyze

# results
from sigprop.results import LayerMetrics

# models (also under sigprop.models)
from sigprop.models import cnn, mlp, resnet56, wrn

__version__ = "0.1.0"

__all__ = [
    # analysis
    "analyze",
    "NonFiniteWarning",
    # results
    "LayerMetrics",
    # models
    "mlp",
    "cnn",
    "resnet56",
    "wrn",
    # submodules
    "metrics",
    "models",
    "normalizers",
    "probe",
]
