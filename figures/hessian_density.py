"""[U] Hessian eigenvalue density (SLQ) per normalizer at initialization and after training on real MNIST (claim 8).

python figures/hessian_density.py [--quick] [--recompute]: writes figures/hessian_density.png and .pdf (quick runs into
figures/quick/), caching the measured arrays in data/hessian_density.npz next to them."""

import sys

from sigprop.paper.figures import script

if __name__ == "__main__":
    sys.exit(script("hessian_density", __file__))
