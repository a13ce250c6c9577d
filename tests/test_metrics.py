"""Tests of sigprop.metrics and sigprop.probe against independent float64 numpy references.

Every expected value below is computed in this file, in float64 numpy, from the definitions in
science.md ("Metrics"); sigprop is never used to compute an expected value. Inputs are generated
in float32 and the references are evaluated on exactly those float32 values cast to float64.

Tolerances: rtol = 1e-4 (RTOL) for every metric; metrics whose exact value is 0 (cosine of
orthogonal rows) use atol = 1e-6 (ATOL0).

Every test runs on each of the library's Gram-metric paths (the ``gram_path`` fixture): the CPU
path (float32 Gram matrix and eigenvalues when well conditioned, else float64), the same forced
to float64, and the float32 path with a QR for singular values (GPU/TPU).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sigprop.metrics as sm
from sigprop.backend import cpu, lapack
from sigprop.metrics import record as sm_record
from sigprop.taps import probe as sp

RTOL = 1e-4
ATOL0 = 1e-6
LOWRANK_RTOL = RTOL
SHAPES = [(8, 4, 4, 3), (16, 32), (5, 2, 2, 7)]


@pytest.fixture(params=["cpu", "cpu-exact"], autouse=True, scope="module")
def gram_path(request):
    """Run the module on both of the library's Gram-matrix records: float32 when well
    conditioned, else float64 sums ("cpu"), or always float64 sums ("cpu-exact"). JAX caches
    traces per function, so the caches are cleared around it."""
    with pytest.MonkeyPatch.context() as mp:
        if request.param == "cpu-exact":
            mp.setattr(sm_record, "_F32_MIN_EIGEN_RATIO", np.inf)
        jax.clear_caches()
        yield request.param
    jax.clear_caches()


# ------------------------------------------------------------------------------------------------
# Independent float64 references (from the definitions)


def ref_activation_variance(x):
    x = np.asarray(x, np.float64)
    c = x.reshape(-1, x.shape[-1])  # all non-channel axes flattened
    return float(np.mean(np.var(c, axis=0)))  # biased variance (ddof=0)


def ref_channel_squared_mean(x):
    x = np.asarray(x, np.float64)
    c = x.reshape(-1, x.shape[-1])
    return float(np.mean(np.mean(c, axis=0) ** 2))


def _m(x):
    x = np.asarray(x, np.float64)
    return x.reshape(x.shape[0], -1)


def _gram_normalized(x):
    """G = M_hat M_hat^T; a zero row stays zero (the library's documented convention)."""
    m = _m(x)
    norms = np.linalg.norm(m, axis=1)
    mh = np.where(norms[:, None] > 0, m / np.where(norms > 0, norms, 1.0)[:, None], 0.0)
    return mh @ mh.T


def ref_cosine_similarity(x):
    g = _gram_normalized(x)
    b = g.shape[0]
    # (sum_j G_ij - 1)/(B-1) with G_ii = 1 for nonzero rows; written as "- G_ii" so a zero row
    # (G_ii = 0) contributes 0, as documented in sigprop.metrics.
    return float(np.mean((g.sum(axis=1) - np.diag(g)) / (b - 1)))


def ref_stable_rank(x):
    g = _gram_normalized(x)
    return float(np.trace(g) / np.linalg.norm(g, 2))


def ref_effective_rank(x):
    s = np.linalg.svd(_m(x), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def ref_grad_norm(g):
    return float(np.sqrt(np.sum(np.asarray(g, np.float64) ** 2)))


def ref_all(x):
    x64 = np.asarray(x, np.float64)
    return np.array(
        [
            ref_activation_variance(x64),
            ref_channel_squared_mean(x64),
            ref_cosine_similarity(x64),
            ref_stable_rank(x64),
            ref_effective_rank(x64),
            float(np.all(np.isfinite(x64))),
        ]
    )


def rand(shape, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + offset).astype(np.float32)


def f(v):
    return float(np.asarray(v))


SINGLE = {
    "activation_variance": (sm.activation_variance, ref_activation_variance),
    "channel_squared_mean": (sm.channel_squared_mean, ref_channel_squared_mean),
    "cosine_similarity": (sm.cosine_similarity, ref_cosine_similarity),
    "stable_rank": (sm.stable_rank, ref_stable_rank),
    "effective_rank": (sm.effective_rank, ref_effective_rank),
    "grad_norm": (sm.grad_norm, ref_grad_norm),
}


# ------------------------------------------------------------------------------------------------
# Each metric against its reference, eager and jitted


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list(SINGLE))
def test_metric_matches_reference(name, shape, jit):
    fn, ref = SINGLE[name]
    # offset: a nonzero channel mean, so channel_squared_mean and cosine are not ~0
    x = rand(shape, seed=len(shape) + shape[0], offset=0.3)
    fn = jax.jit(fn) if jit else fn
    got = f(fn(jnp.asarray(x)))
    np.testing.assert_allclose(got, ref(x), rtol=RTOL)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_activation_metrics_vector(shape, jit):
    x = rand(shape, seed=7, offset=0.3)
    fn = jax.jit(sm.activation_metrics) if jit else sm.activation_metrics
    got = np.asarray(fn(jnp.asarray(x)))
    assert got.shape == (6,)
    assert len(sm.ACT_METRICS) == 5
    assert sm.ACT_METRICS == (
        "activation_variance",
        "channel_squared_mean",
        "cosine_similarity",
        "stable_rank",
        "effective_rank",
    )
    np.testing.assert_allclose(got, ref_all(x), rtol=RTOL)
    assert got[5] == 1.0


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_variance_plus_squared_mean_is_second_moment(shape):
    x = rand(shape, seed=3, offset=0.7)
    total = f(sm.activation_variance(jnp.asarray(x))) + f(sm.channel_squared_mean(jnp.asarray(x)))
    second = float(np.mean(np.asarray(x, np.float64) ** 2))
    np.testing.assert_allclose(total, second, rtol=RTOL)
    # and the references agree with each other (sanity of the test itself)
    np.testing.assert_allclose(
        ref_activation_variance(x) + ref_channel_squared_mean(x), second, rtol=1e-12
    )


def test_variance_is_biased():
    # one channel, values 0 and 2: biased var 1, unbiased var 2
    x = np.array([[0.0], [2.0]], np.float32)
    assert f(sm.activation_variance(jnp.asarray(x))) == pytest.approx(1.0, rel=RTOL)
    assert f(sm.channel_squared_mean(jnp.asarray(x))) == pytest.approx(1.0, rel=RTOL)


# ------------------------------------------------------------------------------------------------
# Structured batches


def test_identical_rows():
    row = rand((32,), seed=11)
    x = np.tile(row, (8, 1))
    assert f(sm.cosine_similarity(jnp.asarray(x))) == pytest.approx(1.0, rel=RTOL)
    assert f(sm.stable_rank(jnp.asarray(x))) == pytest.approx(1.0, rel=RTOL)
    # references agree
    assert ref_cosine_similarity(x) == pytest.approx(1.0, rel=1e-12)
    assert ref_stable_rank(x) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("b,d", [(8, 8), (8, 48), (5, 28)])
def test_orthogonal_rows(b, d):
    rng = np.random.default_rng(b * d)
    q, _ = np.linalg.qr(rng.standard_normal((d, b)))  # d x b, orthonormal columns
    x = (3.0 * q.T).astype(np.float32)  # b orthogonal rows of equal norm 3
    v = np.asarray(sm.activation_metrics(jnp.asarray(x)))
    np.testing.assert_allclose(v[2], 0.0, atol=ATOL0)  # cosine
    np.testing.assert_allclose(v[3], b, rtol=RTOL)  # stable rank
    np.testing.assert_allclose(v[4], b, rtol=RTOL)  # effective rank
    np.testing.assert_allclose(f(sm.cosine_similarity(jnp.asarray(x))), 0.0, atol=ATOL0)
    np.testing.assert_allclose(f(sm.stable_rank(jnp.asarray(x))), b, rtol=RTOL)
    np.testing.assert_allclose(f(sm.effective_rank(jnp.asarray(x))), b, rtol=RTOL)
    # references agree with the closed forms
    assert abs(ref_cosine_similarity(x)) < 1e-6
    assert ref_stable_rank(x) == pytest.approx(b, rel=1e-5)
    assert ref_effective_rank(x) == pytest.approx(b, rel=1e-5)


def _rank2(b=16, d=32, seed=5):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((b, 2)) @ rng.standard_normal((2, d))).astype(np.float32)


def test_low_rank():
    x = _rank2()
    sv = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)
    assert np.sum(sv > 1e-5 * sv[0]) == 2  # rank 2 up to float32 rounding
    xj = jnp.asarray(x)
    # cosine and stable rank: full tolerance
    np.testing.assert_allclose(f(sm.cosine_similarity(xj)), ref_cosine_similarity(x), rtol=RTOL)
    np.testing.assert_allclose(f(sm.stable_rank(xj)), ref_stable_rank(x), rtol=RTOL)
    assert 1.0 <= ref_stable_rank(x) <= 2.0 + 1e-9
    # effective rank: "known-ish", between 1 and 2, close to the numpy value
    er_ref = ref_effective_rank(x)
    assert 1.0 < er_ref <= 2.0 + 1e-6
    np.testing.assert_allclose(f(sm.effective_rank(xj)), er_ref, rtol=LOWRANK_RTOL)
    v = np.asarray(sm.activation_metrics(xj))
    np.testing.assert_allclose(v[[2, 3]], [ref_cosine_similarity(x), ref_stable_rank(x)], rtol=RTOL)
    np.testing.assert_allclose(v[4], er_ref, rtol=LOWRANK_RTOL)


def test_effective_rank_low_rank_strict():
    x = _rank2()
    np.testing.assert_allclose(f(sm.effective_rank(jnp.asarray(x))), ref_effective_rank(x), rtol=RTOL)


@pytest.mark.parametrize("rank", [1, 2])
def test_effective_rank_collapsed_large_batch(rank, gram_path):
    # A rank-collapsed batch of 256 samples: zero singular values must not inflate the entropy
    # (a float32 sqrt(eigvalsh(M M^T)) gives 1.16 for rank 1 here). Measured errors: 1e-5
    # (float64 Gram), 2e-5 (float32 QR).
    rng = np.random.default_rng(rank)
    x = (rng.standard_normal((256, rank)) @ rng.standard_normal((rank, 2048))).astype(np.float32)
    np.testing.assert_allclose(f(sm.effective_rank(jnp.asarray(x))), ref_effective_rank(x),
                               rtol=1e-4 if gram_path != "f32" else 1e-3)


def test_effective_rank_steep_spectrum():
    # singular values 1 ... 1e-7 (log-spaced): each one matters to the entropy
    rng = np.random.default_rng(8)
    u, _ = np.linalg.qr(rng.standard_normal((64, 64)))
    v, _ = np.linalg.qr(rng.standard_normal((4096, 64)))
    x = ((u * np.logspace(0, -7, 64)) @ v.T).astype(np.float32)
    v_all = np.asarray(jax.jit(sm.activation_metrics)(jnp.asarray(x)))
    want = ref_all(x)
    np.testing.assert_allclose(v_all[[0, 1, 3, 4]], want[[0, 1, 3, 4]], rtol=1e-5)
    np.testing.assert_allclose(v_all[2], want[2], atol=1e-8)  # cosine ~ -2e-5


def test_metrics_vmapped_over_a_scan():
    # seeds (vmap) x layers (scan): the Gram record's batched rule inside a scan
    xs = rand((3, 4, 8, 6), seed=61, offset=0.2)

    def layers(stack):
        def one(c, x):
            return c, jnp.concatenate([sm.activation_metrics(x), sm.grad_norm(x)[None]])

        return jax.lax.scan(one, 0.0, stack)[1]

    got = np.asarray(jax.jit(jax.vmap(layers))(jnp.asarray(xs)))
    want = np.array([[np.append(ref_all(x), ref_grad_norm(x)) for x in stack] for stack in xs])
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL0)


# ------------------------------------------------------------------------------------------------
# Scale invariance, overflow, degenerate inputs


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_scale_invariance_huge(shape):
    x = rand(shape, seed=21, offset=0.2)
    big = (x * np.float32(1e20)).astype(np.float32)
    assert np.all(np.isfinite(big))
    for fn, ref in [
        (sm.cosine_similarity, ref_cosine_similarity),
        (sm.stable_rank, ref_stable_rank),
        (sm.effective_rank, ref_effective_rank),
    ]:
        got_big = f(fn(jnp.asarray(big)))
        assert np.isfinite(got_big)
        np.testing.assert_allclose(got_big, f(fn(jnp.asarray(x))), rtol=RTOL)
        np.testing.assert_allclose(got_big, ref(x), rtol=RTOL)
    v = np.asarray(jax.jit(sm.activation_metrics)(jnp.asarray(big)))
    assert np.all(np.isfinite(v[2:]))
    np.testing.assert_allclose(
        v[2:5], [ref_cosine_similarity(x), ref_stable_rank(x), ref_effective_rank(x)], rtol=RTOL
    )
    # the variance of a 1e20-scaled batch (~1e40) overflows float32: the flag reports it
    assert not np.isfinite(v[0]) and v[5] == 0.0
    # grad_norm does not overflow either
    gn = f(sm.grad_norm(jnp.asarray(big)))
    assert np.isfinite(gn)
    np.testing.assert_allclose(gn, ref_grad_norm(big), rtol=RTOL)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_variance_scales_quadratically(shape):
    x = rand(shape, seed=22, offset=0.2)
    k = np.float32(1e10)
    big = (x * k).astype(np.float32)
    got = f(sm.activation_variance(jnp.asarray(big)))
    assert np.isfinite(got)
    np.testing.assert_allclose(got, ref_activation_variance(x) * 1e20, rtol=RTOL)
    np.testing.assert_allclose(got, f(sm.activation_variance(jnp.asarray(x))) * 1e20, rtol=RTOL)
    got_sq = f(sm.channel_squared_mean(jnp.asarray(big)))
    np.testing.assert_allclose(got_sq, ref_channel_squared_mean(x) * 1e20, rtol=RTOL)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_zero_row(shape):
    x = rand(shape, seed=31, offset=0.2)
    x[1] = 0.0
    xj = jnp.asarray(x)
    cos, sr = f(sm.cosine_similarity(xj)), f(sm.stable_rank(xj))
    assert np.isfinite(cos) and np.isfinite(sr)
    # the documented convention: a zero row has cosine 0 with every other row
    np.testing.assert_allclose(cos, ref_cosine_similarity(x), rtol=RTOL, atol=ATOL0)
    np.testing.assert_allclose(sr, ref_stable_rank(x), rtol=RTOL)
    v = np.asarray(jax.jit(sm.activation_metrics)(xj))
    assert np.all(np.isfinite(v))
    assert v[5] == 1.0
    np.testing.assert_allclose(v[:4], ref_all(x)[:4], rtol=RTOL, atol=ATOL0)


def test_all_zero_batch_is_finite():
    v = np.asarray(sm.activation_metrics(jnp.zeros((4, 3, 2), jnp.float32)))
    assert np.all(np.isfinite(v))
    assert v[5] == 1.0
    assert f(sm.grad_norm(jnp.zeros((4, 3)))) == 0.0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_flag(bad):
    x = rand((8, 4, 4, 3), seed=41)
    x[2, 1, 0, 2] = bad
    for fn in (sm.activation_metrics, jax.jit(sm.activation_metrics)):
        v = np.asarray(fn(jnp.asarray(x)))
        assert v.shape == (6,)
        assert v[5] == 0.0
    assert f(sm.all_finite(jnp.asarray(x))) == 0.0
    assert f(sm.all_finite(jnp.asarray(rand((3, 2))))) == 1.0


# ------------------------------------------------------------------------------------------------
# Gradient probe


class _Lin(nn.Module):
    features: int = 5
    probe: bool = True

    @nn.compact
    def __call__(self, x):
        w = self.param("W", nn.initializers.normal(1.0), (x.shape[-1], self.features))
        y = x @ w
        if self.probe:
            y = sp.observe_grad(self, y)
        return y


def _loss(module, params, probes, x):
    variables = {"params": params}
    if probes is not None:
        variables["probes"] = probes
    return jnp.sum(jnp.sin(module.apply(variables, x)))


def test_observe_grad_reports_grad_norm():
    x = rand((6, 4), seed=51)
    mod = _Lin(probe=True)
    variables = mod.init(jax.random.PRNGKey(0), jnp.asarray(x))
    params, probes = variables["params"], variables["probes"]
    assert set(probes) == {"g"}
    np.testing.assert_array_equal(np.asarray(probes["g"]), np.zeros(2))

    gp = jax.jit(jax.grad(lambda pr: _loss(mod, params, pr, jnp.asarray(x))))(probes)
    assert set(gp) == {"g"}
    # reference: dL/dy = cos(y), y = x W in float64
    y = np.asarray(x, np.float64) @ np.asarray(params["W"], np.float64)
    expected = np.array([np.linalg.norm(np.cos(y)), 1.0])
    np.testing.assert_allclose(np.asarray(gp["g"]), expected, rtol=RTOL)

    # the probe does not change the forward value or the parameter gradients
    plain = _Lin(probe=False)
    np.testing.assert_array_equal(
        np.asarray(mod.apply(variables, jnp.asarray(x))),
        np.asarray(plain.apply({"params": params}, jnp.asarray(x))),
    )
    g_probe = jax.grad(lambda p: _loss(mod, p, probes, jnp.asarray(x)))(params)
    g_plain = jax.grad(lambda p: _loss(plain, p, None, jnp.asarray(x)))(params)
    np.testing.assert_allclose(
        np.asarray(g_probe["W"]), np.asarray(g_plain["W"]), rtol=1e-6, atol=1e-7
    )
    # and matches float64 numpy: dL/dW = x^T cos(xW)
    np.testing.assert_allclose(
        np.asarray(g_probe["W"]), np.asarray(x, np.float64).T @ np.cos(y), rtol=RTOL, atol=1e-5
    )
    # both gradients in one backward pass
    g_both = jax.grad(lambda p, pr: _loss(mod, p, pr, jnp.asarray(x)), argnums=(0, 1))(
        params, probes
    )
    np.testing.assert_allclose(np.asarray(g_both[0]["W"]), np.asarray(g_probe["W"]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g_both[1]["g"]), expected, rtol=RTOL)


def test_observe_grad_nonfinite_flag():
    x = rand((3, 4), seed=52)
    mod = _Lin(features=2)
    variables = mod.init(jax.random.PRNGKey(1), jnp.asarray(x))
    params, probes = variables["params"], variables["probes"]
    c = jnp.array([[1.0, jnp.inf]])

    def loss(pr):
        return jnp.sum(mod.apply({"params": params, "probes": pr}, jnp.asarray(x)) * c)

    gp = jax.grad(loss)(probes)
    assert float(gp["g"][1]) == 0.0


class _TwoTaps(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = sp.Tap("act", name="a")(x)
        x = nn.Dense(3, name="dense")(x)
        x = sp.Tap("grad", name="g0")(x)
        return x


def test_tap_module():
    x = rand((8, 16), seed=53)  # full row rank (see test_effective_rank_low_rank_strict)
    mod = _TwoTaps()
    variables = mod.init(jax.random.PRNGKey(2), jnp.asarray(x))
    assert sp.MOMENTS not in variables  # activation taps are not sown at init
    params, probes = variables["params"], variables["probes"]
    assert set(probes) == {"g0"}

    out, state = mod.apply(variables, jnp.asarray(x), mutable=[sp.MOMENTS, sp.GRAM])
    moments = sp.collect(state[sp.MOMENTS], "m")
    hi, lo = sp.collect(state[sp.GRAM], "h"), sp.collect(state[sp.GRAM], "l")
    assert set(moments) == {"a"}
    got = sm.compute({"moments": moments["a"], "gram_hi": hi["a"], "gram_lo": lo["a"]},
                     sm.ACT_METRICS)
    np.testing.assert_allclose([float(got[m]) for m in sm.ACT_METRICS], ref_all(x)[:5],
                               rtol=RTOL)

    def loss(pr):
        return jnp.sum(jnp.sin(mod.apply({"params": params, "probes": pr}, jnp.asarray(x))))

    grads = sp.collect(jax.grad(loss)(probes), "g")
    assert set(grads) == {"g0"}
    pd = params["dense"]
    y = np.asarray(x, np.float64) @ np.asarray(pd["kernel"], np.float64) + np.asarray(
        pd["bias"], np.float64
    )
    np.testing.assert_allclose(
        np.asarray(grads["g0"]), [np.linalg.norm(np.cos(y)), 1.0], rtol=RTOL
    )


# ------------------------------------------------------------------------------------------------
# unstack / restack


def test_unstack_restack():
    stack = np.arange(6, dtype=np.float32).reshape(3, 2)
    tree = {"layer{:02d}+1": {"w": jnp.asarray(stack)}, "layer00": {"w": jnp.array([10.0, 11.0])}}
    flat = sp.unstack(tree)
    assert sorted(flat) == ["layer00", "layer01", "layer02", "layer03"]
    np.testing.assert_array_equal(np.asarray(flat["layer00"]["w"]), [10.0, 11.0])
    for i in range(3):
        assert set(flat[f"layer{i + 1:02d}"]) == {"w"}
        np.testing.assert_array_equal(np.asarray(flat[f"layer{i + 1:02d}"]["w"]), stack[i])

    back = sp.restack(flat, tree)
    assert set(back) == set(tree)
    for k in tree:
        assert set(back[k]) == {"w"}
        assert back[k]["w"].shape == tree[k]["w"].shape
        np.testing.assert_array_equal(np.asarray(back[k]["w"]), np.asarray(tree[k]["w"]))


def test_scan_name_roundtrip():
    assert sp.scan_name("block{}", 0) == "block{}"
    assert sp.scan_name("block{}", 1) == "block{}+1"
    tree = {sp.scan_name("block{}", 2): {"g": jnp.zeros((2, 2))}}
    assert sorted(sp.unstack(tree)) == ["block2", "block3"]


def test_collect_and_ordered_match_unstacked_layout():
    # a stack (two leaves per layer), a nested stack, a single layer and a leaf of another shape
    rng = np.random.default_rng(71)
    arr = lambda *s: jnp.asarray(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    tree = {
        "stem": {"m": arr(6)},
        "stage1": {"block{}": {"act1": {"m": arr(3, 6)}, "out": {"m": arr(3, 6)}}},
        "stage2": {"block{}+1": {"inner{}": {"m": arr(2, 4, 6)}}},
        "odd": {"m": arr(6)},
    }
    values = sp.collect(tree, "m")
    flat = {}

    def walk(node, path):  # the reference: the unstacked tree, walked by hand
        for k, v in node.items():
            if k == "m":
                flat["/".join(path)] = v
            else:
                walk(v, path + (k,))

    walk(sp.unstack(tree), ())
    assert sorted(values) == sorted(flat) and len(values) == 1 + 6 + 8 + 1
    for name, v in flat.items():
        np.testing.assert_array_equal(np.asarray(values[name]), np.asarray(v))
    # in the collection's order, stacked runs concatenate into the same rows
    np.testing.assert_array_equal(np.asarray(sp.stacked(values)),
                                  np.stack([flat[n] for n in values]))
    # ordered by call index: "odd" was called first, then the stacks, the stem last
    calls = {("odd",): 0, ("stage2", "block{}+1", "inner{}"): 1, ("stage1", "block{}", "out"): 2,
             ("stage1", "block{}", "act1"): 3, ("stem",): 4}
    by_call = sp.collect(tree, "m", order=lambda p: calls[tuple(p)])
    names = list(by_call)
    assert names[0] == "odd" and names[1] == "stage2/block1/inner0" and names[-1] == "stem"
    assert names[9:11] == ["stage1/block0/out", "stage1/block0/act1"]
    # a pytree: tree_map and vmap keep the names
    doubled = jax.tree_util.tree_map(lambda v: 2 * v, values)
    np.testing.assert_array_equal(np.asarray(doubled["stage2/block2/inner3"]),
                                  2 * np.asarray(flat["stage2/block2/inner3"]))
    batched = jax.vmap(lambda t: sp.collect(t, "m"))(jax.tree_util.tree_map(
        lambda a: jnp.stack([a, -a]), tree))
    second = jax.tree_util.tree_map(lambda v: v[1], batched)  # batch axes lead: drop them first
    np.testing.assert_array_equal(np.asarray(second["stage1/block1/out"]),
                                  -np.asarray(flat["stage1/block1/out"]))


def test_grad_norm_is_differentiable():
    g = rand((4, 3, 5), seed=81)
    got = np.asarray(jax.jit(jax.grad(sm.grad_norm))(jnp.asarray(g)))
    want = np.asarray(g, np.float64) / ref_grad_norm(g)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-7)


@pytest.mark.parametrize("n", [1, 7, 64])
@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("fast", [True, False])
def test_symmetric_eigenvalues_match_numpy(n, x64, fast, monkeypatch):
    """``lapack.eigvalsh`` (LAPACK without eigenvectors, or jnp.linalg where that is unavailable)
    against numpy's float64 eigenvalues of the same matrix, PSD with a wide spectrum."""
    if not fast:
        monkeypatch.setattr(lapack, "eigenvalues_only_works", lambda: False)
    rng = np.random.default_rng(n)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = (q * np.geomspace(1e-3, 10.0, n)) @ q.T
    dtype = np.float64 if x64 else np.float32
    a = a.astype(dtype)
    jax.clear_caches()
    with jax.enable_x64(x64):
        got = np.asarray(jax.jit(lapack.eigvalsh)(a))
    want = np.linalg.eigvalsh(a.astype(np.float64))
    assert got.dtype == dtype
    tol = (1e-12 if x64 else 2e-6) * want[-1]
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)


def test_the_cpu_policy_for_float64_and_lapack_batches():
    """One place decides (sigprop.backend.cpu): float64 everywhere but on a TPU; LAPACK one
    matrix per call for calls side by side in a program (always) or on several CPU devices."""
    on_cpu = jax.default_backend() == "cpu"
    assert cpu.is_cpu() is on_cpu
    assert cpu.has_float64() is (jax.default_backend() != "tpu")
    assert sm.has_f64 is cpu.has_float64 and sm_record.has_f64 is cpu.has_float64
    assert cpu.lapack_one_matrix_per_call(calls_side_by_side=True)
    assert cpu.lapack_one_matrix_per_call(calls_side_by_side=False) is (
        on_cpu and jax.local_device_count() > 1)


def test_eigvalsh_one_matrix_per_call_gives_the_batched_eigenvalues(monkeypatch):
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.standard_normal((3, 7, 7)))
    a = ((q * np.geomspace(1e-3, 10.0, 7)[None, None, :]) @ np.swapaxes(q, 1, 2)).astype(np.float32)
    a = np.stack([a, a[::-1]])  # [2, 3, 7, 7]: two batch axes
    monkeypatch.setattr(cpu, "lapack_one_matrix_per_call", lambda calls_side_by_side: False)
    batched = np.asarray(jax.jit(lambda g: lapack.eigvalsh(g))(a))
    monkeypatch.setattr(cpu, "lapack_one_matrix_per_call", lambda calls_side_by_side: True)
    text = jax.jit(lambda g: lapack.eigvalsh(g)).lower(a).as_text()
    per_matrix = np.asarray(jax.jit(lambda g: lapack.eigvalsh(g))(a))
    assert "while" in text  # lax.map: one matrix per call
    assert per_matrix.shape == batched.shape == (2, 3, 7)
    np.testing.assert_allclose(per_matrix, batched, rtol=0, atol=2e-6 * 10.0)


def test_eigenvalues_only_path_is_found_while_tracing():
    """The probe for the fast path works when first asked inside a jit trace (where jax stages
    ops instead of running them), so the CPU metrics use LAPACK without eigenvectors."""
    if jax.default_backend() != "cpu":
        pytest.skip("the eigenvalues-only LAPACK path is a CPU path")
    import jaxlib

    lapack.eigenvalues_only_works.cache_clear()
    text = jax.jit(lapack.eigvalsh).lower(jnp.eye(4)).as_text()
    if tuple(int(v) for v in jaxlib.__version__.split(".")[:2]) not in lapack.TESTED_JAXLIB:
        # the fallback: jnp.linalg.eigvalsh, and its eigenvalues
        assert not lapack.eigenvalues_only_works()
        assert f"mode = {ord('N')} : ui8" not in text
        a = np.diag([3.0, -1.0, 2.0, 0.5])
        np.testing.assert_array_equal(np.asarray(jax.jit(lapack.eigvalsh)(a)),
                                      np.array([-1.0, 0.5, 2.0, 3.0], np.float32))
        pytest.skip(f"the eigenvalues-only LAPACK path is not validated on jaxlib "
                    f"{jaxlib.__version__} (validated on {sorted(lapack.TESTED_JAXLIB)}): it "
                    "falls back to jnp.linalg.eigvalsh")
    assert lapack.eigenvalues_only_works()  # this jaxlib has the target: the library uses it
    assert f"mode = {ord('N')} : ui8" in text
