"""sigprop.coord_check: muP's coordinate check on a standard-parametrized MLP, its scales
against independent references (zoo MLP and ResNet, a user linen model, a user nnx builder),
the plot, bad inputs.

The slopes, and why the tolerances (widths 64, 256, 1024; 8 seeds; plain SGD at 0.5; the
log-log least-squares slope over widths):

- step 0: He init keeps ``E[x^2]`` of every hidden layer equal at every width, so the slope is
  0 up to seed noise: one seed's per-layer gain fluctuates by ~``sqrt(2 / width)`` (18% at
  width 64), ~6% over 8 seeds, which moves a 3-point slope over ``ln 16`` by ~0.03 (measured:
  <= 0.01): tolerance 0.05. The logits (10 units; PyTorch's uniform classifier init,
  ``Var = E[h^2] / 3``, also width-free) fluctuate more (~45% per seed): tolerance 0.15
  (measured 0.001-0.06).
- after one SGD step the logits grow like the width: the classifier's update adds
  ``-lr (p - y) (h . h') / B`` to each logit and ``h . h'`` is a sum over ``width`` units, so
  the slope tends to 1 as that term outgrows the O(1) initial logits (measured 0.94-0.95 at
  step 1, RMS and l1; 1.26-1.36 at step 2, when the hidden layers' growth adds in):
  asserted in [0.8, 1.3] at step 1, >= 0.8 at step 2, and above every hidden layer's by 0.5.
  The hidden layers grow more slowly (a middle layer's update ``lr delta (h . h)`` has
  ``delta ~ 1/sqrt(width)`` through the classifier, so ~``sqrt(width)``: measured 0.03-0.21
  at step 2, on the way to 0.5), and the input layer's update shrinks (its input does not grow
  with the width): its slope stays within 0.1 of 0 (measured -0.04).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sigprop
from sigprop.analyses.coord_check import OUTPUT, coord_check
from sigprop.util import data as data_lib

WIDTHS = (64, 256, 1024)
SEEDS, BATCH = 8, 64


@pytest.fixture(scope="module")
def digits():
    x, y = data_lib.digits()
    idx = np.random.default_rng(0).permutation(len(y))[:512]
    return x[idx], y[idx]


@pytest.fixture(scope="module")
def check(digits):
    return coord_check(lambda w: sigprop.mlp(3, w, n_classes=10), WIDTHS, steps=2, data=digits,
                       batch_size=BATCH, learning_rate=0.5, seeds=SEEDS)


def test_layout(check):
    assert check.widths == WIDTHS and check.steps == (0, 1, 2)
    assert check.layers == ("layer00", "layer01", "layer02", OUTPUT)
    assert check.rms.shape == check.l1.shape == (3, 3, 4)
    assert check.rms_per_seed.shape == (3, SEEDS, 3, 4)
    assert np.all(check.l1 <= check.rms * (1 + 1e-6))  # mean |x| <= sqrt(mean x^2)


@pytest.mark.parametrize("scale", ["rms", "l1"])
def test_standard_parametrization_blows_up_the_logits(check, scale):
    slopes = check.slopes(scale)  # [step, layer]
    hidden, out = slopes[:, :-1], slopes[:, -1]
    assert np.all(np.abs(hidden[0]) < 0.05), hidden[0]
    assert abs(out[0]) < 0.15, out[0]
    assert 0.8 <= out[1] <= 1.3, out[1]
    assert out[2] >= 0.8, out[2]
    assert np.all(out[1:] > hidden[1:].max(axis=1) + 0.5)  # the logits blow up fastest
    assert np.all(np.abs(hidden[1:, 0]) < 0.1), hidden[1:, 0]  # the input layer's update
    # shrinks with the width (its backpropagated signal carries the 1/sqrt(width) classifier)


def test_step0_scales_equal_analyze_and_flax(check, digits):
    """Width 64: RMS^2 = analyze's activation_variance + channel_squared_mean (the same taps);
    l1 and the logits from flax's own capture_intermediates of the unrolled model."""
    px, _ = data_lib.subset(digits, BATCH, key=0)  # train's default probe batch
    model = sigprop.mlp(3, WIDTHS[0], n_classes=10)
    ref = sigprop.analyze(model, px, seeds=SEEDS,
                          metrics=("activation_variance", "channel_squared_mean"))
    rms = np.sqrt(ref["activation_variance"] + ref["channel_squared_mean"])  # [seed, layer]
    np.testing.assert_allclose(check.rms_per_seed[0, :, 0, :-1], rms, rtol=1e-5)
    unrolled = sigprop.mlp(3, WIDTHS[0], n_classes=10, scan=False)
    for seed in (0, SEEDS - 1):
        k = jax.random.fold_in(jax.random.key(0), seed)
        params = model.init(jax.random.split(jax.random.split(k)[1])[0], px)["params"]
        out, state = unrolled.apply({"params": sigprop.probe.unstack(params)}, px,
                                    capture_intermediates=True)
        inter = state["intermediates"]
        acts = [np.asarray(inter[f"layer0{i}"]["__call__"][0], np.float64) for i in range(3)]
        acts.append(np.asarray(out, np.float64))
        np.testing.assert_allclose(check.l1_per_seed[0, seed, 0],
                                   [np.mean(np.abs(a)) for a in acts], rtol=1e-5)
        np.testing.assert_allclose(check.rms_per_seed[0, seed, 0],
                                   [np.sqrt(np.mean(a * a)) for a in acts], rtol=1e-5)


class _UserNet(nn.Module):
    """A user's linen model without sigprop taps: analyze's default selection observes the
    LayerNorm's and the first Dense's outputs."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.LayerNorm()(nn.Dense(12)(x.reshape(x.shape[0], -1))))
        return nn.Dense(10)(h)


@pytest.mark.parametrize("model, shape", [
    (sigprop.models.resnet(3, (4,), n_classes=10), (4, 4, 4, 3)),  # Tap modules, a scanned stack
    (_UserNet(), (8, 20)),  # modules observed by selectors
], ids=["resnet", "user-linen"])
def test_scales_match_analyze_on_other_models(model, shape):
    from sigprop.analyses.coord_check import scales
    from sigprop.core.args import network

    x = jax.random.normal(jax.random.key(1), shape)
    v = {c: t for c, t in model.init(jax.random.key(2), x).items() if c != "probes"}
    net = network(model, jax.ShapeDtypeStruct(shape, jnp.float32), None)[0]
    got = jax.jit(lambda v: scales(net, v, x))(v)
    ref = sigprop.analyze(model, x, variables=v,
                          metrics=("activation_variance", "channel_squared_mean"))
    assert got.names == ref.layer_names + (OUTPUT,)
    rms = np.sqrt(ref["activation_variance"][0] + ref["channel_squared_mean"][0])
    np.testing.assert_allclose(np.asarray(got.value)[:-1, 0], rms, rtol=1e-5)
    out = np.asarray(model.apply(v, x), np.float64)
    np.testing.assert_allclose(np.asarray(got.value)[-1], [np.sqrt(np.mean(out ** 2)),
                                                           np.mean(np.abs(out))], rtol=1e-5)


class _NnxNet(nnx.Module):
    def __init__(self, width: int, rngs: nnx.Rngs):
        self.dense = nnx.Linear(64, width, rngs=rngs)
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.head(nnx.relu(self.norm(self.dense(x))))


def test_nnx_user_builder_on_default_gaussian_data():
    shape = (128, 64)
    res = coord_check(lambda w: (lambda rngs: _NnxNet(w, rngs)), (16, 32), steps=1,
                      inputs=shape, batch_size=BATCH, seeds=1)
    # the default data: N(0, 1) inputs and uniform labels from key 0
    kx, ky = jax.random.split(jax.random.key(0))
    x = np.asarray(jax.random.normal(kx, shape, jnp.float32))
    y = np.asarray(jax.random.randint(ky, shape[:1], 0, 10), np.int32)
    px, _ = data_lib.subset((x, y), BATCH, key=0)
    assert res.layers == ("norm", OUTPUT)  # analyze's default taps (the normalizer), the logits
    assert res.layers[:-1] == sigprop.layer_names(lambda r: _NnxNet(16, r), px)["layer"]
    k = jax.random.fold_in(jax.random.key(0), 0)
    net = _NnxNet(32, nnx.Rngs(jax.random.split(jax.random.split(k)[1])[0]))
    n = net.norm(net.dense(jnp.asarray(px)))
    acts = [np.asarray(a, np.float64) for a in (n, net.head(nnx.relu(n)))]
    np.testing.assert_allclose(res.rms_per_seed[1, 0, 0], [np.sqrt(np.mean(a * a)) for a in acts],
                               rtol=1e-5)
    np.testing.assert_allclose(res.l1_per_seed[1, 0, 0], [np.mean(np.abs(a)) for a in acts],
                               rtol=1e-5)


def test_plot_and_table(check):
    import matplotlib

    matplotlib.use("Agg")
    fig = check.plot()
    assert len(fig.axes) == 3
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_yscale() == "log"
    assert len(fig.axes[0].lines) == 4
    df = check.to_pandas()
    assert len(df) == 3 * SEEDS * 3 * 4
    row = df[(df.width == 256) & (df.seed == 2) & (df.step == 1) & (df.layer == OUTPUT)]
    assert float(row.rms.iloc[0]) == pytest.approx(float(check.rms_per_seed[1, 2, 1, 3]))
    with pytest.raises(ValueError, match="scale="):
        check.slopes("max")


def test_bad_inputs(digits):
    with pytest.raises(ValueError, match="widths="):
        coord_check(lambda w: sigprop.mlp(2, w), [64], data=digits)
    with pytest.raises(ValueError, match="builder="):
        coord_check("mlp", [8, 16], data=digits)
    with pytest.raises(ValueError, match="builder: width 16 gives the layers"):
        coord_check(lambda w: sigprop.mlp(w // 8, w, n_classes=10), [8, 16], data=digits)
    with pytest.raises(ValueError, match="steps=0"):
        coord_check(lambda w: sigprop.mlp(2, w), [8, 16], steps=0, data=digits)
