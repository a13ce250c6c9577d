"""Tests of the model-zoo building blocks (``sigprop.models.layers``) against independent references.

Every expected value is either a float64 numpy re-implementation of the formula in science.md /
the docstrings, or a closed form (moments of a rectified Gaussian, of He-normal and uniform
inits). No sigprop code computes an expected value: module outputs are float32, and references
are evaluated on exactly those float32 inputs cast to float64.

Monte Carlo checks use fixed seeds and a tolerance of 5 standard errors (SE), each SE from the
closed-form distribution of the statistic (sample mean: sqrt(var / n); sample variance:
sqrt((mu4 - var^2) / n), which is var * sqrt(2 / n) for normal data).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from sigprop.nn import layers
from sigprop.nn.layers import Activation, Conv, Dense, classifier_init, transform_weight

EPS = 1e-5  # science.md: weight-reparametrization eps
N_SE = 5.0  # Monte Carlo tolerance, in standard errors
SWS_GAIN = math.sqrt(2 * math.pi / (math.pi - 1))  # sqrt(2 pi / (pi - 1)), from the closed form

KERNEL_SHAPES = [(64, 32), (3, 3, 16, 24)]  # dense [fan_in, out] and conv [k, k, cin, cout]


def _kernel(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (0.7 * rng.standard_normal(shape) + 0.1).astype(np.float32)


def _gamma(out, seed=1):
    return np.random.default_rng(seed).uniform(0.5, 2.0, out).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Independent float64 references


def _weightnorm_ref(w, gamma):
    w = np.asarray(w, np.float64)
    axes = tuple(range(w.ndim - 1))
    norm = np.sqrt(np.sum(w * w, axis=axes, keepdims=True))
    return np.asarray(gamma, np.float64) * w / (norm + EPS)


def _sws_ref(w, gamma):
    w = np.asarray(w, np.float64)
    axes = tuple(range(w.ndim - 1))
    fan_in = int(np.prod(w.shape[:-1]))
    mean = w.mean(axis=axes, keepdims=True)
    std = w.std(axis=axes, keepdims=True)  # biased (ddof=0)
    return np.asarray(gamma, np.float64) * SWS_GAIN / np.sqrt(fan_in) * (w - mean) / (std + EPS)


# ---------------------------------------------------------------------------------------------
# Weight reparametrizations


@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=["dense", "conv"])
def test_weightnorm_matches_numpy(shape):
    w, g = _kernel(shape), _gamma(shape[-1])
    got = np.asarray(transform_weight(jnp.asarray(w), "weightnorm", jnp.asarray(g)), np.float64)
    np.testing.assert_allclose(got, _weightnorm_ref(w, g), rtol=1e-5, atol=0)
    # per output unit the norm is gamma * ||w|| / (||w|| + eps) ~ gamma
    axes = tuple(range(len(shape) - 1))
    np.testing.assert_allclose(np.sqrt(np.sum(got**2, axis=axes)), g.astype(np.float64), rtol=1e-5)


@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=["dense", "conv"])
def test_sws_matches_numpy(shape):
    w, g = _kernel(shape), _gamma(shape[-1])
    got = np.asarray(transform_weight(jnp.asarray(w), "sws", jnp.asarray(g)), np.float64)
    ref = _sws_ref(w, g)
    # atol covers float32 cancellation in (w - mean) for entries near the unit mean
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=["dense", "conv"])
def test_sws_per_unit_moments_closed_form(shape):
    """gamma = 1: each output unit has mean 0 and std sqrt(2 pi / (pi - 1)) / sqrt(fan_in)
    (times std / (std + eps), which is within 1e-5 of 1 for unit-scale weights)."""
    w = _kernel(shape)
    got = np.asarray(transform_weight(jnp.asarray(w), "sws", jnp.ones(shape[-1], jnp.float32)),
                     np.float64)
    axes = tuple(range(len(shape) - 1))
    fan_in = math.prod(shape[:-1])
    target_std = SWS_GAIN / math.sqrt(fan_in)
    np.testing.assert_allclose(got.std(axis=axes), target_std, rtol=1e-4)
    np.testing.assert_array_less(np.abs(got.mean(axis=axes)), 1e-4 * target_std)


def test_plain_is_identity_and_unknown_raises():
    w = _kernel((8, 4))
    np.testing.assert_array_equal(np.asarray(transform_weight(jnp.asarray(w), "plain")), w)
    with pytest.raises(ValueError, match="weight="):
        transform_weight(jnp.asarray(w), "bogus", jnp.ones(4))


@pytest.mark.parametrize("weight,ref", [("weightnorm", _weightnorm_ref), ("sws", _sws_ref)])
def test_dense_forward_uses_transformed_weight(weight, ref, key):
    """Dense(weight=...) at init (gain 1, bias 0) is x @ transform(w), checked in float64 numpy."""
    x = np.random.default_rng(2).standard_normal((5, 12)).astype(np.float32)
    layer = Dense(7, weight=weight, use_bias=True)
    params = layer.init(key, jnp.asarray(x))
    w = np.asarray(params["params"]["kernel"])
    got = np.asarray(layer.apply(params, jnp.asarray(x)), np.float64)
    want = x.astype(np.float64) @ ref(w, np.ones(7))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Activations


def test_scaled_relu_gain_constant():
    # E[relu(z)] = 1 / sqrt(2 pi), Var[relu(z)] = 1/2 - 1/(2 pi) for z ~ N(0, 1), so the gain that
    # makes the variance 1 is 1 / sqrt(1/2 - 1/(2 pi)) = sqrt(2 pi / (pi - 1)).
    var_relu = 0.5 - 1.0 / (2 * math.pi)
    assert math.isclose(SWS_GAIN, 1.0 / math.sqrt(var_relu), rel_tol=1e-14)
    assert math.isclose(layers.SCALED_RELU_GAIN, SWS_GAIN, rel_tol=1e-14)


def test_scaled_relu_pointwise_matches_numpy():
    x = np.linspace(-4, 4, 1001).astype(np.float32)
    got = np.asarray(Activation("scaled_relu").apply({}, jnp.asarray(x)), np.float64)
    want = SWS_GAIN * (np.maximum(x.astype(np.float64), 0.0) - 1.0 / math.sqrt(2 * math.pi))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_scaled_relu_standardizes_a_gaussian():
    """On z ~ N(0, 1): output mean 0 and variance 1 (closed form), within 5 SE."""
    n = 4_000_000
    z = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    y = np.asarray(Activation("scaled_relu").apply({}, jnp.asarray(z)), np.float64)
    # closed-form moments of r = relu(z): E r = m, E r^2 = 1/2, E r^3 = 2 m, E r^4 = 3/2 with
    # m = 1/sqrt(2 pi); fourth central moment mu4 = 3/2 - 5 m^2 - 3 m^4
    m = 1.0 / math.sqrt(2 * math.pi)
    var_r = 0.5 - m * m
    mu4_r = 1.5 - 5 * m**2 - 3 * m**4
    kurt = mu4_r / var_r**2  # the gain scales both, so y has the same kurtosis and variance 1
    se_mean = math.sqrt(1.0 / n)
    se_var = math.sqrt((kurt - 1.0) / n)
    assert abs(y.mean()) < N_SE * se_mean, (y.mean(), se_mean)
    assert abs(y.var() - 1.0) < N_SE * se_var, (y.var(), se_var)


def test_tlu_is_relu_at_init_and_tau_is_zero(key):
    c = 6
    x = np.random.default_rng(3).standard_normal((2, 4, 5, c)).astype(np.float32)
    act = Activation("tlu")
    params = act.init(key, jnp.asarray(x))
    tau = np.asarray(params["params"]["tau"])
    assert tau.shape == (c,)
    np.testing.assert_array_equal(tau, np.zeros(c, np.float32))
    np.testing.assert_array_equal(np.asarray(act.apply(params, jnp.asarray(x))), np.maximum(x, 0))
    # with a non-zero per-channel tau it is max(x, tau) per channel
    tau2 = np.linspace(-0.5, 0.5, c).astype(np.float32)
    got = act.apply({"params": {"tau": jnp.asarray(tau2)}}, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(got), np.maximum(x, tau2[None, None, None, :]))


# ---------------------------------------------------------------------------------------------
# Initializers


def _check_he_normal(w, fan_in):
    w = np.asarray(w, np.float64).ravel()
    n = w.size
    var = 2.0 / fan_in
    std = math.sqrt(var)
    assert abs(w.mean()) < N_SE * math.sqrt(var / n), w.mean()
    assert abs(w.var() - var) < N_SE * var * math.sqrt(2.0 / n), (w.var(), var)
    # untruncated: a normal puts 4.55% of its mass beyond 2 std and 1.24% beyond 2.5 std; a
    # normal truncated at 2 std (flax's "truncated_normal") puts none there
    p2 = math.erfc(2.0 / math.sqrt(2))
    frac2 = np.mean(np.abs(w) > 2.0 * std)
    assert abs(frac2 - p2) < N_SE * math.sqrt(p2 * (1 - p2) / n), (frac2, p2)
    assert np.abs(w).max() > 2.5 * std


def test_dense_kernel_is_he_normal(key):
    fan_in, out = 512, 2048
    params = Dense(out).init(key, jnp.zeros((1, fan_in), jnp.float32))
    w = params["params"]["kernel"]
    assert w.shape == (fan_in, out) and w.dtype == jnp.float32
    assert set(params["params"]) == {"kernel"}  # no bias, no gain for plain weights
    _check_he_normal(w, fan_in)


def test_conv_kernel_is_he_normal(key):
    cin, cout = 64, 512
    params = Conv(cout).init(key, jnp.zeros((1, 4, 4, cin), jnp.float32))
    w = params["params"]["kernel"]
    assert w.shape == (3, 3, cin, cout) and w.dtype == jnp.float32
    _check_he_normal(w, 3 * 3 * cin)


def test_biases_and_gains_start_at_zero_and_one(key):
    params = Conv(8, weight="sws", use_bias=True).init(key, jnp.zeros((1, 4, 4, 3), jnp.float32))
    np.testing.assert_array_equal(np.asarray(params["params"]["bias"]), np.zeros(8))
    np.testing.assert_array_equal(np.asarray(params["params"]["gain"]), np.ones(8))


def test_classifier_init_is_uniform(key):
    fan_in, out = 512, 2048
    w = np.asarray(classifier_init(key, (fan_in, out)), np.float64).ravel()
    n = w.size
    b = 1.0 / math.sqrt(fan_in)
    assert w.min() >= -b and w.max() <= b
    # with 1M draws the extremes sit within ~2b/n of the bound; 1e-3 b is very loose
    assert w.min() < -b * (1 - 1e-3) and w.max() > b * (1 - 1e-3)
    var = b * b / 3.0
    mu4 = b**4 / 5.0
    assert abs(w.mean()) < N_SE * math.sqrt(var / n), w.mean()
    assert abs(w.var() - var) < N_SE * math.sqrt((mu4 - var * var) / n), (w.var(), var)
