"""Transformers at initialization: Xiong et al. 2020's per-layer parameter-gradient norms of
Post-LN and Pre-LN on real bytes (claim 13), and token collapse (Dong et al. 2021; Noci et al.
2022; claim 14).

``xiong_gradients``: a causal byte-level LM (``vocab=256``) of Xiong's depth 6, fed ``batch``
windows of ``seq_len`` bytes of this repository's README.md: the 16 windows of 128 bytes it
held on 2026-12-04, frozen in :mod:`sigprop.paper.experiments.text_sample` (the claim's inputs
do not change when the README does, and an installed package has them; the quick size reads
8 of them, their first 32 bytes; the windows are saved with the data as ``tokens``), loss the mean next-byte cross-entropy
against the real next bytes; Post-LN and Pre-LN from the same seeds (the same weights: their
parameters differ only in Pre-LN's final norm, which has none to draw). Measured:
``param_grad_norm`` of every kernel, names in ``<run>/param_layer_names``.

``token_collapse``: N(0, 1) continuous tokens ``[batch, seq_len, width]``, non-causal. (a) pure
attention (``attention_only``, no normalizer) with and without skips: ``token_residual_ratio``
after every block; (b) Pre-LN blocks with skips at several depths, branches unscaled or scaled
by ``1 / sqrt(depth)``: ``token_cosine_similarity`` at every tap (the claim reads the last
block's stream, before the final norm).

References: Xiong et al. 2020, arXiv 2002.04745 (Fig. 3, Thm 1); Dong et al. 2021, arXiv
2103.03404; Noci et al. 2022, arXiv 2206.03126.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from sigprop import nn as models
from sigprop.paper.experiments import Experiment, register, text_sample

VOCAB = 256  # bytes
PLACEMENTS = ("post", "pre")
def readme_tokens(batch: int, length: int) -> np.ndarray:
    """``[batch, length]`` int32 byte values: the first ``length`` bytes of ``batch`` of the
    frozen README windows (:data:`text_sample.WINDOWS`, evenly spaced among the 16)."""
    windows = np.stack([np.frombuffer(w, np.uint8) for w in text_sample.WINDOWS])
    if not 1 <= batch <= len(windows) or not 2 <= length <= windows.shape[1]:
        raise ValueError(f"batch={batch}, length={length}: the frozen README sample holds "
                         f"{len(windows)} windows of {windows.shape[1]} bytes")
    rows = np.linspace(0, len(windows) - 1, batch).round().astype(int)
    return windows[rows, :length].astype(np.int32)


def next_byte_loss(tokens: np.ndarray):
    """``loss(outputs, key)``: mean cross-entropy of the logits ``outputs[:, :-1]`` against the
    real next bytes ``tokens[:, 1:]`` (``key`` unused: the labels are the data's)."""
    targets = jnp.asarray(tokens[:, 1:])

    def loss(outputs, key):
        logp = jax.nn.log_softmax(outputs[:, :-1].astype(jnp.float32), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))

    return loss


def _xiong_measure(r) -> None:
    s = r.s
    tokens = readme_tokens(s.batch, s.seq_len)
    r.put("tokens", tokens)
    loss = next_byte_loss(tokens)
    for placement in PLACEMENTS:
        model = models.transformer(s.depth, s.width, s.heads, placement=placement, vocab=VOCAB)
        r.analyze(placement, model, tokens, metrics=("param_grad_norm",), loss=loss)


XIONG = register(Experiment(
    "xiong_gradients", "Post-LN vs Pre-LN byte-level LM on README bytes: per-layer parameter-"
                       "gradient norms (Xiong et al. 2020 Fig. 3; claim 13)",
    quick=dict(seeds=8, depth=6, width=64, heads=4, seq_len=32, batch=8),
    full=dict(seeds=16, depth=6, width=256, heads=4, seq_len=128, batch=16),
    measure=_xiong_measure, points=lambda s: len(PLACEMENTS),
    inputs=lambda s: f"README bytes: {s.batch} windows of {s.seq_len} bytes of this repo's "
                     "README.md, frozen 2026-12-04 (vocab 256), loss next-byte cross-entropy"))


# ------------------------------------------------------------------------- token collapse


def collapse_label(skip: bool) -> str:
    return f"attention/{'skip' if skip else 'noskip'}"


def depth_label(depth: int, scaled: bool) -> str:
    return f"pre/{depth}/{'scaled' if scaled else 'unscaled'}"


def _collapse_measure(r) -> None:
    s = r.s
    shape = (s.batch, s.seq_len, s.width)
    for skip in (False, True):
        model = models.transformer(s.attention_depth, s.width, s.heads, placement="none",
                                   attention_only=True, causal=False, skip=skip)
        r.analyze(collapse_label(skip), model, shape, seeds=s.attention_seeds,
                  metrics=("token_residual_ratio", "token_cosine_similarity"))
    for depth in s.depths:
        for scaled in (False, True):
            model = models.transformer(depth, s.width, s.heads, placement="pre", causal=False,
                                       branch_scale=1 / math.sqrt(depth) if scaled else None)
            r.analyze(depth_label(depth, scaled), model, shape, seeds=s.depth_seeds,
                      metrics=("token_cosine_similarity",))


TOKEN_COLLAPSE = register(Experiment(
    "token_collapse", "Token collapse at init: pure attention with and without skips (Dong et al. "
                      "2021), Pre-LN depth and 1/sqrt(depth) branches (Noci et al. 2022; claim 14)",
    quick=dict(attention_seeds=8, attention_depth=8, depth_seeds=6, depths=(4, 16, 64),
               width=64, heads=4, seq_len=16, batch=8),
    full=dict(attention_seeds=16, attention_depth=12, depth_seeds=12, depths=(4, 16, 64, 128),
              width=128, heads=4, seq_len=32, batch=8),
    measure=_collapse_measure, points=lambda s: 2 + 2 * len(s.depths),
    inputs=lambda s: f"N(0, 1) tokens [{s.batch}, {s.seq_len}, {s.width}] per seed, "
                     "non-causal"))
