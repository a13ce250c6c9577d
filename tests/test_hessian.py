"""``sigprop.hessian`` checked against independent references.

Every expected number is computed without sigprop's Hessian or objective code:

- dense Hessians: ``jax.hessian`` in float64 (``jax.enable_x64``) of a loss written here,
  optax cross-entropy of a hand-written ``jnp`` forward (the BatchNorm MLP: batch mean and
  variance inside the loss) or of flax's own ``apply`` / nnx call; eigenvalues from numpy
  ``eigvalsh``; the Gauss-Newton matrix from ``jax.jacfwd`` and the softmax Hessian written out;
- matrices with a known spectrum ``Q diag(lambda) Q^T``, and numpy ``eigh`` of the returned
  tridiagonal for the quadrature weights.

Tolerances: top-5 eigenvalues 1e-4 relative (float32 Lanczos vs float64 dense). SLQ moments
2%: ``tr(H^2) / n`` relative; ``tr(H) / n`` relative to ``max(|tr H| / n, rms eigenvalue)``,
since at initialization the mean eigenvalue can be a few percent of the spread (the one-layer
BatchNorm nets: ``tr H / n ~ -0.004``, rms ~ 0.1), where a relative error means nothing. The
runs use ``P - 1 = n - order`` probes, which the deflated runs take as a random orthonormal
frame of most of the complement, so the statistical error is small.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from sigprop import hessian
from sigprop import nn as models
from sigprop.analyses import hessian as hessian_impl
from sigprop.cli import hessian as hessian_cli

B, C, D_IN, WIDTH = 16, 4, 8, 12
ORDER = 30
TOP_RTOL = 1e-4
MOMENT_RTOL = 0.02


def _ce(out, labels):
    return optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()


def _f64(tree):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


def dense_hessian(loss, w0) -> np.ndarray:
    """The Hessian of ``loss`` at ``w0`` in float64, reverse-over-reverse (``loss`` builds its
    own float64 inputs; the zoo's CPU convolution has a ``custom_vjp``, no forward mode)."""
    with jax.enable_x64(True):
        h = np.asarray(jax.jit(jax.jacrev(jax.jacrev(loss)))(jnp.asarray(w0, jnp.float64)))
    return (h + h.T) / 2


# ------------------------------------------------------------------------------ models


class LinenBN(nn.Module):
    """A user's linen model: flax's own BatchNorm, in train mode."""

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(WIDTH)(x)
        x = nn.BatchNorm(use_running_average=False)(x)
        return nn.Dense(C)(nn.relu(x))


class NnxBN(nnx.Module):
    """A user's nnx model with nnx.BatchNorm (train mode)."""

    def __init__(self, rngs):
        self.lin1 = nnx.Linear(D_IN, WIDTH, rngs=rngs)
        self.bn = nnx.BatchNorm(WIDTH, use_running_average=False, rngs=rngs)
        self.lin2 = nnx.Linear(WIDTH, C, rngs=rngs)

    def __call__(self, x):
        return self.lin2(jax.nn.relu(self.bn(self.lin1(x))))


def _bn_mlp_forward(p, x):
    """mlp(2, WIDTH, norm='batchnorm') by hand: dense -> (x - mean_B) / sqrt(var_B + 1e-5) *
    scale + bias -> relu, twice; then the classifier."""
    def unit(h, q, i=None):
        take = (lambda a: a) if i is None else (lambda a: a[i])
        h = h @ take(q["Dense_0"]["kernel"])
        bn = q["BatchNorm_0"]
        mean, var = h.mean(0, keepdims=True), h.var(0, keepdims=True)
        h = (h - mean) / jnp.sqrt(var + 1e-5) * take(bn["scale"])[None] + take(bn["bias"])[None]
        return jax.nn.relu(h)

    h = unit(x, p["layer00"])
    h = unit(h, p["layer{:02d}+1"], 0)
    return h @ p["classifier"]["kernel"] + p["classifier"]["bias"][None]


@functools.lru_cache(maxsize=None)
def case(name):
    """``dict(model, x, variables, labels, params, loss)``: ``loss(w)`` of the raveled
    ``params`` (``ravel_pytree`` order) in float64, written without sigprop."""
    x = jax.random.normal(jax.random.key(1), (B, D_IN))
    labels = jnp.arange(B) % C
    variables = None
    if name in ("none", "layernorm", "batchnorm"):
        model = models.mlp(2, WIDTH, norm=name, n_classes=C)
        variables = model.init(jax.random.key(2), x)
        params = variables["params"]
        forward = (_bn_mlp_forward if name == "batchnorm"
                   else lambda p, x: model.apply({"params": p}, x))
    elif name == "regnorm":
        # variables without the sown 'losses' collection (as sigprop.train returns them): an
        # output of the pass, never an input; the loss adds the regularizer flax's apply sows
        model = models.mlp(2, WIDTH, norm=name, n_classes=C)
        params = model.init(jax.random.key(2), x)["params"]
        variables = {"params": params}

        def loss(w):
            out, state = model.apply({"params": unravel(w)}, jnp.asarray(x, jnp.float64),
                                     mutable=["losses"])
            extra = sum(jnp.sum(t) for t in jax.tree_util.tree_leaves(state["losses"]))
            return _ce(out, labels) + extra

        w0, unravel = ravel_pytree(params)
        return dict(model=model, x=x, variables=variables, labels=labels, params=params, w0=w0,
                    loss=loss, unravel=unravel)
    elif name == "cnn_groupnorm":
        x = jax.random.normal(jax.random.key(1), (4, 5, 5, 3))
        labels = jnp.arange(4) % C
        model = models.cnn("uniform", depth=2, width=4, norm="groupnorm", group_size=2,
                           n_classes=C)
        variables = model.init(jax.random.key(2), x)
        params = variables["params"]
        forward = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    elif name == "linen_bn":
        model = LinenBN()
        variables = model.init(jax.random.key(2), x)
        params, stats = variables["params"], variables["batch_stats"]
        forward = lambda p, x: model.apply({"params": p, "batch_stats": _f64(stats)}, x,  # noqa
                                           mutable=["batch_stats"])[0]
    elif name == "nnx_bn":
        model = NnxBN(nnx.Rngs(2))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        forward = lambda p, x: nnx.merge(graphdef, p, _f64(rest))(x)  # noqa: E731
    else:
        raise KeyError(name)
    w0, unravel = ravel_pytree(params)

    def loss(w):
        return _ce(forward(unravel(w), jnp.asarray(x, jnp.float64)), labels)

    return dict(model=model, x=x, variables=variables, labels=labels, params=params, w0=w0,
                loss=loss, unravel=unravel)


@functools.lru_cache(maxsize=None)
def measured(name):
    """``(spectrum, dense eigenvalues ascending, dense H)`` of a case."""
    c = case(name)
    h = dense_hessian(c["loss"], c["w0"])
    n = h.shape[0]
    res = hessian.spectrum(c["model"], c["x"], variables=c["variables"], labels=c["labels"],
                           order=ORDER, probes=n - ORDER + 1)
    return res, np.linalg.eigvalsh(h), h


def _rel(got, want, scale=None):
    scale = np.abs(want) if scale is None else scale
    return np.abs(np.asarray(got, np.float64) - want) / scale


def _mean_error(got, h):
    """The first moment's error, relative to max(|tr H| / n, rms eigenvalue)."""
    n = h.shape[0]
    return _rel(got, np.trace(h) / n, max(abs(np.trace(h)) / n, np.sqrt(np.sum(h * h) / n)))


CASES = ("none", "layernorm", "batchnorm", "regnorm", "cnn_groupnorm", "linen_bn", "nnx_bn")


@pytest.mark.parametrize("name", CASES)
def test_spectrum_matches_dense_hessian(name):
    res, ev, h = measured(name)
    n = len(ev)
    assert n <= 2000 and res.n_params == n
    assert _rel(res.top(5)[0], ev[::-1][:5]).max() <= TOP_RTOL
    assert _rel(res.lambda_max[0], ev[-1]) <= TOP_RTOL
    assert _rel(res.lambda_min[0], ev[0]) <= 1e-3
    assert _mean_error(res.moment(1)[0], h) <= MOMENT_RTOL
    assert _mean_error(res.trace[0] / n, h) <= MOMENT_RTOL
    assert _rel(res.moment(2)[0], np.sum(h * h) / n) <= MOMENT_RTOL
    assert _rel(res.outlier_ratio(C)[0], ev[-1] / ev[-C]) <= 2 * TOP_RTOL
    np.testing.assert_allclose(res.weights.sum(-1), 1.0, rtol=1e-5)


def test_density_moments_and_mass():
    res, ev, h = measured("layernorm")
    n = len(ev)
    grid, dens = res.density()
    step = grid[1] - grid[0]
    sigma = (res.nodes.max() - res.nodes.min()) / 100  # the documented default
    assert grid.shape == (1000,) and dens.shape == (1, 1000)
    assert abs(dens.sum() * step - 1) < 1e-3
    m1 = (grid * dens[0]).sum() * step
    m2 = (grid ** 2 * dens[0]).sum() * step - sigma ** 2  # smoothing adds sigma^2
    assert _mean_error(m1, h) <= MOMENT_RTOL
    assert _rel(m2, np.sum(h * h) / n) <= MOMENT_RTOL
    g2, d2 = res.density(grid=np.linspace(-1, 1, 11), sigma=0.5)
    assert g2.shape == (11,) and d2.shape == (1, 11) and np.all(d2 > 0)


def test_batchnorm_hessian_uses_batch_statistics():
    """The BatchNorm MLP's spectrum (matching the hand-written batch-statistics forward, above)
    is not that of the same net with its statistics frozen at their values (BN as an affine
    map): the test above discriminates."""
    res, ev, _ = measured("batchnorm")
    c = case("batchnorm")
    x = np.asarray(c["x"], np.float64)

    def frozen(w):
        p = c["unravel"](w)
        h = x
        for name, i in (("layer00", None), ("layer{:02d}+1", 0)):
            take = (lambda a: a) if i is None else (lambda a: a[i])  # noqa: B023
            h = h @ take(p[name]["Dense_0"]["kernel"])
            mean = jax.lax.stop_gradient(h.mean(0, keepdims=True))
            var = jax.lax.stop_gradient(h.var(0, keepdims=True))
            q = p[name]["BatchNorm_0"]
            h = jax.nn.relu((h - mean) / jnp.sqrt(var + 1e-5) * take(q["scale"])[None]
                            + take(q["bias"])[None])
        return _ce(h @ p["classifier"]["kernel"] + p["classifier"]["bias"][None], c["labels"])

    ev_frozen = np.linalg.eigvalsh(dense_hessian(frozen, c["w0"]))
    assert _rel(ev_frozen[::-1][:5], ev[::-1][:5]).max() > 100 * TOP_RTOL
    assert _rel(res.top(5)[0], ev_frozen[::-1][:5]).max() > 100 * TOP_RTOL


def test_gauss_newton_matches_dense():
    c = case("none")
    model = c["model"]
    with jax.enable_x64(True):
        x = jnp.asarray(c["x"], jnp.float64)
        w = jnp.asarray(c["w0"], jnp.float64)
        out = lambda v: model.apply({"params": c["unravel"](v)}, x)  # noqa: E731
        jac = np.asarray(jax.jacfwd(out)(w))  # [B, C, n]
        p = np.asarray(jax.nn.softmax(out(w)))
    hz = (np.einsum("bc,cd->bcd", p, np.eye(C)) - np.einsum("bc,bd->bcd", p, p)) / B
    g = np.einsum("bci,bcd,bdj->ij", jac, hz, jac)
    ev = np.linalg.eigvalsh(g)
    n = len(ev)
    res = hessian.spectrum(model, c["x"], variables=c["variables"], labels=c["labels"],
                           order=ORDER, probes=n - ORDER + 1, gauss_newton=True)
    assert _rel(res.top(5)[0], ev[::-1][:5]).max() <= TOP_RTOL
    assert res.lambda_min[0] >= -1e-5 * ev[-1]  # PSD
    assert _mean_error(res.moment(1)[0], g) <= MOMENT_RTOL
    assert _rel(res.moment(2)[0], np.sum(g * g) / n) <= MOMENT_RTOL


def test_param_filter_is_the_dense_submatrix():
    c = case("none")
    _, _, h = measured("none")
    flags = jax.tree_util.tree_map_with_path(
        lambda path, a: jnp.full(a.shape, path[0].key == "classifier", jnp.float32), c["params"])
    idx = np.flatnonzero(np.asarray(ravel_pytree(flags)[0]))
    sub = h[np.ix_(idx, idx)]
    ev = np.linalg.eigvalsh(sub)
    n = len(ev)
    kw = dict(variables=c["variables"], labels=c["labels"], params="classifier/*", order=20,
              probes=n - 20 + 1)
    res = hessian.spectrum(c["model"], c["x"], **kw)
    assert res.n_params == n == WIDTH * C + C
    assert _rel(res.top(5)[0], ev[::-1][:5]).max() <= TOP_RTOL
    assert _rel(res.moment(2)[0], np.sum(sub * sub) / n) <= MOMENT_RTOL
    compiled = hessian_impl._core._cache_size()
    again = hessian.spectrum(c["model"], c["x"], **kw)  # same shapes: no new compile
    assert hessian_impl._core._cache_size() == compiled
    np.testing.assert_array_equal(again.nodes, res.nodes)


def test_vmapped_and_sequential_programs_agree(monkeypatch):
    """Accelerators vmap seeds and probes, CPU runs them in turn (``hessian._vmapped``): the
    two programs give the same spectrum up to float32 rounding, and the sequential one still
    matches the dense Hessian (the other tests)."""
    model, shape = models.mlp(2, 8, norm="layernorm", n_classes=4), (16, 8)
    kw = dict(order=12, probes=3, seeds=2, key=1)
    assert hessian_impl._vmapped() is (jax.default_backend() != "cpu")
    monkeypatch.setattr(hessian_impl, "_vmapped", lambda: False)
    seq = hessian.spectrum(model, shape, **kw)
    monkeypatch.setattr(hessian_impl, "_vmapped", lambda: True)
    vm = hessian.spectrum(model, shape, **kw)
    scale = float(np.abs(seq.nodes).max())
    assert scale > 0 and seq.nodes.shape == vm.nodes.shape == (2, 3, 12)
    np.testing.assert_allclose(vm.top(3), seq.top(3), rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(vm.trace, seq.trace, rtol=1e-4)
    np.testing.assert_allclose(vm.moment(2), seq.moment(2), rtol=1e-4)
    assert not np.allclose(seq.top(1)[0], seq.top(1)[1])  # two seeds, two networks


def test_hvp_and_gauss_newton_building_blocks():
    """``hvp_fn`` (the block training code calls) against the dense Hessian of the nnx model."""
    from sigprop.core.objective import objective

    c = case("nnx_bn")
    _, _, h = measured("nnx_bn")
    obj, *_ = objective(c["model"], c["x"])
    params, rest = obj.split(jax.tree_util.tree_map(lambda a: a[0], obj.given))
    v = jax.random.normal(jax.random.key(3), (h.shape[0],))
    hv = jax.jit(lambda v: hessian.hvp_fn(obj, params, rest, c["x"], c["labels"])(v))(v)
    want = h @ np.asarray(v, np.float64)
    assert np.linalg.norm(np.asarray(hv) - want) <= 1e-4 * np.linalg.norm(want)


# ------------------------------------------------------------------------------ Lanczos


def _known(n=400, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    ev = np.concatenate([rng.uniform(-1, 1, n - 3), [10.0, 20.0, 50.0]])
    return q, ev, (q * ev) @ q.T, rng.standard_normal(n)


def test_lanczos_known_spectrum_outliers_and_weights():
    q, ev, a, v0 = _known()
    mat = jnp.asarray(a, jnp.float32)
    alphas, betas, basis = jax.jit(lambda v: hessian.lanczos(lambda u: mat @ u, v, 40,
                                                             basis=True))(jnp.asarray(v0))
    t = np.diag(np.asarray(alphas, np.float64)) + np.diag(betas, 1) + np.diag(betas, -1)
    theta, s = np.linalg.eigh(t)
    np.testing.assert_allclose(theta[-3:], [10, 20, 50], rtol=1e-5)
    nodes, weights = hessian.ritz(alphas, betas)
    np.testing.assert_allclose(nodes, theta, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(weights, s[0] ** 2, atol=1e-5)
    assert abs(float(weights.sum()) - 1) < 1e-5
    # a converged Ritz pair's weight is the start vector's squared overlap with the eigenvector
    overlap = (q[:, -3:].T @ v0 / np.linalg.norm(v0)) ** 2
    np.testing.assert_allclose(np.asarray(weights)[-3:], overlap, rtol=1e-3, atol=1e-6)
    basis = np.asarray(basis, np.float64)
    np.testing.assert_allclose(basis @ basis.T, np.eye(40), atol=1e-5)
    np.testing.assert_allclose(basis @ a @ basis.T, t, atol=1e-4)


def test_lanczos_slq_moments_are_unbiased():
    """Averaged over 2,000 random starts, sum_j tau_j^2 theta_j^k -> tr(A^k) / n (k = 1, 2),
    within 4 standard errors."""
    q, ev, a, _ = _known(n=200)
    mat = jnp.asarray(a, jnp.float32)
    starts = jax.random.normal(jax.random.key(5), (2000, 200))
    nodes, weights = jax.jit(jax.vmap(
        lambda v: hessian.ritz(*hessian.lanczos(lambda u: mat @ u, v, 8))))(starts)
    for k in (1, 2):
        per = np.sum(np.asarray(weights, np.float64) * np.asarray(nodes, np.float64) ** k, -1)
        se = per.std() / np.sqrt(len(per))
        assert abs(per.mean() - np.mean(ev ** k)) <= 4 * se


def test_lanczos_breakdown_is_graceful():
    """Four distinct eigenvalues: the Krylov space is invariant after 4 steps; 12 steps give
    no NaN, the 4 values with all of the weight, and more copies from restarts."""
    q, _, _, v0 = _known(n=64)
    ev = np.repeat([1.0, 2.0, 3.0, 7.0], 16)
    mat = jnp.asarray((q * ev) @ q.T, jnp.float32)
    nodes, weights = hessian.ritz(*hessian.lanczos(lambda u: mat @ u, jnp.asarray(v0), 12))
    nodes, weights = np.asarray(nodes), np.asarray(weights)
    assert np.all(np.isfinite(nodes)) and np.all(np.isfinite(weights))
    assert abs(weights.sum() - 1) < 1e-5
    assert np.min(np.abs(nodes[:, None] - np.array([1, 2, 3, 7])), 1).max() < 1e-4
    for value in (1, 2, 3, 7):
        assert weights[np.abs(nodes - value) < 1e-4].sum() > 0.01
    zero = hessian.lanczos(lambda u: 0 * u, jnp.asarray(v0), 5)
    assert all(np.all(np.isfinite(np.asarray(z))) for z in zero)


def test_lanczos_scan_body_does_not_depend_on_order():
    mat = jnp.eye(50)

    def body_size(order):
        jaxpr = jax.make_jaxpr(lambda v: hessian.lanczos(lambda u: mat @ u, v, order))(
            jnp.ones(50))
        scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
        assert len(scans) == 1
        return len(scans[0].params["jaxpr"].jaxpr.eqns)

    assert body_size(10) == body_size(45)


def test_lambda_max_inside_a_scan():
    _, _, a, _ = _known(n=100)
    mat = jnp.asarray(a, jnp.float32)

    def loss(w):
        return 0.5 * w @ (mat @ w)

    def step(w, key):
        return w, hessian.lambda_max(loss, w, key, order=20)

    _, lam = jax.jit(lambda keys: jax.lax.scan(step, jnp.ones(100), keys))(
        jax.random.split(jax.random.key(0), 2))
    np.testing.assert_allclose(np.asarray(lam), 50.0, rtol=1e-5)


# ------------------------------------------------------------------------------ boundary


def test_bad_inputs_are_value_errors_naming_them():
    c = case("none")
    kw = dict(variables=c["variables"], labels=c["labels"])
    n = c["w0"].shape[0]
    with pytest.raises(ValueError, match=r"matches no parameter.*classifier/kernel"):
        hessian.spectrum(c["model"], c["x"], params="nothing*", **kw)
    with pytest.raises(ValueError, match=rf"order={n + 1}.*number of selected parameters is {n}"):
        hessian.spectrum(c["model"], c["x"], order=n + 1, **kw)
    with pytest.raises(ValueError, match=f"order={WIDTH * C + C + 1}.*is {WIDTH * C + C}"):
        hessian.spectrum(c["model"], c["x"], order=WIDTH * C + C + 1, params="classifier/*",
                         **kw)
    for bad, match in [(dict(order=0), "order=0"), (dict(probes=0), "probes=0"),
                       (dict(seeds=0), "seeds=0"), (dict(key="a"), "key="),
                       (dict(gauss_newton="yes"), "gauss_newton"),
                       (dict(loss=3), "loss="), (dict(precision="x"), "precision")]:
        with pytest.raises(ValueError, match=match):
            hessian.spectrum(c["model"], c["x"], **{**kw, **bad})
    with pytest.raises(ValueError, match="labels"):
        hessian.spectrum(c["model"], c["x"], variables=c["variables"], labels=np.zeros(3, int))
    res, _, _ = measured("none")
    with pytest.raises(ValueError, match=f"k={ORDER + 1}"):
        res.top(ORDER + 1)
    with pytest.raises(ValueError, match="sigma"):
        res.density(sigma=0)


def test_save_load_roundtrip(tmp_path):
    res, _, _ = measured("linen_bn")
    path = res.save(tmp_path / "spec")
    back = hessian.Spectrum.load(path)
    for k in hessian.Spectrum._ARRAYS:
        np.testing.assert_array_equal(getattr(back, k), getattr(res, k))
    assert back.n_params == res.n_params and back.config == res.config
    np.testing.assert_array_equal(back.top(5), res.top(5))
    assert set(res.to_dict()) >= {"nodes", "weights", "n_params", "config"}
    with pytest.raises(ValueError, match="not a sigprop Hessian"):
        hessian.Spectrum.load(tmp_path / "missing.npz")


def test_cli_seeds_are_analyze_networks(tmp_path, capsys):
    """``sigprop hessian`` with shape inputs and two seeds: seed 1 is the network, batch and
    labels ``analyze`` uses for seed 1 (rebuilt here from the documented key splits)."""
    import argparse

    parser = argparse.ArgumentParser()
    hessian_cli.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "h.npz"
    args = parser.parse_args(["hessian", "--model", "mlp", "--norm", "none", "--depth", "2",
                              "--width", "8", "--batch", "16", "--classes", str(C),
                              "--order", "40", "--probes", "1", "--seeds", "2",
                              "--out", str(out)])
    assert args.run(args) == 0
    text = capsys.readouterr().out
    assert "lambda_max" in text and "top-5" in text and f"lambda_1/lambda_{C}" in text
    res = hessian.Spectrum.load(out)
    assert res.top(5).shape == (2, 5) and res.lambda_max.shape == (2,)

    model = models.mlp(2, 8, norm="none", n_classes=C)
    k_data, k_run = jax.random.split(jax.random.fold_in(jax.random.key(0), 1))
    k_init, k_label = jax.random.split(k_run)
    x = jax.random.normal(k_data, (16, 8))
    params = model.init(k_init, x)["params"]
    labels = jax.random.randint(k_label, (16,), 0, C)
    w0, unravel = ravel_pytree(params)
    ev = np.linalg.eigvalsh(dense_hessian(
        lambda w: _ce(model.apply({"params": unravel(w)}, jnp.asarray(x, jnp.float64)), labels),
        w0))
    assert _rel(res.top(5)[1], ev[::-1][:5]).max() <= TOP_RTOL


def test_regularizer_false_is_the_cross_entropy_hessian():
    """RegNorm with ``regularizer=False``: the Hessian of the cross-entropy alone ([U]'s), the
    dense float64 Hessian of a loss written without the sown penalty; with it, the penalty's
    curvature is included (the default; the test above)."""
    c = case("regnorm")

    def ce(w):
        out, _ = c["model"].apply({"params": c["unravel"](w)}, jnp.asarray(c["x"], jnp.float64),
                                  mutable=["losses"])
        return _ce(out, c["labels"])

    h = dense_hessian(ce, c["w0"])
    ev = np.linalg.eigvalsh(h)
    n = len(ev)
    res = hessian.spectrum(c["model"], c["x"], variables=c["variables"], labels=c["labels"],
                           order=ORDER, probes=n - ORDER + 1, regularizer=False)
    assert _rel(res.top(5)[0], ev[::-1][:5]).max() <= TOP_RTOL
    assert _rel(res.lambda_min[0], ev[0], np.abs(ev).max()) <= 1e-3
    with_penalty = measured("regnorm")[1]
    assert np.abs(with_penalty[::-1][:5] - ev[::-1][:5]).max() > 100 * TOP_RTOL * ev[-1]
    assert res.config["regularizer"] is False
    with pytest.raises(ValueError, match="regularizer="):
        hessian.spectrum(c["model"], c["x"], regularizer="no")
