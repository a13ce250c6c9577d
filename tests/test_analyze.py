"""sigprop.analyze: inputs, seeds, non-finite reporting, no recompiles, LayerMetrics io."""

import warnings

import jax
import numpy as np
import pytest

import sigprop
from sigprop.core import engine
from sigprop.core.results import LayerMetrics, equal

MODEL = sigprop.mlp(3, 16, norm="batchnorm", n_classes=10)


def test_seed_i_does_not_depend_on_seed_count():
    a = sigprop.analyze(MODEL, (8, 12), seeds=2, key=3)
    b = sigprop.analyze(MODEL, (8, 12), seeds=4, key=3)
    np.testing.assert_allclose(a.cosine_similarity, b.cosine_similarity[:2], rtol=1e-6)
    np.testing.assert_allclose(a.grad_norm, b.grad_norm[:2], rtol=1e-6)
    assert not np.allclose(b.cosine_similarity[0], b.cosine_similarity[1])  # seeds differ


def test_array_inputs_are_shared_by_seeds_and_match_vmapped_single_calls():
    x = jax.random.normal(jax.random.key(0), (8, 12))
    res = sigprop.analyze(MODEL, x, seeds=3, key=1)
    assert res.meta["user_inputs"] is True and res.cosine_similarity.shape == (3, 3)
    # seed i of a 3-seed call equals seed i computed alone from the same key (vmap is exact)
    keys = engine.seed_keys(jax.random.key(1), 3)
    net = engine.linen_network(MODEL, jax.ShapeDtypeStruct((8, 12), np.float32), None)
    plan = engine.Plan(("cosine_similarity", "grad_norm"))
    for i in range(3):
        out = engine.execute(net, (8, 12), np.float32, keys[i:i + 1], x, None, plan)
        np.testing.assert_allclose(res.cosine_similarity[i], out["cosine_similarity"].value[0],
                                   rtol=1e-5)
        np.testing.assert_allclose(res.grad_norm[i], out["grad_norm"].value[0], rtol=1e-5)


def test_no_recompile_on_repeated_calls():
    sigprop.analyze(MODEL, (8, 12), seeds=2, key=0)
    before = engine._core._cache_size()
    sigprop.analyze(MODEL, (8, 12), seeds=2, key=5)
    sigprop.analyze(sigprop.mlp(3, 16, norm="batchnorm", n_classes=10), (8, 12), seeds=2, key=6)
    assert engine._core._cache_size() == before


def test_exploding_network_is_flagged_not_crashed():
    # He init without a nonlinearity doubles the second moment per layer: from 1e24 the
    # activation variance passes float32's 3e38 after ~48 layers
    model = sigprop.mlp(60, 16, norm="none", activation="identity", n_classes=10)
    x = 1e12 * np.asarray(jax.random.normal(jax.random.key(0), (8, 16)))
    with pytest.warns(sigprop.NonFiniteWarning, match=r"layer"):
        res = sigprop.analyze(model, x, seeds=1)
    kind, idx, name = res.first_nonfinite()
    assert name == res.layer_names[idx] and idx > 0
    assert kind == "activation" and 30 < idx < 60
    assert res.finite[0, :idx].all() and not res.finite[0, idx]
    assert np.isfinite(res.activation_variance[0, :idx]).all()


def test_finite_run_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", sigprop.NonFiniteWarning)
        res = sigprop.analyze(MODEL, (8, 12), seeds=1)
    assert res.first_nonfinite() is None


def test_save_load_roundtrip(tmp_path):
    res = sigprop.analyze(MODEL, (8, 12), seeds=2)
    path = res.save(tmp_path / "r")
    assert path.endswith(".npz")
    back = LayerMetrics.load(path)
    assert equal(res, back) and back.meta == res.meta and back.layer_names == res.layer_names
    with np.load(path, allow_pickle=False) as data:  # no pickle anywhere
        assert data["cosine_similarity"].dtype == np.float32


def test_to_pandas_long_format():
    pd = pytest.importorskip("pandas")
    res = sigprop.analyze(MODEL, (8, 12), seeds=2)
    df = res.to_pandas()
    assert isinstance(df, pd.DataFrame)
    assert len(df) == 5 * 2 * 3 + 2 * 3
    row = df[(df.metric == "cosine_similarity") & (df.seed == 1) & (df.layer == "layer02")]
    assert float(row.value.iloc[0]) == pytest.approx(float(res.cosine_similarity[1, 2]))


def test_layer_accessor_and_errors():
    res = sigprop.analyze(MODEL, (8, 12), seeds=2)
    np.testing.assert_array_equal(res.layer("stable_rank", "layer01"), res.stable_rank[:, 1])
    with pytest.raises(KeyError, match="unknown metric"):
        res["nope"]
    with pytest.raises(KeyError, match="layer99"):
        res.layer("grad_norm", "layer99")


def test_regnorm_loss_enters_the_gradient():
    x = jax.random.normal(jax.random.key(0), (8, 12))
    weak = sigprop.analyze(sigprop.mlp(3, 16, norm="regnorm", reg_strength=0.0), x, seeds=1)
    strong = sigprop.analyze(sigprop.mlp(3, 16, norm="regnorm", reg_strength=10.0), x, seeds=1)
    np.testing.assert_allclose(weak.cosine_similarity, strong.cosine_similarity, rtol=1e-6)
    assert not np.allclose(weak.grad_norm, strong.grad_norm, rtol=1e-3)
