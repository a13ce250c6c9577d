"""Argument checks that know nothing of networks: counts, random keys, matmul precisions. Each
raises a ``ValueError`` that names the parameter and what is allowed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

PRECISIONS = ("default", "high", "highest", "float32", "bfloat16", "tensorfloat32")


def check_seeds(seeds) -> int:
    if isinstance(seeds, bool) or not isinstance(seeds, (int, np.integer)) or seeds < 1:
        raise ValueError(f"seeds={seeds!r} must be an integer >= 1")
    return int(seeds)


def check_key(key):
    """An int or a scalar typed ``jax.random`` key -> a typed key."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) \
            and key.shape == ():
        return key
    if isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(key)  # a raw jax.random.PRNGKey
    raise ValueError(f"key={key!r}: expected an int or a scalar jax.random.key(...)")


def check_precision(precision) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; allowed: default, high, highest")
    return precision


def check_int(name: str, value, low: int = 1, high: int | None = None, why: str = "") -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) in ``[low, high]``; else a
    ``ValueError`` naming ``name`` and the bounds (``why``: a reason appended to the message)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low \
            or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}={value!r} must be an integer {bound}{why}")
    return int(value)


def check_positive(**values) -> None:
    """Each keyword's value an integer >= 1 (:func:`check_int`)."""
    for name, value in values.items():
        check_int(name, value)
