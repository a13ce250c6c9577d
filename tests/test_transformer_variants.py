"""``sigprop.transformer``'s variants: ``qk_norm`` (ViT-22B's LayerNorm / RMSNorm of queries and
keys, Henry et al.'s l2 QKNorm), ``placement="deepnorm"`` (DeepNet) and ``ln_scaling=True``
(LayerNorm Scaling), each against a float64 numpy forward pass written here from the docstring
equations; scan == loop; ``analyze`` with the attention and parameter metrics.

The reference reuses ``test_transformer_zoo``'s per-token LayerNorm (eps 1e-5), exact-GELU MLP and
params reading; its own attention adds the q/k normalizers (flax's eps 1e-6) and reports each
layer's ``max |logit|`` over the allowed (causal) entries. Params are perturbed away from their
constant inits (norm scales and biases, ``qk_scale``) so that every parameter is exercised.
Tolerance 1e-5 (float32 model against float64).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_transformer_zoo import _ln, _mlp, _np, assert_scan_equals_loop

import sigprop
from sigprop import probe
from sigprop.nn.transformer import qk_scale_default

DEPTH, WIDTH, HEADS, T, D_IN, B = 3, 16, 2, 8, 5, 4
TOL = {"rtol": 1e-5, "atol": 1e-5}
METRICS = ("attention_logit_max", "attention_entropy", "token_cosine_similarity",
           "param_grad_norm")

_CASES = {  # one table: every new option (and combinations) through every test below
    "qk-layernorm": {"qk_norm": "layernorm"},
    "qk-rmsnorm": {"qk_norm": "rmsnorm"},
    "qk-l2": {"qk_norm": "l2"},
    "qk-l2-init-bidirectional": {"qk_norm": "l2", "qk_scale_init": 2.5, "causal": False},
    "deepnorm": {"placement": "deepnorm"},
    "deepnorm-qk-rmsnorm-attention-only": {"placement": "deepnorm", "qk_norm": "rmsnorm",
                                           "attention_only": True},
    "ln-scaling": {"ln_scaling": True},
    "ln-scaling-qk-layernorm-scaled": {"ln_scaling": True, "qk_norm": "layernorm",
                                       "branch_scale": 0.5},
}
# the slower tests (a scanned and a looped model; analyze) take three cases that hold every option
_COVER = ["qk-l2", "deepnorm-qk-rmsnorm-attention-only", "ln-scaling-qk-layernorm-scaled"]


def _tokens(key=1, shape=(B, T, D_IN)):
    return jax.random.normal(jax.random.key(key), shape)


def _perturbed(variables, key=7):
    """Every norm ``scale``/``bias`` and ``qk_scale`` replaced by random values (their inits are
    constants, which would hide a misplaced one); kernels kept."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(variables)
    keys = jax.random.split(jax.random.key(key), len(leaves))
    out = []
    for (path, a), k in zip(leaves, keys):
        name = jax.tree_util.keystr(path[-1:])
        if any(n in name for n in ("'scale'", "'bias'", "'qk_scale'")) \
                and "classifier" not in jax.tree_util.keystr(path):
            a = 1.0 + 0.5 * jax.random.normal(k, a.shape, a.dtype)
        out.append(a)
    return jax.tree_util.tree_unflatten(tree, out)


# ------------------------------------------------------------------------------------------------
# the reference forward pass (numpy float64, from the params alone)


def _qk(z, p, qk_norm):
    """``z [B, T, heads, d_head]`` normalized over ``d_head`` as ``qk_norm`` says (``p``: the
    norm's params)."""
    if qk_norm == "layernorm":
        mu = z.mean(-1, keepdims=True)
        var = ((z - mu) ** 2).mean(-1, keepdims=True)
        return (z - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]
    if qk_norm == "rmsnorm":
        return z / np.sqrt((z ** 2).mean(-1, keepdims=True) + 1e-6) * p["scale"]
    if qk_norm == "l2":
        return z / np.sqrt((z ** 2).sum(-1, keepdims=True) + 1e-6)
    return z


def _attn(x, p, causal, qk_norm, logit_max):
    """Attention; appends the layer's ``max |logit|`` over the allowed entries to ``logit_max``."""
    q, k, v = (np.einsum("btd,dhe->bthe", x, p[n]["kernel"]) for n in ("query", "key", "value"))
    q, k = _qk(q, p.get("query_norm"), qk_norm), _qk(k, p.get("key_norm"), qk_norm)
    logits = np.einsum("bqhe,bkhe->bhqk", q, k)
    logits = logits * p["qk_scale"] if qk_norm == "l2" else logits / math.sqrt(q.shape[-1])
    t = x.shape[1]
    allowed = np.tril(np.ones((t, t), bool)) if causal else np.ones((t, t), bool)
    logit_max.append(np.abs(np.where(allowed, logits, 0.0)).max())
    logits = np.where(allowed, logits, -np.inf)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    probs = e / e.sum(-1, keepdims=True)
    return np.einsum("bthe,hed->btd", np.einsum("bhqk,bkhe->bqhe", probs, v), p["out"]["kernel"])


def _ref_forward(params, x, *, placement="pre", qk_norm=None, ln_scaling=False, causal=True,
                 attention_only=False, branch_scale=1.0, depth=DEPTH, qk_scale_init=None):
    """``(logits, [max |attention logit| per layer])``."""
    del qk_scale_init  # read from the params
    params = _np(params)
    h = np.asarray(x, np.float64) @ params["input_proj"]["kernel"]
    alpha = (2 * depth) ** 0.25 if placement == "deepnorm" else 1.0
    logit_max = []
    for i in range(depth):
        blk = params[f"block{i:02d}"]
        c = 1 / math.sqrt(i + 1) if ln_scaling else 1.0  # LayerNorm Scaling, l = i + 1
        subs = [("ln1", lambda z, blk=blk: _attn(z, blk["attn"], causal, qk_norm, logit_max))]
        if not attention_only:
            subs.append(("ln2", lambda z, blk=blk: _mlp(z, blk["mlp"])))
        for ln, f in subs:
            if placement == "pre":
                h = h + branch_scale * f(c * _ln(h, blk[ln]))
            else:  # deepnorm: N(alpha x + s F(x))
                h = _ln(alpha * h + branch_scale * f(h), blk[ln])
    if placement == "pre":
        h = _ln(h, params["final_norm"])
    cls = params["classifier"]
    return h @ cls["kernel"] + cls["bias"], logit_max


def _model(case, **kw):
    return sigprop.transformer(DEPTH, WIDTH, HEADS, **_CASES[case], **kw)


@pytest.mark.parametrize("case", list(_CASES))
def test_forward_matches_reference(case):
    model = _model(case)
    x = _tokens()
    variables = _perturbed(jax.jit(model.init)(jax.random.key(0), x))
    got = jax.jit(model.apply)(variables, x)
    want, _ = _ref_forward(probe.unstack(variables["params"]), x, **_CASES[case])
    assert got.shape == (B, T, 10)
    np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("case", _COVER)
def test_scan_and_loop_agree(case):
    """The same names, the same params from the same key (unstacked), the same outputs."""
    assert_scan_equals_loop(_model(case), _model(case, scan=False), _tokens())


@pytest.mark.parametrize("case", _COVER)
def test_analyze(case):
    """Two seeds of (perturbed) variables: every metric finite, and ``attention_logit_max`` the
    logits entering the softmax (after qk_norm, with ``qk_scale``) over the allowed keys: the
    reference's, layer by layer."""
    model = _model(case)
    x = _tokens()
    init = jax.jit(model.init)
    seeds = [_perturbed(init(jax.random.key(s), x), key=s) for s in range(2)]
    variables = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *seeds)
    res = sigprop.analyze(model, x, variables=variables, metrics=METRICS, seeds=2)
    for metric in METRICS:
        v = np.asarray(res[metric])
        assert v.shape[0] == 2 and np.isfinite(v).all(), metric
    assert len(res.attention_layer_names) == DEPTH
    assert np.asarray(res.attention_finite).all() and np.asarray(res.param_finite).all()
    for s, v in enumerate(seeds):
        _, want = _ref_forward(probe.unstack(v["params"]), x, **_CASES[case])
        np.testing.assert_allclose(np.asarray(res.attention_logit_max)[s], want, **TOL)


# ------------------------------------------------------------------------------------------------
# inits and errors


def test_qk_scale_init():
    """l2's ``g``: ``log2(T^2 - T)`` for the init sequence length (Henry et al.'s g0), or the
    given value; the same in every block."""
    assert qk_scale_default(8) == math.log2(56) and qk_scale_default(1) == 1.0
    for kw, t, g0 in [({}, 3, math.log2(6)), ({"qk_scale_init": 2.5}, 8, 2.5)]:
        v = jax.jit(_model("qk-l2", **kw).init)(jax.random.key(0), _tokens(1, (B, t, D_IN)))
        g = np.asarray(v["params"][probe.scan_name("block{:02d}")]["attn"]["qk_scale"])
        np.testing.assert_allclose(g, np.full(DEPTH, g0, np.float32))


def test_deepnorm_init_gains():
    """Same key: DeepNorm's ``value``, ``out``, ``fc1``, ``fc2`` are Post-LN's times
    ``beta = (8 depth)^(-1/4)``; ``query`` and ``key`` equal."""
    x = _tokens()
    post, deep = (probe.unstack(jax.jit(sigprop.transformer(DEPTH, WIDTH, HEADS, placement=p)
                                        .init)(jax.random.key(0), x)["params"])
                  for p in ("post", "deepnorm"))
    beta = (8 * DEPTH) ** -0.25
    for i in range(DEPTH):
        a, b = post[f"block{i:02d}"], deep[f"block{i:02d}"]
        for sub, name, gain in [("attn", "query", 1.0), ("attn", "key", 1.0),
                                ("attn", "value", beta), ("attn", "out", beta),
                                ("mlp", "fc1", beta), ("mlp", "fc2", beta)]:
            np.testing.assert_allclose(b[sub][name]["kernel"], gain * a[sub][name]["kernel"],
                                       rtol=1e-6, err_msg=f"{i} {name}")
    assert "final_norm" not in deep


def test_layer_names():
    names = sigprop.layer_names(sigprop.transformer(2, WIDTH, HEADS, placement="deepnorm"),
                                (B, T, D_IN))
    assert list(names["layer"]) == ["block00/ln1", "block00/ln2", "block00", "block01/ln1",
                                    "block01/ln2", "block01"]
    names = sigprop.layer_names(sigprop.transformer(2, WIDTH, HEADS, ln_scaling=True),
                                (B, T, D_IN))
    assert list(names["layer"])[-1] == "final_norm"


@pytest.mark.parametrize("kw, match", [
    ({"qk_norm": "ln"}, "qk_norm='ln'; allowed: None, 'layernorm', 'rmsnorm', 'l2'"),
    ({"qk_norm": True}, "qk_norm=True; allowed"),
    ({"qk_scale_init": 2.0}, "qk_scale_init=2.0 applies only with qk_norm='l2'"),
    ({"qk_norm": "l2", "qk_scale_init": float("inf")}, "qk_scale_init=inf must be"),
    ({"ln_scaling": True, "placement": "post"},
     "ln_scaling=True .*placement='post' .*allowed with ln_scaling: pre"),
    ({"ln_scaling": "yes"}, "ln_scaling='yes': expected True or False"),
    ({"placement": "sandwich"}, "placement='sandwich'; allowed: .*deepnorm"),
])
def test_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        sigprop.transformer(2, WIDTH, HEADS, **kw)

