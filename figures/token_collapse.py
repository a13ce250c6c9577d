"""Token collapse at init (Dong et al. 2021; Noci et al. 2022): pure attention with and without skips, Pre-LN token cosine vs depth with and without 1/sqrt(depth) branches (claim 14).

python figures/token_collapse.py [--quick] [--recompute]: writes figures/token_collapse.png and .pdf (quick runs into
figures/quick/), caching the measured arrays in data/token_collapse.npz next to them."""

import sys

from sigprop.paper.figures import script

if __name__ == "__main__":
    sys.exit(script("token_collapse", __file__))
