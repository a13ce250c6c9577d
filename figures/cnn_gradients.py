"""[BB] per-layer gradient norm for GroupNorm group sizes, InstanceNorm, LayerNorm, BatchNorm (claim 4).

python figures/cnn_gradients.py [--quick] [--recompute]: writes figures/cnn_gradients.png and .pdf (quick runs into
figures/quick/), caching the measured arrays in data/cnn_gradients.npz next to them."""

import sys

from sigprop.paper.figures import script

if __name__ == "__main__":
    sys.exit(script("cnn_gradients", __file__))
