"""[U] Figure 2 and its appendix: WRN without and with skips, similar-batch correlation and gradient norm (claim 7).

python figures/u_figure2.py [--quick] [--recompute]: writes figures/u_figure2.png and .pdf (quick runs into
figures/quick/), caching the measured arrays in data/u_figure2.npz next to them."""

import sys

from sigprop.paper.figures import script

if __name__ == "__main__":
    sys.exit(script("u_figure2", __file__))
