"""XLA:CPU speed-ups: one that changes no number, one that changes float32 rounding only.

:func:`unrolled_threefry`: on CPU, jax lowers its default PRNG (threefry2x32) as a rolled loop
(5 iterations over whole arrays, to keep compile times short), which runs 3x slower than the
straight-line form jax uses on every other backend: drawing a 1024 x 1024 He-normal kernel took
longer than a 256 x 1024 x 1024 matmul. Inside the context, programs lowered for CPU use the
straight-line form: the same bits, bit for bit (tests/test_xla_cpu.py), only faster.
sigprop's jitted entry points (``analyze``, ``sweep``) lower inside it; other code lowers as
jax does (except another thread's, lowering at the same moment: the same bits either way).

This swaps a private jax lowering table entry for the duration of the context. It is
version-gated (:data:`TESTED_JAX`, the jax versions it was checked on) and guarded: on another
jax version, or where jax's internals differ, the context does nothing, and
``tests/test_xla_cpu.py`` skips its swap tests saying so (after checking the bits are still
jax's), so a silent no-op is noticed.
Measured gain (jax 0.10.2, 2-core CPU): 13M normals in 54 ms instead of 178 ms; a 1024 x 1024
He-normal kernel 3.1 ms instead of 5.5-7.4 ms. jax 0.12.0.1 (same table, rule and bits;
2-core CPU, three runs): 13M normals in 40-41 ms instead of 248-262 ms (6.3-6.4x); a 1024 x
1024 He-normal kernel 2.6-2.7 ms instead of 9.2-9.4 ms (3.4-3.6x).

:func:`loop_options`: ``compiler_options`` (per program, nothing process-wide) for programs that
repeat a forward-over-reverse product in a loop (``sigprop.hessian``'s Lanczos). With XLA:CPU's
fusion emitters (jax 0.10's default), such a loop ran, in about one process of three, 3.5x slower
per product (51 ms instead of 15 ms for the benchmark's 663k-parameter MLP), and a lone product
sometimes did too (46 ms); never with the older emitters. A gradient runs 5-10% faster with the
fusion emitters, which stay on everywhere else. The two emitters round float32 differently
(products equal to 1e-7 relative, not bit for bit). Gated to :data:`LOOP_OPTIONS_JAX`: jax 0.12's
XLA:CPU has no older emitters left (``No such compile option: 'xla_cpu_use_fusion_emitters'``,
also as an ``XLA_FLAGS`` flag), so there the options are None (jax's defaults): a loop of the
benchmark's products then ran 12.9-14.2 ms per product in 4 processes of 4 (the slow mode not
seen, nor in 4 processes of jax 0.10.2 without the options: too few to say it is gone).
"""

from __future__ import annotations

import contextlib
import functools
import threading

import jax

TESTED_JAX = {(0, 10), (0, 12)}  # (major, minor) versions the swap was checked on, bit for bit
LOOP_OPTIONS_JAX = {(0, 10)}  # (major, minor) versions whose XLA:CPU has the loop options


def _jax_version() -> tuple:
    return tuple(jax.__version_info__[:2])

_lock = threading.Lock()
_depth = 0
_saved = None


@functools.cache
def _threefry_swap():
    """``(cpu lowering table, threefry2x32 primitive, straight-line rule entry)``, or None where
    jax's internals are not as expected."""
    if _jax_version() not in TESTED_JAX:
        return None
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as tf

        table = mlir._platform_specific_lowerings["cpu"]
        if tf.threefry2x32_p not in table:
            return None
        # out of line, as jax emits it on the other backends (the straight-line form is large)
        return table, tf.threefry2x32_p, mlir.LoweringRuleEntry(tf._threefry2x32_lowering_rule,
                                                                False)
    except Exception:  # a speed-up only
        return None


@contextlib.contextmanager
def unrolled_threefry():
    """Lower threefry2x32 for CPU as straight-line code while inside (re-entrant, thread-safe:
    the swap holds from the first entry to the last exit)."""
    global _depth, _saved
    swap = _threefry_swap()
    if swap is None:
        yield
        return
    table, prim, entry = swap
    with _lock:
        if _depth == 0:
            _saved = table[prim]
            table[prim] = entry
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                table[prim] = _saved
                _saved = None


class _FastRNG:
    """A jitted function whose calls (and ``lower``) run inside :func:`unrolled_threefry`; every
    other attribute is the jitted function's."""

    def __init__(self, jitted):
        self._jitted = jitted
        functools.update_wrapper(self, jitted)

    def __call__(self, *args, **kwargs):
        with unrolled_threefry():
            return self._jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        with unrolled_threefry():
            return self._jitted.lower(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._jitted, name)


def fast_rng(jitted):
    """``jitted`` (a ``jax.jit`` function) lowered with :func:`unrolled_threefry`."""
    return _FastRNG(jitted)


def loop_options() -> dict | None:
    """``compiler_options`` for ``jax.jit`` of a program that loops over Hessian-vector
    products: XLA:CPU's older (non-fusion) emitters, see the module doc; None (jax's defaults)
    on jax versions outside :data:`LOOP_OPTIONS_JAX`, where the option may not exist (jax 0.12
    rejects it). The option names an XLA:CPU field: other backends' compilers ignore it."""
    if _jax_version() not in LOOP_OPTIONS_JAX:
        return None
    return {"xla_cpu_use_fusion_emitters": False}
