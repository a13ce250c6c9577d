"""Token metrics, attention taps, parameter-gradient norms and massive activations (issue 21) on
user-written transformers (linen with flax attention, nnx with flax attention, a user's own
attention through ``sigprop.tap``), each against an independent float64 numpy computation from
``capture_intermediates`` or a hand-written forward pass."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sigprop
from sigprop import metrics

TOKEN = metrics.TOKEN_METRICS
ALL = metrics.TRANSFORMER_METRICS
RTOL = 2e-3


# ------------------------------------------------------------------------------------------------
# numpy references (float64)


def np_token_metrics(x):
    """``{metric: value}`` of a ``[B, T, D]`` array, per sequence then averaged over sequences."""
    x = np.asarray(x, np.float64)
    out = {m: [] for m in TOKEN}
    for xb in x:
        t = xb.shape[0]
        norms = np.linalg.norm(xb, axis=1)
        u = xb / np.where(norms > 0, norms, 1.0)[:, None]
        c = u @ u.T
        out["token_cosine_similarity"].append((c.sum() - np.trace(c)) / (t * (t - 1)))
        centered = xb - xb.mean(axis=0, keepdims=True)
        out["token_residual_ratio"].append(np.linalg.norm(centered) / np.linalg.norm(xb))
        out["token_stable_rank"].append(np.trace(c) / np.linalg.eigvalsh(c)[-1])
        s = np.linalg.svd(xb, compute_uv=False)
        p = s / s.sum()
        p = p[p > 0]
        out["token_effective_rank"].append(np.exp(-(p * np.log(p)).sum()))
    return {m: float(np.mean(v)) for m, v in out.items()}


def np_attention(q, k, causal):
    """``(entropy, logit max)`` of flax attention from ``q, k [B, T, H, d]`` in float64."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    t = q.shape[1]
    allowed = np.tril(np.ones((t, t), bool)) if causal else np.ones((t, t), bool)
    z = np.where(allowed, logits, -np.inf)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    n = allowed.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(allowed, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(-1)
    valid = n >= 2
    entropy = (h[..., valid] / np.log(n[valid])).mean()
    return float(entropy), float(np.abs(np.where(allowed, logits, 0.0)).max())


def np_max_abs_ratio(x):
    a = np.abs(np.asarray(x, np.float64))
    return float(a.max() / np.median(a))


def close(got, want, rtol=RTOL):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol)


def mse_loss(out, key):  # a deterministic loss: parameter gradients comparable to jax.grad
    del key
    return jnp.mean(jnp.square(out))


# ------------------------------------------------------------------------------------------------
# A linen pre-LN block with flax attention


class PreLN(nn.Module):
    causal: bool = True

    @nn.compact
    def __call__(self, x):
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2])) if self.causal else None
        h = nn.LayerNorm(name="ln1")(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=2, name="attn")(h, h, mask=mask)
        h = nn.LayerNorm(name="ln2")(x)
        x = x + nn.Dense(x.shape[-1], name="fc2")(nn.gelu(nn.Dense(16, name="fc1")(h)))
        return nn.Dense(5, name="head")(x)


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).normal(size=(3, 7, 8)).astype(np.float32)


@pytest.mark.parametrize("causal", [True, False])
def test_linen_pre_ln_block_against_numpy(tokens, causal):
    model = PreLN(causal=causal)
    variables = model.init(jax.random.key(3), tokens)
    res = sigprop.analyze(model, inputs=tokens, variables=variables, metrics=ALL, loss=mse_loss)
    assert res.layer_names == ("ln1", "ln2")
    assert res.attention_layer_names == ("attn",)
    _, inter = model.apply(variables, tokens, capture_intermediates=True)
    inter = inter["intermediates"]
    for i, name in enumerate(res.layer_names):
        x = inter[name]["__call__"][0]
        for m, want in np_token_metrics(x).items():
            close(res[m][0, i], want)
        close(res["max_abs_ratio"][0, i], np_max_abs_ratio(x))
    q, k = inter["attn"]["query"]["__call__"][0], inter["attn"]["key"]["__call__"][0]
    entropy, logit_max = np_attention(q, k, causal)
    close(res["attention_entropy"][0, 0], entropy)
    close(res["attention_logit_max"][0, 0], logit_max)
    # parameter gradients: jax.grad of the same loss w.r.t. the params
    grads = jax.grad(lambda p: mse_loss(model.apply({"params": p}, tokens), None))(
        variables["params"])
    want = {"attn/query": grads["attn"]["query"]["kernel"], "attn/key": grads["attn"]["key"][
        "kernel"], "attn/value": grads["attn"]["value"]["kernel"],
        "attn/out": grads["attn"]["out"]["kernel"], "fc1": grads["fc1"]["kernel"],
        "fc2": grads["fc2"]["kernel"], "head": grads["head"]["kernel"]}
    assert res.param_layer_names == tuple(want)
    for i, name in enumerate(res.param_layer_names):
        close(res["param_grad_norm"][0, i], np.linalg.norm(np.asarray(want[name], np.float64)),
              rtol=1e-4)
    assert np.all(res["attention_finite"]) and np.all(res["param_finite"])


def test_causal_attention_is_not_uniform_and_entropy_in_range(tokens):
    res = sigprop.analyze(PreLN(causal=True), inputs=tokens, seeds=3,
                          metrics=("attention_entropy",))
    assert res["attention_entropy"].shape == (3, 1)
    assert np.all((res["attention_entropy"] > 0.5) & (res["attention_entropy"] <= 1.0))


# ------------------------------------------------------------------------------------------------
# An nnx post-LN block with flax attention


class PostLN(nnx.Module):
    def __init__(self, rngs, causal=True):
        self.causal = causal
        self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=8, decode=False, rngs=rngs)
        self.ln1 = nnx.LayerNorm(8, rngs=rngs)
        self.fc1 = nnx.Linear(8, 16, rngs=rngs)
        self.fc2 = nnx.Linear(16, 8, rngs=rngs)
        self.ln2 = nnx.LayerNorm(8, rngs=rngs)
        self.head = nnx.Linear(8, 5, rngs=rngs)

    def __call__(self, x):
        mask = nnx.make_causal_mask(jnp.ones(x.shape[:2])) if self.causal else None
        x = self.ln1(x + self.attn(x, mask=mask))
        x = self.ln2(x + self.fc2(nnx.gelu(self.fc1(x))))
        return self.head(x)


def _np(a):
    return np.asarray(a, np.float64)


def np_post_ln(model, x):
    """The forward pass of :class:`PostLN` in float64 numpy, from the model's parameters: the
    two normalizer outputs and the attention's q, k."""
    def ln(m, x):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + m.epsilon) * _np(m.scale[...]) + _np(m.bias[...])

    def dense(m, x, axes=1):
        return np.tensordot(x, _np(m.kernel[...]), axes=axes) + _np(m.bias[...])

    x = _np(x)
    a = model.attn
    q, k, v = dense(a.query, x), dense(a.key, x), dense(a.value, x)
    t = x.shape[1]
    allowed = np.tril(np.ones((t, t), bool)) if model.causal else np.ones((t, t), bool)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    z = np.where(allowed, logits, -np.inf)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("bhqk,bkhd->bqhd", p, v)
    h1 = ln(model.ln1, x + dense(a.out, o, axes=2))
    f = dense(model.fc2, np.asarray(jax.nn.gelu(jnp.asarray(dense(model.fc1, h1)),
                                                approximate=False), np.float64))
    h2 = ln(model.ln2, h1 + f)
    return h1, h2, q, k


@pytest.mark.parametrize("causal", [True, False])
def test_nnx_post_ln_block_against_numpy(tokens, causal):
    model = PostLN(nnx.Rngs(5), causal=causal)
    res = sigprop.analyze(model, inputs=tokens, metrics=ALL, loss=mse_loss)
    assert res.layer_names == ("ln1", "ln2")
    h1, h2, q, k = np_post_ln(model, tokens)
    for i, x in enumerate((h1, h2)):
        for m, want in np_token_metrics(x).items():
            close(res[m][0, i], want)
        close(res["max_abs_ratio"][0, i], np_max_abs_ratio(x))
    entropy, logit_max = np_attention(q, k, causal)
    close(res["attention_entropy"][0, 0], entropy)
    close(res["attention_logit_max"][0, 0], logit_max)
    graphdef, state = nnx.split(model)
    params, rest = nnx.split_state(state, nnx.Param, ...)
    grads = jax.grad(lambda p: mse_loss(nnx.merge(graphdef, nnx.merge_state(p, rest))(tokens),
                                        None))(params).to_pure_dict()
    want = {"attn/query": grads["attn"]["query"]["kernel"],
            "attn/key": grads["attn"]["key"]["kernel"],
            "attn/value": grads["attn"]["value"]["kernel"],
            "attn/out": grads["attn"]["out"]["kernel"], "fc1": grads["fc1"]["kernel"],
            "fc2": grads["fc2"]["kernel"], "head": grads["head"]["kernel"]}
    assert res.param_layer_names == tuple(want)
    for i, name in enumerate(res.param_layer_names):
        close(res["param_grad_norm"][0, i], np.linalg.norm(_np(want[name])), rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# A user's own attention, observed with sigprop.tap


class OwnAttention(nn.Module):
    heads: int = 2
    causal: bool = True

    @nn.compact
    def __call__(self, x):
        b, t, d = x.shape
        q = nn.DenseGeneral((self.heads, d // self.heads), name="q")(x)
        k = nn.DenseGeneral((self.heads, d // self.heads), name="k")(x)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(d // self.heads)
        mask = jnp.tril(jnp.ones((t, t), bool))[None, None] if self.causal else None
        z = logits if mask is None else jnp.where(mask, logits, -1e30)
        probs = sigprop.tap(self, jax.nn.softmax(z, axis=-1), "probs", "attention",
                            logits=logits, mask=mask)
        y = jnp.einsum("bhqk,bkhd->bqhd", probs, q).reshape(b, t, d)
        y = sigprop.tap(self, x + y, "stream")
        return nn.Dense(4, name="head")(y)


@pytest.mark.parametrize("causal", [True, False])
def test_own_attention_through_sigprop_tap(tokens, causal):
    model = OwnAttention(causal=causal)
    variables = model.init(jax.random.key(1), tokens)
    res = sigprop.analyze(model, inputs=tokens, variables=variables, metrics=ALL)
    assert res.attention_layer_names == ("probs",) and res.layer_names == ("stream",)
    _, inter = model.apply(variables, tokens, capture_intermediates=True)
    q, k = inter["intermediates"]["q"]["__call__"][0], inter["intermediates"]["k"]["__call__"][0]
    entropy, logit_max = np_attention(q, k, causal)
    close(res["attention_entropy"][0, 0], entropy)
    close(res["attention_logit_max"][0, 0], logit_max)


def test_attention_tap_without_logits():
    class NoLogits(nn.Module):
        @nn.compact
        def __call__(self, x):
            probs = jax.nn.softmax(jnp.einsum("btd,bsd->bts", x, x), axis=-1)[:, None]
            probs = sigprop.tap(self, probs, "probs", "attention")
            return nn.Dense(3)(jnp.einsum("bhts,bsd->btd", probs, x))

    x = np.random.default_rng(1).normal(size=(2, 5, 4)).astype(np.float32)
    res = sigprop.analyze(NoLogits(), inputs=x, metrics=("attention_entropy",))
    assert 0 < res["attention_entropy"][0, 0] < 1
    with pytest.raises(ValueError, match="attention_logit_max needs the attention logits"):
        sigprop.analyze(NoLogits(), inputs=x, metrics=("attention_logit_max",))


# ------------------------------------------------------------------------------------------------
# Bad input, zoo models, the records of sigprop.train


def test_token_metric_on_a_tap_without_token_axis():
    with pytest.raises(ValueError, match=r"metrics=: .*token_cosine_similarity.*no token axis"):
        sigprop.analyze(sigprop.mlp(2, 8), inputs=np.ones((4, 8), np.float32),
                        metrics=("token_cosine_similarity",))


def test_attention_metric_without_attention_tap():
    with pytest.raises(ValueError, match="no attention tap"):
        sigprop.analyze(sigprop.mlp(2, 8), inputs=np.ones((4, 8), np.float32),
                        metrics=("attention_entropy",))


def test_tap_rejects_logits_on_other_kinds():
    class Bad(nn.Module):
        @nn.compact
        def __call__(self, x):
            return sigprop.tap(self, x, "a", logits=x)

    with pytest.raises(ValueError, match="logits= and mask= are for kind='attention'"):
        Bad().init(jax.random.key(0), jnp.ones((2, 3)))


def test_param_grad_norm_on_a_zoo_model():
    model = sigprop.mlp(3, 16, norm="batchnorm")
    x = np.random.default_rng(2).normal(size=(8, 12)).astype(np.float32)
    variables = model.init(jax.random.key(0), x)
    res = sigprop.analyze(model, inputs=x, variables=variables,
                          metrics=("param_grad_norm", "grad_norm"), loss=mse_loss)
    params = variables["params"]
    rest = {c: v for c, v in variables.items() if c not in ("params", "probes")}

    def loss(p):
        out, _ = model.apply({"params": p, **rest}, x, mutable=list(rest))
        return mse_loss(out, None)

    grads = sigprop.probe.unstack(jax.grad(loss)(params))
    want = [np.linalg.norm(np.asarray(grads[n]["Dense_0"]["kernel"], np.float64))
            for n in ("layer00", "layer01", "layer02")]
    want.append(np.linalg.norm(np.asarray(grads["classifier"]["kernel"], np.float64)))
    assert res.param_layer_names == ("layer00/Dense_0", "layer01/Dense_0", "layer02/Dense_0",
                                     "classifier")
    close(res["param_grad_norm"][0], np.array(want), rtol=1e-4)


def test_max_abs_ratio_median_is_exact():
    rng = np.random.default_rng(4)
    for n in (1, 2, 7, 8, 1001):
        x = rng.normal(size=(n,)).astype(np.float32)
        got = float(metrics.max_abs_ratio(jnp.asarray(x)))
        np.testing.assert_allclose(got, np.abs(x).max() / np.median(np.abs(x)), rtol=1e-6)
    ties = jnp.asarray([3.0, -1.0, 1.0, 1.0, 0.5, 2.0], jnp.float32)
    np.testing.assert_allclose(float(metrics.max_abs_ratio(ties)), 3.0 / 1.0)
    relu = jnp.asarray([0.0, 0.0, 0.0, 2.0], jnp.float32)
    assert float(metrics.max_abs_ratio(relu)) == np.inf


def test_collapsed_tokens_are_measured_accurately():
    """Tokens that all but coincide (the collapsed regime): the effective rank needs the
    float64 Gram recomputation; float32 alone would read the noise floor as spread."""
    rng = np.random.default_rng(6)
    base = rng.normal(size=(2, 1, 64))
    x = (base + 1e-4 * rng.normal(size=(2, 16, 64))).astype(np.float32)
    hi, lo = metrics.record_token_gram(jnp.asarray(x))
    out = metrics.compute({"token_hi": hi[None], "token_lo": lo[None]}, TOKEN)
    want = np_token_metrics(np.asarray(x, np.float64))
    for m in TOKEN:
        close(out[m][0], want[m], rtol=2e-3 if m != "token_residual_ratio" else 5e-3)


def test_token_metrics_through_train_records():
    """MNIST-like rows as tokens: the metrics at step 0 of ``sigprop.train`` equal ``analyze``'s
    on the probe batch with its labels."""
    class RowsAsTokens(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(8)(x.reshape(x.shape[0], x.shape[1], -1))
            h = nn.LayerNorm()(x)
            x = x + nn.SelfAttention(num_heads=2)(h)
            return nn.Dense(10)(nn.LayerNorm()(x).mean(axis=1))

    rng = np.random.default_rng(0)
    images = rng.normal(size=(64, 6, 6, 1)).astype(np.float32)
    labels = rng.integers(0, 10, size=64)
    wanted = ("token_cosine_similarity", "attention_entropy", "param_grad_norm")
    res = sigprop.train(RowsAsTokens(), (images, labels), steps=2, batch_size=16, record_every=2,
                        learning_rate=0.1, metrics=wanted)
    for m in wanted:
        assert res[m].shape[0] == 1 and res[m].shape[1] == 2  # [seed, record, layer]
        assert np.all(np.isfinite(res[m]))


def test_param_grad_norm_on_the_transformer_zoo():
    """The scanned zoo transformer: every weight's ||dL/dW|| equals jax.grad's (unstacked)."""
    model = sigprop.transformer(2, 16, 2, placement="post", vocab=11)
    ids = np.random.default_rng(3).integers(0, 11, size=(3, 6))
    variables = model.init(jax.random.key(2), ids)
    res = sigprop.analyze(model, inputs=ids, variables=variables,
                          metrics=("param_grad_norm",), loss=mse_loss)
    grads = sigprop.probe.unstack(jax.grad(
        lambda p: mse_loss(model.apply({"params": p}, ids), None))(variables["params"]))

    def weight(tree, path):
        for k in path.split("/"):
            tree = tree[k]
        return tree["kernel"] if "kernel" in tree else tree["embedding"]

    assert res.param_layer_names[:2] == ("embed", "block00/attn/query")
    assert res.param_layer_names[-1] == "head" or res.param_layer_names[-1] == "classifier"
    want = [np.linalg.norm(np.asarray(weight(grads, n), np.float64))
            for n in res.param_layer_names]
    close(res["param_grad_norm"][0], np.array(want), rtol=1e-4)


def test_layer_names_lists_attention_and_weights(tokens):
    names = sigprop.layer_names(PreLN(), tokens)
    assert names["attention_layer"] == ("attn",)
    assert names["param_layer"] == ("attn/query", "attn/key", "attn/value", "attn/out", "fc1",
                                     "fc2", "head")
    assert sigprop.layer_names(sigprop.mlp(2, 8), (2, 8))["attention_layer"] == ()
