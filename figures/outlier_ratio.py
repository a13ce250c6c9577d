"""[U] lambda_1 / lambda_10 and lambda_max through early training on real MNIST, per normalizer (claim 8).

python figures/outlier_ratio.py [--quick] [--recompute]: writes figures/outlier_ratio.png and .pdf (quick runs into
figures/quick/), caching the measured arrays in data/outlier_ratio.npz next to them."""

import sys

from sigprop.paper.figures import script

if __name__ == "__main__":
    sys.exit(script("outlier_ratio", __file__))
