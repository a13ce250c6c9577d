"""sigprop.train: the training scan against a hand-written optax loop, the records against
independent references, the learning-rate search, the result's io, bad inputs.

References:

- training: a Python loop of ``optax.sgd(lr, momentum=0.9)`` updates on ``model.apply`` (flax
  itself, train-mode batch statistics) over the minibatches the docstring of ``sigprop.train``
  defines (its permutation keys), from the weights ``model.init`` draws with ``analyze``'s key
  split; every recorded scalar is recomputed from that loop's parameters: losses with optax's
  cross-entropy, accuracies with numpy's argmax, the gradient cosines in numpy float64 from
  the per-minibatch gradients, ``lambda_max`` from the dense Hessian (``jax.hessian``, numpy
  ``eigvalsh`` in float64);
- the step-0 metrics: ``sigprop.analyze`` of the same seeds on the same probe batch, with the
  cross-entropy against the probe labels as its loss.

Sizes: a 2-layer width-16 batchnorm MLP on 96 of scikit-learn's 8x8 digits (3 batches of 32
per epoch, so the 5 steps cross an epoch); one compile per distinct configuration.
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import sigprop
from sigprop.analyses.lr_search import learning_rate_search
from sigprop.analyses.train import TrainResult, train
from sigprop.analyses.train_result import equal
from sigprop.cli import train as train_cli
from sigprop.util import data as data_lib

B, N, STEPS, EVERY, K = 32, 96, 5, 2, 3
RATES = (0.05, 0.5)
RTOL, ATOL = 2e-4, 2e-5  # float32 through 5 momentum steps (vmapped vs single matmuls)


@pytest.fixture(scope="module")
def digits():
    x, y = data_lib.digits()
    idx = np.random.default_rng(0).permutation(len(y))
    return (x[idx[:N]], y[idx[:N]]), (x[idx[N:N + 80]], y[idx[N:N + 80]])


@pytest.fixture(scope="module")
def model():
    return sigprop.mlp(2, 16, norm="batchnorm", n_classes=10)


@pytest.fixture(scope="module")
def run(model, digits):
    """One program: a 2-rate grid x 2 seeds, held-out set, lambda_max."""
    return train(model, digits[0], steps=STEPS, batch_size=B, record_every=EVERY, seeds=2,
                 learning_rate=list(RATES), held_out=digits[1], confusion_batches=K,
                 record_lambda_max=True, lanczos_order=20)


# ------------------------------------------------------------------------------ reference


def _ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _loss_fn(model, p, xb, yb):
    logits = model.apply({"params": p}, xb)
    return _ce(logits, yb), logits


_loss = jax.jit(_loss_fn, static_argnums=0)
_grad = jax.jit(jax.value_and_grad(_loss_fn, argnums=1, has_aux=True), static_argnums=0)


def _reference(model, train_data, held, probe, seed, rate):
    """The documented training and records, by hand: ``{step: record}`` and final params."""
    x, y = (jnp.asarray(a) for a in train_data)
    k = jax.random.fold_in(jax.random.key(0), seed)  # sigprop.engine.seed_keys
    init_key = jax.random.split(jax.random.split(k)[1])[0]  # analyze's init key
    params = model.init(init_key, jnp.asarray(probe[0]))["params"]
    per_epoch = N // B

    def batch(t):
        perm = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(k, 1),
                                                         t // per_epoch), N)
        return perm[(t % per_epoch) * B:(t % per_epoch + 1) * B]

    def loss(p, xb, yb):
        return _loss(model, p, xb, yb)

    def grad(p, xb, yb):
        return _grad(model, p, xb, yb)

    tx = optax.sgd(rate, momentum=0.9)
    opt = tx.init(params)
    records = {}
    for t in range(STEPS + 1):
        if t % EVERY == 0 or t == STEPS:
            rec = {}
            losses, accs, grads = [], [], []
            for j in range(K):
                ix = batch(t + j)
                (l, logits), g = grad(params, x[ix], y[ix])
                losses.append(float(l))
                accs.append(np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(y[ix])))
                grads.append(np.concatenate([np.ravel(np.asarray(a, np.float64))
                                             for a in jax.tree_util.tree_leaves(g)]))
            g = np.stack(grads)
            cos = (g @ g.T) / np.outer(np.linalg.norm(g, axis=1), np.linalg.norm(g, axis=1))
            pairs = cos[np.triu_indices(K, 1)]
            rec.update(train_loss=np.mean(losses), train_accuracy=np.mean(accs),
                       gradient_cosine_min=pairs.min(), gradient_cosine_mean=pairs.mean())
            hx, hy = held
            chunks = [(hx[i * B:(i + 1) * B], hy[i * B:(i + 1) * B]) for i in range(len(hy) // B)]
            outs = [loss(params, jnp.asarray(a), jnp.asarray(b)) for a, b in chunks]
            outs = [(float(l), np.mean(np.argmax(np.asarray(o), -1) == b))
                    for (l, o), (_, b) in zip(outs, chunks)]
            rec.update(held_out_loss=np.mean([o[0] for o in outs]),
                       held_out_accuracy=np.mean([o[1] for o in outs]))
            rec["params"] = params
            records[t] = rec
        if t == STEPS:
            break
        ix = batch(t)
        g = grad(params, x[ix], y[ix])[1]
        updates, opt = tx.update(g, opt, params)
        params = optax.apply_updates(params, updates)
    return records, params


@pytest.fixture(scope="module")
def references(model, digits):
    probe = data_lib.subset(digits[0], B, key=0)
    return {(s, r): _reference(model, digits[0], digits[1], probe, s, rate)
            for s in range(2) for r, rate in enumerate(RATES)}


# ------------------------------------------------------------------------------ tests


def test_layout(run, model):
    assert tuple(run.step) == (0, 2, 4, 5)
    assert tuple(run.rates) == pytest.approx(RATES)
    assert run["train_loss"].shape == (2, 2, 4)
    assert run.axes("train_loss") == ("seed", "rate", "step")
    assert run["cosine_similarity"].shape == (2, 2, 4, 2)
    assert run.axes("grad_norm") == ("seed", "rate", "step", "grad_layer")
    assert run.layer_names == ("layer00", "layer01")
    assert {"similar_batch_correlation", "effective_rank", "stable_rank", "grad_norm",
            "lambda_max", "held_out_loss", "gradient_cosine_min"} <= set(run)


def test_training_and_scalars_match_a_hand_written_optax_loop(run, references):
    """Every (seed, rate) of the vmapped grid equals its own separate hand-written run."""
    for (s, r), (records, final) in references.items():
        got = jax.tree_util.tree_map(lambda a: np.asarray(a)[s, r], run.variables["params"])
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL,
                                                                       atol=ATOL), got, final)
        for i, step in enumerate(run.step):
            for name in ("train_loss", "train_accuracy", "gradient_cosine_min",
                         "gradient_cosine_mean", "held_out_loss", "held_out_accuracy"):
                np.testing.assert_allclose(run[name][s, r, i], records[step][name],
                                           rtol=RTOL, atol=ATOL, err_msg=f"{name} step {step}")


def test_step0_metrics_equal_analyze(run, model, digits):
    px, py = data_lib.subset(digits[0], B, key=0)
    ref = sigprop.analyze(model, px, seeds=2, key=0, similar_batch_noise=0.1,
                          loss=lambda out, _k: _ce(out, jnp.asarray(py)))
    at0 = run.at(0)  # [rate, seed, layer]
    assert set(ref.metric_names) <= set(at0.metric_names)
    for m in ref.metric_names:
        for r in range(len(RATES)):
            np.testing.assert_allclose(at0[m][r], ref[m], rtol=1e-5, atol=1e-6, err_msg=m)


def test_lambda_max_is_the_top_eigenvalue_of_the_dense_hessian(run, model, digits, references):
    px, py = (jnp.asarray(a) for a in data_lib.subset(digits[0], B, key=0))
    flat, unravel = jax.flatten_util.ravel_pytree(references[(0, 1)][0][4]["params"])
    h = jax.jit(jax.hessian(lambda w: _ce(model.apply({"params": unravel(w)}, px), py)))(flat)
    top = np.linalg.eigvalsh(np.asarray(h, np.float64))[-1]  # at step 4, seed 0, rate 0.5
    np.testing.assert_allclose(run["lambda_max"][0, 1, 2], top, rtol=2e-3)


def test_learning_rate_search_protocol(model, digits, capsys):
    """Each rate classified from the recorded cross-entropy by the documented criteria
    (written out here), the losses those of a plain train call on the selection key, the
    choice the lowest last-20% cross-entropy among the rates that train, the grid extended."""
    kw = dict(batch_size=B, optimizer="plain_sgd", confusion_batches=1)
    search = learning_rate_search(model, digits[0], steps=10, rates=[0.01, 0.3, 1e4],
                                  record_every=2, **kw)
    # the selection runs: key 1, every grid rate (the extensions are their own calls)
    ref = train(model, digits[0], steps=10, learning_rate=[0.01, 0.3, 1e4], seeds=2, key=1,
                record_every=2, metrics=(), **kw)
    np.testing.assert_allclose(search.loss[:, [search.rates.index(r) for r in (0.01, 0.3, 1e4)]],
                               ref["train_loss"], rtol=1e-6)
    assert search.step == (0, 2, 4, 6, 8, 10)
    for i, r in enumerate(search.rates):
        loss = search.loss[:, i]
        diverged = [not (np.all(np.isfinite(v)) and np.all(v <= 2 * v[0])) for v in loss]
        trains = [v[-1] <= 0.9 * np.log(10) for v in loss]
        want = ("diverged" if any(diverged) else "trains" if all(trains) else "did not train")
        assert search.status[i] == want, (r, loss)
    assert search.status_of(1e4) == "diverged"
    ok = [i for i, s in enumerate(search.status) if s == "trains"]
    late = search.loss[..., np.array(search.step) >= 8].mean(axis=(0, 2))
    if ok:
        assert search.rate == search.rates[min(ok, key=lambda i: late[i])]
        assert search.rates.index(search.rate) > 0  # bracketed below
    else:
        assert search.rate is None and not search.trains
    stable = [r for r, s in zip(search.rates, search.status) if s != "diverged"]
    assert search.largest_stable == max(stable)
    assert "chosen" in search.summary() or "no rate trains" in search.summary()
    # the progress bar's one call per record interval computes what the one scan does
    chunked = train(model, digits[0], steps=10, learning_rate=[0.01, 0.3, 1e4], seeds=2, key=1,
                    record_every=2, metrics=(), progress=True, **kw)
    assert "10/10 steps" in capsys.readouterr().err
    assert set(chunked) == set(ref)
    for name in chunked:
        np.testing.assert_allclose(chunked[name], ref[name], rtol=1e-6, atol=1e-7)


def test_learning_rate_search_bad_input():
    from sigprop.analyses import lr_search

    with pytest.raises(ValueError, match="rates="):
        learning_rate_search(None, (np.zeros((4, 2)), np.zeros(4, int)), steps=10, rates=[])
    with pytest.raises(ValueError, match="rates="):
        learning_rate_search(None, (np.zeros((4, 2)), np.zeros(4, int)), steps=10,
                             rates=[0.1, -1])
    with pytest.raises(ValueError, match="learning_rate="):
        learning_rate_search(None, (np.zeros((4, 2)), np.zeros(4, int)), steps=10,
                             learning_rate=0.1)
    # the 1-3 pattern both ways
    assert [lr_search._next_rate(r, True) for r in (0.001, 0.003, 1.0, 3.0, 10.0)] == \
        [0.003, 0.01, 3.0, 10.0, 30.0]
    assert [lr_search._next_rate(r, False) for r in (0.001, 0.003, 1.0, 0.3)] == \
        [0.0003, 0.001, 0.3, 0.1]


def test_learning_rate_search_layernorm_mlp_on_mnist():
    """Issue 20's acceptance: layernorm MLP depth 8 width 128 on the 5,000 MNIST digits: the
    chosen rate trains (final cross-entropy below half the initial one); lr 1.0 does not."""
    from sigprop.paper.experiments.training import mnist_split

    (xt, yt), _ = mnist_split(4500, 100)
    m = sigprop.mlp(8, 128, norm="layernorm", n_classes=10)
    search = learning_rate_search(m, (xt, yt), steps=200, batch_size=128)
    i = search.rates.index(search.rate)
    assert np.all(search.final_loss[:, i] < 0.5 * search.initial_loss[:, i]), search.summary()
    assert search.status_of(1.0) != "trains", search.summary()
    assert search.rates[0] < search.rate < search.rates[-1]  # bracketed


class _NnxMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.dense = nnx.Linear(64, 16, rngs=rngs)
        self.norm = nnx.BatchNorm(16, rngs=rngs)
        self.head = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.norm(self.dense(x.reshape(x.shape[0], -1)))))


def test_nnx_factory_trains_and_step0_equals_analyze(digits):
    px, py = data_lib.subset(digits[0], B, key=0)
    metrics = ("activation_variance", "grad_norm")
    res = train(_NnxMLP, digits[0], steps=3, batch_size=B, record_every=3, seeds=2,
                learning_rate=0.1, confusion_batches=2, metrics=metrics,
                similar_batch_noise=None)
    ref = sigprop.analyze(_NnxMLP, px, seeds=2, metrics=metrics,
                          loss=lambda out, _k: _ce(out, jnp.asarray(py)))
    for m in ref.metric_names:
        np.testing.assert_allclose(res.at(0)[m], ref[m], rtol=1e-5, atol=1e-6, err_msg=m)
    assert np.all(res["train_loss"][:, -1] < res["train_loss"][:, 0])


def test_save_load_pandas_xarray(run, tmp_path):
    path = run.save(tmp_path / "run")
    back = TrainResult.load(path)
    assert equal(back, run) and back.coords == run.coords
    df = run.to_pandas()
    row = df[(df.metric == "cosine_similarity") & (df.seed == 1) & (df.step == 4)
             & (df.layer == "layer01") & (df.rate == RATES[1])]
    assert float(row.value.iloc[0]) == pytest.approx(float(run["cosine_similarity"][1, 1, 2, 1]))
    assert df[df.metric == "train_loss"].layer.isna().all()
    ds = run.to_xarray()
    assert ds["grad_norm"].dims == ("seed", "rate", "step", "grad_layer")
    assert list(ds["step"].values) == [0, 2, 4, 5]
    other = run.at(2).save(tmp_path / "lm")  # a LayerMetrics file
    assert sigprop.LayerMetrics.load(other).layer_names == run.layer_names
    with pytest.raises(ValueError, match="not a sigprop TrainResult"):
        TrainResult.load(other)


def test_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    train_cli.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli.npz"
    args = parser.parse_args(["train", "--data", "digits", "--depth", "1", "--width", "8",
                              "--steps", "2", "--record-every", "1", "--batch-size", "16",
                              "--seeds", "1", "--lr", "0.1", "--held-out", "40",
                              "--metrics", "none", "--no-progress", "--out", str(out)])
    assert args.run(args) == 0
    printed = capsys.readouterr()
    assert "train_loss" in printed.out
    res = TrainResult.load(out)
    assert tuple(res.step) == (0, 1, 2) and "held_out_accuracy" in res


# ------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("kwargs, match", [
    (dict(optimizer="sgdd"), "optimizer='sgdd'; allowed: sgd, plain_sgd"),
    (dict(steps=0), "steps=0"),
    (dict(record_every=0), "record_every=0"),
    (dict(batch_size=97), "batch_size=97"),
    (dict(learning_rate=-0.1), "learning_rate=-0.1"),
    (dict(learning_rate=[]), "learning_rate="),
    (dict(optimizer=optax.sgd(0.1), learning_rate=0.1), "learning_rate= with an optax"),
    (dict(confusion_batches=4), "confusion_batches=4"),
    (dict(confusion_batches=0), "confusion_batches=0"),
    (dict(seeds=0), "seeds=0"),
    (dict(metrics=("nope",)), "metrics="),
    (dict(held_out=(np.zeros((5, 8, 8, 1)), np.zeros(4, int))), "held_out: 5 images but 4"),
    (dict(held_out=(np.zeros((5, 4)), np.zeros(5, int))), "held_out: images of shape"),
    (dict(record_lambda_max="yes"), "record_lambda_max="),
])
def test_bad_inputs(model, digits, kwargs, match):
    kw = dict(steps=2, batch_size=B, confusion_batches=2)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match):
        train(model, digits[0], **kw)


def test_bad_data(model, digits):
    x, y = digits[0]
    with pytest.raises(ValueError, match="data: 96 images but 95 labels"):
        train(model, (x, y[:-1]), steps=1, batch_size=B, confusion_batches=2)
    with pytest.raises(ValueError, match=r"data: labels must lie in \[0, 10\)"):
        train(model, (x, y + 5), steps=1, batch_size=B, confusion_batches=2)
    with pytest.raises(ValueError, match="data: expected a pair"):
        train(model, x, steps=1, batch_size=B, confusion_batches=2)
    with pytest.raises(ValueError, match="model: train needs logits"):
        train(_Features(), (x, y), steps=1, batch_size=B, confusion_batches=2)


class _Features(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(4)(x)  # [B, 8, 8, 4]: not logits
