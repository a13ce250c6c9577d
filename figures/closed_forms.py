"""The closed forms of claims 9-10: the iterated arc-cosine map, the batchnorm gradient rate pi/(pi - 1).

python figures/closed_forms.py [--quick] [--recompute]: writes figures/closed_forms.png and .pdf (quick runs into
figures/quick/), caching the measured arrays in data/closed_forms.npz next to them."""

import sys

from sigprop.paper.figures import script

if __name__ == "__main__":
    sys.exit(script("closed_forms", __file__))
