# %% [markdown]
# # 01 · Quickstart: signal propagation at initialization
#
# A randomly initialized network already decides much of how it will train. Two things matter
# before the first step:
#
# - **forward propagation**: do different inputs stay different as they pass through the
#   layers? If every sample ends up pointing the same way (cosine similarity near 1, rank near
#   1), the last layer cannot tell them apart, and [Beyond BatchNorm](https://arxiv.org/abs/2106.05956)
#   ([BB]) shows such networks train slowly;
# - **backward propagation**: do gradients keep their size from the last layer to the first? If
#   they grow layer after layer (gradient explosion), early layers take huge steps and training
#   is unstable.
#
# sigprop measures both, layer by layer, for freshly initialized networks over many random
# seeds at once: per layer the **activation variance**, the mean **cosine similarity** between
# the samples of a batch, the **stable** and **effective rank** of the batch's activations, and
# the **gradient norm** of the loss at each layer's output. This notebook analyses a zoo model
# over seeds, plots the layers as bands over seeds, puts theory beside measurement, saves and
# loads a result and hands it to pandas and xarray.
#
# Set the environment variable `SIGPROP_QUICK=1` for tiny sizes (the tests run every notebook
# that way); the outputs shown were made with the default sizes.

# %%
import io
import os
import tempfile

import numpy as np
import matplotlib.pyplot as plt
from IPython.display import Image, display

import sigprop
from sigprop import plot

QUICK = os.environ.get("SIGPROP_QUICK") == "1"  # the tests' tiny sizes: the numbers mean little
print(f"sigprop {sigprop.__version__}, {'SIGPROP_QUICK=1: tiny sizes' if QUICK else 'default sizes'}")


def show(fig):
    """Display a matplotlib figure inline (as a PNG, whatever the backend) and close it."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    display(Image(png.getvalue(), format="png"))

# %% [markdown]
# ## Analyze a zoo model over seeds
#
# `sigprop.cnn("cfg_10", ...)` is [BB]'s 10-layer non-residual CNN (3x3 convs of 64 to 512
# channels, each followed by the normalizer and a ReLU). Here each layer uses GroupNorm with 32
# groups. `sigprop.analyze` initializes one network per seed, feeds each an N(0, 1) batch of
# CIFAR-shaped images, and measures every layer in one forward and one backward pass; all seeds
# run as one jitted, vmapped JAX program. The result is a `LayerMetrics`: a mapping of
# `[seeds, layers]` arrays, with the layer names alongside.

# %%
if QUICK:
    SHAPE, SEEDS = (8, 8, 8, 3), 2
    def model(norm, **options):
        return sigprop.cnn("uniform", depth=4, width=16, norm=norm, **options)
    GROUPS = dict(num_groups=4)
else:
    SHAPE, SEEDS = (32, 32, 32, 3), 6  # batch 32 of 32x32x3 images, 6 random networks
    def model(norm, **options):
        return sigprop.cnn("cfg_10", norm=norm, **options)
    GROUPS = dict(num_groups=32)

res = sigprop.analyze(model("groupnorm", **GROUPS), SHAPE, seeds=SEEDS)
print(res)
print("activation layers:", res.layer_names)
print("gradient layers:  ", res.grad_layer_names)
print("cosine similarity [seeds, layers]:\n", np.round(res.cosine_similarity, 3))

# %% [markdown]
# Each row is one random network. The cosine similarity of the inputs is about 0 (independent
# Gaussian images); every conv + ReLU layer pushes the samples closer together, and the
# normalizer decides how much. `res.finite` flags, per seed and layer, whether everything was
# finite (a NaN is data here, not a crash).
#
# ## Normalizers side by side, as bands over seeds
#
# The same network with other normalizers. `plot.layer_band` draws a metric over the layers as
# the mean over seeds with a min-max band; `plot.compare` does it for several results and
# metrics at once.

# %%
results = {"groupnorm": res}
for norm in ("batchnorm", "layernorm", "instancenorm", "none"):
    results[norm] = sigprop.analyze(model(norm), SHAPE, seeds=SEEDS)

show(plot.compare(results, metrics=("cosine_similarity", "effective_rank", "grad_norm"),
                  title=f"{'uniform CNN' if QUICK else 'cfg_10 CNN'} at initialization, "
                        f"{SEEDS} seeds, inputs N(0, 1) {SHAPE}"))

# %% [markdown]
# What to read off (at the default sizes): LayerNorm, like no normalizer, drives the samples
# together fastest (final cosine near 0.9, the lowest rank), GroupNorm with 32 groups a little
# less, InstanceNorm and BatchNorm keep them apart. Going backward, from the last layer to the
# first, the gradients of BatchNorm and InstanceNorm grow (gradient explosion), LayerNorm's and
# GroupNorm's stay nearly flat, and without a normalizer they shrink. These are [BB]'s claims 2
# and 4; notebook 02 measures them against their criteria.
#
# One panel of your own is a `layer_band` call on your axes. The normalizers hold the activation
# variance at a fixed level; without one, nothing restores it and it drifts down layer after
# layer:

# %%
fig, ax = plt.subplots(figsize=(5, 3.4))
for norm, r in results.items():
    plot.layer_band(ax, r, "activation_variance", norm, log=True)
ax.set_title("activation variance after norm + ReLU")
ax.legend(fontsize=8)
show(fig)

# %% [markdown]
# ## Theory beside measurement
#
# For wide ReLU networks with He initialization and no normalizer, the cosine between two
# inputs follows a closed form layer after layer, the arc-cosine map of Cho & Saul:
# c' = (sqrt(1 - c^2) + (pi - arccos c) c) / pi. `plot.cosine_vs_arccos` iterates it from the
# measured first layer and draws it over the measurement (`sigprop.theory` holds the closed
# forms, each with its derivation).

# %%
WIDE, DEPTH = (128, 6) if QUICK else (1024, 12)
BATCH = 16 if QUICK else 64
relu = sigprop.analyze(sigprop.mlp(DEPTH, WIDE, norm="none"), (BATCH, WIDE), seeds=2 * SEEDS,
                       metrics=("cosine_similarity", "activation_variance"))
show(plot.cosine_vs_arccos(relu))
print("measured:", np.round(relu.cosine_similarity.mean(axis=0), 4))

# %% [markdown]
# The backward pass has a closed form too: in a BatchNorm + ReLU MLP without skips the squared
# gradient norm grows by pi / (pi - 1) ~ 1.467 per layer going backward (Yang et al. 2019), at
# large width and batch. `plot.grad_vs_bn_rate` draws that rate from the last layer back.

# %%
bn = sigprop.analyze(sigprop.mlp(DEPTH + 4, WIDE, norm="batchnorm"), (BATCH, WIDE),
                     seeds=SEEDS, metrics=("grad_norm",))
show(plot.grad_vs_bn_rate(bn))
g = bn.grad_norm.mean(axis=0)
print(f"squared-gradient growth per layer (interior layers): {np.mean((g[1:-2] / g[2:-1]) ** 2):.3f}"
      f"; theory {sigprop.theory.bn_gradient_explosion_rate('relu'):.3f}")

# %% [markdown]
# ## Save and load
#
# A result is one `.npz` file (arrays, layer names and the configuration as JSON; no pickle).

# %%
with tempfile.TemporaryDirectory() as folder:
    path = res.save(os.path.join(folder, "groupnorm.npz"))
    back = sigprop.LayerMetrics.load(path)
    print(f"{os.path.basename(path)}: {os.path.getsize(path) / 1024:.1f} KiB;", back)
assert all(np.array_equal(back[k], res[k]) for k in res) and back.layer_names == res.layer_names

# %% [markdown]
# ## pandas and xarray
#
# `to_pandas()` gives a long table, one row per (seed, layer, metric); the usual groupby and
# pivot follow. Here: the final layer of each normalizer, mean over seeds.

# %%
import pandas as pd

df = pd.concat([r.to_pandas().assign(norm=n) for n, r in results.items()], ignore_index=True)
print(df.head())
last = df[df.layer_index == df.groupby("metric").layer_index.transform("max")]
table = last.pivot_table(index="norm", columns="metric", values="value", aggfunc="mean")
print(table[["cosine_similarity", "stable_rank", "effective_rank", "grad_norm"]].astype(float)
      .round(3))

# %% [markdown]
# `to_xarray()` gives a `Dataset` with named dimensions (`seed`, `layer`, `grad_layer`) and the
# layer names as coordinates; results of the same architecture stack along a new dimension.

# %%
import xarray as xr

ds = xr.concat([r.to_xarray() for r in results.values()],
               dim=pd.Index(list(results), name="norm"), combine_attrs="drop")
print(ds)
print(ds.cosine_similarity.mean("seed").isel(layer=-1).to_series().round(3))

# %% [markdown]
# Next: [02 · Beyond BatchNorm](02_beyond_batchnorm.ipynb) reproduces [BB]'s claims one by one.
