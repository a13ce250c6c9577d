"""Xiong et al. 2020 Fig. 3 at init: per-layer gradient norm of each block's second MLP dense, Post-LN vs Pre-LN, on README bytes (claim 13).

python figures/xiong_gradients.py [--quick] [--recompute]: writes figures/xiong_gradients.png and .pdf (quick runs into
figures/quick/), caching the measured arrays in data/xiong_gradients.npz next to them."""

import sys

from sigprop.paper.figures import script

if __name__ == "__main__":
    sys.exit(script("xiong_gradients", __file__))
