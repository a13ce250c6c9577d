"""``sigprop.validate``: re-run the papers' claims as experiments (a callable module:
``sigprop.validate(quick=True)`` is :func:`sigprop.paper.validate.validate`; its other names,
e.g. ``sigprop.validate.CLAIMS``, are the claims' API). Loaded on first use."""

from sigprop.paper.validate import *  # noqa: F401,F403 (the facade of sigprop.paper.validate)
from sigprop.paper.validate import validate
from sigprop.util.modules import make_callable

make_callable(__name__, validate)
