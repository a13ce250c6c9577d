"""Dehghani et al. 2023 at init: attention logits and entropy per layer and width, with and without QK-norm, blocks without normalizers (claim 16).

python figures/qk_norm.py [--quick] [--recompute]: writes figures/qk_norm.png and .pdf (quick runs into
figures/quick/), caching the measured arrays in data/qk_norm.npz next to them."""

import sys

from sigprop.paper.figures import script

if __name__ == "__main__":
    sys.exit(script("qk_norm", __file__))
