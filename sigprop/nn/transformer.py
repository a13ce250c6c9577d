"""Transformer: token, patch or continuous inputs -> ``depth`` attention(+MLP) blocks -> logits.

This module owns the zoo's transformer: the block with its normalizer placements (pre, post,
peri, none, deepnorm; nGPT's block is :mod:`sigprop.nn.ngpt`'s), the three input kinds (and the
ViT's class token) and their outputs, and :func:`transformer`, the builder that checks every
argument. The sublayers (attention, MLPs, projections) are :mod:`sigprop.nn.attention`'s;
``norm="sepnorm"`` is :mod:`sigprop.nn.sepnorm`'s.

Block ``i`` (``block{i:02d}``, more digits past 100 blocks), with ``F`` a sublayer (attention
``attn``, then the MLP ``mlp``), ``s = branch_scale`` and ``N`` a normalizer acting per token
(``layout="tokens"``, :mod:`sigprop.nn.normalizers`)::

    pre:   x = x + s F(N(x))              (a final N after the last block)
    post:  x = N(x + s F(x))
    peri:  x = x + s N_out(F(N_in(x)))    (a final N after the last block)
    none:  x = x + s F(x)
    deepnorm: x = N(alpha x + s F(x)),  alpha = (2 depth)^(1/4)   (no final N)
    pre, ln_scaling=True: x = x + s F(N(x) / sqrt(l)),  l = i + 1 (a final N, unscaled)
    ngpt: x = Norm(x + alpha_F * (Norm(F(x)) - x)),  Norm(z) = z / ||z||   (no N; sigprop.nn.ngpt)

``skip=False`` drops the ``x +`` (post: ``x = N(s F(x))``; deepnorm: ``x = N(s F(x))``).
DeepNorm (Wang et al. 2022, DeepNet, arXiv 2203.00555, decoder-only with ``depth`` layers):
Post-LN with the stream up-weighted by ``alpha`` and the MLP's ``fc1``/``fc2`` and attention's
``value``/``out`` drawn Xavier uniform with gain ``beta = (8 depth)^(-1/4)`` (``query``/``key``
gain 1). LayerNorm Scaling (Sun et al. 2025, The Curse of Depth in Large Language Models, arXiv
2502.05795): Pre-LN whose block-``l`` normalizer outputs (both, 1-based ``l``) are scaled by
``1 / sqrt(l)``; the block index travels through the scan with the keys. ``qk_norm``: see
:class:`Attention`. Normalizers: ``ln1`` (attention's input or, post, the stream after it),
``ln2`` (the MLP's), ``ln1_out`` / ``ln2_out`` (peri's output norms), ``final_norm``; under
``attn``: ``query_norm`` / ``key_norm`` (qk_norm LN / RMS) or ``qk_scale`` (qk_norm l2). ``weight="sigma_reparam"`` (Zhai et al. 2023, arXiv 2303.06296):
every projection of every block (``query``, ``key``, ``value``, ``out``, ``fc1``, ``fc2``; nGPT's
``fc1_gate`` too) is ``gamma / sigma(W) W`` (a scalar ``gain`` per projection, init 1;
:func:`sigprop.nn.layers.spectral_norm`), with any placement; the embedding and the classifier
stay plain. ``norm="sepnorm"``: each normalizer is two, one for the class token and one for
the other tokens (:class:`sigprop.nn.sepnorm.SepNorm`). ``cls_token=True`` (``patch`` models):
a learned class token, ``N(0, 0.02^2)`` (BERT's and timm's ViT init), is prepended to the
patch tokens after their projection and positions (its own position is in the token), and the
classifier reads it instead of the mean over tokens.

Layer names (taps, in call order). Activation taps: ``block03/ln1`` ... (each normalizer's
output, with ln_scaling after the ``1 / sqrt(l)``; sepnorm's two halves as one tap),
``block03`` (the residual stream after the block), ``final_norm``; ngpt: the blocks only.
Attention tap: ``block03/attn`` (the probabilities, with the logits entering the softmax before
masking, so the qk-normalized ones under qk_norm and ngpt, and the causal mask). Gradient taps:
``block03/attn`` (the output projection's output) and ``block03/mlp`` (the MLP's output; ngpt:
both before its ``Norm``). Branch taps (skip=True only): ``block03/attn_branch``,
``block03/mlp_branch`` (``s F(...)`` before the addition; ngpt: ``alpha_F * (Norm(F(x)) - x)``:
``residual_variance``).

Init: the attention and MLP projections are Xavier uniform (Glorot & Bengio 2010;
``U(+-sqrt(6 / (fan_in + fan_out)))``, the Transformer's setting as studied by Xiong et al. 2020,
arXiv 2002.04745), attention's ``query``/``key``/``value``/``out`` drawn over the flattened
``width x width`` matrix as flax's ``DenseGeneral`` does; no biases anywhere but in the classifier
(so the blocks are exactly ``F`` as written above; a zero-initialized bias would not change
anything at init). Token embedding ``N(0, 1)`` (flax's ``nn.Embed``); learned positions
``N(0, 0.02^2)`` (GPT-2, BERT); the patch and continuous input projections LeCun normal
(variance ``1 / fan_in``, ViT's patch embedding), so the stream enters the blocks at about the
inputs' variance. The classifier is sigprop's (:func:`sigprop.nn.layers.classifier_init`, zero
bias). Each block's projections are drawn from ``fold_in(k_i, tag)``, ``k_i`` the ``i``-th of
``split(make_rng('params'), depth)`` at the model's level: the scanned and the unrolled model
hold the same params from the same key (normalizer params, qk_norm's included, are constants;
ngpt's ``fc1_gate`` has its own tag).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sigprop.nn import normalizers, sepnorm
from sigprop.nn.attention import (
    QK_NORMS,
    TRANSFORMER_WEIGHTS,
    Attention,
    FeedForward,
    qk_scale_default,
    split_keys,
    unit,
)
from sigprop.nn.common import SCAN_AXES, head
from sigprop.nn.layers import SIGMA_ITERATIONS, Dense, check_activation, classifier_init
from sigprop.nn.ngpt import ALPHA_INIT, NGPTBlock, NGPTHead
from sigprop.taps import probe
from sigprop.util.checks import check_positive

PLACEMENTS = ("pre", "post", "peri", "none", "deepnorm", "ngpt")
NORMS = tuple(n for n in normalizers.names() if n not in (
    "weightnorm", "sws", "sigma_reparam", "prelayernorm", "preregnorm", "evonorm_s0",
    "evonorm_b0"))
"""The registered normalizers a transformer takes: those acting on activations alone, per token
(the weight reparametrizations, the input-centering pair and EvoNorm's activation replacements
are not a per-token normalizer slot)."""
DEFAULT_CLASSES = 10
DEFAULT_MAX_LEN = 1024
__all__ = ["PLACEMENTS", "NORMS", "QK_NORMS", "TRANSFORMER_WEIGHTS", "Attention", "Transformer",
           "transformer", "block_pattern", "qk_scale_default"]

lecun_normal = nn.initializers.variance_scaling(1.0, "fan_in", "normal")  # untruncated
embed_init = nn.initializers.normal(1.0)
pos_init = nn.initializers.normal(0.02)


def block_pattern(depth: int) -> str:
    """``block{:02d}`` (more digits past 100 blocks)."""
    return f"block{{:0{max(2, len(str(depth - 1)))}d}}"


class _Norm(nn.Module):
    """A normalizer (its params directly under this module's name) whose output is an activation
    tap under that name. ``layout``: passed to a registered normalizer; None for a user's
    factory, which is called without it. ``scale`` (ln_scaling's ``1 / sqrt(l)``): multiplies
    the output before the tap."""

    spec: normalizers.NormSpec
    layout: str | None = "tokens"

    @nn.compact
    def __call__(self, x, scale=None):
        norm = self.spec.module(layout=self.layout) if self.layout else self.spec.module()
        nn.share_scope(self, norm)
        y = norm(x)
        return probe.observe_act(self, y if scale is None else y * scale)


class _Block(nn.Module):
    """One block: attention, then (unless ``attention_only``) the MLP, each placed as
    ``placement`` says (module docstring); the activation tap on the result carries the block's
    name. ``alpha``: DeepNorm's weight on the stream; ``gain``: the Xavier gain of ``value``,
    ``out``, ``fc1``, ``fc2``; ``weight``, ``iterations``: every projection's reparametrization
    (:class:`sigprop.nn.attention.Projection`); ``layer`` (call argument, ln_scaling only): the
    1-based block index ``l`` (a scalar array, scanned like the keys), the normalizers' outputs
    scaled by ``1 / sqrt(l)``."""

    heads: int
    spec: normalizers.NormSpec
    norm_layout: str | None
    placement: str = "pre"
    mlp_ratio: int = 4
    causal: bool = True
    skip: bool = True
    attention_only: bool = False
    branch_scale: float = 1.0
    activation: Any = "gelu"
    qk_norm: str | None = None
    qk_scale_init: float | None = None
    alpha: float = 1.0
    gain: float = 1.0
    weight: str = "plain"
    iterations: int = SIGMA_ITERATIONS

    @nn.compact
    def __call__(self, x, key=None, layer=None):
        k_attn, k_mlp = split_keys(key, 2)
        scale = None if layer is None else jax.lax.rsqrt(jnp.asarray(layer, jnp.float32))
        attn = Attention(self.heads, self.causal, self.qk_norm, self.qk_scale_init, self.gain,
                         self.weight, self.iterations, name="attn")
        x = _sublayer(self, x, "attn", "ln1", lambda h: attn(h, k_attn), scale)
        if not self.attention_only:
            mlp = FeedForward(self.mlp_ratio * x.shape[-1], self.activation, self.gain,
                              self.weight, self.iterations, name="mlp")
            x = _sublayer(self, x, "mlp", "ln2", lambda h: mlp(h, k_mlp), scale)
        return probe.observe_act(self, x)


def _sublayer(block: _Block, x, name: str, ln: str, f: Callable, scale=None):
    """One residual sublayer ``f`` of ``block`` as its placement says (module docstring;
    ``scale``: ln_scaling's ``1 / sqrt(l)`` on the pre normalizer). A function, not a method:
    flax would count a method's return as the block's call exit, which orders the block's own
    activation tap."""
    p = block.placement

    def norm(name, h, scale=None):
        return _Norm(block.spec, block.norm_layout, name=name, parent=block)(h, scale)

    if p == "pre":
        y = f(norm(ln, x, scale))
    elif p == "peri":
        y = norm(f"{ln}_out", f(norm(ln, x)))
    else:
        y = f(x)
    if block.branch_scale != 1.0:
        y = block.branch_scale * y
    if block.skip:
        stream = x if block.alpha == 1.0 else block.alpha * x
        x = stream + probe.Tap("branch", name=f"{name}_branch", parent=block)(y)
    else:
        x = y
    return norm(ln, x) if p in ("post", "deepnorm") else x


def _run_scan(block: nn.Module, x, keys, layers, length: int):
    """``block`` (named by :func:`sigprop.probe.scan_name`) applied ``length`` times as one
    ``nn.scan`` stack, layer ``i`` getting ``keys[i]`` (None in apply) and ``layers[i]`` (None
    unless ln_scaling)."""
    scanned = nn.scan(lambda mdl, carry, xs: (mdl(carry, *xs), None), variable_axes=SCAN_AXES,
                      split_rngs={"params": True}, length=length)
    y, _ = scanned(block, x, (keys, layers))
    return y


class Transformer(nn.Module):
    """A transformer of ``depth`` blocks of ``width`` (see the module docstring and
    :func:`transformer`). Built by :func:`transformer`, which checks the arguments."""

    depth: int
    width: int
    heads: int
    spec: normalizers.NormSpec
    norm_layout: str | None = "tokens"
    placement: str = "pre"
    mlp_ratio: int = 4
    causal: bool = True
    vocab: int | None = None
    patch: int | None = None
    skip: bool = True
    attention_only: bool = False
    branch_scale: float = 1.0
    n_classes: int = DEFAULT_CLASSES
    activation: Any = "gelu"
    max_len: int = DEFAULT_MAX_LEN
    scan: bool = True
    qk_norm: str | None = None
    qk_scale_init: float | None = None
    ln_scaling: bool = False
    weight: str = "plain"
    sigma_iterations: int = SIGMA_ITERATIONS
    cls_token: bool = False
    alpha_init: float = ALPHA_INIT

    @property
    def kind(self) -> str:
        return "tokens" if self.vocab else "patches" if self.patch else "continuous"

    def check_inputs(self, shape) -> None:
        shape = tuple(shape)
        expected = {"tokens": "token ids [batch, seq_len]",
                    "patches": "images [batch, height, width, channels]",
                    "continuous": "tokens [batch, seq_len, features]"}[self.kind]
        rank = {"tokens": 2, "patches": 4, "continuous": 3}[self.kind]
        if len(shape) != rank:
            raise ValueError(f"inputs: this transformer ({self.kind}) expects {expected}; got "
                             f"shape {shape}")
        if min(shape) < 1:
            raise ValueError(f"inputs: every dimension must be >= 1; got shape {shape}")
        if self.vocab and shape[1] > self.max_len:
            raise ValueError(f"inputs: sequence length {shape[1]} exceeds max_len={self.max_len}")
        if self.patch and (shape[1] % self.patch or shape[2] % self.patch):
            raise ValueError(f"inputs: patch={self.patch} must divide the image height and width; "
                             f"got shape {shape}")

    def _embed(self, x):
        if self.vocab:
            if not jnp.issubdtype(x.dtype, jnp.integer):
                raise ValueError(f"inputs: vocab={self.vocab} takes integer token ids; got dtype "
                                 f"{x.dtype}")
            h = nn.Embed(self.vocab, self.width, embedding_init=embed_init, name="embed")(x)
            t = x.shape[1]
            pos = self.param("pos_embed", pos_init, (self.max_len, self.width), jnp.float32)
            return h + pos[:t].reshape(1, t, self.width)
        if self.patch:
            b, hh, ww, c = x.shape
            p = self.patch
            x = x.reshape(b, hh // p, p, ww // p, p, c).transpose(0, 1, 3, 2, 4, 5)
            x = x.reshape(b, (hh // p) * (ww // p), p * p * c)
            h = Dense(self.width, kernel_init=lecun_normal, name="patch_embed")(x)
            pos = self.param("pos_embed", pos_init, h.shape[1:], jnp.float32)
            h = h + pos.reshape(1, *h.shape[1:])
            if self.cls_token:
                cls = self.param("cls_token", pos_init, (self.width,), jnp.float32)
                h = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)), h], axis=1)
            return h
        return Dense(self.width, kernel_init=lecun_normal, name="input_proj")(x)

    def _block(self, name: str) -> nn.Module:
        """Block ``name`` of this transformer's placement (not yet called)."""
        if self.placement == "ngpt":
            return NGPTBlock(self.heads, self.mlp_ratio, self.causal, self.attention_only,
                             self.activation, self.alpha_init, self.weight,
                             self.sigma_iterations, name=name)
        kw = {"heads": self.heads, "spec": self.spec, "norm_layout": self.norm_layout,
              "placement": self.placement, "mlp_ratio": self.mlp_ratio, "causal": self.causal,
              "skip": self.skip, "attention_only": self.attention_only,
              "branch_scale": self.branch_scale, "activation": self.activation,
              "qk_norm": self.qk_norm, "qk_scale_init": self.qk_scale_init,
              "weight": self.weight, "iterations": self.sigma_iterations}
        if self.placement == "deepnorm":  # Wang et al. 2022, decoder-only, N = depth
            kw.update(alpha=(2 * self.depth) ** 0.25, gain=(8 * self.depth) ** -0.25)
        return _Block(**kw, name=name)

    def _head(self, x):
        """The outputs: the patch model pools (the class token, or the mean over tokens)."""
        if self.patch:
            x = x[:, 0] if self.cls_token else jnp.mean(x, axis=1)
        n_out = self.vocab or self.n_classes
        if self.placement == "ngpt":
            return NGPTHead(n_out, name="classifier")(x)
        if self.patch:
            return head(x, self.n_classes)
        return Dense(n_out, use_bias=True, kernel_init=classifier_init, name="classifier")(x)

    @nn.compact
    def __call__(self, x):
        self.check_inputs(x.shape)
        x = self._embed(x)
        if self.placement == "ngpt":
            x = unit(x)  # nGPT: the stream enters the blocks on the unit sphere
        keys = (jax.random.split(self.make_rng("params"), self.depth)
                if self.is_initializing() else None)
        layers = jnp.arange(1, self.depth + 1, dtype=jnp.int32) if self.ln_scaling else None
        pat = block_pattern(self.depth)
        if self.scan and self.depth > 1:
            x = _run_scan(self._block(probe.scan_name(pat, 0)), x, keys, layers, self.depth)
        else:
            for i in range(self.depth):
                x = self._block(pat.format(i))(x, None if keys is None else keys[i],
                                               None if layers is None else layers[i])
        if self.placement in ("pre", "peri"):
            x = _Norm(self.spec, self.norm_layout, name="final_norm")(x)
        return self._head(x)


def _check_norm(norm, norm_options: dict) -> tuple[normalizers.NormSpec, str | None]:
    """The normalizer's spec and the layout it is built with (None for a user's factory)."""
    allowed = ", ".join(NORMS + (sepnorm.SEPNORM,))
    if isinstance(norm, str) and norm.lower() == sepnorm.SEPNORM:
        return sepnorm.sepnorm_spec(NORMS, **norm_options), "tokens"
    if isinstance(norm, str):
        if norm.lower() not in NORMS:
            raise ValueError(f"norm={norm!r} is not a per-token activation normalizer; allowed: "
                             f"{allowed}, or a module factory")
        return normalizers.spec(norm, **norm_options), "tokens"
    if isinstance(norm, normalizers.NormSpec):
        registered = (norm.name in normalizers.names()
                      and normalizers.spec(norm.name).factory is norm.factory)
        if registered and norm.name not in NORMS:
            raise ValueError(f"norm={norm.name!r} is not a per-token activation normalizer; "
                             f"allowed: {allowed}, or a module factory")
        return norm, "tokens" if registered else None
    if callable(norm):
        return normalizers.spec(norm, **norm_options), None
    raise ValueError(f"norm={norm!r}; allowed: {allowed}, or a module factory")


def _check_qk(qk_norm, qk_scale_init) -> None:
    if not (qk_norm is None or isinstance(qk_norm, str)) or qk_norm not in QK_NORMS:
        raise ValueError(f"qk_norm={qk_norm!r}; allowed: "
                         f"{', '.join(repr(n) for n in QK_NORMS)}")
    if qk_scale_init is None:
        return
    if qk_norm != "l2":
        raise ValueError(f"qk_scale_init={qk_scale_init!r} applies only with qk_norm='l2'; got "
                         f"qk_norm={qk_norm!r}")
    if isinstance(qk_scale_init, bool) or not isinstance(qk_scale_init, (int, float)) \
            or not math.isfinite(qk_scale_init):
        raise ValueError(f"qk_scale_init={qk_scale_init!r} must be None or a finite number")


def _check_era(placement, weight, sigma_iterations, cls_token, alpha_init, *, norm, patch,
               qk_norm, skip, branch_scale) -> None:
    """``weight``, ``sigma_iterations``, ``cls_token``, ``alpha_init`` and what ``ngpt`` and
    ``sepnorm`` exclude."""
    if not isinstance(weight, str) or weight not in TRANSFORMER_WEIGHTS:
        raise ValueError(f"weight={weight!r}; allowed: {', '.join(TRANSFORMER_WEIGHTS)}")
    if sigma_iterations is not None:
        if weight != "sigma_reparam":
            raise ValueError(f"sigma_iterations={sigma_iterations!r} applies only with "
                             f"weight='sigma_reparam'; got weight={weight!r}")
        if isinstance(sigma_iterations, bool) or not isinstance(sigma_iterations, int) \
                or sigma_iterations < 1:
            raise ValueError(f"sigma_iterations={sigma_iterations!r} must be an integer >= 1")
    if cls_token not in (True, False):
        raise ValueError(f"cls_token={cls_token!r}: expected True or False")
    if cls_token and patch is None:
        raise ValueError("cls_token=True prepends a class token to image patches; pass patch= "
                         "(the ViT)")
    if isinstance(norm, str) and norm.lower() == sepnorm.SEPNORM and not cls_token:
        raise ValueError("norm='sepnorm' normalizes the class token apart from the other "
                         "tokens: it needs cls_token=True (and patch=)")
    if alpha_init is not None:
        if placement != "ngpt":
            raise ValueError(f"alpha_init={alpha_init!r} applies only with placement='ngpt'; "
                             f"got placement={placement!r}")
        if isinstance(alpha_init, bool) or not isinstance(alpha_init, (int, float)) \
                or not math.isfinite(alpha_init):
            raise ValueError(f"alpha_init={alpha_init!r} must be None or a finite number")
    if placement == "ngpt":
        for name, value, ok in (("qk_norm", qk_norm, qk_norm is None),
                                ("skip", skip, skip is True),
                                ("branch_scale", branch_scale, branch_scale in (None, 1.0))):
            if not ok:
                raise ValueError(f"{name}={value!r} does not apply with placement='ngpt' "
                                 f"(nGPT normalizes q, k and the stream itself); leave {name} "
                                 f"at its default")


def transformer(depth: int, width: int, heads: int, *, placement: str = "pre",
                norm="layernorm", mlp_ratio: int = 4, causal: bool = True,
                vocab: int | None = None, patch: int | None = None, skip: bool = True,
                attention_only: bool = False, branch_scale: float | None = None,
                n_classes: int | None = None, activation=None, scan: bool = True,
                max_len: int = DEFAULT_MAX_LEN, qk_norm: str | None = None,
                qk_scale_init: float | None = None, ln_scaling: bool = False,
                weight: str = "plain", sigma_iterations: int | None = None,
                cls_token: bool = False, alpha_init: float | None = None,
                **norm_options) -> Transformer:
    """A transformer of ``depth`` blocks of ``width`` with ``heads`` attention heads.

    Block (``s = branch_scale``, ``N`` = ``norm`` per token): ``pre`` ``x + s F(N(x))``;
    ``post`` ``N(x + s F(x))``; ``peri`` ``x + s N_out(F(N_in(x)))``; ``none`` ``x + s F(x)``;
    ``deepnorm`` ``N(alpha x + s F(x))``, ``alpha = (2 depth)^(1/4)``, ``value``/``out``/MLP
    Xavier gain ``(8 depth)^(-1/4)`` (Wang et al. 2022, arXiv 2203.00555); ``pre`` with
    ``ln_scaling=True`` ``x + s F(N(x) / sqrt(l))`` in block ``l = 1..depth`` (Sun et al. 2025,
    arXiv 2502.05795); ``ngpt`` ``Norm(x + alpha_F (Norm(F(x)) - x))``, ``Norm(z) = z / ||z||``
    per token (Loshchilov et al. 2024, arXiv 2410.01131; :mod:`sigprop.nn.ngpt`, which says what
    is simplified); ``F`` attention, then the MLP ``activation(x W_1) W_2`` (ngpt: SwiGLU).
    Layer names, init: the module docstring.

    Inputs and outputs (one of three):
      - ``vocab=V``: integer token ids ``[B, T]`` (``T <= max_len``) -> embedding + learned
        positions -> blocks -> next-token logits ``[B, T, V]`` (causal by default).
      - ``patch=p``: images ``[B, H, W, C]`` (``p`` divides ``H`` and ``W``) -> non-overlapping
        ``p x p`` patches, a dense projection + learned positions -> blocks -> mean over the
        tokens -> classifier ``[B, n_classes]``.
      - neither: continuous tokens ``[B, T, D_in]`` -> a dense projection (no positions) ->
        blocks -> per-token logits ``[B, T, n_classes]``.

    Args:
      depth: blocks (>= 1). width: the residual stream's width. heads: attention heads (divides
        ``width``).
      placement: ``pre``, ``post``, ``peri``, ``none`` (no normalizer at all), ``deepnorm`` or
        ``ngpt`` (its own ``Norm``; ``norm`` is not used, ``qk_norm``, ``skip=False`` and
        ``branch_scale`` are refused).
      norm: a per-token activation normalizer's name (:data:`NORMS`), ``"sepnorm"`` (needs
        ``cls_token=True``; options ``cls_norm=``, ``token_norm=``, names from :data:`NORMS`,
        default ``"layernorm"`` each, other options to both; Chen et al. 2023, arXiv
        2309.12931) or a module factory (called without ``layout``; it must normalize
        ``[B, T, D]`` as you mean it).
      mlp_ratio: the MLP's hidden width over ``width``. causal: mask future keys.
      skip: the residual additions (``False`` drops them). attention_only: no MLP sublayers.
      branch_scale: ``s`` multiplying every residual branch (None: 1).
      n_classes: outputs of the patch and continuous models (None: 10); a ``vocab`` model
        predicts tokens and takes none.
      activation: the MLP's (None: exact GELU; ngpt: the SwiGLU gate's, None: SiLU); the
        normalizer's pairing (FRN's TLU) is not applied.
      scan: run the blocks as one ``nn.scan`` stack (same names and params as the unrolled
        loop). max_len: the longest sequence a ``vocab`` model takes.
      qk_norm: None, ``"layernorm"``, ``"rmsnorm"`` (ViT-22B) or ``"l2"`` (Henry et al. 2020's
        ``g q_hat . k_hat``): normalize queries and keys per head (:class:`Attention`).
      qk_scale_init: ``g``'s init (``qk_norm="l2"`` only; None: ``log2(T^2 - T)``, ``T`` the
        sequence length at init).
      ln_scaling: LayerNorm Scaling, ``placement="pre"`` only: block ``l``'s normalizer
        outputs times ``1 / sqrt(l)`` (the final norm unscaled).
      weight: ``"plain"`` or ``"sigma_reparam"`` (Zhai et al. 2023, arXiv 2303.06296): every
        block projection ``W -> gamma / sigma(W) W``, any placement.
      sigma_iterations: power iterations of ``sigma(W)`` (``weight="sigma_reparam"`` only; None:
        :data:`sigprop.nn.layers.SIGMA_ITERATIONS`, its accuracy documented there).
      cls_token: ``patch`` models only: prepend a learned class token (init ``N(0, 0.02^2)``)
        and classify from it instead of the mean over tokens.
      alpha_init: ``placement="ngpt"`` only: the effective init of ``alpha_A``, ``alpha_M``
        (None: 0.05, the paper's).
      **norm_options: passed to the normalizer (e.g. ``group_size=4``).
    """
    check_positive(depth=depth, width=width, heads=heads, mlp_ratio=mlp_ratio, max_len=max_len)
    if width % heads:
        raise ValueError(f"heads={heads} must divide width={width}")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement={placement!r}; allowed: {', '.join(PLACEMENTS)}")
    if vocab is not None and patch is not None:
        raise ValueError("pass at most one of vocab= (token ids) and patch= (images)")
    if vocab is not None:
        check_positive(vocab=vocab)
        if n_classes is not None:
            raise ValueError(f"n_classes={n_classes}: a vocab model predicts the next token "
                             f"(logits [B, T, vocab]); leave n_classes unset")
    if patch is not None:
        check_positive(patch=patch)
    n_classes = DEFAULT_CLASSES if n_classes is None else n_classes
    check_positive(n_classes=n_classes)
    if branch_scale is None:
        branch_scale = 1.0
    if isinstance(branch_scale, bool) or not isinstance(branch_scale, (int, float)) \
            or not math.isfinite(branch_scale):
        raise ValueError(f"branch_scale={branch_scale!r} must be None or a finite number")
    for name, flag in (("causal", causal), ("skip", skip), ("attention_only", attention_only),
                       ("scan", scan)):
        if flag not in (True, False):
            raise ValueError(f"{name}={flag!r}: expected True or False")
    if ln_scaling not in (True, False):
        raise ValueError(f"ln_scaling={ln_scaling!r}: expected True or False")
    if ln_scaling and placement != "pre":
        raise ValueError(f"ln_scaling=True scales Pre-LN's normalizers; placement={placement!r} "
                         f"(allowed with ln_scaling: pre)")
    _check_qk(qk_norm, qk_scale_init)
    _check_era(placement, weight, sigma_iterations, cls_token, alpha_init, norm=norm,
               patch=patch, qk_norm=qk_norm, skip=skip, branch_scale=branch_scale)
    spec, layout = _check_norm(norm, norm_options)
    if spec.name == sepnorm.SEPNORM and spec.factory is sepnorm.SepNorm:
        sepnorm.check_width(spec, width)
    else:
        spec.check_width(width)
    if activation is None:
        activation = "swish" if placement == "ngpt" else "gelu"
    return Transformer(depth=depth, width=width, heads=heads, spec=spec, norm_layout=layout,
                       placement=placement, mlp_ratio=mlp_ratio, causal=bool(causal),
                       vocab=vocab, patch=patch, skip=bool(skip),
                       attention_only=bool(attention_only), branch_scale=float(branch_scale),
                       n_classes=n_classes, activation=check_activation(activation),
                       max_len=max_len, scan=bool(scan), qk_norm=qk_norm,
                       qk_scale_init=None if qk_scale_init is None else float(qk_scale_init),
                       ln_scaling=bool(ln_scaling), weight=weight,
                       sigma_iterations=(SIGMA_ITERATIONS if sigma_iterations is None
                                         else sigma_iterations),
                       cls_token=bool(cls_token),
                       alpha_init=ALPHA_INIT if alpha_init is None else float(alpha_init))
