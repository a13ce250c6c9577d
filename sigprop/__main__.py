import sys

from sigprop.cli import main

sys.exit(main())
