"""sigprop.plot: the drawn data equal the measurement and the sigprop.theory curves."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import sigprop  # noqa: E402
from sigprop.analyses import theory  # noqa: E402
from sigprop.core.results import from_arrays  # noqa: E402
from sigprop.metrics import ACT_METRICS  # noqa: E402
from sigprop.paper import plot

PI = math.pi


def synthetic(names, grad_names=None, seeds=3, seed=0, config=None, **metrics):
    """A LayerMetrics with the given ``[seeds, layers]`` metrics; the rest random positive."""
    rng = np.random.default_rng(seed)
    grad_names = names if grad_names is None else grad_names
    acts = rng.uniform(0.1, 1.0, (seeds, len(names), len(ACT_METRICS) + 1))
    acts[..., -1] = 1.0  # finite
    for i, name in enumerate(ACT_METRICS):
        if name in metrics:
            acts[..., i] = metrics[name]
    grads = np.ones((seeds, len(grad_names), 2))
    grads[..., 0] = metrics.get("grad_norm", rng.uniform(0.1, 1.0, (seeds, len(grad_names))))
    return from_arrays(acts, grads, names, grad_names, config or {"norm": "none"})


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def mlp_like():
    names = tuple(f"layer{i:02d}" for i in range(6))
    rng = np.random.default_rng(1)
    cos = rng.uniform(0.2, 0.9, (3, 6))
    grad = 10.0 ** rng.uniform(-2, 1, (3, 6))
    return synthetic(names, cosine_similarity=cos, grad_norm=grad)


# ------------------------------------------------------------------------------------------
# the existing helpers keep working


def test_layer_band_and_compare_unchanged(mlp_like):
    fig, ax = plt.subplots()
    line = plot.layer_band(ax, mlp_like, "cosine_similarity", "m")
    np.testing.assert_allclose(line.get_ydata(), mlp_like["cosine_similarity"].mean(0))
    np.testing.assert_array_equal(line.get_xdata(), np.arange(6))
    assert len(ax.collections) == 1  # the min-max band
    line = plot.layer_band(ax, mlp_like, "grad_norm", log=True, x=np.arange(6) * 2)
    np.testing.assert_allclose(line.get_ydata(), np.log10(mlp_like["grad_norm"]).mean(0))
    np.testing.assert_array_equal(line.get_xdata(), np.arange(6) * 2)
    assert ax.get_ylabel() == "log10 gradient norm"
    fig = plot.compare({"a": mlp_like, "b": mlp_like})
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert all(len(ax.lines) == 2 for ax in fig.axes)


# ------------------------------------------------------------------------------------------
# theory_line, with_theory


def test_theory_line_style_and_data():
    fig, ax = plt.subplots()
    line = plot.theory_line(ax, [0, 1, 2], [1.0, 2.0, 4.0])
    assert line.get_linestyle() == "--" and line.get_label() == "theory"
    np.testing.assert_array_equal(line.get_ydata(), [1.0, 2.0, 4.0])
    line = plot.theory_line(ax, [0, 1], [3.0, 5.0], label="q*", color="red", ls=":")
    assert line.get_linestyle() == ":" and line.get_color() == "red" and line.get_label() == "q*"


def test_with_theory_array_and_log(mlp_like):
    curve = np.linspace(0.3, 0.9, 6)
    ax = plot.with_theory(mlp_like, "cosine_similarity", curve, label="meas")
    measured, drawn = ax.lines
    np.testing.assert_allclose(measured.get_ydata(), mlp_like["cosine_similarity"].mean(0))
    np.testing.assert_allclose(drawn.get_ydata(), curve)
    assert drawn.get_label() == "theory" and measured.get_label() == "meas"
    ax = plot.with_theory(mlp_like, "grad_norm", 10.0 ** np.arange(6), log=True,
                          theory_label="decade per layer")
    np.testing.assert_allclose(ax.lines[0].get_ydata(), np.log10(mlp_like["grad_norm"]).mean(0))
    np.testing.assert_allclose(ax.lines[1].get_ydata(), np.arange(6.0), atol=1e-12)
    assert ax.lines[1].get_label() == "decade per layer"


def test_with_theory_callable_layers_and_x(mlp_like):
    cos = mlp_like["cosine_similarity"]
    # a callable of the layer index
    ax = plot.with_theory(mlp_like, "cosine_similarity", lambda i: 0.1 * i)
    np.testing.assert_allclose(ax.lines[1].get_ydata(), 0.1 * np.arange(6))
    # layers by list (in the given order), substring, predicate; x = 0..n-1 unless given
    fig, ax = plt.subplots()
    out = plot.with_theory(mlp_like, "cosine_similarity", [1.0, 2.0], ax=ax,
                           layers=["layer04", "layer01"])
    assert out is ax
    np.testing.assert_allclose(ax.lines[0].get_ydata(), cos[:, [4, 1]].mean(0))
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [0, 1])
    ax = plot.with_theory(mlp_like, "cosine_similarity", [0.5], layers="03", x=[7])
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [cos[:, 3].mean()])
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [7])
    ax = plot.with_theory(mlp_like, "cosine_similarity", lambda i: i, x=[10, 20, 30],
                          layers=lambda n: int(n[-2:]) % 2 == 0)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), cos[:, [0, 2, 4]].mean(0))
    np.testing.assert_array_equal(ax.lines[1].get_xdata(), [10, 20, 30])
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), [10, 20, 30])


def test_with_theory_errors(mlp_like):
    with pytest.raises(ValueError, match="theory has shape"):
        plot.with_theory(mlp_like, "cosine_similarity", np.zeros(5))
    with pytest.raises(ValueError, match="layers='conv' selects none"):
        plot.with_theory(mlp_like, "cosine_similarity", np.zeros(6), layers="conv")
    with pytest.raises(ValueError, match="no cosine_similarity layer named 'layer99'"):
        plot.with_theory(mlp_like, "cosine_similarity", np.zeros(1), layers=["layer99"])
    with pytest.raises(ValueError, match="x has shape"):
        plot.with_theory(mlp_like, "cosine_similarity", np.zeros(6), x=[1, 2])
    with pytest.raises(KeyError, match="unknown metric"):
        plot.with_theory(mlp_like, "cosine", np.zeros(6))


# ------------------------------------------------------------------------------------------
# the ready-made figures, on synthetic results


def test_cosine_vs_arccos_draws_the_iterated_map(mlp_like):
    fig = plot.cosine_vs_arccos(mlp_like)
    assert isinstance(fig, Figure)
    measured, drawn = fig.axes[0].lines
    cos = mlp_like["cosine_similarity"]
    np.testing.assert_allclose(measured.get_ydata(), cos.mean(0))
    expected = theory.iterate(theory.relu_correlation_map, cos[:, 0].mean(), 5)
    np.testing.assert_allclose(drawn.get_ydata(), expected, rtol=1e-12)
    assert drawn.get_ydata()[1] == pytest.approx(theory.relu_correlation_map(cos[:, 0].mean()))
    # restricted to some layers, the map starts at the first of them
    fig = plot.cosine_vs_arccos(mlp_like, layers=["layer02", "layer03", "layer04"])
    expected = theory.iterate(theory.relu_correlation_map, cos[:, 2].mean(), 2)
    np.testing.assert_allclose(fig.axes[0].lines[1].get_ydata(), expected, rtol=1e-12)


def test_grad_vs_bn_rate_slope_and_anchor(mlp_like):
    fig = plot.grad_vs_bn_rate(mlp_like)
    measured, drawn = fig.axes[0].lines
    logs = np.log10(mlp_like["grad_norm"])
    np.testing.assert_allclose(measured.get_ydata(), logs.mean(0))
    anchor = logs[:, -1].mean()
    expected = anchor + 0.5 * np.log10(PI / (PI - 1)) * (5 - np.arange(6))
    np.testing.assert_allclose(drawn.get_ydata(), expected, rtol=1e-12, atol=1e-12)
    assert drawn.get_ydata()[-1] == pytest.approx(measured.get_ydata()[-1])  # anchored
    np.testing.assert_allclose(np.diff(drawn.get_ydata()), -0.5 * np.log10(PI / (PI - 1)))
    fig = plot.grad_vs_bn_rate(mlp_like, activation="tanh")
    slope = np.diff(fig.axes[0].lines[1].get_ydata())
    np.testing.assert_allclose(slope, -0.5 * np.log10(theory.bn_gradient_explosion_rate("tanh")))


def _resnet_like(blocks, seed, scale):
    names = ["stem"]
    for b in range(blocks):
        names += [f"stage1/block{b}/act1", f"stage1/block{b}/act2", f"stage1/block{b}/out"]
    names += ["stage2/block0/act1", "stage2/block0/act2", "stage2/block0/out"]
    rng = np.random.default_rng(seed)
    var = rng.uniform(0.5, 2.0, (2, len(names))) * scale
    sq = rng.uniform(0.0, 0.1, (2, len(names))) * scale
    return synthetic(tuple(names), seeds=2, seed=seed, activation_variance=var,
                     channel_squared_mean=sq)


def test_resnet_second_moment_plot_normalizes_at_block_0_and_draws_both_laws():
    results = {"none": _resnet_like(11, 0, 1.0), "bn": _resnet_like(4, 1, 3.0)}
    fig = plot.resnet_second_moment_plot(results)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["none", "bn", "no norm: 2^l",
                                                        "normalized: l + 1"]
    for line, res, blocks in zip(ax.lines[:2], results.values(), (11, 4)):
        # numeric block order: block10 after block9
        idx = [res.layer_names.index(f"stage1/block{b}/out") for b in range(blocks)]
        m = res["activation_variance"][:, idx] + res["channel_squared_mean"][:, idx]
        np.testing.assert_allclose(line.get_ydata(), np.log10(m / m[:, :1]).mean(0), rtol=1e-12)
        np.testing.assert_array_equal(line.get_xdata(), np.arange(blocks))
        assert line.get_ydata()[0] == 0.0
    np.testing.assert_allclose(ax.lines[2].get_ydata(),
                               np.log10(theory.resnet_second_moment(10, "none")))
    np.testing.assert_allclose(ax.lines[3].get_ydata(),
                               np.log10(theory.resnet_second_moment(10, "batchnorm")))
    np.testing.assert_array_equal(ax.lines[3].get_xdata(), np.arange(11))
    # a branch gain
    fig = plot.resnet_second_moment_plot(results, alpha=0.5)
    np.testing.assert_allclose(fig.axes[0].lines[2].get_ydata(), np.arange(11) * np.log10(1.25))
    np.testing.assert_allclose(fig.axes[0].lines[3].get_ydata(), np.log10(1 + 0.25 * np.arange(11)))
    # stage 2
    fig = plot.resnet_second_moment_plot(results, stage=2)
    assert fig.axes[0].lines[0].get_ydata().tolist() == [0.0]


def test_resnet_second_moment_plot_errors(mlp_like):
    with pytest.raises(ValueError, match="results is empty"):
        plot.resnet_second_moment_plot({})
    with pytest.raises(ValueError, match=r"results\['mlp'\] has no 'stage1/block<b>/out'"):
        plot.resnet_second_moment_plot({"mlp": mlp_like})
    with pytest.raises(ValueError, match="norm"):
        theory.resnet_second_moment(3, "weightnorm")  # the figure's laws refuse it too


# ------------------------------------------------------------------------------------------
# on real measurements


@pytest.fixture(scope="module")
def relu_mlp():
    return sigprop.analyze(sigprop.mlp(depth=8, width=512), (64, 512), seeds=2)


@pytest.fixture(scope="module")
def bn_mlp():
    return sigprop.analyze(sigprop.mlp(depth=10, width=256, norm="batchnorm"), (128, 256),
                           seeds=2)


def test_cosine_vs_arccos_on_a_relu_mlp(relu_mlp):
    # the figure's two lines agree: measurement follows the arc-cosine map. At width 512 the
    # measured mean sat within 0.025 of the map over 3 keys (finite width pushes deep cosines
    # up: 0.035 at width 256); 0.04 is the margin, a tenth of the rise over the 8 layers
    fig = plot.cosine_vs_arccos(relu_mlp)
    measured, drawn = fig.axes[0].lines
    cos = np.asarray(relu_mlp["cosine_similarity"])
    np.testing.assert_allclose(measured.get_ydata(), cos.mean(0), rtol=1e-6)
    np.testing.assert_allclose(drawn.get_ydata(),
                               theory.iterate(theory.relu_correlation_map, cos[:, 0].mean(), 7))
    assert cos[:, 0].mean() == pytest.approx(1 / PI, abs=0.03)  # N(0, 1) inputs
    np.testing.assert_allclose(measured.get_ydata(), drawn.get_ydata(), atol=0.04)
    assert "measured (none)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_grad_vs_bn_rate_on_a_batchnorm_mlp(bn_mlp):
    # past the first layer (fed raw inputs), log10 |g| falls by 0.5 log10(pi / (pi - 1)) = 0.083
    # per layer; the measured mean slope over 8 steps was within 2.5% of it over 3 keys
    fig = plot.grad_vs_bn_rate(bn_mlp)
    measured, drawn = fig.axes[0].lines
    logs = np.log10(np.asarray(bn_mlp["grad_norm"]))
    np.testing.assert_allclose(measured.get_ydata(), logs.mean(0), rtol=1e-6)
    assert drawn.get_ydata()[-1] == pytest.approx(logs[:, -1].mean())
    slope = (measured.get_ydata()[-1] - measured.get_ydata()[1]) / 8
    assert slope == pytest.approx(-0.5 * np.log10(PI / (PI - 1)), rel=0.1)
