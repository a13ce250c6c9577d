# %% [markdown]
# # 06 · Transformers: per-token normalization, token rank collapse, attention, parameter gradients
#
# sigprop's image conventions compare *samples*; inside a transformer the question is what
# happens to the *tokens of one sequence*. This notebook measures, at initialization:
#
# 1. where each **normalizer placement** (Post-LN, Pre-LN, Peri-LN) puts the residual stream:
#    the token metrics (cosine between the tokens of a sequence, Dong et al.'s residual ratio,
#    token stable / effective rank) and the largest activation over the median (massive
#    activations);
# 2. **parameter-gradient norms** per layer, Xiong et al. 2020's Figure 3 question: do they grow
#    toward the output under Post-LN and stay flat under Pre-LN?
# 3. **rank collapse** (Dong et al. 2021, Noci et al. 2022): pure attention without skips sends
#    every token to the same vector; skips, and branches scaled by 1 / sqrt(depth), prevent it;
# 4. **attention** itself: the entropy of the attention probabilities and the largest
#    `q.k / sqrt(d)`, in sigprop's zoo and in a transformer block written here with flax's own
#    attention.
#
# The inputs are N(0, 1) tokens unless said otherwise; section 2 also uses real text (the bytes
# of sigprop's README) with a byte-level language model.
#
# **Sizes.** The default sizes run in a few minutes on a 2-core CPU; `SIGPROP_QUICK=1` (the
# tests) makes them tiny.

# %%
import io
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from IPython.display import Image, display

import sigprop

QUICK = os.environ.get("SIGPROP_QUICK") == "1"
SEEDS = 2 if QUICK else 4
WIDTH, HEADS, DEPTH = (16, 2, 3) if QUICK else (64, 4, 8)
BATCH, TOKENS = (4, 8) if QUICK else (8, 32)
DEPTHS = (2, 4) if QUICK else (4, 16, 48)
TOKEN_METRICS = sigprop.metrics.TOKEN_METRICS
ALL = sigprop.metrics.TRANSFORMER_METRICS


def show(fig):
    """Display a matplotlib figure inline (as a PNG, whatever the backend) and close it."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    display(Image(png.getvalue(), format="png"))


x = np.asarray(jax.random.normal(jax.random.key(0), (BATCH, TOKENS, WIDTH)))
print(f"sigprop {sigprop.__version__}; N(0, 1) tokens {x.shape};",
      "SIGPROP_QUICK=1: tiny sizes" if QUICK else "default sizes")

# %% [markdown]
# ## 1. Three placements of the same normalizer
#
# `sigprop.transformer(depth, width, heads, placement=...)` builds the block
#
# - **post**: `x = LN(x + F(x))` (the original Transformer),
# - **pre**: `x = x + F(LN(x))` and a final LN (GPT-2),
# - **peri**: `x = x + LN_out(F(LN_in(x)))` and a final LN (Kim et al. 2025),
#
# with `F` self-attention, then an MLP. The LayerNorm here normalizes **each token over its
# features** (`layout="tokens"`, flax's convention); on images sigprop keeps [BB]'s axes. The
# taps: every normalizer's output, the residual stream after every block (`block03`), every
# attention (`block03/attn`), every weight (`block03/mlp/fc2`).

# %%
runs = {}
for placement in ("post", "pre", "peri"):
    model = sigprop.transformer(DEPTH, WIDTH, HEADS, placement=placement, causal=False)
    runs[placement] = sigprop.analyze(model, x, seeds=SEEDS,
                                      metrics=ALL + ("activation_variance",))
res = runs["pre"]
print("activation taps:", res.layer_names[:4], "...")
print("attention taps: ", res.attention_layer_names[:2], "...")
print("weights:        ", res.param_layer_names[:4], "...")


def stream(res):
    """Indices of the residual-stream taps (one per block)."""
    return [i for i, n in enumerate(res.layer_names) if n.startswith("block") and "/" not in n]


fig, axes = plt.subplots(1, 4, figsize=(15, 3.2))
for placement, res in runs.items():
    idx = stream(res)
    for ax, metric in zip(axes, ("activation_variance", "token_cosine_similarity",
                                 "token_effective_rank", "max_abs_ratio")):
        v = np.asarray(res[metric])[:, idx]
        ax.plot(range(len(idx)), v.mean(0), "o-", label=placement)
        ax.fill_between(range(len(idx)), v.min(0), v.max(0), alpha=0.2)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("block")
for placement, res in runs.items():
    idx = stream(res)
    print(f"{placement:5s} stream variance, first / last block: "
          f"{np.asarray(res.activation_variance)[:, idx[0]].mean():.3g} / "
          f"{np.asarray(res.activation_variance)[:, idx[-1]].mean():.3g}; token cosine: "
          f"{np.asarray(res.token_cosine_similarity)[:, idx[0]].mean():.3f} / "
          f"{np.asarray(res.token_cosine_similarity)[:, idx[-1]].mean():.3f}")
axes[0].set_yscale("log")
axes[0].legend()
fig.suptitle(f"residual stream after each block, N(0,1) tokens, width {WIDTH}, "
             f"{SEEDS} seeds (mean, band min-max)", fontsize=10)
show(fig)

# %% [markdown]
# Read the printed first / last values. Pre-LN and Peri-LN add every branch to a stream that
# nothing renormalizes, so its variance can grow with the block index. Post-LN renormalizes each
# token after each addition: that fixes each token's norm, not sigprop's `activation_variance`,
# which is the per-feature variance over the batch *and the tokens* (Brock et al.'s average
# channel variance) and falls when the tokens of a sequence become alike. The token metrics
# measure that directly: a token cosine near 1 would mean every token carries the same vector.
#
# ## 2. Parameter gradients by layer (Xiong et al. 2020)
#
# `param_grad_norm` is `||d loss / d W||_F` for every dense / conv / einsum / embedding weight,
# from the same single backward pass as the other gradient metrics. Xiong et al. plot the
# second MLP weight of each layer: under Post-LN its gradient grows toward the output, under
# Pre-LN it stays flat. Here on real text: a byte-level language model (`vocab=256`) reads
# windows of sigprop's README, with the cross-entropy of the true next byte as the loss.

# %%
readme = os.path.join(os.path.dirname(os.path.abspath(sigprop.__file__)), "..", "README.md")
if os.path.exists(readme):  # a source checkout; else (pip from git) sigprop's own docstring
    with open(readme, "rb") as f:
        raw = f.read()
else:
    raw = sigprop.__doc__.encode() * 4
text = np.frombuffer(raw, np.uint8).astype(np.int32)
starts = np.linspace(0, len(text) - TOKENS - 2, BATCH).astype(int)
ids = np.stack([text[s:s + TOKENS + 1] for s in starts])
inputs, targets = ids[:, :-1], ids[:, 1:]


def next_byte_loss(logits, key):
    """Mean cross-entropy of the true next byte (``key`` unused: the labels are the text's)."""
    del key
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


fig, ax = plt.subplots(figsize=(6, 3.4))
for placement in ("post", "pre"):
    lm = sigprop.transformer(6, WIDTH, HEADS, placement=placement, vocab=256)
    res = sigprop.analyze(lm, inputs, seeds=SEEDS, metrics=("param_grad_norm",),
                          loss=next_byte_loss)
    idx = [i for i, n in enumerate(res.param_layer_names) if n.endswith("mlp/fc2")]
    g = np.asarray(res.param_grad_norm)[:, idx]
    ax.plot(range(len(idx)), g.mean(0), "o-", label=placement)
    ax.fill_between(range(len(idx)), g.min(0), g.max(0), alpha=0.2)
    print(f"{placement}: last / first layer's fc2 gradient norm = "
          f"{g.mean(0)[-1] / g.mean(0)[0]:.2f}")
ax.set_yscale("log")
ax.set_xlabel("layer")
ax.set_ylabel("||dL/dW_fc2||")
ax.set_title(f"6-layer byte LM on README bytes, width {WIDTH}, {SEEDS} seeds", fontsize=9)
ax.legend()
show(fig)

# %% [markdown]
# Compare the printed ratios with Xiong et al.'s statement: at this small width and with a
# handful of seeds they need not agree. `sigprop validate` tests it as claim 13 (slopes of the
# log gradient norm over seeds, with their p-values), and `figures/xiong_gradients.py` draws it
# at a larger size.
#
# ## 3. Rank collapse
#
# Dong et al. (2021) prove that pure self-attention, without skips or MLPs, loses rank doubly
# exponentially in depth: every token converges to the same vector. `attention_only=True,
# skip=False, placement="none"` is that network; `token_residual_ratio` is their
# `||X - 1 mean(X)^T|| / ||X||`, 0 when the tokens coincide.

# %%
collapse = {}
for skip in (False, True):
    san = sigprop.transformer(DEPTH, WIDTH, HEADS, placement="none", attention_only=True,
                              skip=skip, causal=False)
    res = sigprop.analyze(san, x, seeds=SEEDS, metrics=("token_residual_ratio",))
    collapse["with skips" if skip else "no skips"] = np.asarray(res.token_residual_ratio)
    print("with skips:" if skip else "no skips:  ", "residual ratio by block",
          np.array2string(collapse["with skips" if skip else "no skips"].mean(0),
                          precision=3))

# %% [markdown]
# Noci et al. (2022): with skips, Pre-LN's tokens still become more alike as depth grows, since
# every block adds attention outputs that average over the tokens; scaling each branch by
# `1 / sqrt(depth)` (`branch_scale=`) keeps their cosine bounded.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
for label, r in collapse.items():
    axes[0].semilogy(range(1, r.shape[1] + 1), r.mean(0), "o-", label=label)
axes[0].set_xlabel("block")
axes[0].set_ylabel("token residual ratio")
axes[0].set_title("pure attention, N(0,1) tokens", fontsize=9)
axes[0].legend()
for scaled in (False, True):
    cos = []
    for depth in DEPTHS:
        m = sigprop.transformer(depth, WIDTH, HEADS, placement="pre", causal=False,
                                branch_scale=1 / math.sqrt(depth) if scaled else None)
        res = sigprop.analyze(m, x, seeds=SEEDS, metrics=("token_cosine_similarity",))
        last = res.layer_names.index(f"block{depth - 1:02d}")
        cos.append(np.asarray(res.token_cosine_similarity)[:, last].mean())
    axes[1].plot(DEPTHS, cos, "o-", label="branches x 1/sqrt(depth)" if scaled else "unscaled")
    print("scaled" if scaled else "unscaled", "last-block token cosine by depth:",
          dict(zip(DEPTHS, np.round(cos, 3))))
axes[1].set_xscale("log")
axes[1].set_xlabel("depth")
axes[1].set_ylabel("token cosine, last block")
axes[1].set_title("Pre-LN, N(0,1) tokens", fontsize=9)
axes[1].legend()
show(fig)

# %% [markdown]
# Claim 14 of `sigprop validate` states both halves with their criteria, and
# `figures/token_collapse.py` draws them at larger size.
#
# ## 4. Attention, in the zoo and in your own block
#
# `attention_entropy` is the entropy of each query's attention probabilities over the keys it
# may attend to, divided by the log of their number (1 = uniform), averaged over batch, heads
# and queries; `attention_logit_max` is the largest `|q.k| / sqrt(d_head)`, the quantity
# QK-norm keeps from growing. flax's own `MultiHeadDotProductAttention` (linen) and
# `MultiHeadAttention` (nnx) are observed out of the box; your own attention through
# `sigprop.tap(self, probs, "attention", logits=..., mask=...)`.

# %%
class Block(nn.Module):
    """A causal Pre-LN block written with flax's own attention."""

    @nn.compact
    def __call__(self, x):
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))
        h = nn.LayerNorm(name="ln1")(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=HEADS, name="attn")(h, h, mask=mask)
        h = nn.LayerNorm(name="ln2")(x)
        x = x + nn.Dense(WIDTH, name="fc2")(nn.gelu(nn.Dense(4 * WIDTH, name="fc1")(h)))
        return nn.Dense(10, name="head")(x)


mine = sigprop.analyze(Block(), x, seeds=SEEDS, metrics=ALL)
zoo = runs["pre"]
print("own block:   attention taps", mine.attention_layer_names,
      "entropy", np.round(np.asarray(mine.attention_entropy).mean(0), 3),
      "max logit", np.round(np.asarray(mine.attention_logit_max).mean(0), 2))
print("zoo (pre-LN, non-causal): entropy by block",
      np.round(np.asarray(zoo.attention_entropy).mean(0), 3))
print("                          max logit by block",
      np.round(np.asarray(zoo.attention_logit_max).mean(0), 2))

# %% [markdown]
# Entropies near 1 mean nearly uniform attention, which is what the small logits of a freshly
# initialized network give (the printed maxima are a few units). What a normalizer does to that
# as width and training grow is the question of QK-norm; `sigprop.train` records all of these
# metrics along a run as well
# (`sigprop.train(model, data, metrics=sigprop.metrics.TRANSFORMER_METRICS, ...)`).
