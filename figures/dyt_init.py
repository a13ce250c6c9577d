"""Zhu et al. 2025 at init: Pre-LN with LayerNorm vs with DyT, stream variance, token cosine and stream gradient per block, on README bytes (claim 15).

python figures/dyt_init.py [--quick] [--recompute]: writes figures/dyt_init.png and .pdf (quick runs into
figures/quick/), caching the measured arrays in data/dyt_init.npz next to them."""

import sys

from sigprop.paper.figures import script

if __name__ == "__main__":
    sys.exit(script("dyt_init", __file__))
