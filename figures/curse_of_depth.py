"""Sun et al. 2025 at init: residual-stream variance per block, Pre-LN vs LayerNorm Scaling, on README bytes (claim 18).

python figures/curse_of_depth.py [--quick] [--recompute]: writes figures/curse_of_depth.png and .pdf (quick runs into
figures/quick/), caching the measured arrays in data/curse_of_depth.npz next to them."""

import sys

from sigprop.paper.figures import script

if __name__ == "__main__":
    sys.exit(script("curse_of_depth", __file__))
