"""[U] Figure 1: similar-batch and gradient correlation vs depth, ReLU MLP on real MNIST (claims 5, 6).

python figures/u_figure1.py [--quick] [--recompute]: writes figures/u_figure1.png and .pdf (quick runs into
figures/quick/), caching the measured arrays in data/u_figure1.npz next to them."""

import sys

from sigprop.paper.figures import script

if __name__ == "__main__":
    sys.exit(script("u_figure1", __file__))
