"""The gradient noise scale from normalization layers (``gns_*`` metrics, sigprop.metrics.gns)
against per-example gradients from ``jax.vmap(jax.grad(...))`` of each example's own loss, and
McCandlish et al.'s estimators written here in float64 numpy.

The batch loss is a mean over the examples of each example's loss (what the metrics assume), so
example ``b``'s gradient is ``grad`` of its loss alone, computed on the batch ``x[b:b+1]``: no
model here mixes examples (LayerNorm, RMSNorm, attention within a sequence)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sigprop
from sigprop.metrics import gns
from sigprop.taps import probe

GNS = ("gns_b_simple", "gns_trace_sigma", "gns_grad_sq", "gns_b_simple_total")


def _target(shape, seed=1):
    # a target away from the outputs: the examples' gradients share a direction, so |G|^2 is
    # well above its noise and the estimators are well conditioned in float32
    return 1.0 + 0.3 * jax.random.normal(jax.random.key(seed), shape)


def _mse(target):
    def loss(out, key):
        del key
        return jnp.mean(jnp.square(out - target))
    return loss


def _norm_params(tree, names):
    """``{layer name: [P] concatenated scale, bias}`` of the unstacked params."""
    flat = probe.unstack(tree)
    out = {}
    for name in names:
        node = flat
        for part in name.split("/"):
            node = node[part]
        leaves = [np.asarray(node[k], np.float64).ravel() for k in ("scale", "bias") if k in node]
        out[name] = np.concatenate(leaves)
    return out


def _per_example(model, variables, x, target, names):
    """``{layer: [B, P]}``: each example's gradient of its own loss w.r.t. the layer's affine
    parameters (float32 ``vmap(grad)``, then float64)."""
    def loss_one(params, xb, tb):
        out = model.apply({**variables, "params": params}, xb[None])
        return jnp.mean(jnp.square(out - tb[None]))

    grads = jax.vmap(jax.grad(loss_one), in_axes=(None, 0, 0))(variables["params"], x, target)
    per = [_norm_params(jax.tree_util.tree_map(lambda a, i=i: a[i], grads), names)
           for i in range(x.shape[0])]
    return {n: np.stack([p[n] for p in per]) for n in names}


def _estimates(g):
    """McCandlish et al.'s unbiased |G|^2, tr Sigma and B_simple of ``g [B, P]``, float64."""
    g = np.asarray(g, np.float64)
    b = g.shape[0]
    mean_sq = np.mean(np.sum(g * g, axis=1))
    mean_norm = np.sum(np.mean(g, axis=0) ** 2)
    grad_sq = (b * mean_norm - mean_sq) / (b - 1)
    trace = (mean_sq - mean_norm) / (1 - 1 / b)
    return grad_sq, trace, trace / grad_sq


class _UserNet(nn.Module):
    """A user's linen model: flax LayerNorm (both params), RMSNorm (scale only), and a
    LayerNorm without bias, on ``[B, T, D]`` or ``[B, D]``."""

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(24)(x)
        h = nn.LayerNorm(name="ln")(h)
        h = nn.gelu(nn.Dense(24)(h))
        h = nn.RMSNorm(name="rms")(h)
        h = nn.Dense(24)(h)
        h = nn.LayerNorm(use_bias=False, use_fast_variance=False, name="ln_nobias")(h)
        return nn.Dense(3)(h)


def _check(model, x, out_shape, names=None, rtol=1e-4):
    variables = model.init(jax.random.key(3), x)
    target = _target(out_shape)
    res = sigprop.analyze(model, x, variables=variables, metrics=GNS, loss=_mse(target))
    got_names = tuple(res.norm_layer_names)
    if names is not None:
        assert got_names == tuple(names)
    per = _per_example(model, variables, x, target, got_names)
    want = np.array([_estimates(per[n]) for n in got_names])  # [layers, 3]
    np.testing.assert_allclose(np.asarray(res.gns_grad_sq[0], np.float64), want[:, 0], rtol=rtol)
    np.testing.assert_allclose(np.asarray(res.gns_trace_sigma[0], np.float64), want[:, 1],
                               rtol=rtol)
    np.testing.assert_allclose(np.asarray(res.gns_b_simple[0], np.float64), want[:, 2], rtol=rtol)
    total = want[:, 1].sum() / want[:, 0].sum()
    np.testing.assert_allclose(float(res.gns_b_simple_total[0, 0]), total, rtol=rtol)
    assert res.coords["norm_total"] == ("total",)
    assert bool(np.all(res.norm_finite)) and bool(np.all(res.norm_total_finite))
    return res


def test_zoo_transformer_scanned_pre_ln():
    model = sigprop.transformer(3, 32, 4, n_classes=5, causal=True)
    x = jax.random.normal(jax.random.key(0), (6, 8, 7))
    _check(model, x, (6, 8, 5), ["block00/ln1", "block00/ln2", "block01/ln1", "block01/ln2",
                                 "block02/ln1", "block02/ln2", "final_norm"])


def test_zoo_transformer_rmsnorm_post_loop_tokens():
    model = sigprop.transformer(2, 32, 2, placement="post", norm="rmsnorm", vocab=11, scan=False)
    x = jax.random.randint(jax.random.key(0), (5, 9), 0, 11)
    _check(model, x, (5, 9, 11), ["block00/ln1", "block00/ln2", "block01/ln1", "block01/ln2"])


@pytest.mark.parametrize("shape", [(6, 5, 10), (7, 10)], ids=["tokens", "features"])
def test_flax_linen_layernorm_rmsnorm(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    _check(_UserNet(), x, shape[:-1] + (3,), ["ln", "rms", "ln_nobias"])


def test_zoo_mlp_and_cnn_layernorm_image_layout():
    """sigprop's LayerNorm in [BB]'s image layout: statistics over (H, W, C), its affine per
    channel, so a per-example gradient sums over H and W."""
    _check(sigprop.mlp(3, 16, norm="layernorm", n_classes=4),
           jax.random.normal(jax.random.key(0), (8, 12)), (8, 4))
    cnn = sigprop.cnn("uniform", depth=2, width=8, norm="layernorm", n_classes=4)
    _check(cnn, jax.random.normal(jax.random.key(0), (5, 6, 6, 3)), (5, 4))


def test_per_example_affine_grads_equal_vmap_grad():
    """The tap's contraction ``B sum_t delta_bt x_hat_bt`` (and ``B sum_t delta_bt``) equals each
    example's gradient of its own loss to 1e-4, for a LayerNorm on ``[B, T, D]``."""
    b, t, d = 6, 5, 8
    x = jax.random.normal(jax.random.key(0), (b, t, d)) * 2.0 + 0.5
    w = jax.random.normal(jax.random.key(1), (d, d))
    gamma = 1.0 + 0.1 * jax.random.normal(jax.random.key(2), (d,))
    beta = 0.1 * jax.random.normal(jax.random.key(3), (d,))

    def x_hat_of(x):
        mu = jnp.mean(x, -1, keepdims=True)
        return (x - mu) / jnp.sqrt(jnp.mean(jnp.square(x - mu), -1, keepdims=True) + 1e-5)

    def loss_of_y(y):  # per example: mean over its tokens
        return jnp.mean(jnp.tanh(y @ w) ** 2)

    def batch_loss(y):
        return jnp.mean(jax.vmap(lambda yb: loss_of_y(yb))(y))

    xh = x_hat_of(x)
    y = gamma.reshape(1, 1, d) * xh + beta.reshape(1, 1, d)
    delta = jax.grad(batch_loss)(y)
    got = np.asarray(gns.per_example_affine_grads(delta, xh), np.float64)

    def one(xb):
        return jax.grad(lambda p: loss_of_y(p[0].reshape(1, d) * x_hat_of(xb)
                                            + p[1].reshape(1, d)))((gamma, beta))

    gg, gb = jax.vmap(one)(x)
    want = np.concatenate([np.asarray(gg, np.float64), np.asarray(gb, np.float64)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_train_records_gns():
    """``sigprop.train`` records the gns metrics at each record step, on the norm_layer axis."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(64, 12)).astype(np.float32)
    labels = rng.integers(0, 4, 64).astype(np.int32)
    res = sigprop.train(sigprop.mlp(2, 16, norm="layernorm", n_classes=4), (images, labels),
                        steps=4, batch_size=16, record_every=2, metrics=GNS,
                        similar_batch_noise=None, learning_rate=0.1)
    assert res.norm_layer_names == ("layer00", "layer01") or len(res.norm_layer_names) == 2
    b = np.asarray(res["gns_b_simple"])
    assert b.shape[-2:] == (3, 2) and np.all(np.isfinite(b))
    assert np.asarray(res["gns_b_simple_total"]).shape[-2:] == (3, 1)


def test_errors():
    model = sigprop.transformer(1, 16, 2, n_classes=3)
    with pytest.raises(ValueError, match="at least 2"):
        sigprop.analyze(model, jax.random.normal(jax.random.key(0), (1, 4, 5)), metrics=GNS)
    with pytest.raises(ValueError, match="LayerNorm / RMSNorm"):
        sigprop.analyze(sigprop.mlp(2, 8, norm="batchnorm"), (4, 6), metrics=("gns_b_simple",))


def test_nnx_layernorm_rmsnorm():
    """An nnx model: its LayerNorm and RMSNorm observed on the engine's merged copy."""
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.d1 = nnx.Linear(7, 16, rngs=rngs)
            self.ln = nnx.LayerNorm(16, rngs=rngs)
            self.d2 = nnx.Linear(16, 16, rngs=rngs)
            self.rms = nnx.RMSNorm(16, rngs=rngs)
            self.out = nnx.Linear(16, 3, rngs=rngs)

        def __call__(self, x):
            return self.out(self.rms(self.d2(nnx.gelu(self.ln(self.d1(x))))))

    model = Net(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (6, 5, 7))
    target = _target((6, 5, 3))
    res = sigprop.analyze(model, x, metrics=GNS, loss=_mse(target))
    assert res.norm_layer_names == ("ln", "rms")
    graphdef, state = nnx.split(model)
    params, rest = nnx.split_state(state, nnx.Param, ...)

    def loss_one(p, xb, tb):
        m = nnx.merge(graphdef, nnx.merge_state(p, rest))
        return jnp.mean(jnp.square(m(xb[None]) - tb[None]))

    g = jax.vmap(jax.grad(loss_one), in_axes=(None, 0, 0))(params, x, target).to_pure_dict()
    per = {"ln": np.concatenate([np.asarray(g["ln"]["scale"]), np.asarray(g["ln"]["bias"])], 1),
           "rms": np.asarray(g["rms"]["scale"])}
    want = np.array([_estimates(per[n]) for n in ("ln", "rms")])
    np.testing.assert_allclose(np.asarray(res.gns_grad_sq[0]), want[:, 0], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(res.gns_trace_sigma[0]), want[:, 1], rtol=1e-4)
    np.testing.assert_allclose(float(res.gns_b_simple_total[0, 0]),
                               want[:, 1].sum() / want[:, 0].sum(), rtol=1e-4)


def test_layer_names_lists_the_norm_layers():
    names = sigprop.layer_names(sigprop.transformer(2, 16, 2, n_classes=3), (4, 5, 6))
    assert names["norm_layer"] == ("block00/ln1", "block00/ln2", "block01/ln1", "block01/ln2",
                                   "final_norm")
    assert sigprop.layer_names(sigprop.mlp(2, 8, norm="batchnorm"), (4, 8))["norm_layer"] == ()
