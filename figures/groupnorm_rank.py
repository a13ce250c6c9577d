"""[BB] final-layer stable and effective rank vs GroupNorm group size, sqrt(width / g) trend fitted (claim 3).

python figures/groupnorm_rank.py [--quick] [--recompute]: writes figures/groupnorm_rank.png and .pdf (quick runs into
figures/quick/), caching the measured arrays in data/groupnorm_rank.npz next to them."""

import sys

from sigprop.paper.figures import script

if __name__ == "__main__":
    sys.exit(script("groupnorm_rank", __file__))
