"""Gradient noise scale of the normalization layers vs the whole model through early training of a small transformer LM (Gray et al. 2024; claim 19).

python figures/gns_tracking.py [--quick] [--recompute]: writes figures/gns_tracking.png and .pdf (quick runs into
figures/quick/), caching the measured arrays in data/gns_tracking.npz next to them."""

import sys

from sigprop.paper.figures import script

if __name__ == "__main__":
    sys.exit(script("gns_tracking", __file__))
