"""The model zoo: names, pairings, scan == loop, every normalizer runs, and an independent
re-implementation of one network checks the whole engine (taps, metrics, gradient norms)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sigprop
from sigprop.core import engine
from sigprop.metrics import ACT_METRICS
from sigprop.nn import normalizers
from sigprop.taps import probe


def _names(model, shape):
    return sigprop.layer_names(model, shape)

# ------------------------------------------------------------------------------------------------
# Names


def test_cnn_cfg_names():
    for cfg, n in [("cfg_10", 10), ("cfg_20", 20), ("cfg_40", 40)]:
        names = _names(sigprop.cnn(cfg, norm="batchnorm"), (2, 32, 32, 3))
        assert names["layer"] == tuple(f"layer{i:02d}" for i in range(n))
        assert names["grad_layer"] == names["layer"]
    long = _names(sigprop.cnn("uniform", depth=120, width=8), (2, 8, 8, 3))["layer"]
    assert long[-1] == "layer119" and long[:2] == ("layer000", "layer001")


def test_resnet56_names():
    names = _names(sigprop.resnet56(norm="batchnorm"), (2, 32, 32, 3))
    acts, grads = names["layer"], names["grad_layer"]
    assert len(acts) == 1 + 27 * 2 and len(grads) == 1 + 27 * 2 + 2
    assert acts[0] == "stem" and grads[0] == "stem"
    for name in ("stage2/block3/act1", "stage2/block3/out", "stage3/block8/out"):
        assert name in acts
    assert "stage2/block0/shortcut" in grads and "stage3/block0/shortcut" in grads
    assert "stage1/block0/shortcut" not in grads  # identity shortcut
    assert names["branch_layer"] == tuple(f"stage{s}/block{b}/branch" for s in (1, 2, 3)
                                          for b in range(9))
    pre = _names(sigprop.resnet56(norm="batchnorm", preact=True), (2, 32, 32, 3))["layer"]
    assert len(pre) == 1 + 27 * 3 and "stage1/block4/act2" in pre
    # call order: a block's taps in the order its forward pass reaches them
    assert pre[1:4] == ("stage1/block0/act1", "stage1/block0/act2", "stage1/block0/out")


def test_wrn_names():
    m = _names(sigprop.wrn(26, 2, norm="batchnorm"), (2, 32, 32, 3))
    assert m["layer"][-1] == "final" and m["grad_layer"][0] == "stem"
    assert sum(n.endswith("/shortcut") for n in m["grad_layer"]) == 3
    plain = _names(sigprop.wrn(26, 2, skip=False, norm="batchnorm"), (2, 32, 32, 3))
    assert not any(n.endswith("/shortcut") for n in plain["grad_layer"])
    assert plain["branch_layer"] == ()


def test_pairings_and_overrides():
    assert sigprop.cnn(norm="frn").activation == "tlu"
    assert sigprop.cnn(norm="weightnorm").activation == "scaled_relu"
    assert sigprop.cnn(norm="evonorm_s0").activation == "replaced"
    assert sigprop.cnn(norm="batchnorm").activation == "relu"
    assert sigprop.cnn(norm="frn", activation="relu").activation == "relu"
    assert sigprop.cnn(norm="sws").spec.weight == "sws" and sigprop.cnn(norm="sws").spec.bias


# ------------------------------------------------------------------------------------------------
# scan == unrolled loop (same params, same numbers)

_SCAN_MODELS = {
    "mlp": (lambda scan: sigprop.mlp(5, 16, norm="batchnorm", scan=scan), (8, 12)),
    "cnn-uniform": (lambda scan: sigprop.cnn("uniform", depth=4, width=8, norm="groupnorm",
                                             group_size=2, scan=scan), (4, 8, 8, 3)),
    "resnet": (lambda scan: sigprop.models.resnet(3, (8, 16), norm="layernorm", scan=scan),
               (4, 8, 8, 3)),
    "resnet-preact": (lambda scan: sigprop.models.resnet(3, (8, 16), norm="batchnorm",
                                                         preact=True, scan=scan), (4, 8, 8, 3)),
}


_PLAN = engine.Plan(ACT_METRICS + ("grad_norm",))


def _measure(model, variables, x, label_key):
    """The engine's records -> metrics for given variables: ``acts [L, 6]`` (the five metrics,
    finite) and ``grads [G, 2]`` (norm, finite)."""
    net = engine.linen_network(model, jax.ShapeDtypeStruct(x.shape, x.dtype), None)
    out = engine.finish(net.measure(variables, x, label_key, _PLAN), _PLAN)
    acts = jnp.stack([out[m].value for m in ACT_METRICS] + [out["finite"].value], -1)
    return acts, jnp.stack([out["grad_norm"].value, out["grad_finite"].value], -1)


_jit_measure = jax.jit(_measure, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _jit_records(model, variables, x, label_key):
    net = engine.linen_network(model, jax.ShapeDtypeStruct(x.shape, x.dtype), None)
    return net.measure(variables, x, label_key, _PLAN)


def _measured(model, variables, x):
    acts, g = _jit_measure(model, variables, x, jax.random.key(7))
    return np.asarray(acts), np.asarray(g)


@pytest.mark.parametrize("name", list(_SCAN_MODELS))
def test_scan_and_loop_agree(name):
    build, shape = _SCAN_MODELS[name]
    scanned, looped = build(True), build(False)
    assert _names(scanned, shape) == _names(looped, shape)
    x = jax.random.normal(jax.random.key(1), shape)
    v_scan = scanned.init(jax.random.key(0), x)
    v_loop = probe.unstack({k: v for k, v in v_scan.items() if k in ("params", "probes")})
    # the unstacked params fit the unrolled model exactly
    ref = looped.init(jax.random.key(0), x)
    assert jax.tree_util.tree_structure(v_loop["params"]) == \
        jax.tree_util.tree_structure(ref["params"])
    a_scan, g_scan = _measured(scanned, v_scan, x)
    a_loop, g_loop = _measured(looped, v_loop, x)
    np.testing.assert_allclose(a_scan, a_loop, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_scan, g_loop, rtol=1e-5, atol=1e-7)
    paths = jax.tree_util.tree_flatten_with_path(v_scan["params"])[0]
    assert any("{" in str(p) for p, _ in paths)  # the scanned model really scans


# ------------------------------------------------------------------------------------------------
# Every normalizer runs, in a non-residual and a residual net, to finite metrics


@pytest.mark.parametrize("norm", normalizers.names())
def test_every_normalizer_small_models(norm):
    for model, shape in [(sigprop.cnn("uniform", depth=3, width=8, norm=norm, n_classes=10,
                                      **({"num_groups": 2} if norm in ("groupnorm", "evonorm_s0") else {})),
                          (4, 8, 8, 3)),
                         (sigprop.models.resnet(2, (8, 16), norm=norm, n_classes=10,
                                                **({"num_groups": 2} if norm in ("groupnorm", "evonorm_s0") else {})),
                          (4, 8, 8, 3))]:
        res = sigprop.analyze(model, shape, seeds=2)
        assert res.finite.all() and res.grad_finite.all(), (norm, res.first_nonfinite())
        assert np.isfinite(res.cosine_similarity).all() and (res.grad_norm > 0).all()
        assert res.cosine_similarity.shape == (2, len(_names(model, shape)["layer"]))


@pytest.mark.slow
@pytest.mark.parametrize("norm", normalizers.names())
def test_every_normalizer_cfg10_and_resnet56(norm):
    for model in (sigprop.cnn("cfg_10", norm=norm), sigprop.resnet56(norm=norm)):
        res = sigprop.analyze(model, (8, 32, 32, 3), seeds=2)
        assert res.finite.all() and res.grad_finite.all(), (norm, res.first_nonfinite())
        for metric in res.metric_names:
            assert np.isfinite(res[metric]).all(), (norm, metric)


# ------------------------------------------------------------------------------------------------
# An independent re-implementation of a batchnorm MLP (plain jnp, no flax, no taps)


def _ref_metrics(a):
    a = np.asarray(a, np.float64)
    m = a.reshape(a.shape[0], -1)
    mh = m / np.linalg.norm(m, axis=1, keepdims=True)
    g = mh @ mh.T
    b = m.shape[0]
    s = np.linalg.svd(m, compute_uv=False)
    p = s / s.sum()
    return [a.var(axis=0).mean(), (a.mean(axis=0) ** 2).mean(), ((g.sum(1) - 1) / (b - 1)).mean(),
            np.trace(g) / np.linalg.norm(g, 2), np.exp(-(p * np.log(p)).sum())]


def test_engine_matches_independent_mlp():
    depth, width, batch, classes = 4, 32, 16, 10
    model = sigprop.mlp(depth, width, norm="batchnorm", n_classes=classes)
    x = jax.random.normal(jax.random.key(3), (batch, 20))
    variables = model.init(jax.random.key(4), x)
    params = probe.unstack(variables["params"])
    label_key = jax.random.key(5)
    acts, g = _jit_measure(model, variables, x, label_key)
    names = [f"layer{i:02d}" for i in range(depth)]
    assert _names(model, x.shape)["layer"] == tuple(names)

    # the same network written out by hand; perturbations d_i at each dense output give gradients
    kernels = [params[n]["Dense_0"]["kernel"] for n in names]
    bn = [params[n]["BatchNorm_0"] for n in names]
    labels = jax.random.randint(label_key, (batch,), 0, classes)

    def net(deltas):
        h, hidden = x, []
        for w, p, d in zip(kernels, bn, deltas):
            z = h @ w + d
            mu, var = z.mean(0, keepdims=True), z.var(0, keepdims=True)
            zn = (z - mu) / jnp.sqrt(var + 1e-5) * p["scale"][None] + p["bias"][None]
            h = jax.nn.relu(zn)
            hidden.append(h)
        c = params["classifier"]
        logits = h @ c["kernel"] + c["bias"][None]
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1)), hidden

    zeros = [jnp.zeros((batch, width))] * depth
    dgrads, hidden = jax.grad(net, has_aux=True)(zeros)
    np.testing.assert_allclose(np.asarray(g[:, 0]), [np.linalg.norm(np.asarray(d)) for d in dgrads],
                               rtol=1e-4)
    np.testing.assert_allclose(np.asarray(acts[:, :5]), [_ref_metrics(h) for h in hidden], rtol=2e-4,
                               atol=1e-6)
    assert np.all(np.asarray(acts[:, 5]) == 1.0) and np.all(np.asarray(g[:, 1]) == 1.0)


def test_user_module_factory_matches_registered():
    x = jax.random.normal(jax.random.key(0), (8, 12))
    a = sigprop.analyze(sigprop.mlp(3, 16, norm="layernorm"), x, seeds=2)
    b = sigprop.analyze(sigprop.mlp(3, 16, norm=functools.partial(nn.LayerNorm, epsilon=1e-5)), x,
                        seeds=2)
    np.testing.assert_allclose(a.cosine_similarity, b.cosine_similarity, rtol=1e-5)
    np.testing.assert_allclose(a.grad_norm, b.grad_norm, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# Conv implementations == lax.conv (forward, input gradient, kernel gradient), also under a scan


def _lax_conv(x, w, stride):
    p = (w.shape[0] - 1) // 2
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((p, p), (p, p)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("impl", ["xla", "shift", "auto"])
@pytest.mark.parametrize("k,stride,size", [(3, 1, 6), (3, 2, 7), (1, 1, 5), (1, 2, 6), (3, 1, 2)])
def test_conv_impl_matches_lax_conv(impl, k, stride, size):
    from sigprop.nn.layers import conv2d
    kx, kw, kc = jax.random.split(jax.random.key(11), 3)
    x = jax.random.normal(kx, (3, size, size, 5))
    w = jax.random.normal(kw, (k, k, 5, 4)) / k
    out_shape = _lax_conv(x, w, stride).shape
    c = jax.random.normal(kc, out_shape)  # a fixed cotangent: d/dx sum(c * conv(x, w))

    def loss(conv, x, w):
        return jnp.sum(jnp.sin(conv(x, w)) * c)

    ours = lambda x, w: conv2d(x, w, stride, impl)  # noqa: E731
    ref = lambda x, w: _lax_conv(x, w, stride)  # noqa: E731
    with jax.default_matmul_precision("highest"):
        np.testing.assert_allclose(jax.jit(ours)(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
        got = jax.jit(jax.grad(functools.partial(loss, ours), argnums=(0, 1)))(x, w)
        want = jax.grad(functools.partial(loss, ref), argnums=(0, 1))(x, w)
        for g, r in zip(got, want):
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_the_cpu_policy_picks_the_conv_impls():
    """sigprop.backend.cpu decides: shifts for strided convs and outputs of <= 4 pixels, and an
    explicit transposed-kernel input gradient for stride-1 odd kernels, on CPU only."""
    from sigprop.backend import cpu

    on_cpu = jax.default_backend() == "cpu"
    assert cpu.shift_conv(2, 64) is on_cpu and cpu.shift_conv(1, 4) is on_cpu
    assert not cpu.shift_conv(1, 9)
    assert cpu.explicit_conv_transpose(1, 3) is on_cpu and cpu.explicit_conv_transpose(1, 1) is on_cpu
    assert not cpu.explicit_conv_transpose(2, 3) and not cpu.explicit_conv_transpose(1, 2)


@pytest.mark.parametrize("impl", ["xla", "shift"])
def test_conv_impl_under_scan_matches_lax_conv(impl):
    # inside a scan XLA:CPU lays out the input-gradient conv differently (see layers._same_conv)
    from sigprop.nn.layers import conv2d
    kx, kw = jax.random.split(jax.random.key(12))
    x = jax.random.normal(kx, (2, 5, 5, 4))
    ws = jax.random.normal(kw, (3, 3, 3, 4, 4)) / 6

    def net(conv, x, ws):
        y, _ = jax.lax.scan(lambda h, w: (jax.nn.relu(conv(h, w)), None), x, ws)
        return jnp.sum(jnp.sin(y))

    with jax.default_matmul_precision("highest"):
        got = jax.jit(jax.grad(functools.partial(net, lambda h, w: conv2d(h, w, 1, impl)),
                               argnums=(0, 1)))(x, ws)
        want = jax.grad(functools.partial(net, lambda h, w: _lax_conv(h, w, 1)), argnums=(0, 1))(x, ws)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# remat=True (jax.checkpoint on the scanned layers) gives the same numbers with less memory


_REMAT_MODELS = {
    "mlp": (lambda remat: sigprop.mlp(6, 16, norm="batchnorm", remat=remat), (8, 12)),
    "cnn-uniform": (lambda remat: sigprop.cnn("uniform", depth=4, width=8, norm="layernorm",
                                              remat=remat), (4, 8, 8, 3)),
    "resnet-preact": (lambda remat: sigprop.models.resnet(3, (8, 16), norm="batchnorm",
                                                          preact=True, remat=remat), (4, 8, 8, 3)),
}


@pytest.mark.parametrize("name", list(_REMAT_MODELS))
def test_remat_gives_the_same_numbers(name):
    build, shape = _REMAT_MODELS[name]
    plain, remat = build(False), build(True)
    x = jax.random.normal(jax.random.key(2), shape)
    variables = plain.init(jax.random.key(3), x)
    assert jax.tree_util.tree_structure(variables) == \
        jax.tree_util.tree_structure(remat.init(jax.random.key(3), x))
    a_plain, g_plain = _measured(plain, variables, x)
    a_remat, g_remat = _measured(remat, variables, x)
    np.testing.assert_allclose(a_remat, a_plain, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g_remat, g_plain, rtol=1e-6, atol=1e-7)
    jaxpr = str(jax.make_jaxpr(functools.partial(_measure, remat))(variables, x,
                                                                    jax.random.key(7)))
    assert "checkpoint" in jaxpr or "remat" in jaxpr


def test_remat_keeps_less_for_the_backward_pass():
    # with batchnorm, a layer's backward keeps its normalized pre-activation and ReLU mask (its
    # input is not needed: no weight gradients); with remat only its input (measured: 0.54x)
    x = jax.random.normal(jax.random.key(4), (64, 256))
    sizes = {}
    for remat in (False, True):
        model = sigprop.mlp(24, 256, norm="batchnorm", remat=remat)
        variables = model.init(jax.random.key(5), x)
        # the network's forward + backward and its records (the spectral step, the same for
        # both, is left out: its float64 workspace would dilute the comparison)
        compiled = _jit_records.lower(model, variables, x, jax.random.key(6)).compile()
        sizes[remat] = compiled.memory_analysis().temp_size_in_bytes
    assert sizes[True] < 0.75 * sizes[False], sizes


def test_lazy_weights_give_the_same_numbers():
    x = jax.random.normal(jax.random.key(8), (16, 32))
    plain = sigprop.mlp(5, 32, norm="layernorm")
    v_plain = plain.init(jax.random.key(9), x)
    for remat in (False, True):
        lazy = sigprop.mlp(5, 32, norm="layernorm", remat=remat, lazy_weights=True)
        v_lazy = lazy.init(jax.random.key(9), x)
        # 'kernel_keys' (not 'params') hold the kernels' keys; drawing them gives the plain
        # model's kernels, and the params hold nothing for the lazy kernels
        stack_key = "layer{:02d}+1"
        drawn = jax.vmap(lambda k: sigprop.models.layers.he_normal(k, (32, 32)))(
            v_lazy["kernel_keys"][stack_key]["Dense_0"]["kernel"])
        assert "kernel" not in v_lazy["params"][stack_key].get("Dense_0", {})
        np.testing.assert_array_equal(drawn, v_plain["params"][stack_key]["Dense_0"]["kernel"])
        a_plain, g_plain = _measured(plain, v_plain, x)
        a_lazy, g_lazy = _measured(lazy, v_lazy, x)
        np.testing.assert_allclose(a_lazy, a_plain, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(g_lazy, g_plain, rtol=1e-5, atol=1e-7)
    res = sigprop.analyze(sigprop.mlp(5, 32, lazy_weights=True, remat=True), x, seeds=2)
    ref = sigprop.analyze(sigprop.mlp(5, 32), x, seeds=2)
    np.testing.assert_allclose(res.effective_rank, ref.effective_rank, rtol=1e-5)
    np.testing.assert_allclose(res.grad_norm, ref.grad_norm, rtol=1e-5)


def test_optax_trains_a_lazy_zoo_model():
    """``lazy_weights`` keeps the kernels' keys outside 'params': optax sees only float arrays,
    and one SGD step on the params lowers the loss of a fixed batch."""
    import optax

    model = sigprop.mlp(3, 16, norm="layernorm", n_classes=4, lazy_weights=True)
    x = jax.random.normal(jax.random.key(0), (32, 8))
    labels = jnp.arange(32) % 4
    v = model.init(jax.random.key(1), x)
    params, rest = v["params"], {k: a for k, a in v.items() if k not in ("params", "probes")}
    assert all(jnp.issubdtype(a.dtype, jnp.floating) for a in jax.tree_util.tree_leaves(params))

    def loss(p):
        logits = model.apply({"params": p, **rest}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    opt = optax.sgd(0.1)
    grads = jax.grad(loss)(params)
    updates, _ = opt.update(grads, opt.init(params), params)
    assert float(loss(optax.apply_updates(params, updates))) < float(loss(params))


# ------------------------------------------------------------------------------------------------
# Brock et al.'s NF-ResNet (nf_beta=True), written out by hand


def test_nf_resnet_matches_a_hand_computation():
    """``h + alpha f(h / beta)`` with the analytic betas (1, sqrt(1 + a^2); sqrt(1 + 2 a^2) at
    the transition, whose shortcut conv takes relu(h / beta), then the reset sqrt(1 + a^2)) and a
    bare stem conv without sws's scaled-ReLU gain: the logits by hand, with plain lax convs."""
    a = 0.2
    model = sigprop.models.resnet(2, (4, 8), norm="sws", preact=True, alpha=a, nf_beta=True,
                                  n_classes=3)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    p = model.init(jax.random.key(0), x)["params"]
    gain = np.sqrt(2 * np.pi / (np.pi - 1))

    def conv(q, h, stride=1):  # scaled weight standardization, zero padding 1
        w = q["kernel"]
        fan_in = np.prod(w.shape[:3])
        mean, std = w.mean((0, 1, 2), keepdims=True), w.std((0, 1, 2), keepdims=True)
        w = (w - mean) / (std + 1e-5) * q["gain"][None, None, None] * gain / np.sqrt(fan_in)
        y = jax.lax.conv_general_dilated(h, w, (stride, stride), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + q["bias"][None, None, None]

    betas = [1.0, np.sqrt(1 + a ** 2), np.sqrt(1 + 2 * a ** 2), np.sqrt(1 + a ** 2)]
    blocks = (("stage1", "block0", 1), ("stage1", "block1", 1), ("stage2", "block0", 2),
              ("stage2", "block1", 1))
    h = conv(p["stem"]["Conv_0"], x) / gain
    for (stage, block, stride), beta in zip(blocks, betas):
        q = p[stage][block]
        u = jax.nn.relu(h / beta)
        f = conv(q["Conv_1"], jax.nn.relu(conv(q["Conv_0"], u, stride)))
        h = a * f + (conv(q["Conv_2"], u, stride) if stride == 2 else h)
    logits = h.mean((1, 2)) @ p["classifier"]["kernel"] + p["classifier"]["bias"][None]
    np.testing.assert_allclose(model.apply({"params": p}, x), logits, rtol=1e-4, atol=1e-5)
    assert [kw["beta"] for *_, kw in model._plan()] == pytest.approx(betas)
    with pytest.raises(ValueError, match="nf_beta"):
        sigprop.models.resnet(2, (4, 8), norm="batchnorm", preact=True, nf_beta=True)
    with pytest.raises(ValueError, match="nf_beta"):
        sigprop.models.resnet(2, (4, 8), norm="sws", nf_beta=True)


@pytest.mark.parametrize("norm, centered", [("prelayernorm", True), ("preregnorm", True),
                                            ("layernorm", False)])
def test_prelayernorm_centers_the_classifier_input(norm, centered):
    """PreLayerNorm subtracts each sample's layer mean before every affine op, the classifier
    included ([U]'s appendix ties the logits layer to the conditioning): then every column of
    the classifier kernel's gradient, h_c^T delta, sums to 0 over the input features."""
    import optax

    m = sigprop.mlp(3, 16, norm=norm, n_classes=5)
    x = jax.random.normal(jax.random.key(0), (8, 12))
    v = m.init(jax.random.key(1), x)
    y = jnp.arange(8) % 5

    def loss(p):
        out = m.apply({"params": p}, x, mutable=["losses"])[0]
        return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()

    g = jax.grad(loss)(v["params"])["classifier"]["kernel"]  # [features, classes]
    sums = np.abs(np.asarray(g).sum(axis=0)) / np.abs(np.asarray(g)).sum(axis=0)
    assert (sums.max() < 1e-5) == centered, sums
