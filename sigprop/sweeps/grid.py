"""A sweep's grid and its identities: the grid's points as config dicts, a builder's parameters
and name, and the canonical JSON and digests that name a point (its file in a sweep folder)."""

from __future__ import annotations

import functools
import hashlib
import inspect
import itertools
import json

import jax
import numpy as np


# ------------------------------------------------------------------------------------- grid
def expand_grid(grid) -> list[dict]:
    """The grid's points as config dicts, in order.

    ``grid`` is a dict ``name -> list of values`` (the cartesian product in the dict's order, the
    last name varying fastest) or a list of config dicts (taken as they are). NumPy scalars become
    Python scalars (so builders' ``isinstance(v, int)`` checks and JSON work)."""
    if isinstance(grid, dict):
        names = list(grid)
        for name in names:
            if not isinstance(name, str):
                raise ValueError(f"grid: keys must be parameter names (str); got {name!r}")
            values = grid[name]
            if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, range,
                                                                            np.ndarray)):
                raise ValueError(f"grid[{name!r}] must be a list of values; got {values!r} "
                                 f"(write [{values!r}] for a single value)")
            if len(values) == 0:
                raise ValueError(f"grid[{name!r}] is empty")
        points = [dict(zip(names, combo)) for combo in itertools.product(*grid.values())]
    elif isinstance(grid, (list, tuple)):
        points = list(grid)
        for i, p in enumerate(points):
            if not isinstance(p, dict) or not all(isinstance(k, str) for k in p):
                raise ValueError(f"grid[{i}] must be a config dict name -> value; got {p!r}")
    else:
        raise ValueError("grid must be a dict name -> list of values, or a list of config dicts; "
                         f"got {type(grid).__name__}")
    if not points:
        raise ValueError("grid has no points")
    return [{k: py_scalar(v) for k, v in p.items()} for p in points]


def py_scalar(v):
    if isinstance(v, np.generic):
        return v.item()
    return v


def builder_params(builder) -> tuple[list[str], bool]:
    """``(parameter names, takes **kwargs)`` of ``builder`` (empty, True when unknown)."""
    try:
        sig = inspect.signature(builder)
    except (TypeError, ValueError):
        return [], True
    names = [p.name for p in sig.parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


def builder_name(builder) -> str:
    """A name for ``builder`` that is stable across processes (it enters the points' ids)."""
    if isinstance(builder, functools.partial):
        return f"{builder_name(builder.func)}(*{canonical(list(builder.args))}, " \
               f"**{canonical(builder.keywords)})"
    return f"{getattr(builder, '__module__', '?')}.{getattr(builder, '__qualname__', type(builder).__qualname__)}"


# ---------------------------------------------------------------------------- ids and JSON
def json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, functools.partial) or callable(v):
        return builder_name(v)
    raise TypeError(f"{v!r} ({type(v).__name__}) has no JSON form")


def canonical(obj) -> str:
    """Canonical JSON: sorted keys, no spaces; functions and classes as ``module.qualname``."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=json_default)


def key_json(key):
    if isinstance(key, (int, np.integer)):
        return int(key)
    return {"impl": str(jax.random.key_impl(key)),
            "data": np.asarray(jax.random.key_data(key)).tolist()}


def digest(x) -> str:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    return hashlib.sha256(x.tobytes() + str(x.shape).encode()).hexdigest()
