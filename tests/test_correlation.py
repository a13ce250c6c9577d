"""Similar-batch and gradient correlation ([U] section 4) against independent references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sigprop
from sigprop import metrics
from sigprop.core import engine
from sigprop.taps import probe


def _np_corr(a, b):
    return np.corrcoef(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())[0, 1]


@pytest.mark.parametrize("shape", [(7,), (5, 3), (4, 3, 3, 2)])
def test_correlation_matches_numpy(shape):
    rng = np.random.default_rng(0)
    a = rng.normal(size=shape)
    b = 0.6 * a + rng.normal(size=shape) + 3.0
    np.testing.assert_allclose(metrics.correlation(jnp.asarray(a), jnp.asarray(b)), _np_corr(a, b),
                               rtol=1e-5)


def test_correlation_is_scale_safe_and_nan_when_undefined():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=50), rng.normal(size=50)
    ref = _np_corr(a, b)
    big = metrics.correlation(jnp.asarray(a * 1e30, jnp.float32), jnp.asarray(b * 1e-30, jnp.float32))
    np.testing.assert_allclose(big, ref, rtol=1e-4)
    assert np.isnan(metrics.correlation(jnp.ones(5), jnp.arange(5.0)))
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.correlation(jnp.ones(5), jnp.ones(6))


def test_pair_correlations_match_independent_mlp():
    """A hand-written batchnorm MLP run separately on x and x + noise (same labels)."""
    depth, width, batch, classes = 4, 32, 16, 10
    model = sigprop.mlp(depth, width, norm="batchnorm", n_classes=classes)
    x = jax.random.normal(jax.random.key(3), (batch, 20))
    noise = 0.3 * jax.random.normal(jax.random.key(7), x.shape)
    variables = model.init(jax.random.key(4), x)
    label_key = jax.random.key(5)
    network = engine.linen_network(model, jax.ShapeDtypeStruct(x.shape, x.dtype), None)
    plan = engine.Plan(("similar_batch_correlation", "gradient_correlation"), noise=0.3)

    @jax.jit
    def pair(v, x, n):  # the engine's pair pass over [x, x + n], then its metrics
        return engine.finish(network.pair(v, jnp.stack([x, x + n]), label_key, plan), plan)

    out = pair(variables, x, noise)
    names = tuple(f"layer{i:02d}" for i in range(depth))
    assert out["similar_batch_correlation"].names == names
    assert out["gradient_correlation"].names == names
    acts = np.asarray(out["similar_batch_correlation"].value)
    grads = np.stack([out["gradient_correlation"].value, out["grad_finite"].value], -1)

    params = probe.unstack(variables["params"])
    kernels = [params[n]["Dense_0"]["kernel"] for n in names]
    labels = jax.random.randint(label_key, (batch,), 0, classes)

    def net(deltas, inp):
        h, hidden = inp, []
        for w, d in zip(kernels, deltas):
            z = h @ w + d
            h = jax.nn.relu((z - z.mean(0, keepdims=True)) / jnp.sqrt(z.var(0, keepdims=True) + 1e-5))
            hidden.append(h)
        c = params["classifier"]
        logp = jax.nn.log_softmax(h @ c["kernel"] + c["bias"][None])
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1)), hidden

    zeros = [jnp.zeros((batch, width))] * depth
    g1, h1 = jax.grad(net, has_aux=True)(zeros, x)
    g2, h2 = jax.grad(net, has_aux=True)(zeros, x + noise)
    np.testing.assert_allclose(acts, [_np_corr(a, b) for a, b in zip(h1, h2)], rtol=1e-5)
    np.testing.assert_allclose(grads[:, 0], [_np_corr(a, b) for a, b in zip(g1, g2)], rtol=1e-4)
    assert np.all(np.asarray(grads[:, 1]) == 1.0)


def test_analyze_returns_correlations_and_they_order_bn_below_ln():
    """Claims 5-6 in miniature: batch-mean subtraction decorrelates similar batches with depth."""
    out = {}
    for norm in ("batchnorm", "layernorm"):
        res = sigprop.analyze(sigprop.mlp(6, 128, norm=norm), (32, 32), seeds=2,
                              similar_batch_noise=0.1, gradient_correlation=True)
        assert res.similar_batch_correlation.shape == (2, 6)
        assert res.gradient_correlation.shape == (2, 6)
        assert "similar_batch_correlation" in res.metric_names
        assert res.names_of("gradient_correlation") == res.grad_layer_names
        assert res.meta["options"] == (("gradient_correlation", True), ("similar_batch", True),
                                       ("similar_batch_noise", 0.1))
        out[norm] = res
    bn, ln = out["batchnorm"], out["layernorm"]
    assert bn.similar_batch_correlation[:, -1].mean() < ln.similar_batch_correlation[:, -1].mean()
    assert bn.gradient_correlation[:, 0].mean() < ln.gradient_correlation[:, 0].mean()


def test_correlations_are_optional_and_persist(tmp_path):
    plain = sigprop.analyze(sigprop.mlp(2, 16), (8, 8), seeds=2)
    assert plain.similar_batch_correlation is None and plain.gradient_correlation is None
    assert "gradient_correlation" not in plain.metric_names
    res = sigprop.analyze(sigprop.mlp(2, 16), (8, 8), seeds=2, gradient_correlation=True)
    assert res.similar_batch_correlation is None and res.gradient_correlation.shape == (2, 2)
    # the main metrics do not change when extras are asked for
    np.testing.assert_array_equal(res.cosine_similarity, plain.cosine_similarity)
    back = sigprop.LayerMetrics.load(res.save(tmp_path / "r"))
    np.testing.assert_array_equal(back.gradient_correlation, res.gradient_correlation)
    assert back.similar_batch_correlation is None
    assert set(back.to_pandas().metric) == set(res.metric_names)


@pytest.mark.parametrize("kwargs, match", [
    (dict(similar_batch_noise=0.0), "similar_batch_noise"),
    (dict(similar_batch_noise=-1), "similar_batch_noise"),
    (dict(similar_batch_noise="x"), "similar_batch_noise"),
    (dict(similar_batch_noise=True), "similar_batch_noise"),
    (dict(gradient_correlation="yes"), "gradient_correlation"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sigprop.analyze(sigprop.mlp(2, 8), (4, 8), **kwargs)


def test_non_default_prng_impl_is_kept():
    """Keys cross into jit as raw data; a user's rbg key must be re-wrapped as rbg."""
    key = jax.random.key(3, impl="rbg")
    res = sigprop.analyze(sigprop.mlp(2, 8), (4, 8), seeds=2, key=key)
    keys = engine.seed_keys(key, 2)  # typed rbg keys, each seed's data drawn with them
    net = engine.linen_network(sigprop.mlp(2, 8), jax.ShapeDtypeStruct((4, 8), jnp.float32), None)

    def one(k):
        return engine.measure_item(net, (4, 8), jnp.float32, k, None, None,
                                   engine.Plan(("cosine_similarity",)))["cosine_similarity"].value

    ref = jax.jit(jax.vmap(one))(keys)
    np.testing.assert_allclose(res.cosine_similarity, ref, rtol=1e-6)
