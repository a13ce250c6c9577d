"""Metrics, inside the network and after it: :mod:`~sigprop.metrics.record` (what a tap records:
moments, Gram matrices, gradient norms, correlations), :mod:`~sigprop.metrics.spectral` (the
eigenvalue step after the network) and :mod:`~sigprop.metrics.registry` (each metric's name, needs,
axis and equation). Pure array code: a metric never knows a model or a tap."""

from sigprop.metrics.record import (
    ACT_METRICS,
    BRANCH,
    BRANCH_LAYER,
    GRAD,
    GRAD_LAYER,
    GRAM,
    LAYER,
    MOMENTS,
    NEEDS,
    PAIR,
    PAIR_GRAD,
    activation_variance,
    all_finite,
    channel_squared_mean,
    correlation,
    grad_norm,
    has_f64,
    record_gram,
    record_moments,
)
from sigprop.metrics.registry import (
    DEFAULT_METRICS,
    FLAGS,
    PAIR_METRICS,
    REGISTRY,
    Metric,
    activation_metrics,
    check_metrics,
    compute,
    cosine_similarity,
    effective_rank,
    names,
    needs_of,
    stable_rank,
)
from sigprop.metrics.spectral import Stats, entropy_rank

__all__ = ['MOMENTS', 'GRAM', 'GRAD', 'PAIR', 'PAIR_GRAD', 'BRANCH', 'NEEDS', 'LAYER', 'GRAD_LAYER', 'BRANCH_LAYER', 'ACT_METRICS', 'has_f64', 'activation_variance', 'channel_squared_mean', 'all_finite', 'record_moments', 'record_gram', 'grad_norm', 'correlation', 'entropy_rank', 'Stats', 'Metric', 'REGISTRY', 'DEFAULT_METRICS', 'PAIR_METRICS', 'FLAGS', 'names', 'check_metrics', 'needs_of', 'compute', 'cosine_similarity', 'stable_rank', 'effective_rank', 'activation_metrics']
