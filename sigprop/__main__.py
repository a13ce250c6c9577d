"""``python -m sigprop``: the command line (:func:`sigprop.cli.main`)."""

import sys

from sigprop.cli import main

sys.exit(main())
