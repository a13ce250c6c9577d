"""Transformer-era normalizers: ``placement="ngpt"`` (nGPT), ``weight="sigma_reparam"`` /
``norm="sigma_reparam"`` (sigmaReparam) and ``norm="sepnorm"`` with ``cls_token=True`` (SepNorm),
each against a float64 numpy implementation written here from the docstring equations.

The reference reads only the (unstacked) params: ``Norm(z) = z / ||z||``; nGPT's scaled params
``p * init / scale`` (alpha: ``0.05 / (1 / sqrt(D))``, ``s_qk`` and ``s_z``: ``1 / (1 / sqrt(D))``,
``s_u``, ``s_nu``: 1); sigma by power iteration from ``u0_i = sin(1 + i)`` (the documented fixed
start), with ``u``, ``v`` held at their values for the unperturbed weights when the reference is
differentiated (the documented ``stop_gradient``). Gradients (w.r.t. the inputs and every
parameter) are compared with central finite differences of the numpy reference in float64,
element by element. Params are perturbed away from their constant inits so a misplaced one
shows. Tolerance: 1e-5 relative to the largest entry (float32 model against float64).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf
from test_transformer_zoo import assert_scan_equals_loop

import sigprop
from sigprop import metrics as registry
from sigprop import probe
from sigprop.nn import layers, normalizers
from sigprop.nn.sepnorm import SepNorm

DEPTH, WIDTH, HEADS, B, T, D_IN = 2, 8, 2, 3, 5, 4
IMAGE, PATCH, CHANNELS = 8, 4, 2  # 4 patches + the class token
RTOL = 1e-5
ITERS = layers.SIGMA_ITERATIONS
METRICS = registry.DEFAULT_METRICS + ("attention_logit_max", "attention_entropy",
                                      "token_cosine_similarity", "param_grad_norm")

_CASES = {  # one table: each new option, alone and combined
    "ngpt": {"placement": "ngpt"},
    "ngpt-bidirectional-alpha": {"placement": "ngpt", "causal": False, "alpha_init": 0.2},
    "ngpt-sigma-attention-only": {"placement": "ngpt", "weight": "sigma_reparam",
                                  "attention_only": True},
    "sigma-pre": {"weight": "sigma_reparam"},
    "sigma-none-3iters": {"placement": "none", "weight": "sigma_reparam", "sigma_iterations": 3},
    "sepnorm-vit": {"patch": PATCH, "cls_token": True, "norm": "sepnorm", "causal": False},
    # batch statistics over the B x (T - 1) patch tokens (a batchnorm of the class tokens would
    # see B identical tokens at block 0: its output, and the class token's gradient, float32 noise)
    "sepnorm-bn-tokens-sigma": {"patch": PATCH, "cls_token": True, "norm": "sepnorm",
                                "cls_norm": "rmsnorm", "token_norm": "batchnorm",
                                "causal": False, "weight": "sigma_reparam"},
    "cls-token-layernorm": {"patch": PATCH, "cls_token": True, "causal": False},
}
_COVER = ["ngpt", "ngpt-sigma-attention-only", "sigma-pre", "sepnorm-bn-tokens-sigma"]


def _model(case, **kw):
    return sigprop.transformer(DEPTH, WIDTH, HEADS, **_CASES[case], **kw)


def _inputs(case, seed=1):
    key = jax.random.key(seed)
    if "patch" in _CASES[case]:
        return jax.random.normal(key, (B, IMAGE, IMAGE, CHANNELS))
    return jax.random.normal(key, (B, T, D_IN))


def _perturbed(variables, key=7):
    """Every param but the kernels moved off its constant init: biases ``0.3 N(0, 1)``, the
    others (norm scales, gains, alphas, ``s_*``, the class token) times ``1 + 0.3 N(0, 1)``."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(variables)
    keys = jax.random.split(jax.random.key(key), len(leaves))
    out = []
    for (path, a), k in zip(leaves, keys):
        name = jax.tree_util.keystr(path[-1:])
        z = 0.3 * jax.random.normal(k, a.shape, a.dtype)
        if "'bias'" in name:
            a = z
        elif "'kernel'" not in name:
            a = a * (1.0 + z)
        out.append(a)
    return jax.tree_util.tree_unflatten(tree, out)


# ------------------------------------------------------------------------------------------------
# The float64 numpy reference


def _unit(z, axis=-1):
    return z / np.sqrt((z * z).sum(axis, keepdims=True))


def _power(w2, iters):
    """``(u, v)`` after ``iters`` power iterations from ``u0_i = sin(1 + i)``."""
    u = _unit(np.sin(1.0 + np.arange(w2.shape[0])))
    for _ in range(iters):
        v = _unit(w2.T @ u)
        u = _unit(w2 @ v)
    return u, v


class _Ref:
    """The reference forward pass of one case; ``uv`` caches each kernel's power-iteration
    vectors, computed at the unperturbed params and then held constant (the gradient's
    ``stop_gradient``)."""

    def __init__(self, case):
        kw = dict(_CASES[case])
        self.placement = kw.get("placement", "pre")
        self.causal = kw.get("causal", True)
        self.sigma = kw.get("weight") == "sigma_reparam"
        self.iters = kw.get("sigma_iterations", ITERS)
        self.patch = kw.get("patch")
        self.cls_token = kw.get("cls_token", False)
        self.attention_only = kw.get("attention_only", False)
        self.alpha0 = kw.get("alpha_init", 0.05)
        self.sep = (kw.get("cls_norm", "layernorm"), kw.get("token_norm", "layernorm")) \
            if kw.get("norm") == "sepnorm" else None
        self.uv = {}
        self.logit_max = []

    # -- pieces
    def kernel(self, p, path, n_in, sphere):
        """The kernel as used: flattened ``[fan_in, out]``, nGPT-normalized along ``D``, then
        ``gamma / sigma W``."""
        w = p["kernel"]
        w2 = w.reshape(int(np.prod(w.shape[:n_in])), -1)
        if self.placement == "ngpt" and sphere:
            w2 = _unit(w2, 0 if sphere == "in" else 1)
        if self.sigma:
            if path not in self.uv:
                self.uv[path] = _power(w2, self.iters)
            u, v = self.uv[path]
            w2 = p["gain"] * w2 / (u @ w2 @ v)
        return w2

    def norm(self, x, p, name=None):
        """The block's normalizer (``name`` None): LayerNorm, or SepNorm's two; else ``name``."""
        if name is None and self.sep is not None:
            return np.concatenate([self.norm(x[:, :1], p["cls"], self.sep[0]),
                                   self.norm(x[:, 1:], p["tokens"], self.sep[1])], axis=1)
        if name in (None, "layernorm"):
            y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
        elif name == "rmsnorm":
            y = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5)
        elif name == "batchnorm":  # over the B x T' tokens in hand, per channel
            y = (x - x.mean((0, 1), keepdims=True)) / np.sqrt(x.var((0, 1), keepdims=True) + 1e-5)
        return y * p["scale"] + p["bias"]

    def attn(self, x, p, path):
        b, t, d = x.shape
        dh = d // HEADS
        q, k, v = (x @ self.kernel(p[n], f"{path}/{n}", 1, "in") for n in ("query", "key", "value"))
        q, k, v = (z.reshape(b, t, HEADS, dh) for z in (q, k, v))
        if self.placement == "ngpt":
            s_qk = p["qk_scale"] * math.sqrt(d)  # stored at 1 / sqrt(D), effective init 1
            q, k = _unit(q) * s_qk, _unit(k) * s_qk
            logits = np.einsum("bqhe,bkhe->bhqk", q, k) * math.sqrt(dh)
        else:
            logits = np.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(dh)
        allowed = np.tril(np.ones((t, t), bool)) if self.causal else np.ones((t, t), bool)
        self.logit_max.append(np.abs(np.where(allowed, logits, 0.0)).max())
        logits = np.where(allowed, logits, -np.inf)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        o = np.einsum("bhqk,bkhe->bqhe", e / e.sum(-1, keepdims=True), v).reshape(b, t, d)
        return o @ self.kernel(p["out"], f"{path}/out", 2, "out")

    def mlp(self, x, p, path):
        h = x @ self.kernel(p["fc1"], f"{path}/fc1", 1, "in")
        if self.placement == "ngpt":
            nu = x @ self.kernel(p["fc1_gate"], f"{path}/fc1_gate", 1, "in")
            u, nu = h * p["s_u"], nu * p["s_nu"] * math.sqrt(x.shape[-1])
            h = u * nu / (1.0 + np.exp(-nu))  # u * SiLU(nu)
        else:
            h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))  # exact GELU
        return h @ self.kernel(p["fc2"], f"{path}/fc2", 1, "out")

    # -- the model
    def embed(self, x, params):
        if not self.patch:
            return x @ params["input_proj"]["kernel"]
        b, p, c = x.shape[0], self.patch, x.shape[-1]
        n = x.shape[1] // p
        x = x.reshape(b, n, p, n, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, n * n, p * p * c)
        h = x @ params["patch_embed"]["kernel"] + params["pos_embed"]
        if self.cls_token:
            cls = np.broadcast_to(params["cls_token"], (b, 1, h.shape[-1]))
            h = np.concatenate([cls, h], axis=1)
        return h

    def __call__(self, params, x):
        self.logit_max = []
        h = self.embed(np.asarray(x, np.float64), params)
        d = h.shape[-1]
        if self.placement == "ngpt":
            h = _unit(h)
        for i in range(DEPTH):
            path = f"block{i:02d}"
            blk = params[path]
            subs = [("attn", "ln1", lambda z, blk=blk, path=path: self.attn(z, blk["attn"], path))]
            if not self.attention_only:
                subs.append(("mlp", "ln2",
                             lambda z, blk=blk, path=path: self.mlp(z, blk["mlp"], path)))
            for name, ln, f in subs:
                if self.placement == "ngpt":
                    alpha = blk[f"alpha_{name}"] * (self.alpha0 * math.sqrt(d))
                    h = _unit(h + alpha * (_unit(f(h)) - h))
                elif self.placement == "pre":
                    h = h + f(self.norm(h, blk[ln]))
                else:  # none
                    h = h + f(h)
        if self.placement == "pre":
            h = self.norm(h, params["final_norm"])
        if self.patch:
            h = h[:, 0] if self.cls_token else h.mean(1)
        c = params["classifier"]
        if self.placement == "ngpt":
            return (h @ _unit(c["kernel"], 0)) * (c["logit_scale"] * math.sqrt(d))
        return h @ c["kernel"] + c["bias"]


def _np64(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


ENTRIES = 8  # finite-difference entries checked per array (all of a smaller one)


def _fd_entries(f, x, params, r, h=1e-6):
    """Central finite differences of ``sum(f(params, x) * r)`` in float64 at ``ENTRIES``
    random entries (all of a smaller array) of ``x`` and of every param: a list of
    ``(name, array path, flat indices, values)``."""
    x = np.array(x, np.float64)
    rng = np.random.default_rng(5)
    out = []
    for name, a in [("x", x)] + [(jax.tree_util.keystr(k), v) for k, v in
                                 jax.tree_util.tree_leaves_with_path(params)]:
        flat = a.reshape(-1)
        idx = np.arange(flat.size) if flat.size <= ENTRIES else \
            rng.choice(flat.size, ENTRIES, replace=False)
        vals = []
        for i in idx:
            old = flat[i]
            flat[i] = old + h
            up = np.sum(f(params, x) * r)
            flat[i] = old - h
            down = np.sum(f(params, x) * r)
            flat[i] = old
            vals.append((up - down) / (2 * h))
        out.append((name, idx, np.asarray(vals)))
    return out


def _close(actual, expected, what="", scale=None):
    """|a - e| <= RTOL * (|e| + scale), entrywise; ``scale`` defaults to max |e|."""
    expected = np.asarray(expected, np.float64)
    scale = np.max(np.abs(expected)) if scale is None else scale
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=RTOL,
                               atol=RTOL * scale, err_msg=what)


def _check_against(model, variables, x, ref, out_shape):
    """Forward and gradients (inputs, every param) of ``model`` against ``ref(params, x)``; the
    gradients entry by entry (``ENTRIES`` per array) against finite differences, to ``RTOL``
    relative to the largest of them."""
    y = jax.jit(model.apply)(variables, x)
    assert y.shape == out_shape
    params = _np64(probe.unstack(variables["params"]))
    _close(y, ref(params, x), "forward")
    r = np.random.default_rng(3).standard_normal(y.shape)

    def loss(v, x):
        return jnp.sum(model.apply(v, x) * r.astype(np.float32))

    gv, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables, x)
    got = [("x", gx)] + [(jax.tree_util.keystr(k), v) for k, v in
                         jax.tree_util.tree_leaves_with_path(probe.unstack(gv["params"]))]
    want = _fd_entries(ref, x, params, r)
    assert [n for n, _ in got] == [n for n, _, _ in want]
    scale = max(np.max(np.abs(v)) for _, _, v in want)
    for (name, g), (_, idx, v) in zip(got, want):
        _close(np.asarray(g).reshape(-1)[idx], v, f"d/d{name}", scale)


# ------------------------------------------------------------------------------------------------
# Reference tests


@pytest.mark.parametrize("case", list(_CASES))
def test_forward_and_gradients_match_reference(case):
    model, x = _model(case), _inputs(case)
    variables = _perturbed(jax.jit(model.init)(jax.random.key(0), x))
    out = (B, 10) if "patch" in _CASES[case] else (B, T, 10)
    _check_against(model, variables, x, _Ref(case), out)


def test_mlp_sigma_reparam_matches_reference():
    """``sigprop.mlp(norm="sigma_reparam")``: every dense ``relu(x gamma / sigma(W) W + b)``,
    the classifier plain, on ``[B, T, D]`` inputs (flattened)."""
    model = sigprop.mlp(3, WIDTH, norm="sigma_reparam", n_classes=5)
    x = jax.random.normal(jax.random.key(2), (B, T, D_IN))
    variables = _perturbed(jax.jit(model.init)(jax.random.key(0), x))
    uv = {}

    def ref(params, x):
        h = np.asarray(x, np.float64).reshape(x.shape[0], -1)
        for i in range(3):
            p = params[f"layer{i:02d}"]["Dense_0"]
            w = p["kernel"]
            if i not in uv:
                uv[i] = _power(w, ITERS)
            u, v = uv[i]
            h = np.maximum(h @ (p["gain"] * w / (u @ w @ v)) + p["bias"], 0.0)
        c = params["classifier"]
        return h @ c["kernel"] + c["bias"]

    _check_against(model, variables, x, ref, (B, 5))


def test_sepnorm_module_matches_reference():
    """The module alone on ``[B, T, D]``: batch statistics of the class token over the ``B``
    class tokens, of the others over ``B x (T - 1)`` tokens; separate affines."""
    spec = normalizers.spec
    module = SepNorm(spec("batchnorm"), spec("batchnorm"))
    x = jax.random.normal(jax.random.key(4), (B, T, WIDTH)) * 2.0 + 0.5
    variables = _perturbed(module.init(jax.random.key(0), x))
    ref = _Ref("sepnorm-vit")
    ref.sep = ("batchnorm", "batchnorm")

    def f(params, x):
        return ref.norm(np.asarray(x, np.float64), params)

    _check_against(module, variables, x, f, x.shape)
    # the statistic differs from one batchnorm over all tokens
    joint = (x - x.mean((0, 1), keepdims=True)) / jnp.sqrt(x.var((0, 1), keepdims=True) + 1e-5)
    assert not np.allclose(module.apply(module.init(jax.random.key(0), x), x), joint, atol=1e-3)


def test_spectral_norm_against_svd():
    """``spectral_norm`` vs numpy's SVD on 20 Xavier / He draws of the zoo's shapes, to the
    accuracy measured for :data:`SIGMA_ITERATIONS` on 200 draws (an underestimate; worst 2.5e-2,
    median 4.8e-5); and its gradient ``u v^T`` vs the top singular vectors when the gap is
    clear (to 1e-5)."""
    rng = np.random.default_rng(0)
    for shape, std in [((16, 16), None), ((64, 64), None), ((64, 256), None), ((256, 64), None),
                       ((3, 3, 16, 16), math.sqrt(2 / 144))]:
        ws = []
        for _ in range(20):
            if std is None:
                lim = math.sqrt(6 / (shape[0] + shape[1]))
                ws.append(rng.uniform(-lim, lim, shape))
            else:
                ws.append(rng.normal(0, std, shape))
        ws = np.asarray(ws, np.float32)
        got = np.asarray(jax.jit(jax.vmap(layers.spectral_norm))(jnp.asarray(ws)), np.float64)
        top = np.array([np.linalg.svd(w.astype(np.float64).reshape(-1, shape[-1]),
                                      compute_uv=False)[0] for w in ws])
        err = (top - got) / top
        assert err.min() > -1e-5, (shape, err.min())  # never above the top singular value
        assert err.max() < 3e-2 and np.median(err) < 1e-3, (shape, err.max(), np.median(err))
    w = rng.standard_normal((24, 12)) * 0.2
    w += 3.0 * np.outer(_unit(rng.standard_normal(24)), _unit(rng.standard_normal(12)))
    u, s, vt = np.linalg.svd(w)
    g = jax.grad(layers.spectral_norm)(jnp.asarray(w, jnp.float32))
    _close(layers.spectral_norm(jnp.asarray(w, jnp.float32)), s[0])
    _close(g, np.outer(u[:, 0], vt[0]))


# ------------------------------------------------------------------------------------------------
# scan == loop, analyze, names, inits


@pytest.mark.parametrize("case", _COVER)
def test_scan_and_loop_agree(case):
    assert_scan_equals_loop(_model(case), _model(case, scan=False), _inputs(case))


@pytest.mark.parametrize("case", _COVER)
def test_analyze(case):
    """Two seeds: every metric finite; ``attention_logit_max`` is the reference's logits
    entering the softmax (nGPT: ``sqrt(d_head) s_qk^2 q_hat . k_hat``), layer by layer."""
    model, x = _model(case), _inputs(case)
    init = jax.jit(model.init)
    seeds = [_perturbed(init(jax.random.key(s), x), key=s) for s in range(2)]
    variables = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *seeds)
    res = sigprop.analyze(model, x, variables=variables, metrics=METRICS, seeds=2)
    for metric in METRICS:
        v = np.asarray(res[metric])
        assert v.shape[0] == 2 and np.isfinite(v).all(), metric
    assert np.asarray(res.finite).all() and np.asarray(res.grad_finite).all()
    for s, v in enumerate(seeds):
        ref = _Ref(case)
        ref(_np64(probe.unstack(v["params"])), x)
        _close(np.asarray(res.attention_logit_max)[s], ref.logit_max)


def test_analyze_fresh_inits():
    """``analyze`` drawing its own variables (seeds=2) from the inputs' shape."""
    for case in ("ngpt-bidirectional-alpha", "sepnorm-vit"):
        res = sigprop.analyze(_model(case), _inputs(case).shape, seeds=2,
                              metrics=("cosine_similarity", "grad_norm"))
        assert np.isfinite(np.asarray(res.cosine_similarity)).all(), case
        assert np.isfinite(np.asarray(res.grad_norm)).all(), case


def test_ngpt_stream_on_the_sphere_and_inits():
    """Every block's output has unit norm per token; the effective alphas start at
    ``alpha_init``, ``s_qk``, ``s_z`` at 1 (stored at ``1 / sqrt(D)``), ``s_u``, ``s_nu`` at 1; no
    normalizer params; layer names are the blocks only."""
    model, x = _model("ngpt"), _inputs("ngpt")
    names = sigprop.layer_names(model, x)
    assert list(names["layer"]) == ["block00", "block01"]
    looped = _model("ngpt", scan=False)
    _, state = looped.apply(looped.init(jax.random.key(0), x), x, capture_intermediates=True)
    for i in range(DEPTH):
        (h,) = state["intermediates"][f"block{i:02d}"]["__call__"]
        np.testing.assert_allclose(np.linalg.norm(np.asarray(h, np.float64), axis=-1), 1.0,
                                   rtol=1e-5)
    p = probe.unstack(jax.jit(model.init)(jax.random.key(0), x)["params"])
    blk, scale = p["block00"], 1.0 / math.sqrt(WIDTH)
    np.testing.assert_allclose(blk["alpha_attn"], np.full(WIDTH, scale), rtol=1e-6)
    np.testing.assert_allclose(blk["attn"]["qk_scale"], np.full((HEADS, WIDTH // HEADS), scale),
                               rtol=1e-6)
    np.testing.assert_allclose(p["classifier"]["logit_scale"], np.full(10, scale), rtol=1e-6)
    np.testing.assert_array_equal(blk["mlp"]["s_nu"], np.ones(4 * WIDTH))
    assert "final_norm" not in p and "ln1" not in blk and "bias" not in p["classifier"]


def test_sigma_reparam_init_and_names():
    """One scalar ``gain`` (init 1) per projection; ``gamma / sigma(W) W`` has spectral norm
    ``gamma`` (to the power iteration's accuracy); the mlp's dense layers too."""
    model, x = _model("sigma-pre"), _inputs("sigma-pre")
    p = probe.unstack(jax.jit(model.init)(jax.random.key(0), x)["params"])
    attn, mlp = p["block00"]["attn"], p["block00"]["mlp"]  # one scalar gamma per projection
    for q, fan_in in [(attn["query"], WIDTH), (attn["key"], WIDTH), (attn["value"], WIDTH),
                      (attn["out"], WIDTH), (mlp["fc1"], WIDTH), (mlp["fc2"], 4 * WIDTH)]:
        assert q["gain"].shape == () and float(q["gain"]) == 1.0
        w = np.asarray(layers.transform_weight(q["kernel"].reshape(fan_in, -1), "sigma_reparam",
                                               q["gain"]), np.float64)
        assert abs(np.linalg.svd(w, compute_uv=False)[0] - 1.0) < 3e-2
    assert "gain" not in p["input_proj"] and "gain" not in p["classifier"]
    v = sigprop.mlp(2, WIDTH, norm="sigma_reparam").init(jax.random.key(0), jnp.ones((2, 3)))
    assert probe.unstack(v["params"])["layer01"]["Dense_0"]["gain"].shape == ()


def test_cls_token_init_and_readout():
    """The class token is ``N(0, 0.02^2)``, ``[D]``, apart from the patches' positions (the
    reference tests check that the classifier reads it)."""
    model, x = _model("cls-token-layernorm"), _inputs("cls-token-layernorm")
    p = jax.jit(model.init)(jax.random.key(0), x)["params"]
    assert p["cls_token"].shape == (WIDTH,) and 0.002 < float(jnp.std(p["cls_token"])) < 0.06
    assert p["pos_embed"].shape == ((IMAGE // PATCH) ** 2, WIDTH)


# ------------------------------------------------------------------------------------------------
# The registry, the CLI, errors


def test_sigma_reparam_is_a_parametric_normalizer():
    s = normalizers.spec("sigma_reparam")
    assert s.weight == "sigma_reparam" and s.bias and s.activation is None
    assert "sigma_reparam" in normalizers.names()
    x = jnp.ones((2, 4, 4, 3))
    for model in (sigprop.cnn("uniform", depth=2, width=4, norm="sigma_reparam", n_classes=3),
                  sigprop.models.resnet(1, (4,), norm="sigma_reparam", n_classes=3)):
        v = probe.unstack(model.init(jax.random.key(0), x)["params"])
        gains = [a for path, a in jax.tree_util.tree_leaves_with_path(v)
                 if "gain" in jax.tree_util.keystr(path)]
        assert gains and all(g.shape == () for g in gains)


def test_cli_placement_ngpt(capsys):
    from sigprop import cli

    rc = cli.main(["analyze", "--model", "transformer", "--placement", "ngpt", "--depth", "2",
                   "--width", "8", "--heads", "2", "--seq-len", "4", "--batch", "3",
                   "--seeds", "2", "--metrics", "cosine_similarity,attention_entropy"])
    assert rc == 0
    assert "final cosine_similarity" in capsys.readouterr().out


def test_cli_sepnorm_cls_token_sigma_reparam(capsys):
    from sigprop import cli

    rc = cli.main(["analyze", "--model", "transformer", "--patch", "4", "--cls-token", "--norm",
                   "sepnorm", "--weight", "sigma_reparam", "--depth", "2", "--width", "8",
                   "--heads", "2", "--image", "8", "--batch", "3", "--seeds", "1", "--metrics",
                   "token_cosine_similarity"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "final token_cosine_similarity" in out and "(final_norm)" in out


@pytest.mark.parametrize("kw, match", [
    ({"weight": "spectral"}, "weight='spectral'; allowed: plain, sigma_reparam"),
    ({"weight": "sigma_reparam", "sigma_iterations": 0}, "sigma_iterations=0 must be an integer"),
    ({"weight": "sigma_reparam", "sigma_iterations": 2.0}, "sigma_iterations=2.0 must be"),
    ({"sigma_iterations": 5}, "sigma_iterations=5 applies only with weight='sigma_reparam'"),
    ({"norm": "sepnorm", "patch": PATCH}, "norm='sepnorm' .*needs cls_token=True"),
    ({"norm": "sepnorm"}, "norm='sepnorm' .*needs cls_token=True"),
    ({"cls_token": True}, "cls_token=True .*pass patch="),
    ({"cls_token": 1.5, "patch": PATCH}, "cls_token=1.5: expected True or False"),
    ({"norm": "sepnorm", "patch": PATCH, "cls_token": True, "cls_norm": "weightnorm"},
     "cls_norm='weightnorm'; allowed: none, batchnorm"),
    ({"norm": "sepnorm", "patch": PATCH, "cls_token": True, "token_norm": "sepnorm"},
     "token_norm='sepnorm'; allowed"),
    ({"norm": "sigma_reparam"}, "norm='sigma_reparam' is not a per-token activation normalizer"),
    ({"placement": "ngpt", "qk_norm": "l2"}, "qk_norm='l2' does not apply with placement='ngpt'"),
    ({"placement": "ngpt", "skip": False}, "skip=False does not apply with placement='ngpt'"),
    ({"placement": "ngpt", "branch_scale": 0.5}, "branch_scale=0.5 does not apply"),
    ({"alpha_init": 0.1}, "alpha_init=0.1 applies only with placement='ngpt'"),
    ({"placement": "ngpt", "alpha_init": float("nan")}, "alpha_init=nan must be"),
    ({"placement": "ngpt", "ln_scaling": True}, "ln_scaling=True .*placement='ngpt'"),
    ({"placement": "hypersphere"}, "placement='hypersphere'; allowed: .*deepnorm, ngpt"),
])
def test_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        sigprop.transformer(2, WIDTH, HEADS, **kw)


def test_sepnorm_module_errors():
    spec = normalizers.spec("layernorm")
    with pytest.raises(ValueError, match="layout='image'.*tokens"):
        SepNorm(spec, spec, layout="image").init(jax.random.key(0), jnp.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="T >= 2"):
        SepNorm(spec, spec).init(jax.random.key(0), jnp.ones((2, 1, 4)))
