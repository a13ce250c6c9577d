"""Brock et al. signal-propagation plot: channel squared mean, channel variance, residual-branch variance per block.

python figures/brock_spp.py [--quick] [--recompute]: writes figures/brock_spp.png and .pdf (quick runs into
figures/quick/), caching the measured arrays in data/brock_spp.npz next to them."""

import sys

from sigprop.paper.figures import script

if __name__ == "__main__":
    sys.exit(script("brock_spp", __file__))
