"""DyT (Dynamic Tanh, arXiv 2503.10622) against an independent float64 numpy implementation.

Expected values: ``y = gamma * tanh(alpha x) + beta`` and its analytic derivatives, written here
in numpy (float64). No sigprop code computes an expected value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sigprop
from sigprop.nn import normalizers

RTOL = 1e-5
ATOL = 1e-6
SHAPES = [(4, 6, 8), (2, 4, 4, 8)]  # [B, T, D] tokens, [B, H, W, C] images
LAYOUTS = {(4, 6, 8): "tokens", (2, 4, 4, 8): "image"}


def _input(shape, seed):
    rng = np.random.default_rng(seed)
    return (2.0 * rng.standard_normal(shape) + 0.3).astype(np.float32)


def _params(c, seed):
    """Non-trivial alpha, gamma, beta so that every factor of the derivatives shows."""
    rng = np.random.default_rng(seed)
    return {"alpha": np.float32(0.7),
            "scale": (1.0 + 0.5 * rng.standard_normal(c)).astype(np.float32),
            "bias": (0.3 * rng.standard_normal(c)).astype(np.float32)}


# ---------------------------------------------------------------------------------------------
# numpy float64 reference: value and analytic gradients of L = sum(y * r)


def np_dyt(x, alpha, gamma, beta):
    return gamma * np.tanh(alpha * x) + beta


def np_dyt_grads(x, alpha, gamma, beta, r):
    t = np.tanh(alpha * x)
    sech2 = 1.0 - t * t
    axes = tuple(range(x.ndim - 1))
    return {"x": r * gamma * alpha * sech2,
            "alpha": np.sum(r * gamma * x * sech2),
            "scale": np.sum(r * t, axis=axes),
            "bias": np.sum(r, axis=axes)}


def _f64(p):
    return {k: np.asarray(v, np.float64) for k, v in p.items()}


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_and_gradients_match_numpy(shape):
    x, r = _input(shape, 0), _input(shape, 1)
    p = _params(shape[-1], 2)
    module = normalizers.make("dyt", layout=LAYOUTS[shape])
    variables = {"params": {k: jnp.asarray(v) for k, v in p.items()}}

    y = module.apply(variables, jnp.asarray(x))
    q = _f64(p)
    expected = np_dyt(x.astype(np.float64), q["alpha"], q["scale"], q["bias"])
    np.testing.assert_allclose(np.asarray(y), expected, rtol=RTOL, atol=ATOL)

    def loss(params, x):
        return jnp.sum(module.apply({"params": params}, x) * r)

    g_params, g_x = jax.grad(loss, argnums=(0, 1))(variables["params"], jnp.asarray(x))
    ref = np_dyt_grads(x.astype(np.float64), q["alpha"], q["scale"], q["bias"],
                       r.astype(np.float64))
    np.testing.assert_allclose(np.asarray(g_x), ref["x"], rtol=RTOL, atol=ATOL)
    for k in ("alpha", "scale", "bias"):
        np.testing.assert_allclose(np.asarray(g_params[k]), ref[k], rtol=RTOL, atol=1e-4)


def test_init_and_options():
    x = jnp.asarray(_input((4, 6, 8), 3))
    params = normalizers.make("dyt").init(jax.random.key(0), x)["params"]
    assert params["alpha"].shape == () and float(params["alpha"]) == 0.5
    np.testing.assert_array_equal(np.asarray(params["scale"]), np.ones(8, np.float32))
    np.testing.assert_array_equal(np.asarray(params["bias"]), np.zeros(8, np.float32))

    module = normalizers.make("dyt", alpha0=2.0, affine=False)
    params = module.init(jax.random.key(0), x)["params"]
    assert set(params) == {"alpha"} and float(params["alpha"]) == 2.0
    expected = np.tanh(2.0 * np.asarray(x, np.float64))
    np.testing.assert_allclose(np.asarray(module.apply({"params": params}, x)), expected,
                               rtol=RTOL, atol=ATOL)


def test_layout_does_not_change_it():
    x = jnp.asarray(_input((4, 6, 8), 4))
    ys = [normalizers.make("dyt", layout=lay).apply(
        normalizers.make("dyt").init(jax.random.key(0), x), x) for lay in ("image", "tokens")]
    np.testing.assert_array_equal(np.asarray(ys[0]), np.asarray(ys[1]))


def test_bad_option_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'dyt'.*eps.*allowed: affine, alpha0, layout"):
        normalizers.make("dyt", eps=1e-5)


def test_transformer_takes_dyt():
    from sigprop.nn.transformer import NORMS

    assert "dyt" in NORMS


@pytest.mark.parametrize("model, shape", [
    (lambda: sigprop.transformer(2, 16, 2, norm="dyt"), (4, 8, 16)),
    (lambda: sigprop.mlp(3, 16, norm="dyt"), (8, 16)),
], ids=["transformer", "mlp"])
def test_analyze_runs_finite(model, shape):
    res = sigprop.analyze(model(), shape, seeds=2)
    assert np.all(np.asarray(res.finite)) and np.all(np.asarray(res.grad_finite))
    for name in ("cosine_similarity", "grad_norm"):
        assert np.all(np.isfinite(np.asarray(getattr(res, name)))), name
