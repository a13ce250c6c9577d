"""[BB] ResNet-56: activation variance of the residual stream vs block, every normalizer, with and without SkipInit (claims 1, 11).

python figures/resnet_variance.py [--quick] [--recompute]: writes figures/resnet_variance.png and .pdf (quick runs into
figures/quick/), caching the measured arrays in data/resnet_variance.npz next to them."""

import sys

from sigprop.paper.figures import script

if __name__ == "__main__":
    sys.exit(script("resnet_variance", __file__))
