"""Metrics, inside the network and after it: :mod:`~sigprop.metrics.record` (what a tap records:
moments, Gram matrices, gradient norms, correlations), :mod:`~sigprop.metrics.spectral` (the
eigenvalue step after the network) and :mod:`~sigprop.metrics.registry` (each metric's name, needs,
axis and equation). Pure array code: a metric never knows a model or a tap."""

from sigprop.metrics import record as _record
from sigprop.metrics.gns import GNS, NORM_LAYER, NORM_TOTAL, TOTAL_NAME, record_gns
from sigprop.metrics.record import (
    ACT_METRICS,
    ACT_NEEDS,
    ATTENTION,
    ATTENTION_LAYER,
    ATTENTION_LOGITS,
    BRANCH,
    BRANCH_LAYER,
    GRAD,
    GRAD_LAYER,
    GRAM,
    LAYER,
    MAX_ABS,
    MOMENTS,
    PAIR,
    PAIR_GRAD,
    PARAM_GRAD,
    PARAM_LAYER,
    TOKEN,
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
    GNS_METRICS,
    PAIR_METRICS,
    REGISTRY,
    TOKEN_METRICS,
    TRANSFORMER_METRICS,
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
from sigprop.metrics.tokens import (
    attention_entropy,
    attention_logit_max,
    check_tokens,
    max_abs_ratio,
    record_attention,
    record_attention_logits,
    record_max_abs,
    record_token_gram,
    token_residual_ratio,
)

NEEDS = _record.NEEDS + (GNS,)
"""Everything a tap records: the records of :mod:`~sigprop.metrics.record` and the
normalizers' per-example affine-gradient record (:mod:`~sigprop.metrics.gns`)."""

__all__ = ['GNS', 'NORM_LAYER', 'NORM_TOTAL', 'TOTAL_NAME', 'record_gns', 'GNS_METRICS',
           'MOMENTS', 'GRAM', 'GRAD', 'PAIR', 'PAIR_GRAD', 'BRANCH', 'TOKEN', 'MAX_ABS', 'ATTENTION',
           'ATTENTION_LOGITS', 'PARAM_GRAD', 'NEEDS', 'ACT_NEEDS', 'LAYER', 'GRAD_LAYER',
           'BRANCH_LAYER', 'ATTENTION_LAYER', 'PARAM_LAYER', 'ACT_METRICS', 'TOKEN_METRICS',
           'TRANSFORMER_METRICS', 'check_tokens', 'record_token_gram', 'token_residual_ratio',
           'max_abs_ratio', 'record_max_abs', 'attention_entropy', 'attention_logit_max',
           'record_attention', 'record_attention_logits', 'has_f64', 'activation_variance', 'channel_squared_mean', 'all_finite', 'record_moments', 'record_gram', 'grad_norm', 'correlation', 'entropy_rank', 'Stats', 'Metric', 'REGISTRY', 'DEFAULT_METRICS', 'PAIR_METRICS', 'FLAGS', 'names', 'check_metrics', 'needs_of', 'compute', 'cosine_similarity', 'stable_rank', 'effective_rank', 'activation_metrics']
