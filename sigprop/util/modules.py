"""A module that is also a function: ``sigprop.train(...)`` and ``sigprop.train.learning_rate_search``.

The public facade makes a module callable once, for itself; nothing below the facade does."""

from __future__ import annotations

import sys
import types
from typing import Callable


class CallableModule(types.ModuleType):
    """A module whose call is its function ``__call_target__``."""

    def __call__(self, *args, **kwargs):
        return self.__call_target__(*args, **kwargs)


def make_callable(module_name: str, fn: Callable) -> None:
    """Calls of the module ``module_name`` call ``fn``; its other names stay reachable."""
    module = sys.modules[module_name]
    module.__call_target__ = fn
    module.__class__ = CallableModule
