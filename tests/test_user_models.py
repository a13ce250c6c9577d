"""``sigprop.analyze`` on users' own Flax models, checked against independent references.

Every expected number here is computed without sigprop:

- activations at the taps come from flax itself (linen: ``capture_intermediates``, which
  records each module's ``__call__`` output) or from a hand-written ``jnp`` forward that reads
  the nnx model's own parameter values;
- gradients at the Dense/Conv/Linear outputs come from a forward with an explicit zero
  perturbation ``eps[name]`` added to each of those outputs (linen: ``nn.intercept_methods``;
  nnx: the hand-written forward), differentiated with ``jax.grad`` w.r.t. the perturbations;
- the metrics are re-implemented below in numpy float64 from their definitions.

Models are written as a user would write them: a tiny version of Flax's ImageNet-example ResNet
(linen, BatchNorm and GroupNorm variants), an nnx MLP, and an nnx pre-LN transformer block.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import sigprop

ACT_METRICS = (
    "activation_variance",
    "channel_squared_mean",
    "cosine_similarity",
    "stable_rank",
    "effective_rank",
)
RTOL = 2e-3
ACT_ATOL = 1e-5   # channel means after a batch-statistics norm are ~1e-8, not 0
GRAD_ATOL = 1e-7

B = 8             # batch
NUM_CLASSES = 10


# ------------------------------------------------------------------------------------------------
# Reference metrics: numpy float64, straight from the definitions
# ------------------------------------------------------------------------------------------------


def ref_activation_variance(x):
    """Mean over channels (last axis) of the biased variance over all other axes."""
    x = np.asarray(x, np.float64)
    c = x.reshape(-1, x.shape[-1])
    return float(np.mean(np.var(c, axis=0)))


def ref_channel_squared_mean(x):
    """Mean over channels of the squared channel mean (mean over all other axes)."""
    x = np.asarray(x, np.float64)
    c = x.reshape(-1, x.shape[-1])
    return float(np.mean(np.mean(c, axis=0) ** 2))


def _unit_gram(x):
    m = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    m_hat = m / np.where(norms > 0, norms, 1.0)
    return m_hat @ m_hat.T


def ref_cosine_similarity(x):
    """mean_i (sum_j G_ij - G_ii) / (B - 1), G the Gram matrix of the unit rows."""
    g = _unit_gram(x)
    b = g.shape[0]
    return float(np.mean((g.sum(axis=1) - np.diag(g)) / (b - 1)))


def ref_stable_rank(x):
    """trace(G) / lambda_max(G)."""
    g = _unit_gram(x)
    return float(np.trace(g) / np.linalg.eigvalsh(g)[-1])


def ref_effective_rank(x):
    """exp(entropy of p), p_i = s_i / sum_j s_j, s the singular values of M (unnormalized)."""
    m = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    s = np.linalg.svd(m, compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


REF_METRICS = {
    "activation_variance": ref_activation_variance,
    "channel_squared_mean": ref_channel_squared_mean,
    "cosine_similarity": ref_cosine_similarity,
    "stable_rank": ref_stable_rank,
    "effective_rank": ref_effective_rank,
}


def ref_grad_norm(g):
    """Frobenius norm over the whole batch."""
    return float(np.linalg.norm(np.asarray(g, np.float64).ravel()))


def ref_activation_table(acts: dict, names):
    """{metric: [len(names)] float64} for the activations ``acts[name]``."""
    return {m: np.array([REF_METRICS[m](acts[n]) for n in names]) for m in ACT_METRICS}


def assert_matches(res, ref_acts: dict, ref_grads: dict | None = None, row: int = 0):
    """Every activation metric of every layer in ``res.layer_names`` (and, if given, every
    gradient norm in ``res.grad_layer_names``) of seed ``row`` equals the reference."""
    names = tuple(res.layer_names)
    table = ref_activation_table(ref_acts, names)
    for m in ACT_METRICS:
        got = np.asarray(getattr(res, m))
        assert got.shape[1] == len(names), (m, got.shape, names)
        np.testing.assert_allclose(got[row], table[m], rtol=RTOL, atol=ACT_ATOL,
                                   err_msg=f"{m} at {names}")
    if ref_grads is not None:
        gnames = tuple(res.grad_layer_names)
        want = np.array([ref_grad_norm(ref_grads[n]) for n in gnames])
        got = np.asarray(res.grad_norm)
        assert got.shape[1] == len(gnames), (got.shape, gnames)
        np.testing.assert_allclose(got[row], want, rtol=RTOL, atol=GRAD_ATOL,
                                   err_msg=f"grad_norm at {gnames}")


def assert_shapes(res, seeds: int):
    n, ng = len(res.layer_names), len(res.grad_layer_names)
    for m in ACT_METRICS:
        assert np.asarray(getattr(res, m)).shape == (seeds, n), m
    assert np.asarray(res.grad_norm).shape == (seeds, ng)


# deterministic losses (they ignore the key), passed to sigprop and used by the references
LABELS = jnp.arange(B) % NUM_CLASSES


def ce_loss(out, key):
    """Mean softmax cross-entropy against fixed labels (a [B, classes] output)."""
    del key
    return optax.softmax_cross_entropy_with_integer_labels(out, LABELS).mean()


def sq_loss(out, key):
    del key
    return jnp.mean(out ** 2)


# ------------------------------------------------------------------------------------------------
# Reference forward passes
# ------------------------------------------------------------------------------------------------

LINEN_GRAD_CLASSES = (nn.Dense, nn.Conv, nn.DenseGeneral, nn.Einsum)


def _linen_path(module) -> str:
    return "/".join(module.path)


def linen_reference(model: nn.Module, variables, x, loss, *, act_filter, apply_kwargs=None,
                    grad_classes=LINEN_GRAD_CLASSES):
    """Activations at every module selected by ``act_filter(module)`` (its ``__call__`` output,
    recorded by flax's ``capture_intermediates``) and the loss gradient w.r.t. the output of
    every ``grad_classes`` module (a zero perturbation added there by an interceptor).

    Returns ``(acts, grads, grad_order)``: dicts name -> numpy array, and the grad-tap names in
    call order (the last one is the classifier)."""
    apply_kwargs = dict(apply_kwargs or {})
    shapes: dict[str, tuple] = {}

    def capture(mdl, method_name):
        return method_name == "__call__" and act_filter(mdl)

    def run(eps):
        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and isinstance(context.module, grad_classes):
                name = _linen_path(context.module)
                if eps is None:
                    shapes[name] = out.shape
                else:
                    out = out + eps[name]
            return out

        with nn.intercept_methods(interceptor):
            out, state = model.apply(variables, x, capture_intermediates=capture,
                                     mutable=True, **apply_kwargs)
        return out, state.get("intermediates", {})

    jax.eval_shape(lambda: run(None))  # fills `shapes`, in call order
    grad_order = tuple(shapes)
    eps0 = {n: jnp.zeros(s, jnp.float32) for n, s in shapes.items()}

    def f(eps):
        out, inter = run(eps)
        return loss(out, jax.random.key(0)), inter

    grads, inter = jax.jit(jax.grad(f, has_aux=True))(eps0)
    acts = {}
    for path, value in jax.tree_util.tree_flatten_with_path(
            inter, is_leaf=lambda v: isinstance(v, tuple))[0]:
        keys = [p.key for p in path]
        assert keys[-1] == "__call__", keys
        (y,) = value
        acts["/".join(keys[:-1])] = np.asarray(y)
    return acts, {n: np.asarray(g) for n, g in grads.items()}, grad_order


def perturb(tree, key, scale=0.2):
    """Move every parameter away from its initial value (scales off 1, biases off 0), so that the
    comparison shows the given weights were used."""
    leaves, treedef = jax.tree.flatten(tree)

    @jax.jit
    def move(key, leaves):
        out = []
        for i, leaf in enumerate(leaves):
            k = jax.random.fold_in(key, i)
            std = jnp.std(leaf)
            out.append(leaf + scale * jnp.where(std > 0, std, 1.0) * jax.random.normal(k, leaf.shape))
        return out

    return jax.tree.unflatten(treedef, move(key, leaves))


# ------------------------------------------------------------------------------------------------
# Linen: Flax's ImageNet-example ResNet, tiny
# ------------------------------------------------------------------------------------------------

ModuleDef = Any


class ResNetBlock(nn.Module):
    """ResNet block (Flax ImageNet example; no zero-initialized last norm scale, so that every
    tap carries signal at initialization)."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), self.strides)(x)
        y = self.norm()(y)
        y = self.act(y)
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm()(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class BottleneckResNetBlock(nn.Module):
    """Bottleneck ResNet block (Flax ImageNet example)."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (1, 1))(x)
        y = self.norm()(y)
        y = self.act(y)
        y = self.conv(self.filters, (3, 3), self.strides)(y)
        y = self.norm()(y)
        y = self.act(y)
        y = self.conv(self.filters * 4, (1, 1))(y)
        y = self.norm()(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters * 4, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    """Flax ImageNet-example ResNet: 3x3 stem, no max pool (8x8 images). ``norm=None`` is the
    example's BatchNorm (batch statistics when ``train``); else a ModuleDef such as
    ``partial(nn.GroupNorm, num_groups=4)``."""

    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int
    num_filters: int = 64
    dtype: Any = jnp.float32
    act: Callable = nn.relu
    conv: ModuleDef = nn.Conv
    norm: ModuleDef | None = None

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = partial(self.conv, use_bias=False, dtype=self.dtype)
        if self.norm is None:
            norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                           epsilon=1e-5, dtype=self.dtype)
        else:
            norm = self.norm
        x = conv(self.num_filters, (3, 3), (1, 1), padding=[(1, 1), (1, 1)], name="conv_init")(x)
        x = norm(name="bn_init")(x)
        x = nn.relu(x)
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = self.block_cls(self.num_filters * 2 ** i, strides=strides, conv=conv,
                                   norm=norm, act=self.act)(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
        return jnp.asarray(x, self.dtype)


def resnet_bn():
    return ResNet(stage_sizes=[1, 1], block_cls=ResNetBlock, num_classes=NUM_CLASSES,
                  num_filters=8)


def resnet_gn():
    return ResNet(stage_sizes=[1, 1], block_cls=BottleneckResNetBlock, num_classes=NUM_CLASSES,
                  num_filters=4, norm=partial(nn.GroupNorm, num_groups=4))


RESNET_BN_ACTS = (
    "bn_init",
    "ResNetBlock_0/BatchNorm_0",
    "ResNetBlock_0/BatchNorm_1",
    "ResNetBlock_1/BatchNorm_0",
    "ResNetBlock_1/BatchNorm_1",
    "ResNetBlock_1/norm_proj",
)
RESNET_BN_GRADS = (
    "conv_init",
    "ResNetBlock_0/Conv_0",
    "ResNetBlock_0/Conv_1",
    "ResNetBlock_1/Conv_0",
    "ResNetBlock_1/Conv_1",
    "ResNetBlock_1/conv_proj",
)  # Dense_0, the classifier, is the last one called
RESNET_GN_ACTS = (
    "bn_init",
    "BottleneckResNetBlock_0/GroupNorm_0",
    "BottleneckResNetBlock_0/GroupNorm_1",
    "BottleneckResNetBlock_0/GroupNorm_2",
    "BottleneckResNetBlock_0/norm_proj",
    "BottleneckResNetBlock_1/GroupNorm_0",
    "BottleneckResNetBlock_1/GroupNorm_1",
    "BottleneckResNetBlock_1/GroupNorm_2",
    "BottleneckResNetBlock_1/norm_proj",
)
RESNET_GN_GRADS = (
    "conv_init",
    "BottleneckResNetBlock_0/Conv_0",
    "BottleneckResNetBlock_0/Conv_1",
    "BottleneckResNetBlock_0/Conv_2",
    "BottleneckResNetBlock_0/conv_proj",
    "BottleneckResNetBlock_1/Conv_0",
    "BottleneckResNetBlock_1/Conv_1",
    "BottleneckResNetBlock_1/Conv_2",
    "BottleneckResNetBlock_1/conv_proj",
)
TRAIN = {"train": True}
NORM_CLASSES = (nn.BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.InstanceNorm)


def images(seed=1):
    return jax.random.normal(jax.random.key(seed), (B, 8, 8, 3))


_INITS: dict[str, Callable] = {}


def resnet_variables(model, x, seed=0, perturbed=True):
    """``model.init(key(seed), x, train=True)``, its params perturbed (one jitted init per model)."""
    init = _INITS.setdefault(repr(model), jax.jit(partial(model.init, train=True)))
    v = init(jax.random.key(seed), x)
    if perturbed:
        v = {**v, "params": perturb(v["params"], jax.random.key(100 + seed))}
    return v


def resnet_reference(model, variables, x, loss=ce_loss, act_filter=None):
    return linen_reference(model, variables, x, loss, apply_kwargs=TRAIN,
                           act_filter=act_filter or (lambda m: isinstance(m, NORM_CLASSES)))


# ------------------------------------------------------------------------------------------------
# Linen: small models for selectors, sigprop.tap and errors
# ------------------------------------------------------------------------------------------------


class MyNorm(nn.Module):
    """A user's own normalization: RMS over channels with a learned scale."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        ms = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        return x * jax.lax.rsqrt(ms + self.eps) * scale.reshape((1,) * (x.ndim - 1) + (-1,))


class MyNormCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        for _ in range(2):
            x = nn.Conv(8, (3, 3))(x)
            x = MyNorm()(x)
            x = nn.relu(x)
        return nn.Dense(NUM_CLASSES)(jnp.mean(x, axis=(1, 2)))


class TapBlock(nn.Module):
    width: int = 16

    @nn.compact
    def __call__(self, x):
        y = nn.Dense(self.width)(x)
        y = nn.LayerNorm()(y)
        return sigprop.tap(self, nn.relu(y), "relu")


class TapNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = TapBlock()(x)
        x = TapBlock()(x)
        return nn.Dense(NUM_CLASSES)(x)


class LinenMLP(nn.Module):
    width: int = 16

    @nn.compact
    def __call__(self, x):
        for _ in range(2):
            x = nn.relu(nn.LayerNorm()(nn.Dense(self.width)(x)))
        return nn.Dense(NUM_CLASSES)(x)


def vectors(seed=2, d=12):
    return jax.random.normal(jax.random.key(seed), (B, d))


# ------------------------------------------------------------------------------------------------
# NNX: MLP and a pre-LN transformer block, with hand-written reference forwards
# ------------------------------------------------------------------------------------------------


class MLP(nnx.Module):
    """(Linear -> norm -> relu) x 3, then a Linear classifier."""

    def __init__(self, din, width, dout, *, norm="layer", rngs: nnx.Rngs):
        dims = [din, width, width, width]
        self.linears = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims, dims[1:])])
        make = {"layer": nnx.LayerNorm, "batch": nnx.BatchNorm}[norm]
        self.norms = nnx.List([make(width, rngs=rngs) for _ in range(3)])
        self.head = nnx.Linear(width, dout, rngs=rngs)

    def __call__(self, x):
        for lin, norm in zip(self.linears, self.norms):
            x = nnx.relu(norm(lin(x)))
        return self.head(x)


MLP_ACTS = ("norms/0", "norms/1", "norms/2")
MLP_GRADS = ("linears/0", "linears/1", "linears/2")  # head: the last Linear called


class Block(nnx.Module):
    """Pre-LN transformer block: x + MHA(LN1(x)), then x + MLP(LN2(x))."""

    def __init__(self, d, heads, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=d, decode=False,
                                           rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, rngs=rngs)
        self.fc1 = nnx.Linear(d, 2 * d, rngs=rngs)
        self.fc2 = nnx.Linear(2 * d, d, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(nnx.gelu(self.fc1(self.ln2(x))))


class Transformer(nnx.Module):
    """One pre-LN block on [B, T, D] inputs, a final LayerNorm, mean over T, a Linear head."""

    def __init__(self, d, heads, num_classes, *, rngs: nnx.Rngs):
        self.block = Block(d, heads, rngs=rngs)
        self.ln_f = nnx.LayerNorm(d, rngs=rngs)
        self.head = nnx.Linear(d, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.head(jnp.mean(self.ln_f(self.block(x)), axis=1))


TRANSFORMER_ACTS = ("block/ln1", "block/ln2", "ln_f")
TRANSFORMER_GRADS = ("block/attn/query", "block/attn/key", "block/attn/value", "block/attn/out",
                     "block/fc1", "block/fc2")  # head: the last Linear called
T, D_MODEL, HEADS = 6, 16, 4


def _v(p):
    return jnp.asarray(p[...])


def _bcast(v, ndim):
    """A per-channel vector shaped to broadcast against an ndim array (explicit ranks)."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def ref_linear(lin: nnx.Linear, x):
    y = jnp.einsum("...i,io->...o", x, _v(lin.kernel))
    return y + _bcast(_v(lin.bias), y.ndim)


def ref_layernorm(ln: nnx.LayerNorm, x):
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
    y = (x - mu) / jnp.sqrt(var + ln.epsilon)
    return y * _bcast(_v(ln.scale), y.ndim) + _bcast(_v(ln.bias), y.ndim)


def ref_batchnorm(bn: nnx.BatchNorm, x):
    """Train mode: statistics of this batch over every axis but the channels."""
    axes = tuple(range(x.ndim - 1))
    mu = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), axis=axes, keepdims=True)
    y = (x - mu) / jnp.sqrt(var + bn.epsilon)
    return y * _bcast(_v(bn.scale), y.ndim) + _bcast(_v(bn.bias), y.ndim)


def ref_norm(mod, x):
    return ref_batchnorm(mod, x) if isinstance(mod, nnx.BatchNorm) else ref_layernorm(mod, x)


def mlp_forward(model: MLP, x, eps):
    acts = {}
    h = x
    for i, (lin, norm) in enumerate(zip(model.linears, model.norms)):
        h = ref_linear(lin, h) + eps[f"linears/{i}"]
        h = ref_norm(norm, h)
        acts[f"norms/{i}"] = h
        h = jax.nn.relu(h)
    return ref_linear(model.head, h), acts


def ref_mha(attn: nnx.MultiHeadAttention, x, eps):
    """Self-attention by hand from the LinearGeneral kernels: q/k/v [D, H, hd], out [H, hd, D]."""
    def proj(lg, name):
        y = jnp.einsum("btd,dhk->bthk", x, _v(lg.kernel))
        return y + _bcast(_v(lg.bias), y.ndim) + eps[name]

    q = proj(attn.query, "block/attn/query")
    k = proj(attn.key, "block/attn/key")
    v = proj(attn.value, "block/attn/value")
    hd = q.shape[-1]
    logits = jnp.einsum("bqhk,bthk->bhqt", q / np.sqrt(hd).astype(np.float32), k)
    w = jax.nn.softmax(logits, axis=-1)
    o = jnp.einsum("bhqt,bthk->bqhk", w, v)
    y = jnp.einsum("bqhk,hkd->bqd", o, _v(attn.out.kernel))
    return y + _bcast(_v(attn.out.bias), y.ndim) + eps["block/attn/out"]


def transformer_forward(model: Transformer, x, eps):
    acts = {}
    blk = model.block
    h = ref_layernorm(blk.ln1, x)
    acts["block/ln1"] = h
    x = x + ref_mha(blk.attn, h, eps)
    h = ref_layernorm(blk.ln2, x)
    acts["block/ln2"] = h
    h = ref_linear(blk.fc1, h) + eps["block/fc1"]
    h = ref_linear(blk.fc2, jax.nn.gelu(h)) + eps["block/fc2"]
    x = x + h
    h = ref_layernorm(model.ln_f, x)
    acts["ln_f"] = h
    return ref_linear(model.head, jnp.mean(h, axis=1)), acts


def nnx_reference(forward, model, x, loss, grad_names):
    """(acts, grads) of a hand-written forward ``forward(model, x, eps) -> (out, acts)``."""
    recorder = _ShapeRecorder()
    jax.eval_shape(lambda: forward(model, x, recorder))
    eps0 = {n: jnp.zeros(recorder.shapes[n], jnp.float32) for n in grad_names}

    def f(eps):
        out, acts = forward(model, x, eps)
        return loss(out, jax.random.key(0)), acts

    grads, acts = jax.jit(jax.grad(f, has_aux=True))(eps0)
    return ({n: np.asarray(a) for n, a in acts.items()},
            {n: np.asarray(g) for n, g in grads.items()})


class _ZeroDict(dict):
    def __missing__(self, name):
        return 0.0


class _ShapeRecorder(dict):
    """``eps[name]`` during a shape-only trace: records the shape of the output it is added to
    (via a zero scalar, which broadcasts; the real perturbations have the full shape)."""

    def __init__(self):
        super().__init__()
        self.shapes = {}

    def __missing__(self, name):
        return _Probe(self.shapes, name)


class _Probe:
    def __init__(self, shapes, name):
        self.shapes, self.name = shapes, name

    def __radd__(self, y):
        self.shapes[self.name] = y.shape
        return y


def perturb_nnx(model, seed):
    state = nnx.state(model, nnx.Param)
    nnx.update(model, perturb(state, jax.random.key(seed)))
    return model


def model_output(model, x):
    """The nnx model's own output (train mode), on a copy: the instance's state is unchanged."""
    return np.asarray(nnx.jit(lambda m, x: m(x))(nnx.clone(model), x))


def tokens(seed=3):
    return jax.random.normal(jax.random.key(seed), (B, T, D_MODEL))


# ------------------------------------------------------------------------------------------------
# Tests: metrics at every default tap equal the references
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, acts, grads", [
    (resnet_bn, RESNET_BN_ACTS, RESNET_BN_GRADS),
    (resnet_gn, RESNET_GN_ACTS, RESNET_GN_GRADS),
], ids=["batchnorm", "groupnorm"])
def test_linen_resnet_matches_reference(make, acts, grads):
    model, x = make(), images()
    variables = resnet_variables(model, x)
    ref_acts, ref_grads, order = resnet_reference(model, variables, x)
    assert order[:-1] == grads and order[-1] == "Dense_0"
    res = sigprop.analyze(model, x, variables=variables, loss=ce_loss, apply_kwargs=TRAIN)
    assert tuple(res.layer_names) == acts
    assert tuple(res.grad_layer_names) == grads
    assert_shapes(res, 1)
    assert_matches(res, ref_acts, ref_grads)


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_nnx_mlp_matches_reference(norm):
    model = perturb_nnx(MLP(12, 16, NUM_CLASSES, norm=norm, rngs=nnx.Rngs(0)), 7)
    x = vectors()
    ref_acts, ref_grads = nnx_reference(mlp_forward, model, x, ce_loss, MLP_GRADS)
    # the hand-written forward is the model's
    np.testing.assert_allclose(model_output(model, x),
                               np.asarray(mlp_forward(model, x, _ZeroDict())[0]),
                               rtol=1e-4, atol=1e-5)
    res = sigprop.analyze(model, x, loss=ce_loss)
    assert tuple(res.layer_names) == MLP_ACTS
    assert tuple(res.grad_layer_names) == MLP_GRADS
    assert_shapes(res, 1)
    assert_matches(res, ref_acts, ref_grads)


def test_nnx_transformer_matches_reference():
    model = perturb_nnx(Transformer(D_MODEL, HEADS, NUM_CLASSES, rngs=nnx.Rngs(0)), 8)
    x = tokens()
    ref_acts, ref_grads = nnx_reference(transformer_forward, model, x, ce_loss, TRANSFORMER_GRADS)
    np.testing.assert_allclose(model_output(model, x),
                               np.asarray(transformer_forward(model, x, _ZeroDict())[0]),
                               rtol=1e-4, atol=1e-5)
    assert ref_acts["block/ln1"].shape == (B, T, D_MODEL)  # M is [B, T * D]
    res = sigprop.analyze(model, x, loss=ce_loss)
    assert tuple(res.layer_names) == TRANSFORMER_ACTS
    assert tuple(res.grad_layer_names) == TRANSFORMER_GRADS
    assert_matches(res, ref_acts, ref_grads)


def test_squared_loss_is_used():
    """A different ``loss=`` changes the gradients, to exactly the reference's."""
    model, x = resnet_bn(), images()
    variables = resnet_variables(model, x)
    _, ref_grads, _ = resnet_reference(model, variables, x, loss=sq_loss)
    res = sigprop.analyze(model, x, variables=variables, loss=sq_loss, apply_kwargs=TRAIN)
    want = np.array([ref_grad_norm(ref_grads[n]) for n in RESNET_BN_GRADS])
    np.testing.assert_allclose(np.asarray(res.grad_norm)[0], want, rtol=RTOL, atol=GRAD_ATOL)


# ------------------------------------------------------------------------------------------------
# Tests: many seeds of a user model in one call
# ------------------------------------------------------------------------------------------------


def _rows_differ(a):
    a = np.asarray(a)
    for i in range(a.shape[0]):
        for j in range(i):
            assert not np.allclose(a[i], a[j], rtol=1e-4), (i, j, a)


def test_linen_seeds_fresh_init():
    model, x = resnet_bn(), images()
    res = sigprop.analyze(model, x, seeds=3, apply_kwargs=TRAIN)  # default loss
    assert tuple(res.layer_names) == RESNET_BN_ACTS
    assert_shapes(res, 3)
    for m in ACT_METRICS + ("grad_norm",):
        assert np.all(np.isfinite(np.asarray(getattr(res, m)))), m
    # BatchNorm outputs have variance ~1 for every seed; the batch geometry and gradients differ
    _rows_differ(res.cosine_similarity)
    _rows_differ(res.grad_norm)


def test_nnx_factory_seeds():
    x = vectors()
    res = sigprop.analyze(lambda rngs: MLP(12, 16, NUM_CLASSES, rngs=rngs), x, seeds=3,
                          loss=ce_loss)
    assert tuple(res.layer_names) == MLP_ACTS
    assert tuple(res.grad_layer_names) == MLP_GRADS
    assert_shapes(res, 3)
    _rows_differ(res.cosine_similarity)
    _rows_differ(res.grad_norm)


def test_linen_variables_with_seed_axis():
    model, x = resnet_bn(), images()
    vs = [resnet_variables(model, x, seed=s) for s in (0, 1)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *vs)  # every leaf gets a leading seed axis
    res = sigprop.analyze(model, x, seeds=2, variables=stacked, loss=ce_loss, apply_kwargs=TRAIN)
    assert_shapes(res, 2)
    for s, v in enumerate(vs):
        one = sigprop.analyze(model, x, variables=v, loss=ce_loss, apply_kwargs=TRAIN)
        for m in ACT_METRICS + ("grad_norm",):
            np.testing.assert_allclose(np.asarray(getattr(res, m))[s],
                                       np.asarray(getattr(one, m))[0], rtol=1e-4, atol=1e-6,
                                       err_msg=m)
        ref_acts, ref_grads, _ = resnet_reference(model, v, x)
        assert_matches(res, ref_acts, ref_grads, row=s)


# ------------------------------------------------------------------------------------------------
# Tests: selectors and sigprop.tap
# ------------------------------------------------------------------------------------------------


def test_glob_selector():
    model, x = resnet_bn(), images()
    variables = resnet_variables(model, x)
    ref_acts, _, _ = resnet_reference(model, variables, x)
    res = sigprop.analyze(model, x, variables=variables, loss=ce_loss, apply_kwargs=TRAIN,
                          taps=sigprop.Taps(activations="ResNetBlock_*/BatchNorm_1"))
    assert tuple(res.layer_names) == ("ResNetBlock_0/BatchNorm_1", "ResNetBlock_1/BatchNorm_1")
    assert_matches(res, ref_acts)


def test_predicate_selector():
    model, x = resnet_bn(), images()
    variables = resnet_variables(model, x)
    ref_acts, ref_grads, _ = resnet_reference(model, variables, x)

    def first_conv(path, module):
        path = path if isinstance(path, str) else "/".join(path)
        return isinstance(module, nn.Conv) and path.endswith("Conv_0")

    def proj_norm(path, module):
        path = path if isinstance(path, str) else "/".join(path)
        return isinstance(module, nn.BatchNorm) and "proj" in path

    res = sigprop.analyze(model, x, variables=variables, loss=ce_loss, apply_kwargs=TRAIN,
                          taps=sigprop.Taps(activations=proj_norm, gradients=first_conv))
    assert tuple(res.layer_names) == ("ResNetBlock_1/norm_proj",)
    assert tuple(res.grad_layer_names) == ("ResNetBlock_0/Conv_0", "ResNetBlock_1/Conv_0")
    assert_matches(res, ref_acts, ref_grads)


def test_class_selectors_user_norm():
    """A user's normalization class (and a tuple of classes) as the selectors."""
    model, x = MyNormCNN(), images()
    variables = {"params": perturb(model.init(jax.random.key(0), x)["params"],
                                   jax.random.key(5))}
    ref_acts, ref_grads, order = linen_reference(model, variables, x, ce_loss,
                                                 act_filter=lambda m: isinstance(m, MyNorm))
    assert order == ("Conv_0", "Conv_1", "Dense_0")
    res = sigprop.analyze(model, x, variables=variables, loss=ce_loss,
                          taps=sigprop.Taps(activations=(MyNorm, nn.BatchNorm),
                                            gradients=nn.Conv))
    assert tuple(res.layer_names) == ("MyNorm_0", "MyNorm_1")
    assert tuple(res.grad_layer_names) == ("Conv_0", "Conv_1")
    assert_matches(res, ref_acts, ref_grads)


def test_sigprop_tap_in_user_module():
    model, x = TapNet(), vectors()
    variables = {"params": perturb(model.init(jax.random.key(0), x)["params"],
                                   jax.random.key(6))}
    ln_acts, ref_grads, order = linen_reference(model, variables, x, ce_loss,
                                                act_filter=lambda m: isinstance(m, nn.LayerNorm))
    assert order == ("TapBlock_0/Dense_0", "TapBlock_1/Dense_0", "Dense_0")
    ref_acts = dict(ln_acts)
    for blk in ("TapBlock_0", "TapBlock_1"):
        ref_acts[f"{blk}/relu"] = np.maximum(ln_acts[f"{blk}/LayerNorm_0"], 0.0)
    res = sigprop.analyze(model, x, variables=variables, loss=ce_loss)
    names = list(res.layer_names)
    assert "TapBlock_0/relu" in names and "TapBlock_1/relu" in names, names
    assert names.index("TapBlock_0/relu") < names.index("TapBlock_1/relu")
    assert tuple(res.grad_layer_names) == ("TapBlock_0/Dense_0", "TapBlock_1/Dense_0")
    assert_matches(res, ref_acts, ref_grads)


# ------------------------------------------------------------------------------------------------
# Tests: errors name the parameter
# ------------------------------------------------------------------------------------------------


def test_selector_matching_nothing():
    model, x = LinenMLP(), vectors()
    with pytest.raises(ValueError, match="taps") as info:
        sigprop.analyze(model, x, loss=ce_loss, taps=sigprop.Taps(activations="nothing*"))
    # the message lists the module paths it saw
    assert "LayerNorm_0" in str(info.value) and "Dense_0" in str(info.value), str(info.value)


def test_selector_of_bad_type():
    model, x = LinenMLP(), vectors()
    with pytest.raises(ValueError, match="taps"):
        sigprop.analyze(model, x, loss=ce_loss, taps=sigprop.Taps(activations=3))


def test_variables_that_do_not_fit():
    model, x = LinenMLP(), vectors()
    v = model.init(jax.random.key(0), x)
    bad = {"params": {k: p for k, p in v["params"].items() if k != "Dense_1"}}
    with pytest.raises(ValueError, match="variables"):
        sigprop.analyze(model, x, variables=bad, loss=ce_loss)
    other = LinenMLP(width=8).init(jax.random.key(0), x)  # same names, other shapes
    with pytest.raises(ValueError, match="variables"):
        sigprop.analyze(model, x, variables=other, loss=ce_loss)


def test_seeds_with_nnx_instance():
    model = MLP(12, 16, NUM_CLASSES, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="seeds"):
        sigprop.analyze(model, vectors(), seeds=2, loss=ce_loss)


def test_seeds_with_variables_without_seed_axis():
    model, x = LinenMLP(), vectors()
    v = model.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="seeds|variables"):
        sigprop.analyze(model, x, seeds=2, variables=v, loss=ce_loss)


def test_non_scalar_loss():
    model, x = LinenMLP(), vectors()
    with pytest.raises(ValueError, match="loss"):
        sigprop.analyze(model, x, loss=lambda out, key: out ** 2)
