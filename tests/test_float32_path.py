"""The path without float64 (a TPU's), run on CPU: every registered metric traced inside
:func:`sigprop.backend.cpu.without_float64` agrees with the float64 result within the accuracy
that :mod:`sigprop.metrics.spectral` states, collapsed representations included.

One table of cases (zoo models x inputs x metrics) drives the comparison; together the default
cases cover every name in :data:`sigprop.metrics.REGISTRY` (checked), and ``ACCURACY`` states a
bound for each. The collapsed cases (a 40-layer MLP without normalizer: cosine 0.9998,
effective rank 1.1; near-identical tokens: token cosine 1, residual ratio 5e-4) are where a
float32 Gram matrix's eigenvalues alone fall short: the effective rank of mlp(30, 64) without
normalizer was off by 2.3e-3 relative that way; from the QR factor ``R`` (float32) it is off by
at most 1.1e-6.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import sigprop
from sigprop.backend import cpu
from sigprop.metrics import (
    GNS_METRICS,
    REGISTRY,
    TRANSFORMER_METRICS,
    Stats,
    record_token_gram,
)

# the stated accuracy of the float32 path (sigprop.metrics.spectral's docstring):
# |float32 - float64| <= rtol |float64| + atol + inv / |float64|
ACCURACY = {
    # float32 both ways (no float64 in them): bitwise equal in practice
    "activation_variance": (0.0, 0.0, 0.0), "channel_squared_mean": (0.0, 0.0, 0.0),
    "residual_variance": (0.0, 0.0, 0.0), "max_abs_ratio": (0.0, 0.0, 0.0),
    "attention_entropy": (0.0, 0.0, 0.0), "attention_logit_max": (0.0, 0.0, 0.0),
    "similar_batch_correlation": (0.0, 0.0, 0.0), "gradient_correlation": (0.0, 0.0, 0.0),
    # a float32 Gram matrix: entries to ~1e-7, eigenvalues of G_hat to ~1e-7 lambda_max
    # (measured: cosine <= 1.8e-7 absolute, stable rank <= 3.5e-7 relative)
    "cosine_similarity": (0.0, 1e-6, 0.0), "token_cosine_similarity": (0.0, 1e-6, 0.0),
    "stable_rank": (2e-6, 0.0, 0.0), "token_stable_rank": (2e-6, 0.0, 0.0),
    # from the float32 QR factor R, centered: ~eps_32 absolute (Stats.residual_ratio)
    "token_residual_ratio": (1e-6, 1e-6, 0.0),
    # singular values of the QR factor R of M^T: ~eps_32 s_max each (measured <= 1.1e-6)
    "effective_rank": (1e-5, 0.0, 0.0), "token_effective_rank": (1e-5, 0.0, 0.0),
    # max|g| * ||g / max|g||| in float32 instead of one float64 sum of squares (<= 2.1e-7)
    "grad_norm": (1e-6, 0.0, 0.0), "param_grad_norm": (1e-6, 0.0, 0.0),
}
# the gradient noise scale's estimators subtract two float32 sums that agree to ~1 / B_simple
# (measured <= 3.9e-6 relative)
ACCURACY.update({m: (1e-4, 0.0, 0.0) for m in GNS_METRICS})

ACT = ("activation_variance", "channel_squared_mean", "cosine_similarity", "stable_rank",
       "effective_rank", "grad_norm")
B, T, D = 8, 8, 16  # batch (sequences), tokens, features


def _near_identical_tokens():
    """Every token of a sequence the same vector plus 1e-3 noise: token cosine ~1, rank ~1."""
    k1, k2 = jax.random.split(jax.random.key(3))
    base = jax.random.normal(k1, (B, 1, D))
    return np.asarray(base + 1e-3 * jax.random.normal(k2, (B, T, D)), np.float32)


def _tokens():
    return np.asarray(jax.random.normal(jax.random.key(4), (B, T, D)), np.float32)


# name: (model, inputs, metrics, analyze's options); the collapsed cases first
CASES = {
    # no normalizer, 40 layers: cosine 0.9998, effective rank 1.1
    "mlp-none-deep": lambda: (sigprop.mlp(40, 32, norm="none"), (B, 32), ACT, {}),
    "mlp-batchnorm": lambda: (sigprop.mlp(3, 32, norm="batchnorm"), (B, 32),
                              ACT + ("similar_batch_correlation", "gradient_correlation"),
                              dict(similar_batch_noise=0.1, gradient_correlation=True)),
    "resnet-batchnorm": lambda: (sigprop.models.resnet(1, (8,), norm="batchnorm"),
                                 (B, 8, 8, 3), ACT + ("residual_variance",), {}),
    # near-identical tokens: token cosine ~1, token ranks ~1, residual ratio ~5e-4
    "transformer-identical-tokens": lambda: (
        sigprop.transformer(2, D, 2), _near_identical_tokens(),
        TRANSFORMER_METRICS + GNS_METRICS + ("residual_variance",), {}),
}
# more of the same, outside the default suite (-m slow)
SLOW_CASES = {
    "mlp-layernorm": lambda: (sigprop.mlp(4, 32, norm="layernorm"), (B, 32),
                              ACT + GNS_METRICS, {}),
    # BN-free ResNet: no normalizer, the stream's cosine grows with depth
    "resnet-none": lambda: (sigprop.models.resnet(2, (8, 16), norm="none"), (B, 8, 8, 3),
                            ACT + ("residual_variance",), {}),
    "transformer": lambda: (sigprop.transformer(2, D, 2), _tokens(),
                            TRANSFORMER_METRICS + GNS_METRICS, {}),
}


def test_cases_cover_every_registered_metric():
    covered = {m for case in CASES.values() for m in case()[2]}  # the default suite's
    assert set(REGISTRY) <= covered, f"no float32-path case for {set(REGISTRY) - covered}"
    assert set(REGISTRY) <= set(ACCURACY), f"no stated accuracy for {set(REGISTRY) - set(ACCURACY)}"


def test_switch_is_scoped_and_retraces():
    assert cpu.has_float64() == (jax.default_backend() != "tpu")
    with cpu.without_float64():
        assert not cpu.has_float64()
        assert not sigprop.metrics.has_f64()
    assert cpu.has_float64() == (jax.default_backend() != "tpu")

    @jax.jit
    def f(x):
        return x + (1.0 if cpu.has_float64() else 2.0)

    with cpu.without_float64():
        assert float(f(0.0)) == 2.0  # a new program, not the cached float64 one
    assert float(f(0.0)) == (1.0 if cpu.has_float64() else 2.0)


def _check(case, model, inputs, metrics, kw):
    want = sigprop.analyze(model, inputs, metrics=metrics, **kw)
    with cpu.without_float64():
        got = sigprop.analyze(model, inputs, metrics=metrics, **kw)
    for m in metrics:
        a, b = np.asarray(want[m], np.float64), np.asarray(got[m], np.float64)
        rtol, atol, inv = ACCURACY[m]
        assert np.all(np.isfinite(a)), (case, m)
        bound = rtol * np.abs(a) + atol + inv / np.maximum(np.abs(a), 1e-30)
        worst = np.max(np.abs(b - a) - bound)
        assert worst <= 0, (f"{case}: {m} off by {np.max(np.abs(b - a)):.2e} (float64 {a}, "
                            f"float32 {b})")
    return want


NO_TPU = pytest.mark.skipif(jax.default_backend() == "tpu", reason="no float64 reference on a TPU")


@NO_TPU
@pytest.mark.parametrize("case", list(CASES))
def test_float32_path_matches_float64(case):
    want = _check(case, *CASES[case]())
    if case == "mlp-none-deep":  # the case is collapsed, as it claims
        assert np.max(np.asarray(want["cosine_similarity"])) > 0.999
        assert np.min(np.asarray(want["effective_rank"])) < 1.5
    if case == "transformer-identical-tokens":
        assert np.min(np.asarray(want["token_cosine_similarity"])) > 0.999
        assert np.max(np.asarray(want["token_residual_ratio"])) < 1e-2


@NO_TPU
@pytest.mark.slow
@pytest.mark.parametrize("case", list(SLOW_CASES))
def test_float32_path_matches_float64_more_models(case):
    _check(case, *SLOW_CASES[case]())


@pytest.mark.parametrize("noise", [1e-1, 1e-3, 1e-4])
def test_residual_ratio_from_the_factor(noise):
    """``Stats.residual_ratio`` without float64 (from ``R``) is exact to ~eps_32 where
    ``token_residual_ratio`` of the float32 Gram matrix loses ``~eps_32 / ratio``."""
    k1, k2 = jax.random.split(jax.random.key(3))
    x = jax.random.normal(k1, (4, 1, 16)) + noise * jax.random.normal(k2, (4, 8, 16))
    x64 = np.asarray(x, np.float64)
    want = (np.linalg.norm(x64 - x64.mean(1, keepdims=True), axis=(1, 2))
            / np.linalg.norm(x64, axis=(1, 2)))

    def ratio(x):
        hi, lo = record_token_gram(x)
        return Stats({"gram_hi": hi, "gram_lo": lo}).residual_ratio()

    with cpu.without_float64():
        got = np.asarray(jax.jit(ratio)(x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    if cpu.has_float64():
        np.testing.assert_allclose(np.asarray(jax.jit(ratio)(x)), want, rtol=1e-5, atol=1e-7)
