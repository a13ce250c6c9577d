"""Wang et al. 2022 at init: per-block parameter-gradient norm, Post-LN vs DeepNorm, on README bytes (claim 17).

python figures/deepnorm_gradients.py [--quick] [--recompute]: writes figures/deepnorm_gradients.png and .pdf (quick runs into
figures/quick/), caching the measured arrays in data/deepnorm_gradients.npz next to them."""

import sys

from sigprop.paper.figures import script

if __name__ == "__main__":
    sys.exit(script("deepnorm_gradients", __file__))
