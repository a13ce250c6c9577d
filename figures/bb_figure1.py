"""[BB] Figure 1 at small scale: training loss at the largest stable rate beside the init cosine, Spearman rho (claim 12).

python figures/bb_figure1.py [--quick] [--recompute]: writes figures/bb_figure1.png and .pdf (quick runs into
figures/quick/), caching the measured arrays in data/bb_figure1.npz next to them."""

import sys

from sigprop.paper.figures import script

if __name__ == "__main__":
    sys.exit(script("bb_figure1", __file__))
