"""Transformer normalizers of the LLM era at initialization (claims 15-18): DyT against
LayerNorm in Pre-LN, QK-norm against plain attention logits, DeepNorm against Post-LN, LayerNorm
Scaling against Pre-LN.

Three of the four read a causal byte-level LM (``vocab=256``) on the frozen README windows of
:func:`sigprop.paper.experiments.transformers.readme_tokens` (the first ``seq_len`` bytes of
``batch`` windows, saved with the data as ``tokens``), loss the mean next-byte cross-entropy
against the real next bytes; each pair of runs shares its seeds (so its weights: the variants
differ only in the normalizer, the residual scaling or the init gains). Each run measures:

``dyt_init`` (claim 15): Pre-LN with ``norm="layernorm"`` (run ``ln``) and ``norm="dyt"``
(``dyt``; Zhu et al.'s ``alpha0 = 0.5``): ``activation_variance`` and ``token_cosine_similarity``
at every tap (the claim reads the block streams ``blockNN``), ``grad_norm`` at every gradient tap
(``blockNN/attn``, ``blockNN/mlp``: the loss gradient of the branch outputs, i.e. of the stream).

``qk_norm`` (claim 16): no normalizer anywhere in the blocks (``placement="none"``, skips on),
so the stream the queries and keys are projected from grows with depth, as the query/key
weights grow in training; N(0, 1) continuous tokens ``[batch, seq_len, width]``, non-causal (a
ViT's attention), per width of ``widths`` without (run ``qk/<width>/plain``) and with
``qk_norm="layernorm"`` (``qk/<width>/layernorm``, ViT-22B's): ``attention_logit_max``,
``attention_entropy`` per attention layer, ``activation_variance``.

``deepnorm_gradients`` (claim 17): ``placement="post"`` (run ``post``) and ``"deepnorm"``
(``deepnorm``: ``alpha = (2 depth)^(1/4)``, ``value``/``out``/MLP gains ``(8 depth)^(-1/4)``):
``param_grad_norm`` of every kernel.

``curse_of_depth`` (claim 18): Pre-LN (run ``pre``) and Pre-LN with LayerNorm Scaling
(``lns``: block ``l``'s normalizer outputs times ``1 / sqrt(l)``): ``activation_variance`` at
every tap and ``residual_variance`` of every branch (``blockNN/attn_branch``, ``/mlp_branch``).

References: Zhu et al. 2025, arXiv 2503.10622; Dehghani et al. 2023, arXiv 2302.05442; Henry et
al. 2020, arXiv 2010.04245; Wang et al. 2022, arXiv 2203.00555; Sun et al. 2025, arXiv
2502.05795.
"""

from __future__ import annotations

from sigprop import nn as models
from sigprop.paper.experiments import Experiment, register
from sigprop.paper.experiments import transformers as tx

VOCAB = tx.VOCAB
NORMS = ("ln", "dyt")  # claim 15's runs: norm="layernorm", norm="dyt"
QK = ("plain", "layernorm")  # claim 16's runs: qk_norm=None, qk_norm="layernorm"
DEEP = ("post", "deepnorm")  # claim 17's runs: the placements
SCALING = ("pre", "lns")  # claim 18's runs: ln_scaling False, True


def _readme_inputs(s) -> str:
    return (f"README bytes: {s.batch} windows of {s.seq_len} bytes of this repo's README.md, "
            "frozen 2026-12-04 (vocab 256), loss next-byte cross-entropy")


def _lm_pair(r, labels, metrics, build) -> None:
    """``analyze`` each ``build(label)`` (a byte-level LM) on the README windows of the sizes."""
    s = r.s
    tokens = tx.readme_tokens(s.batch, s.seq_len)
    r.put("tokens", tokens)
    loss = tx.next_byte_loss(tokens)  # one function object: the runs share their compilations
    for label in labels:
        r.analyze(label, build(label), tokens, metrics=metrics, loss=loss)


# ----------------------------------------------------------------------------- claim 15


def _dyt_measure(r) -> None:
    s = r.s
    _lm_pair(r, NORMS, ("activation_variance", "token_cosine_similarity", "grad_norm"),
             lambda k: models.transformer(s.depth, s.width, s.heads, placement="pre",
                                          norm="layernorm" if k == "ln" else "dyt", vocab=VOCAB))


DYT = register(Experiment(
    "dyt_init", "Pre-LN with LayerNorm vs with DyT (Zhu et al. 2025) at init: stream variance, "
                "token cosine and gradient norms per block (claim 15)",
    quick=dict(seeds=8, depth=12, width=64, heads=4, seq_len=32, batch=8),
    full=dict(seeds=16, depth=32, width=128, heads=4, seq_len=64, batch=16),
    measure=_dyt_measure, points=lambda s: len(NORMS), inputs=_readme_inputs))


# ----------------------------------------------------------------------------- claim 16


def qk_label(width: int, qk: str) -> str:
    return f"qk/{width}/{qk}"


def _qk_measure(r) -> None:
    s = r.s
    for width in s.widths:
        for qk in QK:
            model = models.transformer(s.depth, width, s.heads, placement="none", causal=False,
                                       qk_norm=None if qk == "plain" else qk)
            r.analyze(qk_label(width, qk), model, (s.batch, s.seq_len, width),
                      metrics=("attention_logit_max", "attention_entropy",
                               "activation_variance"))


QK_NORM = register(Experiment(
    "qk_norm", "Attention logits and entropy at init without normalizers in the blocks, with and "
               "without QK-norm (Dehghani et al. 2023), per layer and width (claim 16)",
    quick=dict(seeds=8, depth=8, widths=(32, 64), heads=4, seq_len=32, batch=8),
    full=dict(seeds=16, depth=12, widths=(64, 128, 256), heads=4, seq_len=64, batch=8),
    measure=_qk_measure, points=lambda s: len(QK) * len(s.widths),
    inputs=lambda s: f"N(0, 1) tokens [{s.batch}, {s.seq_len}, width] per seed, non-causal"))


# ----------------------------------------------------------------------------- claim 17


def _deepnorm_measure(r) -> None:
    s = r.s
    _lm_pair(r, DEEP, ("param_grad_norm",),
             lambda k: models.transformer(s.depth, s.width, s.heads, placement=k, vocab=VOCAB))


DEEPNORM = register(Experiment(
    "deepnorm_gradients", "Post-LN vs DeepNorm (Wang et al. 2022) byte-level LM at init: "
                          "parameter-gradient norm per block (claim 17)",
    quick=dict(seeds=8, depth=12, width=64, heads=4, seq_len=32, batch=8),
    full=dict(seeds=16, depth=24, width=128, heads=4, seq_len=64, batch=16),
    measure=_deepnorm_measure, points=lambda s: len(DEEP), inputs=_readme_inputs))


# ----------------------------------------------------------------------------- claim 18


def _lns_measure(r) -> None:
    s = r.s
    _lm_pair(r, SCALING, ("activation_variance", "residual_variance"),
             lambda k: models.transformer(s.depth, s.width, s.heads, placement="pre",
                                          ln_scaling=k == "lns", vocab=VOCAB))


CURSE = register(Experiment(
    "curse_of_depth", "Pre-LN vs LayerNorm Scaling (Sun et al. 2025) at init: residual-stream "
                      "variance and the blocks' relative contribution per block (claim 18)",
    quick=dict(seeds=8, depth=24, width=64, heads=4, seq_len=32, batch=8),
    full=dict(seeds=16, depth=64, width=128, heads=4, seq_len=64, batch=16),
    measure=_lns_measure, points=lambda s: len(SCALING), inputs=_readme_inputs))
