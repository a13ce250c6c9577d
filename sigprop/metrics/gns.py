"""The gradient noise scale from normalization layers: what a LayerNorm / RMSNorm gradient tap
records, and the estimators the registry's ``gns_*`` metrics compute from it.

McCandlish et al. 2018 (An Empirical Model of Large-Batch Training, arXiv 1812.06162) define the
simple noise scale ``B_simple = tr(Sigma) / |G|^2`` of a gradient ``G`` with per-example
covariance ``Sigma``. With per-example gradients ``G_b`` of a batch of ``B`` and their mean
``G_mean = mean_b G_b`` (the batch gradient), the unbiased estimators are (their Appendix A.1,
as Gray et al. use them)::

    |G|^2    ~ (B |G_mean|^2 - mean_b |G_b|^2) / (B - 1)
    tr Sigma ~ (mean_b |G_b|^2 - |G_mean|^2) / (1 - 1 / B)

Gray et al. 2024 (Normalization Layer Per-Example Gradients are Sufficient to Predict Gradient
Noise Scale in Transformers, NeurIPS 2024, arXiv 2411.00999) compute ``G_b`` for a normalizer's
affine parameters alone, in the backward pass: with ``y = gamma x_hat + beta`` and ``delta =
d loss / d y``, example ``b``'s share of the batch gradient is ``g_b = sum_t delta_bt x_hat_bt``
for ``gamma`` and ``sum_t delta_bt`` for ``beta`` (``t`` every axis but the batch and the
channel). For a loss that is a **mean over the examples** (the batch's leading axis), example
``b``'s own gradient is ``G_b = B g_b``. Models whose examples interact (BatchNorm) have no
per-example gradients: ``G_b`` is then ``B`` times ``b``'s term of the contraction, not the
gradient of ``b``'s loss.

A record is ``[mean_b |G_b|^2, |G_mean|^2, B, finite]`` per normalization layer, summed over the
layer's affine parameters (``gamma`` and ``beta``, or ``gamma`` alone for RMSNorm), reduced in
float64 where it exists (:func:`sigprop.metrics.has_f64`): the two estimators subtract numbers
that agree to about ``1 / B_simple``.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

from sigprop.metrics.record import all_finite, has_f64

GNS = "gns"  # the need: a normalizer's per-example affine-gradient record
NORM_LAYER = "norm_layer"  # the layer axis of per-normalizer metrics
NORM_TOTAL = "norm_total"  # the one-entry axis of the sums over the normalization layers
TOTAL_NAME = "total"  # its one name


def per_example_affine_grads(delta, x_hat, scale: bool = True, bias: bool = True):
    """``[B, P]``: each example's gradient of a per-channel affine ``y = gamma x_hat + beta``'s
    parameters (``gamma`` then ``beta``, those present), ``B`` times its share of the batch
    gradient (a mean loss over the ``B`` examples): ``B sum_t delta_bt x_hat_bt`` and ``B
    sum_t delta_bt``, ``t`` every axis of ``[B, ..., C]`` but the first and the last."""
    b = delta.shape[0]
    axes = tuple(range(1, delta.ndim - 1))
    parts = []
    if scale:
        parts.append(jnp.sum(delta * x_hat, axis=axes).reshape(b, -1))
    if bias:
        parts.append(jnp.sum(delta, axis=axes).reshape(b, -1))
    return b * jnp.concatenate(parts, axis=-1)


def record_gns(delta, x_hat, scale: bool = True, bias: bool = True):
    """``[mean_b |G_b|^2, |G_mean|^2, B, finite]`` of one normalizer (module docstring)."""
    b = delta.shape[0]
    grads = per_example_affine_grads(delta, x_hat, scale, bias)
    ok = all_finite(grads)
    context = jax.enable_x64(True) if has_f64() else contextlib.nullcontext()
    with context:
        g = grads.astype(jnp.float64 if has_f64() else jnp.float32)
        mean_sq = jnp.mean(jnp.sum(g * g, axis=-1))
        g_mean = jnp.mean(g, axis=0)
        mean_norm = jnp.sum(g_mean * g_mean)
        sums = jnp.stack([mean_sq, mean_norm]).astype(jnp.float32)
    return jnp.concatenate([sums, jnp.stack([jnp.float32(b), ok])])


def grad_sq(record):
    """``|G|^2 ~ (B |G_mean|^2 - mean_b |G_b|^2) / (B - 1)`` from records ``[..., 4]``."""
    mean_sq, mean_norm, b = record[..., 0], record[..., 1], record[..., 2]
    return (b * mean_norm - mean_sq) / (b - 1)


def trace_sigma(record):
    """``tr Sigma ~ (mean_b |G_b|^2 - |G_mean|^2) / (1 - 1 / B)`` from records ``[..., 4]``."""
    mean_sq, mean_norm, b = record[..., 0], record[..., 1], record[..., 2]
    return (mean_sq - mean_norm) / (1 - 1 / b)


def b_simple(record):
    """``B_simple = tr Sigma / |G|^2`` per record (either estimate may be negative on a small
    batch: they are unbiased, not positive)."""
    return trace_sigma(record) / grad_sq(record)


def b_simple_total(record):
    """``sum_l tr Sigma_l / sum_l |G_l|^2`` over the layer axis of ``[..., layers, 4]``:
    ``[..., 1]``."""
    return (jnp.sum(trace_sigma(record), axis=-1) / jnp.sum(grad_sq(record), axis=-1))[..., None]


def estimates(per_example):
    """``(|G|^2, tr Sigma, B_simple)`` of per-example gradients ``[B, P]`` (any parameters: the
    same estimators, e.g. for the whole model's ``vmap(grad)``), in float64 where it exists."""
    context = jax.enable_x64(True) if has_f64() else contextlib.nullcontext()
    with context:
        g = jnp.asarray(per_example).astype(jnp.float64 if has_f64() else jnp.float32)
        b = g.shape[0]
        mean_sq = jnp.mean(jnp.sum(g * g, axis=-1))
        g_mean = jnp.mean(g, axis=0)
        record = jnp.stack([mean_sq, jnp.sum(g_mean * g_mean), jnp.asarray(b, g.dtype)])
        return grad_sq(record), trace_sigma(record), b_simple(record)
