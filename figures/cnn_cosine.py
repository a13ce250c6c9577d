"""[BB] non-residual CNN: cosine similarity vs layer per normalizer and GroupNorm group size (claim 2).

python figures/cnn_cosine.py [--quick] [--recompute]: writes figures/cnn_cosine.png and .pdf (quick runs into
figures/quick/), caching the measured arrays in data/cnn_cosine.npz next to them."""

import sys

from sigprop.paper.figures import script

if __name__ == "__main__":
    sys.exit(script("cnn_cosine", __file__))
