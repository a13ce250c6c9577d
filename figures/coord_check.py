"""Coordinate check (muP) of a standard-parametrized ReLU MLP on real MNIST: RMS of each layer vs width.

python figures/coord_check.py [--quick] [--recompute]: writes figures/coord_check.png and .pdf (quick runs into
figures/quick/), caching the measured arrays in data/coord_check.npz next to them."""

import sys

from sigprop.paper.figures import script

if __name__ == "__main__":
    sys.exit(script("coord_check", __file__))
