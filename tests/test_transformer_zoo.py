"""``sigprop.transformer``: shapes, every placement against a hand-written float64 forward pass,
the causal mask, argument errors, layer names, scan == loop, ``analyze`` and the CLI.

The reference forward (``_ref_forward``) is numpy float64 written here from the equations in
``sigprop/nn/transformer.py``'s docstring, reading only the params dict (unstacked): per-token
LayerNorm (eps 1e-5, biased variance), ``softmax(q k^T / sqrt(d_head))`` with masked keys at
probability 0, exact GELU. Tolerance 1e-5 (float32 model against float64).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

import sigprop
from sigprop import cli, probe

DEPTH, WIDTH, HEADS, T, D_IN, B = 3, 16, 2, 8, 5, 4
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _tokens(key=1, shape=(B, T, D_IN)):
    return jax.random.normal(jax.random.key(key), shape)


def _init_out(model, x):
    """``(outputs, variables)`` of ``model.init`` at key 0, compiled (faster than eager here)."""
    return jax.jit(model.init_with_output)(jax.random.key(0), x)


# ------------------------------------------------------------------------------------------------
# the reference forward pass (numpy float64, from the params alone)


def _np(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def _ln(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _attn(x, p, causal):
    q, k, v = (np.einsum("btd,dhe->bthe", x, p[n]["kernel"]) for n in ("query", "key", "value"))
    logits = np.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(q.shape[-1])
    if causal:
        t = x.shape[1]
        logits = np.where(np.tril(np.ones((t, t), bool)), logits, -np.inf)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    probs = e / e.sum(-1, keepdims=True)
    return np.einsum("bthe,hed->btd", np.einsum("bhqk,bkhe->bqhe", probs, v), p["out"]["kernel"])


def _mlp(x, p):
    h = x @ p["fc1"]["kernel"]
    return (0.5 * h * (1 + erf(h / math.sqrt(2)))) @ p["fc2"]["kernel"]


def _ref_forward(params, x, *, placement="pre", skip=True, attention_only=False,
                 branch_scale=1.0, causal=True, depth=DEPTH):
    params = _np(params)
    x = np.asarray(x, np.float64)
    h = x @ params["input_proj"]["kernel"]
    for i in range(depth):
        blk = params[f"block{i:02d}"]
        subs = [("ln1", lambda z, blk=blk: _attn(z, blk["attn"], causal))]
        if not attention_only:
            subs.append(("ln2", lambda z, blk=blk: _mlp(z, blk["mlp"])))
        for ln, f in subs:
            if placement == "pre":
                y = f(_ln(h, blk[ln]))
            elif placement == "peri":
                y = _ln(f(_ln(h, blk[ln])), blk[f"{ln}_out"])
            else:
                y = f(h)
            y = branch_scale * y
            h = h + y if skip else y
            if placement == "post":
                h = _ln(h, blk[ln])
    if placement in ("pre", "peri"):
        h = _ln(h, params["final_norm"])
    c = params["classifier"]
    return h @ c["kernel"] + c["bias"]


_CASES = {
    "pre": {"placement": "pre"},
    "post": {"placement": "post"},
    "peri": {"placement": "peri"},
    "none": {"placement": "none"},
    "post-noskip": {"placement": "post", "skip": False},
    "peri-noskip-bidirectional": {"placement": "peri", "skip": False, "causal": False},
    "peri-attention-only": {"placement": "peri", "attention_only": True},
    "pre-scale-bidirectional": {"placement": "pre", "branch_scale": 0.5, "causal": False},
    "post-scale-attention-only": {"placement": "post", "branch_scale": 0.5, "attention_only": True},
}


@pytest.mark.parametrize("case", list(_CASES))
def test_forward_matches_reference(case):
    kw = _CASES[case]
    model = sigprop.transformer(DEPTH, WIDTH, HEADS, **kw)
    x = _tokens()
    got, variables = _init_out(model, x)
    want = _ref_forward(probe.unstack(variables["params"]), x,
                        **{k: v for k, v in kw.items()})
    assert got.shape == (B, T, 10)
    np.testing.assert_allclose(got, want, **TOL)


def test_token_and_patch_inputs_match_reference():
    """The embedding + positions (tokens) and the patching + mean pool (images), the blocks
    reused from the reference above (pre placement)."""
    model = sigprop.transformer(2, WIDTH, HEADS, vocab=11, max_len=12)
    ids = jax.random.randint(jax.random.key(2), (B, T), 0, 11)
    y, v = _init_out(model, ids)
    p = _np(probe.unstack(v["params"]))
    assert p["pos_embed"].shape == (12, WIDTH)
    h = p["embed"]["embedding"][np.asarray(ids)] + p["pos_embed"][:T][None]
    p["input_proj"] = {"kernel": np.eye(WIDTH)}
    np.testing.assert_allclose(y, _ref_forward(p, h, depth=2), **TOL)

    model = sigprop.transformer(2, WIDTH, HEADS, patch=2, causal=False, n_classes=7)
    img = _tokens(3, (B, 4, 6, 3))
    y, v = _init_out(model, img)
    p = _np(probe.unstack(v["params"]))
    a = np.asarray(img, np.float64)
    patches = np.stack([a[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2, :].reshape(B, -1)
                        for i in range(2) for j in range(3)], axis=1)  # row-major patch order
    h = patches @ p["patch_embed"]["kernel"] + p["pos_embed"][None]
    c = p.pop("classifier")
    p["input_proj"] = {"kernel": np.eye(WIDTH)}
    p["classifier"] = {"kernel": np.eye(WIDTH), "bias": np.zeros(WIDTH)}
    stream = _ref_forward(p, h, depth=2, causal=False)
    want = stream.mean(1) @ c["kernel"] + c["bias"]
    np.testing.assert_allclose(y, want, **TOL)


def test_output_shapes():
    for model, x, shape in [
        (sigprop.transformer(2, WIDTH, HEADS, vocab=11),
         jnp.zeros((B, T), jnp.int32), (B, T, 11)),
        (sigprop.transformer(2, WIDTH, HEADS, patch=4),
         _tokens(1, (B, 8, 8, 3)), (B, 10)),
        (sigprop.transformer(2, WIDTH, HEADS, n_classes=3), _tokens(), (B, T, 3)),
    ]:
        out = jax.eval_shape(lambda x, m=model: m.init_with_output(jax.random.key(0), x)[0], x)
        assert out.shape == shape


def test_causal_mask():
    """Changing token t changes nothing before t (causal) and something before t (not causal);
    token ids, so the embedding and positions are in the path too."""
    t, kw = 5, {"vocab": 11}
    x = jax.random.randint(jax.random.key(2), (B, T), 0, 11)
    x2 = x.at[:, t].set((x[:, t] + 1) % 11)
    for causal in (True, False):
        model = sigprop.transformer(DEPTH, WIDTH, HEADS, causal=causal, **kw)
        apply = jax.jit(model.apply)  # one program for both (bitwise comparison)
        _, v = _init_out(model, x)
        y, y2 = np.asarray(apply(v, x)), np.asarray(apply(v, x2))
        assert np.abs(y[:, t:] - y2[:, t:]).max() > 1e-3
        if causal:
            np.testing.assert_array_equal(y[:, :t], y2[:, :t])
        else:
            assert np.abs(y[:, :t] - y2[:, :t]).max() > 1e-3


# ------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("kw, match", [
    ({"heads": 3}, "heads=3 must divide width=16"),
    ({"placement": "sandwich"}, "placement='sandwich'; allowed: pre, post, peri, none"),
    ({"norm": "evonorm_b0"}, r"norm='evonorm_b0' .*allowed: none, batchnorm, layernorm"),
    ({"norm": "sws"}, "norm='sws'"),
    ({"norm": "nope"}, "norm='nope'"),
    ({"vocab": 10, "patch": 2}, "at most one of vocab"),
    ({"vocab": 10, "n_classes": 5}, "n_classes=5"),
    ({"branch_scale": float("nan")}, "branch_scale"),
    ({"norm": "groupnorm", "group_size": 3}, "group_size=3"),
])
def test_builder_errors(kw, match):
    args = {"depth": 2, "width": WIDTH, "heads": HEADS}
    args.update({k: kw.pop(k) for k in list(kw) if k in args})
    with pytest.raises(ValueError, match=match):
        sigprop.transformer(args["depth"], args["width"], args["heads"], **kw)


@pytest.mark.parametrize("kw, shape, match", [
    ({"patch": 3}, (B, 8, 8, 3), "patch=3 must divide"),
    ({"patch": 2}, (B, 8, 3), r"inputs: .*images \[batch, height, width, channels\]"),
    ({}, (B, T), r"inputs: .*tokens \[batch, seq_len, features\]"),
    ({"vocab": 5}, (B, T, 2), r"inputs: .*token ids \[batch, seq_len\]"),
    ({"vocab": 5, "max_len": 4}, (B, T), "max_len=4"),
])
def test_input_errors(kw, shape, match):
    model = sigprop.transformer(2, WIDTH, HEADS, **kw)
    with pytest.raises(ValueError, match=match):
        sigprop.analyze(model, shape)


def test_float_inputs_to_a_token_model_are_refused():
    with pytest.raises(ValueError, match="integer token ids"):
        sigprop.transformer(2, WIDTH, HEADS, vocab=5).init(jax.random.key(0), _tokens(1, (B, T)))


# ------------------------------------------------------------------------------------------------
# names, scan == loop, analyze


_NAMES = {  # depth 2, the activation layers of each placement
    "pre": ["block00/ln1", "block00/ln2", "block00", "block01/ln1", "block01/ln2", "block01",
            "final_norm"],
    "post": ["block00/ln1", "block00/ln2", "block00", "block01/ln1", "block01/ln2", "block01"],
    "peri": ["block00/ln1", "block00/ln1_out", "block00/ln2", "block00/ln2_out", "block00",
             "block01/ln1", "block01/ln1_out", "block01/ln2", "block01/ln2_out", "block01",
             "final_norm"],
    "none": ["block00", "block01"],
}


@pytest.mark.parametrize("placement", list(_NAMES))
def test_layer_names(placement):
    names = sigprop.layer_names(sigprop.transformer(2, WIDTH, HEADS, placement=placement),
                                (B, T, D_IN))
    assert list(names["layer"]) == _NAMES[placement]
    assert list(names["grad_layer"]) == ["block00/attn", "block00/mlp", "block01/attn",
                                         "block01/mlp"]
    assert list(names["branch_layer"]) == ["block00/attn_branch", "block00/mlp_branch",
                                           "block01/attn_branch", "block01/mlp_branch"]
    if placement == "pre":
        only = sigprop.layer_names(sigprop.transformer(2, WIDTH, HEADS, attention_only=True,
                                                       skip=False), (B, T, D_IN))
        assert list(only["layer"]) == ["block00/ln1", "block00", "block01/ln1", "block01",
                                       "final_norm"]
        assert list(only["grad_layer"]) == ["block00/attn", "block01/attn"]
        assert "branch_layer" not in only or not only["branch_layer"]


def test_block_names_widen_past_100():
    from sigprop.nn.transformer import block_pattern
    assert block_pattern(3).format(2) == "block02"
    assert block_pattern(101).format(7) == "block007"


def assert_scan_equals_loop(scanned, looped, x):
    """The same layer names, the same params from the same key (the scanned ones unstacked),
    the same outputs (also used by test_transformer_variants.py)."""
    assert sigprop.layer_names(scanned, x) == sigprop.layer_names(looped, x)
    (y_scan, v_scan), (y_loop, v_loop) = _init_out(scanned, x), _init_out(looped, x)
    assert any("{" in k for k in v_scan["params"])  # it really scans
    flat_scan = jax.tree_util.tree_leaves_with_path(probe.unstack(v_scan["params"]))
    flat_loop = jax.tree_util.tree_leaves_with_path(v_loop["params"])
    assert [p for p, _ in flat_scan] == [p for p, _ in flat_loop]
    for (path, a), (_, b) in zip(flat_scan, flat_loop):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    np.testing.assert_allclose(y_scan, y_loop, rtol=1e-5, atol=1e-6)


def test_scan_and_loop_agree():
    """The same names, the same params from the same key (unstacked), the same outputs."""
    kw = {"placement": "peri", "vocab": 11}
    x = jax.random.randint(jax.random.key(2), (B, T), 0, 11)
    scanned = sigprop.transformer(DEPTH, WIDTH, HEADS, **kw)
    looped = sigprop.transformer(DEPTH, WIDTH, HEADS, scan=False, **kw)
    assert_scan_equals_loop(scanned, looped, x)


def test_analyze_default_metrics():
    model = sigprop.transformer(DEPTH, WIDTH, HEADS, vocab=11)
    ids = jax.random.randint(jax.random.key(2), (B, T), 0, 11)
    res = sigprop.analyze(model, ids, seeds=2)
    assert {"block00", "block00/ln1", "block02/ln2", "final_norm"} <= set(res.layer_names)
    assert res.layer_names.index("block00/ln1") < res.layer_names.index("block00")
    for metric in ("cosine_similarity", "grad_norm", "residual_variance"):
        v = np.asarray(res[metric])
        assert v.shape[0] == 2 and np.isfinite(v).all(), metric
    assert np.asarray(res.finite).all() and np.asarray(res.grad_finite).all()
    assert (np.asarray(res.grad_norm) > 0).all()


_FLAX_LN = functools.partial(nn.LayerNorm, epsilon=1e-5)


@pytest.mark.parametrize("norm", ["batchnorm", "groupnorm", _FLAX_LN])
def test_other_normalizers_run(norm):
    opts = {"num_groups": 2} if norm == "groupnorm" else {}
    model = sigprop.transformer(2, WIDTH, HEADS, placement="peri", norm=norm, **opts)
    y, v = _init_out(model, _tokens())
    assert y.shape == (B, T, 10) and np.isfinite(np.asarray(y)).all()
    if norm is _FLAX_LN:  # a user factory, called without layout=: flax's per-token LN
        p = probe.unstack(v["params"])
        np.testing.assert_allclose(y, _ref_forward(p, _tokens(), placement="peri", depth=2),
                                   **TOL)


# ------------------------------------------------------------------------------------------------
# the command line


def test_cli_analyze_transformer(capsys, tmp_path):
    out = tmp_path / "t.npz"
    rc = cli.main(["analyze", "--model", "transformer", "--placement", "post", "--depth", "2",
                   "--width", "16", "--heads", "2", "--seq-len", "8", "--norm", "layernorm",
                   "--batch", "4", "--seeds", "2", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "inputs=(4, 8, 16)" in text and "(block01)" in text
    res = sigprop.LayerMetrics.load(out)
    assert list(res.layer_names) == _NAMES["post"]
    assert np.asarray(res.cosine_similarity).shape == (2, len(_NAMES["post"]))
    # a transformer's default adds the token, attention and parameter-gradient metrics
    assert "final token_cosine_similarity" in text and "final param_grad_norm" in text
    assert res.attention_layer_names == ("block00/attn", "block01/attn")
    assert res.param_layer_names[-1] == "classifier"

    rc = cli.main(["analyze", "--model", "transformer", "--placement", "deepnorm", "--qk-norm",
                   "l2", "--depth", "2", "--width", "16", "--heads", "2", "--seq-len", "8",
                   "--batch", "4", "--seeds", "1", "--metrics", "attention_logit_max"])
    assert rc == 0 and "final attention_logit_max" in capsys.readouterr().out

    rc = cli.main(["analyze", "--model", "transformer", "--heads", "3", "--width", "16"])
    assert rc == 2 and "heads=3 must divide width=16" in capsys.readouterr().err
