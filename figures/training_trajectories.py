"""[U] The init-time metrics (cosine, similar-batch correlation, gradient norm, gradient cosines, loss) through early training.

python figures/training_trajectories.py [--quick] [--recompute]: writes figures/training_trajectories.png and .pdf (quick runs into
figures/quick/), caching the measured arrays in data/training_trajectories.npz next to them."""

import sys

from sigprop.paper.figures import script

if __name__ == "__main__":
    sys.exit(script("training_trajectories", __file__))
