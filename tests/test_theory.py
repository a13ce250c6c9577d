"""sigprop.theory against independent references: closed forms, Gauss-Hermite product rules,
Monte Carlo and small numpy simulations of wide networks (fixed seeds; tolerances from the
sample sizes, stated beside each)."""

import functools
import math
import subprocess
import sys

import numpy as np
import pytest
from numpy.polynomial.hermite_e import hermegauss
from scipy.special import erf

from sigprop.analyses import theory

PI = math.pi
C_GRID = np.linspace(-1.0, 1.0, 41)


def relu(x):
    return np.maximum(x, 0.0)


def k_relu(c):
    """E[relu(u) relu(v)] for unit-variance u, v with correlation c (Cho & Saul)."""
    c = np.asarray(c, float)
    return (np.sqrt(1 - c * c) + (PI - np.arccos(c)) * c) / (2 * PI)


def correlated_normals(c, n, seed):
    """n samples of (u, v), unit variances, correlation c."""
    rng = np.random.default_rng(seed)
    z1, z3 = rng.standard_normal((2, n))
    return z1, c * z1 + math.sqrt(1 - c * c) * z3


def hermite_product(fn, c, q, weight_var, bias_var, points=200):
    """Gauss-Hermite product rule for the correlation map: accurate for smooth fn only."""
    x, w = hermegauss(points)
    w = w / math.sqrt(2 * PI)
    z1, z3 = x[:, None], x[None, :]
    u1 = math.sqrt(q) * z1
    u2 = math.sqrt(q) * (c * z1 + math.sqrt(1 - c * c) * z3)
    cross = np.sum(w[:, None] * w[None, :] * fn(u1) * fn(u2))
    second = np.sum(w * fn(math.sqrt(q) * x) ** 2)
    return (weight_var * cross + bias_var) / (weight_var * second + bias_var)


# ------------------------------------------------------------------------------------------
# relu_correlation_map / relu_post_activation_cosine


def test_relu_map_fixed_points_and_shape():
    m = theory.relu_correlation_map
    assert m(1.0) == pytest.approx(1.0, abs=1e-15)
    assert m(0.0) == pytest.approx(1 / PI, abs=1e-15)
    assert m(-1.0) == pytest.approx(0.0, abs=1e-15)
    assert np.ndim(m(0.3)) == 0
    assert m(np.zeros((2, 3))).shape == (2, 3)
    # increasing and convex: c'' = 1 / (pi sqrt(1 - c^2)) > 0
    y = m(C_GRID)
    assert (np.diff(y) > 0).all() and (np.diff(y, 2) > 0).all()
    # slope 1 - arccos(c) / pi, by central differences
    c, h = np.array([-0.5, 0.0, 0.7]), 1e-6
    np.testing.assert_allclose((m(c + h) - m(c - h)) / (2 * h), 1 - np.arccos(c) / PI, atol=1e-8)


def test_relu_map_matches_monte_carlo():
    # n = 2e6 samples: E[relu(u) relu(v)] has standard error <= 1.2 / sqrt(n) ~ 8.5e-4 on c'
    n = 2_000_000
    for c in (-0.8, 0.0, 0.5, 0.95):
        u, v = correlated_normals(c, n, seed=1)
        mc = np.mean(relu(u) * relu(v)) / np.mean(relu(u) ** 2)
        assert theory.relu_correlation_map(c) == pytest.approx(mc, abs=4e-3)


def test_relu_map_clips_rounding_and_rejects_non_cosines():
    assert theory.relu_correlation_map(1 + 1e-9) == pytest.approx(1.0, abs=1e-15)
    assert theory.relu_correlation_map(-1 - 1e-9) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="c must lie in"):
        theory.relu_correlation_map(1.5)
    with pytest.raises(ValueError, match="c must lie in"):
        theory.relu_post_activation_cosine([0.0, -2.0])


def test_post_activation_cosines_iterate_the_map_in_a_wide_relu_mlp():
    # sigprop's cosine_similarity: the mean off-diagonal cosine of the post-activations, here of
    # 64 independent width-128 He-init ReLU MLPs at once. Finite width moves each net's cosines
    # by ~0.03 per layer; the test allows 5 standard errors of the mean over nets, plus 0.005
    # for the finite-width bias (measured below 0.005 at widths 128-512).
    width, batch, depth, nets = 128, 16, 6, 64
    rng = np.random.default_rng(0)

    def mean_cosine(m):
        m = m / np.linalg.norm(m, axis=-1, keepdims=True)
        return (np.sum(m @ np.swapaxes(m, -1, -2), axis=(-2, -1)) - batch) / (batch * (batch - 1))

    x = rng.standard_normal((nets, batch, width))
    c_in = mean_cosine(x)
    measured = []
    for _ in range(depth):
        x = relu(x @ (rng.standard_normal((nets, width, width)) * math.sqrt(2 / width)))
        measured.append(mean_cosine(x))
    predicted = theory.iterate(theory.relu_post_activation_cosine, c_in, depth)[1:]
    errors = np.array(measured) - predicted
    se = errors.std(axis=1) / math.sqrt(nets)
    assert (np.abs(errors.mean(axis=1)) <= 5 * se + 0.005).all(), (errors.mean(axis=1), se)
    assert np.mean(measured[0]) == pytest.approx(1 / PI, abs=0.01)  # uncorrelated inputs: 1/pi


# ------------------------------------------------------------------------------------------
# variance_map


def test_variance_map_closed_forms():
    q = np.array([0.0, 0.5, 1.0, 3.0])
    np.testing.assert_allclose(theory.variance_map(q, "relu"), q, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(theory.variance_map(q, "relu", 1.3, 0.1), 1.3 * q / 2 + 0.1,
                               rtol=1e-13)
    np.testing.assert_allclose(theory.variance_map(q, "identity", 0.7, 0.2), 0.7 * q + 0.2,
                               rtol=1e-13)
    a = 0.01  # leaky_relu: E[phi(u)^2] = (1 + a^2) q / 2
    np.testing.assert_allclose(theory.variance_map(q, "leaky_relu"), (1 + a * a) * q, rtol=1e-13)
    # erf (a callable): E[erf(u)^2] = (2 / pi) arcsin(2q / (1 + 2q)) (Williams 1997)
    np.testing.assert_allclose(theory.variance_map(q, erf, 1.0),
                               2 / PI * np.arcsin(2 * q / (1 + 2 * q)), rtol=1e-12, atol=1e-15)
    assert np.ndim(theory.variance_map(1.0, "tanh")) == 0
    assert theory.variance_map(np.ones((2, 3)), "gelu").shape == (2, 3)


@pytest.mark.parametrize("name", ["tanh", "gelu", "swish", "elu", "selu", "softplus", "sigmoid"])
def test_variance_map_matches_monte_carlo(name):
    # 1e6 samples: relative standard error of E[phi^2] below 3e-3 for these activations
    q, weight_var, bias_var = 1.7, 1.5, 0.05
    z = np.random.default_rng(2).standard_normal(1_000_000)
    phi = theory.NUMPY_ACTIVATIONS[name]
    y = phi(math.sqrt(q) * z) ** 2
    mc, se = weight_var * y.mean() + bias_var, weight_var * y.std() / math.sqrt(z.size)
    assert theory.variance_map(q, name, weight_var, bias_var) == pytest.approx(mc, abs=5 * se)


# ------------------------------------------------------------------------------------------
# correlation_map


def test_correlation_map_relu_equals_arccos_map_for_any_q():
    expected = theory.relu_correlation_map(C_GRID)
    for q in (0.3, 1.0, 5.0):
        np.testing.assert_allclose(theory.correlation_map(C_GRID, "relu", q=q), expected,
                                   atol=1e-12)
    # near c = 1, where the kink of the second unit runs off to infinity
    c = np.array([0.999, 0.99999, 1 - 1e-9])
    np.testing.assert_allclose(theory.correlation_map(c, "relu"), theory.relu_correlation_map(c),
                               atol=1e-10)


def test_correlation_map_leaky_relu_closed_form():
    # lrelu(x) = relu(x) - a relu(-x): E[lrelu(u) lrelu(v)] = (1 + a^2) K(c) - 2 a K(-c)
    for a, act in ((0.01, "leaky_relu"), (0.2, lambda x: np.where(x > 0, x, 0.2 * x))):
        expected = ((1 + a * a) * k_relu(C_GRID) - 2 * a * k_relu(-C_GRID)) / ((1 + a * a) / 2)
        np.testing.assert_allclose(theory.correlation_map(C_GRID, act, q=2.0), expected,
                                   atol=1e-12)


def test_correlation_map_erf_closed_form_with_bias():
    # E[erf(u) erf(v)] = (2 / pi) arcsin(2 q c / (1 + 2 q)) for u, v of variance q, cosine c
    q, weight_var, bias_var = 0.8, 1.7, 0.3
    cross = 2 / PI * np.arcsin(2 * q * C_GRID / (1 + 2 * q))
    second = 2 / PI * np.arcsin(2 * q / (1 + 2 * q))
    expected = (weight_var * cross + bias_var) / (weight_var * second + bias_var)
    np.testing.assert_allclose(theory.correlation_map(C_GRID, erf, q, weight_var, bias_var),
                               expected, atol=1e-12)


def test_correlation_map_identity_closed_form():
    q, weight_var, bias_var = 1.4, 0.9, 0.2
    expected = (weight_var * q * C_GRID + bias_var) / (weight_var * q + bias_var)
    np.testing.assert_allclose(theory.correlation_map(C_GRID, "identity", q, weight_var, bias_var),
                               expected, atol=1e-13)


def test_correlation_map_tanh_matches_hermite_and_monte_carlo():
    q, weight_var, bias_var = 1.3, 1.5, 0.05
    for c in (-0.7, 0.0, 0.3, 0.9):
        got = theory.correlation_map(c, "tanh", q, weight_var, bias_var)
        # tanh is smooth, so a 200 x 200 Gauss-Hermite product rule is exact to ~1e-15
        assert got == pytest.approx(hermite_product(np.tanh, c, q, weight_var, bias_var), abs=1e-10)
        # Monte Carlo, 2e6 samples: standard error of the ratio ~ 1 / sqrt(n) = 7e-4
        u, v = correlated_normals(c, 2_000_000, seed=3)
        s = math.sqrt(q)
        mc = ((weight_var * np.mean(np.tanh(s * u) * np.tanh(s * v)) + bias_var)
              / (weight_var * np.mean(np.tanh(s * u) ** 2) + bias_var))
        assert got == pytest.approx(mc, abs=3.5e-3)


@pytest.mark.parametrize("name", theory.ACTIVATION_NAMES)
def test_correlation_map_fixed_point_and_range(name):
    # c = 1 is a fixed point of every map; values are cosines; the map is monotone increasing
    # (its derivative is weight_var E[phi'(u1) phi'(u2)] q / q' >= 0 only for monotone phi, which
    # every named activation is except gelu and swish, so only the range is checked for those)
    y = theory.correlation_map(C_GRID, name, q=1.5, weight_var=1.2, bias_var=0.1)
    assert y[-1] == pytest.approx(1.0, abs=1e-12)
    assert (np.abs(y) <= 1).all()
    if name not in ("gelu", "swish", "silu"):
        assert (np.diff(y) >= -1e-12).all()


def test_correlation_map_odd_activations_are_odd_and_broadcast():
    for act in ("tanh", "identity", erf):
        y = theory.correlation_map(C_GRID, act, q=0.9, weight_var=1.1)
        np.testing.assert_allclose(y, -y[::-1], atol=1e-12)
    out = theory.correlation_map(np.array([[0.1], [0.5], [0.9]]), "relu", q=np.array([0.5, 2.0]))
    assert out.shape == (3, 2)
    np.testing.assert_allclose(out, np.broadcast_to(theory.relu_correlation_map(
        np.array([[0.1], [0.5], [0.9]])), (3, 2)), atol=1e-12)
    assert np.ndim(theory.correlation_map(0.2, "tanh")) == 0


# ------------------------------------------------------------------------------------------
# iterate


def test_iterate_values_and_shapes():
    out = theory.iterate(theory.relu_correlation_map, 0.0, 3)
    m = theory.relu_correlation_map
    np.testing.assert_allclose(out, [0.0, m(0.0), m(m(0.0)), m(m(m(0.0)))], rtol=1e-15)
    assert out.shape == (4,)
    x0 = np.array([[-0.5, 0.0], [0.5, 1.0]])
    out = theory.iterate(m, x0, 5)
    assert out.shape == (6, 2, 2)
    np.testing.assert_array_equal(out[0], x0)
    np.testing.assert_allclose(out[5], m(m(m(m(m(x0))))), rtol=1e-15)
    np.testing.assert_allclose(out[:, 1, 1], 1.0)  # the fixed point stays
    assert theory.iterate(m, 0.2, 0).shape == (1,)
    # the cosine rises monotonically towards the fixed point 1 (slowly: 1 - c ~ 1/l^2)
    deep = theory.iterate(m, 0.0, 200)
    assert (np.diff(deep) > 0).all() and 0.999 < deep[-1] < 1


def test_iterate_variance_map_reaches_its_fixed_point():
    step = functools.partial(theory.variance_map, activation="tanh", weight_var=1.5, bias_var=0.05)
    q = theory.iterate(step, np.array([0.1, 1.0, 4.0]), 100)
    np.testing.assert_allclose(q[-1], q[-1][0], rtol=1e-10)  # one fixed point from any start
    assert step(q[-1][0]) == pytest.approx(q[-1][0], rel=1e-12)


def test_iterate_errors():
    for depth in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="depth"):
            theory.iterate(theory.relu_correlation_map, 0.0, depth)
    with pytest.raises(ValueError, match="map_fn"):
        theory.iterate(0.5, 0.0, 2)
    with pytest.raises(ValueError, match="map_fn returned shape"):
        theory.iterate(lambda x: np.stack([x, x]), 0.0, 2)


# ------------------------------------------------------------------------------------------
# bn_gradient_explosion_rate


def test_bn_rate_closed_forms():
    assert theory.bn_gradient_explosion_rate() == pytest.approx(PI / (PI - 1), rel=1e-10)
    assert theory.bn_gradient_explosion_rate("relu") == pytest.approx(1.4669422069, rel=1e-9)
    assert theory.bn_gradient_explosion_rate("identity") == pytest.approx(1.0, rel=1e-9)
    assert theory.bn_gradient_explosion_rate("scaled_relu") == pytest.approx(PI / (PI - 1),
                                                                              rel=1e-9)
    for a, act in ((0.01, "leaky_relu"), (0.3, lambda x: np.where(x > 0, x, 0.3 * x))):
        expected = PI * (1 + a * a) / (PI * (1 + a * a) - (1 - a) ** 2)
        assert theory.bn_gradient_explosion_rate(act) == pytest.approx(expected, rel=1e-9)


def test_bn_rate_tanh_by_hermite_with_analytic_derivative():
    x, w = hermegauss(200)
    w = w / math.sqrt(2 * PI)
    expected = np.sum(w * (1 - np.tanh(x) ** 2) ** 2) / np.sum(w * np.tanh(x) ** 2)
    assert theory.bn_gradient_explosion_rate("tanh") == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("name", theory.ACTIVATION_NAMES)
def test_bn_rate_at_least_one(name):
    # Gaussian Poincare inequality: Var[phi(z)] <= E[phi'(z)^2], equality for affine phi only
    rate = theory.bn_gradient_explosion_rate(name)
    if name in ("identity", "linear"):
        assert rate == pytest.approx(1.0, rel=1e-9)
    else:
        assert rate > 1.01


def _bn_mlp_rate(phi, dphi, width=256, batch=128, depth=20, seed=0):
    """Geometric-mean growth per layer, going backward, of the squared gradient norm at the dense
    outputs of a dense -> batchnorm -> phi MLP (He init, eps 1e-5) under a random linear loss;
    layers 3..17 (away from both ends)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, width))
    cache = []
    for _ in range(depth):
        w = rng.standard_normal((width, width)) * math.sqrt(2 / width)
        h = x @ w
        std = np.sqrt(h.var(0) + 1e-5)
        y = (h - h.mean(0)) / std
        cache.append((w, y, std))
        x = phi(y)
    g = rng.standard_normal(x.shape)  # d loss / d output of the last layer
    sq_norms = []
    for w, y, std in reversed(cache):
        gy = dphi(y) * g
        gh = (gy - gy.mean(0) - y * (gy * y).mean(0)) / std  # batchnorm backward
        sq_norms.append(np.sum(gh * gh))
        g = gh @ w.T
    sq = np.array(sq_norms[::-1])  # layer order
    ratios = sq[:-1] / sq[1:]
    return float(np.exp(np.mean(np.log(ratios[3:17]))))


@pytest.mark.parametrize("name, phi, dphi", [
    ("relu", relu, lambda y: (y > 0) * 1.0),
    (lambda x: np.where(x > 0, x, 0.2 * x), lambda x: np.where(x > 0, x, 0.2 * x),
     lambda y: np.where(y > 0, 1.0, 0.2)),
    ("tanh", np.tanh, lambda y: 1 - np.tanh(y) ** 2),
], ids=["relu", "leaky_relu_0.2", "tanh"])
def test_bn_rate_matches_simulated_batchnorm_mlp(name, phi, dphi):
    # Over 6 seeds at width 256, batch 128 the simulated rate sat -0.2..+1% off for relu and
    # +1.4..+2.7% for tanh (finite width; +0.5..0.9% at width 512, batch 256): 5% is the margin.
    assert _bn_mlp_rate(phi, dphi) == pytest.approx(theory.bn_gradient_explosion_rate(name),
                                                    rel=0.05)


def test_bn_rate_errors():
    with pytest.raises(ValueError, match="activation='gelu_tanh'"):
        theory.bn_gradient_explosion_rate("gelu_tanh")
    with pytest.raises(ValueError, match="constant"):
        theory.bn_gradient_explosion_rate(lambda x: np.ones_like(x))
    with pytest.raises(ValueError, match="points"):
        theory.bn_gradient_explosion_rate("relu", points=1)


# ------------------------------------------------------------------------------------------
# resnet_second_moment


def test_resnet_second_moment_closed_forms():
    l = np.arange(6)
    np.testing.assert_array_equal(theory.resnet_second_moment(5), 2.0 ** l)
    np.testing.assert_array_equal(theory.resnet_second_moment(5, "batchnorm"), l + 1.0)
    np.testing.assert_allclose(theory.resnet_second_moment(5, "none", alpha=0.5), 1.25 ** l)
    np.testing.assert_allclose(theory.resnet_second_moment(5, "groupnorm", alpha=0.5), 1 + 0.25 * l)
    for norm in ("none", "batchnorm", True, False):
        np.testing.assert_array_equal(theory.resnet_second_moment(5, norm, alpha=0.0), np.ones(6))
    np.testing.assert_array_equal(theory.resnet_second_moment(5, True),
                                  theory.resnet_second_moment(5, "layernorm"))
    np.testing.assert_array_equal(theory.resnet_second_moment(5, False),
                                  theory.resnet_second_moment(5, "none"))
    assert theory.resnet_second_moment(0).tolist() == [1.0]


def _residual_mlp_second_moments(norm, alpha, blocks=6, width=128, batch=16, nets=128, seed=0):
    """Pre-activation residual MLPs, He init: x <- x + alpha W2 relu(N(W1 relu(N(x)))), N the
    identity, batchnorm (over the batch) or layernorm (over units); ``nets`` independent ones at
    once. Returns mean(x^2) per block relative to the input's: ``[blocks + 1, nets]``."""
    rng = np.random.default_rng(seed)

    def n(x):
        if norm == "batchnorm":
            return (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
        if norm == "layernorm":
            return (x - x.mean(2, keepdims=True)) / np.sqrt(x.var(2, keepdims=True) + 1e-5)
        return x

    def dense(x):
        return x @ (rng.standard_normal((nets, width, width)) * math.sqrt(2 / width))

    x = rng.standard_normal((nets, batch, width))
    out = [np.mean(x * x, axis=(1, 2))]
    for _ in range(blocks):
        x = x + alpha * dense(relu(n(dense(relu(n(x))))))
        out.append(np.mean(x * x, axis=(1, 2)))
    return np.array(out) / out[0]


@pytest.mark.parametrize("norm, alpha", [("none", 1.0), ("none", 0.5), ("batchnorm", 1.0),
                                         ("layernorm", 1.0), ("batchnorm", 0.7)])
def test_resnet_second_moment_matches_simulated_residual_mlp(norm, alpha):
    # Finite width makes each net's stream wander (the ReLU means give every unit a random
    # offset): ~10% per net after 6 unnormalized blocks at width 128, ~2% normalized. The mean
    # over 128 nets must lie within 5 standard errors plus 1% (finite-width bias, measured
    # below 1% at widths 64-1024) of the law.
    r = _residual_mlp_second_moments(norm, alpha)
    mean, se = r.mean(axis=1), r.std(axis=1) / math.sqrt(r.shape[1])
    law = theory.resnet_second_moment(6, norm, alpha)
    assert (np.abs(mean - law) <= 5 * se + 0.01 * law).all(), (mean, law, se)


def test_resnet_second_moment_errors():
    with pytest.raises(ValueError, match="norm='weightnorm' has no second-moment law"):
        theory.resnet_second_moment(3, "weightnorm")
    with pytest.raises(ValueError, match="norm='batch_norm'; allowed: none, batchnorm"):
        theory.resnet_second_moment(3, "batch_norm")
    with pytest.raises(ValueError, match="blocks"):
        theory.resnet_second_moment(-1)
    with pytest.raises(ValueError, match="blocks"):
        theory.resnet_second_moment(2.0)
    with pytest.raises(ValueError, match="alpha"):
        theory.resnet_second_moment(3, alpha=float("nan"))


# ------------------------------------------------------------------------------------------
# groupnorm_rank_bound


def test_groupnorm_rank_bound():
    assert theory.groupnorm_rank_bound(64, 4) == pytest.approx(4.0)
    assert theory.groupnorm_rank_bound(64, 16, scale=2.5) == pytest.approx(5.0)
    sizes = [1, 2, 4, 8, 16, 32, 64]
    bound = theory.groupnorm_rank_bound(64, sizes)
    np.testing.assert_allclose(bound, np.sqrt(64 / np.array(sizes)))
    assert (np.diff(bound) < 0).all()  # the trend: larger groups, lower rank
    assert theory.groupnorm_rank_bound(64, 64) == pytest.approx(1.0)  # layernorm


def test_groupnorm_rank_bound_errors():
    with pytest.raises(ValueError, match="group_size=3 must divide width=64"):
        theory.groupnorm_rank_bound(64, 3)
    with pytest.raises(ValueError, match="must divide width"):
        theory.groupnorm_rank_bound(64, [2, 6])
    with pytest.raises(ValueError, match="group_size"):
        theory.groupnorm_rank_bound(64, 0)
    with pytest.raises(ValueError, match="group_size"):
        theory.groupnorm_rank_bound(64, 2.0)
    with pytest.raises(ValueError, match="width"):
        theory.groupnorm_rank_bound(0, 1)
    with pytest.raises(ValueError, match="scale"):
        theory.groupnorm_rank_bound(64, 4, scale=0.0)


# ------------------------------------------------------------------------------------------
# argument checking shared by the maps; import hygiene


def test_map_argument_errors():
    with pytest.raises(ValueError, match="activation='rellu'; allowed: relu"):
        theory.variance_map(1.0, "rellu")
    with pytest.raises(ValueError, match="q must be finite and >= 0"):
        theory.variance_map(-1.0, "relu")
    with pytest.raises(ValueError, match="q must be finite and > 0"):
        theory.correlation_map(0.5, "relu", q=0.0)
    with pytest.raises(ValueError, match="weight_var"):
        theory.variance_map(1.0, "relu", weight_var=-2.0)
    with pytest.raises(ValueError, match="bias_var"):
        theory.correlation_map(0.5, "relu", bias_var=float("inf"))
    with pytest.raises(ValueError, match="c must lie in"):
        theory.correlation_map(-1.2, "tanh")
    with pytest.raises(ValueError, match="points"):
        theory.correlation_map(0.5, "tanh", points=0)
    with pytest.raises(ValueError, match="elementwise"):
        theory.variance_map(1.0, lambda x: np.sum(x))


def test_every_model_activation_has_a_numpy_form_that_agrees():
    # the models' activations are defined once, in jax (sigprop.nn.layers); theory's numpy form
    # of each must exist and match it to float32 rounding on float32 inputs
    import jax.numpy as jnp

    from sigprop.nn import layers

    assert set(layers.ACTIVATIONS) <= set(theory.ACTIVATION_NAMES)
    assert theory.NUMPY_ACTIVATIONS["scaled_relu"](0.0) == (
        -layers.SCALED_RELU_GAIN * layers.SCALED_RELU_SHIFT)
    x = np.linspace(-6, 6, 2001).astype(np.float32)
    for name, fn in layers.ACTIVATIONS.items():
        got = np.asarray(fn(jnp.asarray(x)), np.float64)
        want = theory.NUMPY_ACTIVATIONS[name](x.astype(np.float64))
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6, err_msg=name)


def test_theory_imports_without_matplotlib():
    code = ("import sys; sys.modules['matplotlib'] = None; import sigprop.analyses.theory as t; "
            "assert 'matplotlib' not in [m for m in sys.modules if sys.modules[m] is not None]; "
            "print(t.relu_correlation_map(0.0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) == pytest.approx(1 / PI)
