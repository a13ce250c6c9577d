"""Normalizers with ``layout="tokens"`` on ``[B, T, D]`` against independent float64 references.

Expected values come from numpy (float64) written here from the axes table in
``sigprop/nn/normalizers.py``'s docstring (layer statistics and groups per token over ``D``; batch
statistics over ``(B, T)``; instance statistics over ``T``); reference gradients are central
finite differences of those numpy functions. No sigprop code computes an expected value. The
flax checks compare with ``nn.LayerNorm`` / ``nn.RMSNorm`` / ``nn.GroupNorm`` applied per token.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sigprop.nn import normalizers

EPS = 1e-5
RTOL = 1e-5
SHAPE = (4, 6, 8)  # [B, T, D]
GROUPS = 2  # groups of 4 channels for groupnorm / evonorm_s0
BATCH, LAYER, INST = (0, 1), (2,), (1,)  # the reduced axes of [B, T, D] tokens
IDENTITY_NAMES = ("none", "weightnorm", "sws", "sigma_reparam")
REG_NAMES = ("regnorm", "preregnorm")


def _input(shape, seed):
    rng = np.random.default_rng(seed)
    return (2.0 * rng.standard_normal(shape) + 0.3).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Independent float64 numpy references for [B, T, D]


def _mean(x, axes):
    return x.mean(axis=axes, keepdims=True)


def _var(x, axes):
    return np.square(x - _mean(x, axes)).mean(axis=axes, keepdims=True)


def _std(x, axes):
    return (x - _mean(x, axes)) / np.sqrt(_var(x, axes) + EPS)


def _group_var(x):
    xg = x.reshape(*x.shape[:-1], GROUPS, x.shape[-1] // GROUPS)
    return np.broadcast_to(_var(xg, (3,)), xg.shape).reshape(x.shape)


def np_groupnorm(x):
    xg = x.reshape(*x.shape[:-1], GROUPS, x.shape[-1] // GROUPS)
    return _std(xg, (3,)).reshape(x.shape)


_REFS = {
    "batchnorm": lambda x: _std(x, BATCH),
    "layernorm": lambda x: _std(x, LAYER),
    "instancenorm": lambda x: _std(x, INST),
    "groupnorm": np_groupnorm,
    "frn": lambda x: x / np.sqrt(np.square(x).mean(axis=INST, keepdims=True) + EPS),
    "variancenorm": lambda x: x / np.sqrt(_var(x, BATCH) + EPS),
    "meancenter": lambda x: x - _mean(x, BATCH),
    "evonorm_s0": lambda x: x / (1 + np.exp(-x)) / np.sqrt(_group_var(x) + EPS),
    "evonorm_b0": lambda x: x / np.maximum(np.sqrt(_var(x, BATCH) + EPS),
                                           x + np.sqrt(_var(x, INST) + EPS)),
    "bmlv": lambda x: (x - _mean(x, BATCH)) / np.sqrt(_var(x, LAYER) + EPS),
    "lmbv": lambda x: (x - _mean(x, LAYER)) / np.sqrt(_var(x, BATCH) + EPS),
    "prelayernorm": lambda x: x / np.sqrt(_var(x, LAYER) + EPS),
    "regnorm": lambda x: _std(x, LAYER),
    "preregnorm": lambda x: _std(x, LAYER),
    "rmsnorm": lambda x: x / np.sqrt(np.square(x).mean(axis=LAYER, keepdims=True) + EPS),
    "dyt": lambda x: np.tanh(0.5 * x),  # Zhu et al. 2025, alpha0 = 0.5: no statistic
}
_OPTIONS = {"groupnorm": {"num_groups": GROUPS}, "evonorm_s0": {"num_groups": GROUPS}}


def _fd_grad(f, x, r, h=1e-5):
    """Central finite differences of ``sum(f(x) * r)`` in float64."""
    g = np.empty_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        xp, xm = flat.copy(), flat.copy()
        xp[i] += h
        xm[i] -= h
        gflat[i] = (np.sum(f(xp.reshape(x.shape)) * r) - np.sum(f(xm.reshape(x.shape)) * r)) / (2 * h)
    return g


def _close(actual, expected, rtol=RTOL):
    """Relative to the reference's scale: |a - e| <= rtol * (|e| + max|e|)."""
    expected = np.asarray(expected, np.float64)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol,
                               atol=rtol * np.max(np.abs(expected)))


# ---------------------------------------------------------------------------------------------
# sigprop's modules


def _module(name, **options):
    return normalizers.make(name, **{**_OPTIONS.get(name, {}), **options})


def _apply(module, x):
    """Init and apply, ``losses`` taken fresh each call; return (y, losses)."""
    params = {k: v for k, v in module.init(jax.random.key(0), x).items() if k != "losses"}
    y, state = module.apply(params, x, mutable=["losses"])
    return y, state.get("losses", {})


# ---------------------------------------------------------------------------------------------
# Tests


def test_every_activation_normalizer_has_a_reference():
    assert set(_REFS) == set(normalizers.names()) - set(IDENTITY_NAMES)


@pytest.mark.parametrize("name", sorted(_REFS))
def test_tokens_forward_and_gradient_match_numpy(name):
    x = _input(SHAPE, seed=0)
    r = _input(SHAPE, seed=1)
    module = _module(name, layout="tokens")
    y, losses = _apply(module, x)
    ref = _REFS[name]
    _close(y, ref(x.astype(np.float64)))

    grad = jax.grad(lambda x: jnp.sum(_apply(module, x)[0] * r))(jnp.asarray(x))
    _close(grad, _fd_grad(ref, x.astype(np.float64), r.astype(np.float64)))

    if name in REG_NAMES:  # reg_strength 1: mean over (T, D) of the squared batch mean of x_hat
        x_hat = ref(x.astype(np.float64))
        _close(losses["regnorm"], np.mean(np.square(x_hat.mean(axis=0))))


@pytest.mark.parametrize("name, flax_module, per_token", [
    ("layernorm", nn.LayerNorm(epsilon=EPS), False),
    ("rmsnorm", nn.RMSNorm(epsilon=EPS), False),
    ("groupnorm", nn.GroupNorm(num_groups=GROUPS, epsilon=EPS), True),  # flax's reduces over T
])
def test_tokens_equal_flax(name, flax_module, per_token):
    x = jnp.asarray(_input(SHAPE, seed=2))
    y, _ = _apply(_module(name, layout="tokens"), x)
    xf = x.reshape(-1, SHAPE[-1]) if per_token else x
    expected = flax_module.apply(flax_module.init(jax.random.key(0), xf), xf).reshape(SHAPE)
    _close(y, expected)


@pytest.mark.parametrize("name", normalizers.names())
def test_image_layout_is_the_default(name):
    x = jnp.asarray(_input((2, 4, 4, 8), seed=3))
    opts = {"group_size": 4} if normalizers.spec(name).grouped else {}
    y_default, _ = _apply(normalizers.make(name, **opts), x)
    y_image, _ = _apply(normalizers.make(name, layout="image", **opts), x)
    np.testing.assert_array_equal(np.asarray(y_image), np.asarray(y_default))


@pytest.mark.parametrize("name", normalizers.names())
def test_tokens_via_spec_and_make(name):
    x = jnp.asarray(_input(SHAPE, seed=4))
    spec = normalizers.spec(name, **_OPTIONS.get(name, {}))
    y_spec, _ = _apply(spec.module(layout="tokens"), x)
    y_make, _ = _apply(_module(name, layout="tokens"), x)
    np.testing.assert_array_equal(np.asarray(y_spec), np.asarray(y_make))
    assert y_make.shape == SHAPE


@pytest.mark.parametrize("name", normalizers.names())
def test_bad_layout_raises(name):
    x = jnp.asarray(_input(SHAPE, seed=5))
    module = normalizers.spec(name, **_OPTIONS.get(name, {})).module(layout="nchw")
    with pytest.raises(ValueError, match=r"layout='nchw'.*'image', 'tokens'"):
        module.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"layout='nchw'"):
        normalizers.make(name, layout="nchw")
