# %% [markdown]
# # 02 · Beyond BatchNorm: its claims at initialization, measured
#
# Lubana, Dick & Tanaka, *Beyond BatchNorm: Towards a Unified Understanding of Normalization in
# Deep Learning* (NeurIPS 2021, [arXiv 2106.05956](https://arxiv.org/abs/2106.05956); [BB]
# below), explain why normalizers succeed or fail through three properties of a randomly
# initialized network, each one a measurable quantity:
#
# 1. **stable forward propagation**: in a ResNet, the activations must not grow exponentially
#    with depth (claims 1 and 11 below);
# 2. **informative forward propagation**: different inputs must keep dissimilar activations
#    down to the last layer, or the network cannot tell them apart and trains slowly (claims 2
#    and 3);
# 3. **stable backward propagation**: the gradients of early layers must not explode relative
#    to late ones, or training is unstable (claim 4).
#
# Each section states a claim, says why it should hold, measures it and prints the verdict with
# its numbers. The measurements are the experiments of `sigprop.experiments`, the same
# definitions that `sigprop validate` checks and `sigprop figures` draws (the figures below are
# those figures), so a plot and the verdict beside it read the same numbers.
#
# **Sizes.** By default the experiments' quick sizes: small networks that a free Colab CPU runs
# in a few minutes, with the criteria unchanged. `FULL = True` below switches to the papers'
# sizes (cfg_10, ResNet-56 widths 32-64-128, 32x32 inputs, batch 64, 8 seeds): much longer on a
# CPU, choose a GPU runtime. With the environment variable `SIGPROP_QUICK=1` (the tests) the
# networks are tiny: that only checks the notebook runs, and its numbers mean little.

# %%
import dataclasses
import importlib
import io
import os
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Image, display

import sigprop
from sigprop import experiments, figures

V = importlib.import_module("sigprop.validate")  # the module (sigprop.validate is the function)

FULL = False  # True: the papers' sizes
QUICK = os.environ.get("SIGPROP_QUICK") == "1" and not FULL

# SIGPROP_QUICK=1 only: tiny networks, the same experiments
TINY = {
    "resnet_variance": dict(seeds=2, blocks=3, post_widths=(8,), post_image=8, post_batch=8,
                            group_size=4,
                            pre_widths=(8,), pre_image=8, pre_batch=8, pre_seeds=4),
    "cnn_groupnorm": dict(seeds=2, cfg="uniform", depth=4, width=16, image=8, batch=16,
                          group_sizes=(1, 2, 4, 8, 16), gn_large=8, gn_small=2, rank_depth=4,
                          rank_width=16, rank_group_sizes=(1, 2, 4, 8, 16),
                          rank_claim_sizes=(1, 4, 16)),
    "brock_spp": dict(seeds=2, blocks=2, widths=(8,), image=8, batch=8),
}


def measure(name):
    """Experiment ``name``'s data at this notebook's sizes."""
    exp = experiments.get(name)
    t0 = time.perf_counter()
    if QUICK:
        data = dataclasses.replace(exp, quick={**exp.quick, **TINY[name]}).run(quick=True)
    else:
        data = experiments.measure(name, quick=not FULL)
    print(f"{exp.title}\n  {exp.points(data.sizes)} analyses in {time.perf_counter() - t0:.0f} s;"
          f" {data.meta['inputs']}\n  sizes: {experiments.describe(data.meta['sizes'])}")
    return data


def show(fig):
    """Display a matplotlib figure inline (as a PNG, whatever the backend) and close it."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    display(Image(png.getvalue(), format="png"))


def show_figure(name, data):
    """Draw figure ``name`` of ``sigprop.figures`` (as ``sigprop figures --only name``) from
    ``data``."""
    f = figures.get(name)
    fig, axes = plt.subplots(*f.panels, figsize=f.size, squeeze=False)
    f.plot(data, axes.ravel())
    fig.suptitle(f"{f.title}\ninputs: {data.meta['inputs']}", fontsize=10)
    fig.text(0.5, 0.005, f.caption(data), ha="center", va="bottom", fontsize=7.5, color="0.3")
    fig.tight_layout(rect=(0, 0.03, 1, 0.93))
    show(fig)


verdicts = {}


def verdict(*results):
    """Print each claim's verdict, setting, numbers and criterion; keep them for the summary."""
    for r in results:
        verdicts[r.id] = r
    print(V.format_table(list(results)))


print(f"sigprop {sigprop.__version__};",
      "papers' sizes" if FULL else "SIGPROP_QUICK=1: tiny sizes" if QUICK else "quick sizes")

# %% [markdown]
# ## Claim 1: activation normalizers keep a ResNet's variance from exploding
#
# A residual block adds its branch to the stream: x_{l+1} = x_l + f(x_l). With He
# initialization and no normalizer, the branch f roughly preserves the variance of its input, so
# each addition (of a nearly uncorrelated term) doubles the stream's variance: 2^l after l
# blocks. An **activation-based** normalizer inside the branch (batchnorm, layernorm,
# instancenorm, groupnorm, frn) rescales the branch's output to unit variance whatever the
# stream's size, so each block adds a constant: the variance grows at most linearly, like l + 1.
# **Parametric** normalizers (weightnorm, scaled weight standardization `sws`) normalize the
# weights, not the activations: the branch output still scales with its input, and the growth
# stays exponential. [BB] points to the remedy: SkipInit (De & Smith 2020) starts each branch's
# gain at 0, so every block is the identity at initialization and the variance stays bounded.
#
# The experiment: stage 1 of a ResNet with each normalizer (post-activation blocks, as in [BB]),
# weightnorm and sws again in pre-activation blocks with SkipInit, and, for claim 11 below, the
# pre-activation ResNet-56 without normalizer and with batchnorm. Panel (a) shows the activation
# variance at each block's output relative to block 0, on a log axis (a straight line is
# exponential growth); the dashed lines are 2^l and l + 1.

# %%
resnet = measure("resnet_variance")
show_figure("resnet_variance", resnet)
verdict(V.claim1(resnet))

# %% [markdown]
# ## Claim 11: the residual stream's second moment, 2^l against l + 1
#
# Panel (b) above is De & Smith's closed form (`sigprop.theory.resnet_second_moment`): in a
# pre-activation ResNet the stream's second moment E[x^2] doubles per block without a
# normalizer and grows by one per block with batchnorm on each branch, since the normalized
# branch (batchnorm, ReLU, He conv) contributes a second moment of 1. With batchnorm, block l's
# branch is therefore only a fraction 1 / (l + 1) of the stream: the network is biased towards
# the identity, which is what lets deep ResNets train. Measured per block (mean over seeds)
# beside the laws, each started from the measured block 0 (`m0`):

# %%
fits = V.resnet_fits(resnet)
blocks = np.arange(resnet.sizes.blocks)
m_none = fits["second_moment"]["none"].mean(axis=0)
m_bn = fits["second_moment"]["batchnorm"].mean(axis=0)
print(pd.DataFrame({"block": blocks, "none": m_none, "m0 * 2^l": m_none[0] * 2.0 ** blocks,
                    "batchnorm": m_bn, "m0 + l": m_bn[0] + blocks}).astype(float).round(2)
      .to_string(index=False))
verdict(V.claim11(resnet))

# %% [markdown]
# ## Claim 2: larger groups, more similar samples
#
# Take a non-residual CNN (here [BB]'s uniform CNN; cfg_10 at the full sizes) and feed it a
# batch of independent inputs. Every conv + ReLU layer makes the samples' activations more
# alike; a normalizer that divides each sample by its own statistics over **many** channels
# (layernorm: all of them) cannot undo that, while one over **few** channels (instancenorm: one
# at a time) re-spreads the samples at every layer. GroupNorm with group size g (channels per
# group) interpolates: g = 1 is instancenorm, g = width is layernorm. [BB]'s claim: the final
# layer's mean cosine similarity between samples orders layernorm > groupnorm (large groups) >
# groupnorm (small groups) > instancenorm. [BB] shows that this similarity at initialization
# predicts optimization speed: the more similar the samples, the slower the training.

# %%
cnn = measure("cnn_groupnorm")
show_figure("cnn_cosine", cnn)
verdict(V.claim2(cnn))

# %% [markdown]
# ## Claim 3: the final layer's rank falls as the group size grows
#
# [BB]'s theorem, extending a BatchNorm result (Daneshmand et al. 2020) to GroupNorm: the rank
# of the last layer's activations (over the batch) is at least of order sqrt(width / g). The
# constants are unknown, so the claim checked is the trend: effective rank (the exponential of
# the entropy of the normalized singular values, Roy & Vetterli 2007) strictly decreasing over
# group sizes a factor 4 apart. The figure fits a sqrt(width / g) + b to the measured ranks.

# %%
show_figure("groupnorm_rank", cnn)
verdict(V.claim3(cnn))

# %% [markdown]
# ## Claim 4: small groups, exploding early gradients
#
# The other side of the trade-off. Normalizing by few statistics makes each layer's Jacobian
# more sensitive, and the gradient grows going backward: [BB] shows that normalizers using
# individual sample and channel statistics suffer an exacerbated form of the gradient explosion
# Yang et al. (2019) found for batchnorm. Measured as the ratio of the first layer's gradient
# norm to the last one's: largest for instancenorm, falling as the group size grows, smallest
# for layernorm, and above 1 for batchnorm (which explodes too). Together with claim 2 this is
# [BB]'s speed-stability trade-off: the group size buys informative activations with unstable
# gradients, and moderate groups balance the two.

# %%
show_figure("cnn_gradients", cnn)
verdict(V.claim4(cnn))

# %% [markdown]
# ## Signal propagation plots (Brock et al. 2021)
#
# Brock, De & Smith's signal propagation plots summarize a residual network at initialization
# by three curves per block: the average channel squared mean, the average channel variance,
# and the variance of the residual branch before it joins the stream. Their normalizer-free
# ResNets replace batchnorm by scaled weight standardization plus a zero-initialized branch gain
# (SkipInit): the plot shows why that works. Without a normalizer everything grows
# exponentially; with batchnorm the stream grows linearly and each branch has variance ~1; with
# sws + SkipInit the branches start at exactly 0 and the stream stays where it started within a
# stage (each later stage's first block changes the width through a shortcut conv).

# %%
spp = measure("brock_spp")
show_figure("brock_spp", spp)

# %% [markdown]
# ## All the verdicts
#
# The same checks as `sigprop validate` runs (claims 1-4 and 11 here; [U]'s claims 5-7 are
# notebook 03's subject, the closed forms 9-10 are in notebook 01 and `sigprop validate`). A
# failed claim is printed with its numbers, never hidden.

# %%
print(V.format_table([verdicts[k] for k in sorted(verdicts)]))
