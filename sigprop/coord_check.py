"""``sigprop.coord_check``: muP's coordinate check (a callable module: ``sigprop.coord_check(...)``
is :func:`sigprop.analyses.coord_check.coord_check`)."""

from sigprop.analyses.coord_check import OUTPUT, CoordCheck, coord_check, scales
from sigprop.util.modules import make_callable

__all__ = ["coord_check", "CoordCheck", "OUTPUT", "scales"]

make_callable(__name__, coord_check)
