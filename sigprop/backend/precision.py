"""Accelerator matmul precisions emulated on CPU: what ``precision="default"`` computes on a GPU
(TF32) or a TPU (one bfloat16 pass), measured on a machine that has neither.

XLA:CPU ignores the precision of a float32 matmul or convolution: ``analyze(...,
precision="default")`` gives the bits of ``precision="highest"`` there (``tests/
test_precision.py`` checks). On an accelerator, ``"default"`` rounds the operands of every
float32 ``dot_general`` and convolution whose precision is ``DEFAULT`` to TF32 (NVIDIA GPUs from
Ampere: 10 mantissa bits) or bfloat16 (TPU: 7 bits), then accumulates in float32.
:func:`emulated` does exactly that on CPU: inside it, programs lowered for CPU round those
operands (round to nearest even) before XLA:CPU's float32 kernels. Operations that ask for
``HIGHEST`` themselves (the Gram records of :mod:`sigprop.metrics.record`) stay float32, as on
the accelerators.

The swap replaces XLA:CPU's lowering rules of ``dot_general`` and ``conv_general_dilated``, which
are not public API: version-gated (:data:`TESTED_JAX`), and where it is unavailable
:func:`available` is False and the context raises (the tests skip, saying so). A jax user
context (public) keeps programs traced inside apart in ``jax.jit``'s cache. Not thread-safe
against other threads lowering CPU programs at the same time: for measurements and tests.
"""

from __future__ import annotations

import contextlib
import threading

import jax
import jax.numpy as jnp
from jax import lax

FORMATS = {"tf32": 13, "bf16": 16}  # float32 mantissa bits dropped (23 - 10, 23 - 7)
TESTED_JAX = {(0, 10), (0, 12)}
_PRIMITIVES = (lax.dot_general_p, lax.conv_general_dilated_p)
_lock = threading.Lock()
_MAKE_USER_CONTEXT = getattr(jax, "make_user_context", None)
_FORMAT_CONTEXT = _MAKE_USER_CONTEXT(default_value=None) if _MAKE_USER_CONTEXT else None


def round_mantissa(x, fmt: str):
    """``x`` (float32) rounded to nearest even at the precision of ``fmt`` (``"tf32"``: 10
    mantissa bits; ``"bf16"``: 7), kept in float32. Inf and NaN stay (NaN payloads may
    change)."""
    drop = FORMATS[fmt]
    bits = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    half = jnp.uint32((1 << (drop - 1)) - 1)
    odd = (bits >> drop) & jnp.uint32(1)
    rounded = (bits + half + odd) & jnp.uint32(~((1 << drop) - 1) & 0xFFFFFFFF)
    finite = jnp.isfinite(x)
    return jnp.where(finite, lax.bitcast_convert_type(rounded, jnp.float32), x)


def _tables():
    """``[(table, primitive)]``: where XLA:CPU's rule of each primitive lives (the CPU table
    when it has one, else the generic one); None where jax is untested or the layout differs."""
    if tuple(jax.__version_info__[:2]) not in TESTED_JAX or _FORMAT_CONTEXT is None:
        return None
    try:
        from jax._src.interpreters import mlir

        cpu = mlir._platform_specific_lowerings["cpu"]
        out = []
        for prim in _PRIMITIVES:
            table = cpu if prim in cpu else mlir._lowerings
            if prim not in table:
                return None
            out.append((table, prim))
        return out, mlir
    except Exception:  # a measurement aid only
        return None


def available() -> bool:
    """Whether :func:`emulated` works with this jax."""
    return _tables() is not None


def _is_default(precision) -> bool:
    if precision is None:
        return True
    if isinstance(precision, tuple):
        return all(_is_default(p) for p in precision)
    return precision == lax.Precision.DEFAULT


def _wrapped(entry, mlir, fmt):
    def round_operand(ctx, aval, value):
        if aval.dtype != jnp.float32:
            return value
        sub = ctx.replace(avals_in=[aval], avals_out=[aval])
        out = mlir.lower_fun(lambda v: round_mantissa(v, fmt), multiple_results=False)(sub, value)
        return out[0] if isinstance(out, (list, tuple)) else out

    def rule(ctx, lhs, rhs, *args, precision=None, **params):
        if _is_default(precision):
            lhs = round_operand(ctx, ctx.avals_in[0], lhs)
            rhs = round_operand(ctx, ctx.avals_in[1], rhs)
        return entry.rule(ctx, lhs, rhs, *args, precision=precision, **params)

    return type(entry)(rule, entry.inline) if hasattr(entry, "inline") else rule


@contextlib.contextmanager
def emulated(fmt: str):
    """Inside, float32 matmuls and convolutions of ``DEFAULT`` precision (``analyze(...,
    precision="default")``) lowered for CPU take operands rounded to ``fmt`` (``"tf32"`` as a
    GPU's default, ``"bf16"`` as a TPU's). Programs traced inside are separate jit entries."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r}; allowed: {', '.join(FORMATS)}")
    found = _tables()
    if found is None:
        raise RuntimeError(f"precision emulation is not available on jax {jax.__version__} "
                           f"(tested on {sorted(TESTED_JAX)})")
    tables, mlir = found
    with _lock:
        saved = [(table, prim, table[prim]) for table, prim in tables]
        for table, prim, entry in saved:
            table[prim] = _wrapped(entry, mlir, fmt)
    try:
        with _FORMAT_CONTEXT(fmt):
            yield
    finally:
        with _lock:
            for table, prim, entry in saved:
                table[prim] = entry


__all__ = ["emulated", "available", "round_mantissa", "FORMATS", "TESTED_JAX"]
