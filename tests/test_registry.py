"""The metric registry: only the requested metrics are recorded and computed; LayerMetrics as a
mapping with named axes; 0.1 files still load; clear errors at the boundary."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sigprop
from sigprop import metrics
from sigprop.core import engine
from sigprop.core.results import LayerMetrics

MODEL = sigprop.mlp(3, 16, norm="layernorm", n_classes=10)
X = np.asarray(jax.random.normal(jax.random.key(0), (8, 12)))


def _np_variance(a):
    a = np.asarray(a, np.float64)
    return a.var(axis=0).mean()


def test_every_entry_has_docs_axis_and_needs():
    for name, m in metrics.REGISTRY.items():
        assert m.name == name and m.doc and m.needs in metrics.NEEDS
        assert m.axis in (metrics.LAYER, metrics.GRAD_LAYER, metrics.BRANCH_LAYER,
                          metrics.ATTENTION_LAYER, metrics.PARAM_LAYER, metrics.NORM_LAYER,
                          metrics.NORM_TOTAL)
        assert m.axis in metrics.FLAGS  # every axis has its finite flag


def test_subset_records_only_what_it_needs():
    """Variance alone: no Gram matrix, no eigenvalues, no backward pass in the program."""
    net = engine.linen_network(MODEL, jax.ShapeDtypeStruct(X.shape, jnp.float32), None)
    variables = net.init(jax.random.key(0), jnp.asarray(X))

    def hlo(names):
        plan = engine.Plan(tuple(names))
        return str(jax.make_jaxpr(lambda k: engine.measure_item(
            net, X.shape, jnp.float32, k, jnp.asarray(X), variables, plan))(jax.random.key(0)))

    only_var = hlo(["activation_variance"])
    assert "syevd" not in only_var and "eigh" not in only_var and "dot_general" in only_var
    assert "custom_vjp" not in only_var  # no gradient probes: forward only
    full = hlo(["activation_variance", "effective_rank", "grad_norm"])
    assert "syevd" in full or "eigh" in full


def test_subset_values_equal_the_full_run_and_numpy():
    full = sigprop.analyze(MODEL, X, seeds=2)
    part = sigprop.analyze(MODEL, X, seeds=2, metrics=("activation_variance",))
    assert list(part.metric_names) == ["activation_variance"] and part.grad_norm is None
    np.testing.assert_allclose(part.activation_variance, full.activation_variance, rtol=1e-6)
    assert set(part) == {"activation_variance", "finite"}


def test_residual_variance_against_numpy():
    """Brock et al.'s residual-branch variance: the branch output of a hand-built block."""
    model = sigprop.models.resnet(1, (8,), norm="batchnorm", n_classes=10)
    x = np.asarray(jax.random.normal(jax.random.key(1), (4, 6, 6, 3)))
    res = sigprop.analyze(model, x, metrics=("residual_variance", "activation_variance"))
    assert res.branch_layer_names == ("stage1/block0/branch",)
    # the branch ends in a batchnorm (scale 1, bias 0): per-channel variance var/(var+eps)
    # averaged over channels, i.e. just below 1
    v = float(res.residual_variance[0, 0])
    assert 0.999 < v < 1.0
    assert res.axes("residual_variance") == ("seed", "branch_layer")


def test_unknown_metric_is_a_clear_error():
    with pytest.raises(ValueError, match=r"metrics=.*unknown 'nope'.*known: activation_variance"):
        sigprop.analyze(MODEL, X, metrics=("nope",))


def test_mapping_and_axes():
    res = sigprop.analyze(MODEL, X, seeds=2)
    assert "cosine_similarity" in res and len(res) == len(list(res))
    assert res["cosine_similarity"] is res.cosine_similarity
    assert res.axes("grad_norm") == ("seed", "grad_layer")
    assert res.similar_batch_correlation is None  # registered, not measured
    with pytest.raises(AttributeError, match="no 'nope'"):
        res.nope


def test_to_xarray():
    xr = pytest.importorskip("xarray")
    res = sigprop.analyze(MODEL, X, seeds=2)
    ds = res.to_xarray()
    assert isinstance(ds, xr.Dataset)
    assert ds["cosine_similarity"].dims == ("seed", "layer")
    assert list(ds["grad_norm"].coords["grad_layer"].values) == list(res.grad_layer_names)
    np.testing.assert_array_equal(ds["stable_rank"].values, res.stable_rank)


def test_files_written_by_0_1_still_load(tmp_path):
    """A file in 0.1's layout (format 1: layer_names / grad_layer_names in the metadata)."""
    meta = dict(format="sigprop.LayerMetrics/1", layer_names=["a", "b"],
                grad_layer_names=["a", "b"], config={"norm": "none"})
    arrays = {m: np.full((1, 2), i, np.float32) for i, m in enumerate(metrics.ACT_METRICS)}
    arrays.update(finite=np.ones((1, 2), bool), grad_norm=np.ones((1, 2), np.float32),
                  grad_finite=np.ones((1, 2), bool))
    path = tmp_path / "old.npz"
    np.savez(path, __meta__=np.array(json.dumps(meta)), **arrays)
    res = LayerMetrics.load(path)
    assert res.layer_names == ("a", "b") and res.grad_layer_names == ("a", "b")
    np.testing.assert_array_equal(res.stable_rank, [[3, 3]])
    assert res.meta["norm"] == "none"


def test_corrupt_or_foreign_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="bad.npz"):
        LayerMetrics.load(bad)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.zeros(3))
    with pytest.raises(ValueError, match="foreign.npz is not a sigprop"):
        LayerMetrics.load(foreign)
    with pytest.raises(ValueError, match="missing.npz: no such file"):
        LayerMetrics.load(tmp_path / "missing.npz")


@pytest.mark.parametrize("key", ["zero", 1.5, None, np.zeros(3)])
def test_bad_key_names_the_parameter(key):
    with pytest.raises(ValueError, match=r"key=.*int or a scalar jax.random.key"):
        sigprop.analyze(MODEL, X, key=key)


def test_variance_matches_numpy_on_the_first_layer():
    """The first hidden layer by hand: LayerNorm(x W) -> ReLU, biased variance in float64."""
    v = MODEL.init(jax.random.key(3), jnp.asarray(X))
    res = sigprop.analyze(MODEL, X, variables={"params": v["params"]},
                          metrics=("activation_variance",))
    w = np.asarray(v["params"]["layer00"]["Dense_0"]["kernel"], np.float64)
    z = X.astype(np.float64) @ w
    z = (z - z.mean(1, keepdims=True)) / np.sqrt(z.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(res.activation_variance[0, 0], _np_variance(np.maximum(z, 0)),
                               rtol=1e-5)


def test_integer_token_inputs_stay_integer():
    """Token ids [B, T] through an embedding; outputs [B, T, V] get one label per token."""
    import flax.linen as nn

    class Tokens(nn.Module):
        @nn.compact
        def __call__(self, ids):
            h = nn.LayerNorm()(nn.Embed(50, 16)(ids))
            return nn.Dense(50)(nn.relu(nn.Dense(32)(h)))

    ids = np.asarray(jax.random.randint(jax.random.key(2), (8, 5), 0, 50), np.int32)
    model = Tokens()
    v = model.init(jax.random.key(3), jnp.asarray(ids))
    res = sigprop.analyze(model, ids, variables=v)
    # flax names modules as they are built: Dense_0 is the outer Dense(50), called last (the
    # classifier, excluded by call order), Dense_1 the inner Dense(32)
    assert res.layer_names == ("LayerNorm_0",) and res.grad_layer_names == ("Dense_1",)
    table = np.asarray(v["params"]["Embed_0"]["embedding"], np.float64)
    h = table[ids]  # [8, 5, 16]
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(res.activation_variance[0, 0], _np_variance(h.reshape(-1, 16)),
                               rtol=1e-5)
    assert res.finite.all() and res.grad_finite.all()
