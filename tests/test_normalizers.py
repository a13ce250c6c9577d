"""Tests for ``sigprop.normalizers`` against independent float64 numpy references.

Every expected value below is computed in numpy (float64) straight from the equations of
science.md's "Normalizers" table; no sigprop code is used to compute an expected value.
Conventions: NHWC; batch statistics over (N, H, W), layer statistics over (H, W, C), instance
statistics over (H, W); biased variances; eps = 1e-5; gamma = 1, beta = 0 at init, so the
module output at init equals the standardizer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sigprop.nn import normalizers

# Tolerance for float32 module output vs the float64 numpy reference.
RTOL = 1e-4
ATOL = 1e-5
EPS = 1e-5

SHAPES = [(4, 5, 6, 8), (6, 8)]  # [N, H, W, C] images and [N, C] features
C = 8


def _input(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (3.0 * rng.standard_normal(shape) + 0.5).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Independent float64 numpy references


def _batch(x):  # (N, H, W)
    return tuple(range(x.ndim - 1))


def _layer(x):  # (H, W, C)
    return tuple(range(1, x.ndim))


def _inst(x):  # (H, W); empty for [N, C]
    return tuple(range(1, x.ndim - 1))


def _mean(x, axes):
    if not axes:
        return x.copy()
    return x.mean(axis=axes, keepdims=True)


def _var(x, axes):
    if not axes:
        return np.zeros_like(x)
    m = x.mean(axis=axes, keepdims=True)
    return ((x - m) ** 2).mean(axis=axes, keepdims=True)


def _std(x, axes):
    return np.sqrt(_var(x, axes) + EPS)


def np_none(x):
    return x


def np_batchnorm(x):
    return (x - _mean(x, _batch(x))) / _std(x, _batch(x))


def np_layernorm(x):
    return (x - _mean(x, _layer(x))) / _std(x, _layer(x))


def np_instancenorm(x):
    return (x - _mean(x, _inst(x))) / _std(x, _inst(x))


def _group_std_loop(x, g):
    """Per-sample std over (H, W) and the g contiguous channels of each group, by explicit slicing."""
    out = np.empty_like(x)
    for k in range(x.shape[-1] // g):
        sl = x[..., k * g:(k + 1) * g]
        out[..., k * g:(k + 1) * g] = _std(sl, _layer(sl))
    return out


def _group_mean_loop(x, g):
    out = np.empty_like(x)
    for k in range(x.shape[-1] // g):
        sl = x[..., k * g:(k + 1) * g]
        out[..., k * g:(k + 1) * g] = _mean(sl, _layer(sl))
    return out


def np_groupnorm(g):
    def f(x):
        return (x - _group_mean_loop(x, g)) / _group_std_loop(x, g)
    return f


def np_frn(x):
    axes = _inst(x)
    nu2 = (x ** 2).mean(axis=axes, keepdims=True) if axes else x ** 2
    return x / np.sqrt(nu2 + abs(EPS))


def np_variancenorm(x):
    return x / _std(x, _batch(x))


def np_meancenter(x):
    return x - _mean(x, _batch(x))


def np_evonorm_s0(g):
    def f(x):
        sig = 1.0 / (1.0 + np.exp(-x))  # v = 1
        return x * sig / _group_std_loop(x, g)
    return f


def np_evonorm_b0(x):
    return x / np.maximum(_std(x, _batch(x)), x + _std(x, _inst(x)))  # v = 1


def np_bmlv(x):
    return (x - _mean(x, _batch(x))) / _std(x, _layer(x))


def np_lmbv(x):
    return (x - _mean(x, _layer(x))) / _std(x, _batch(x))


def np_prelayernorm(x):  # the post-affine half: no centering
    return x / _std(x, _layer(x))


def np_rmsnorm(x):
    return x / np.sqrt((x ** 2).mean(axis=_layer(x), keepdims=True) + EPS)


def np_regnorm_loss(x, reg_strength):
    x_hat = np_layernorm(x)
    return reg_strength * np.mean(x_hat.mean(axis=0) ** 2)


# (name, options, numpy reference)
_CASES = [
    ("none", {}, np_none),
    ("batchnorm", {}, np_batchnorm),
    ("layernorm", {}, np_layernorm),
    ("instancenorm", {}, np_instancenorm),
    ("groupnorm", {"group_size": 1}, np_groupnorm(1)),
    ("groupnorm", {"group_size": 4}, np_groupnorm(4)),
    ("groupnorm", {"group_size": C}, np_groupnorm(C)),
    ("groupnorm", {"num_groups": 2}, np_groupnorm(4)),
    ("groupnorm", {}, np_groupnorm(1)),  # default 32 groups -> gcd(32, 8) = 8 groups of 1
    ("frn", {}, np_frn),
    ("variancenorm", {}, np_variancenorm),
    ("meancenter", {}, np_meancenter),
    ("weightnorm", {}, np_none),  # parametric: make returns the identity
    ("sws", {}, np_none),  # parametric: make returns the identity
    ("evonorm_s0", {"num_groups": 2}, np_evonorm_s0(4)),
    ("evonorm_s0", {"group_size": 4}, np_evonorm_s0(4)),
    ("evonorm_b0", {}, np_evonorm_b0),
    ("bmlv", {}, np_bmlv),
    ("lmbv", {}, np_lmbv),
    ("prelayernorm", {}, np_prelayernorm),
    ("regnorm", {"reg_strength": 0.5}, np_layernorm),
    ("preregnorm", {"reg_strength": 0.5}, np_layernorm),
    ("rmsnorm", {}, np_rmsnorm),
    ("dyt", {}, lambda x: np.tanh(0.5 * np.asarray(x, np.float64))),
    ("sigma_reparam", {}, np_none),  # parametric: make returns the identity
]

_REG_NAMES = ("regnorm", "preregnorm")

# Names whose modules take affine= and are statistic + per-channel affine only.
_AFFINE_NAMES = [
    "batchnorm", "layernorm", "instancenorm", "groupnorm", "variancenorm", "meancenter",
    "bmlv", "lmbv", "prelayernorm", "regnorm", "preregnorm", "rmsnorm",
]
_REF = {name: fn for name, opts, fn in _CASES if not opts or name in _REG_NAMES}


def _case_id(case):
    name, opts, _ = case
    return name + "".join(f"-{k}={v}" for k, v in sorted(opts.items()))


def _run(module, x, variables=None, name=""):
    """Init (unless variables are given) and apply; return (output, variables, state)."""
    if variables is None:
        variables = module.init(jax.random.key(0), x)
    if name in _REG_NAMES:
        # Pass only the non-'losses' collections so the sown value is this call's term alone
        # (sow reduces into an existing value when the collection is passed in).
        inputs = {k: v for k, v in variables.items() if k != "losses"}
        y, state = module.apply(inputs, x, mutable=["losses"])
    else:
        y, state = module.apply(variables, x, mutable=True)
    return np.asarray(y), variables, state


# ---------------------------------------------------------------------------------------------
# Table-driven: every normalizer vs its numpy reference


def test_cases_cover_every_name():
    assert {name for name, _, _ in _CASES} == set(normalizers.names())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", _CASES, ids=_case_id)
def test_matches_numpy_reference(case, shape):
    name, opts, ref = case
    x = _input(shape)
    y, _, _ = _run(normalizers.make(name, **opts), x, name=name)
    assert y.shape == x.shape
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref(x.astype(np.float64)), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", _AFFINE_NAMES)
def test_affine_false_has_no_params_and_same_output(name, shape):
    x = _input(shape, seed=1)
    opts = {"reg_strength": 0.5} if name in _REG_NAMES else {}
    y, variables, _ = _run(normalizers.make(name, affine=False, **opts), x, name=name)
    assert "params" not in variables or not jax.tree_util.tree_leaves(variables["params"])
    np.testing.assert_allclose(y, _REF[name](x.astype(np.float64)), rtol=RTOL, atol=ATOL)


def test_frn_affine_false_keeps_only_learnable_eps():
    x = _input((4, 5, 6, 8))
    variables = normalizers.make("frn", affine=False).init(jax.random.key(0), x)
    assert set(variables["params"]) == {"eps"}
    np.testing.assert_allclose(np.asarray(variables["params"]["eps"]), EPS, rtol=1e-6)


@pytest.mark.parametrize("name", ["none", "weightnorm", "sws", "sigma_reparam"])
def test_identity_modules_have_no_params(name):
    x = _input((4, 5, 6, 8))
    variables = normalizers.make(name).init(jax.random.key(0), x)
    assert not jax.tree_util.tree_leaves(variables.get("params", {}))


# ---------------------------------------------------------------------------------------------
# Special relations and the regnorm loss


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_groupnorm_extremes_equal_instance_and_layer_norm(shape):
    x = _input(shape, seed=2)
    gn1, _, _ = _run(normalizers.make("groupnorm", group_size=1), x)
    gnc, _, _ = _run(normalizers.make("groupnorm", group_size=C), x)
    x64 = x.astype(np.float64)  # the numpy instance / layer norms, not sigprop's
    np.testing.assert_allclose(gn1, np_instancenorm(x64), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(gnc, np_layernorm(x64), rtol=RTOL, atol=ATOL)


def test_instancenorm_on_features_is_zero():
    x = _input((6, 8))
    y, _, _ = _run(normalizers.make("instancenorm"), x)
    np.testing.assert_allclose(y, np.zeros_like(y), atol=ATOL)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", _REG_NAMES)
def test_regnorm_sows_loss(name, shape):
    x = _input(shape, seed=3)
    y, _, state = _run(normalizers.make(name, reg_strength=0.5), x, name=name)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y, np_layernorm(x64), rtol=RTOL, atol=ATOL)
    loss = np.asarray(state["losses"]["regnorm"])
    assert loss.shape == ()
    np.testing.assert_allclose(loss, np_regnorm_loss(x64, 0.5), rtol=RTOL, atol=ATOL)


def test_regnorm_loss_scales_with_reg_strength():
    x = _input((4, 5, 6, 8), seed=4)
    _, _, s1 = _run(normalizers.make("regnorm", reg_strength=1.0), x, name="regnorm")
    _, _, s2 = _run(normalizers.make("regnorm", reg_strength=0.25), x, name="regnorm")
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(np.asarray(s1["losses"]["regnorm"]), np_regnorm_loss(x64, 1.0),
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(s2["losses"]["regnorm"]), np_regnorm_loss(x64, 0.25),
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_trained_affine_layernorm(shape):
    x = _input(shape, seed=5)
    module = normalizers.make("layernorm")
    variables = module.init(jax.random.key(0), x)
    assert set(variables["params"]) == {"scale", "bias"}
    params = {
        "scale": jnp.full_like(variables["params"]["scale"], 2.0),
        "bias": jnp.full_like(variables["params"]["bias"], 1.0),
    }
    y, _, _ = _run(module, x, variables={"params": params})
    np.testing.assert_allclose(y, 2.0 * np_layernorm(x.astype(np.float64)) + 1.0,
                               rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# Registry, specs and errors


def test_names_in_science_order():
    assert normalizers.names() == [
        "none", "batchnorm", "layernorm", "instancenorm", "groupnorm", "frn", "variancenorm",
        "meancenter", "weightnorm", "sws", "evonorm_s0", "evonorm_b0", "bmlv", "lmbv",
        "prelayernorm", "regnorm", "preregnorm", "rmsnorm", "dyt", "sigma_reparam",
    ]


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError) as err:
        normalizers.make("nope")
    msg = str(err.value)
    assert "nope" in msg
    for name in normalizers.names():
        assert name in msg


def test_unknown_name_suggests_closest():
    with pytest.raises(ValueError, match="Did you mean 'batchnorm'"):
        normalizers.make("batchnrm")


def test_groupnorm_both_group_options_raise():
    with pytest.raises(ValueError, match="group_size"):
        normalizers.make("groupnorm", group_size=4, num_groups=2)


def test_groupnorm_bad_group_size_raises():
    x = _input((4, 5, 6, 8))
    with pytest.raises(ValueError) as err:
        normalizers.make("groupnorm", group_size=3).init(jax.random.key(0), x)
    msg = str(err.value)
    assert "group_size" in msg and "8" in msg


def test_unknown_option_raises():
    with pytest.raises(ValueError, match="foo"):
        normalizers.make("batchnorm", foo=1)


def test_specs():
    assert normalizers.spec("batchnorm").batch_dependent is True
    assert normalizers.spec("layernorm").batch_dependent is False
    assert normalizers.spec("frn").activation == "tlu"
    assert normalizers.spec("weightnorm").weight == "weightnorm"
    assert normalizers.spec("sigma_reparam").weight == "sigma_reparam"
    assert normalizers.spec("prelayernorm").center_input is True
