"""One CPU policy: what sigprop chooses when it runs on XLA:CPU, decided here and nowhere else.

Every choice that depends on the backend is a function here, with its reason and the numbers it
was measured with; the places that act on it ask, and say nothing of the backend themselves.

- :func:`is_cpu`: whether a program will run on XLA:CPU (:mod:`~sigprop.backend.lapack`'s
  eigenvalues-only ``?syevd`` call asks this, and every policy below).
- :func:`has_float64`: float64 arithmetic exists (not on a TPU, not inside
  :func:`without_float64`): :mod:`sigprop.metrics`'s exact Gram matrices, gradient norms and
  spectra (``sigprop.metrics.has_f64`` is this function).
- :func:`without_float64`: trace as on a backend without float64 (a test of the TPU path on CPU).
- :func:`lapack_one_matrix_per_call`: batched LAPACK calls that must go one matrix at a time
  (a deadlock of jaxlib's CPU kernels): :func:`sigprop.backend.lapack.eigvalsh` and
  :mod:`sigprop.metrics.record`'s conditioning check.
- :func:`shift_conv`, :func:`explicit_conv_transpose`: how :func:`sigprop.nn.layers.conv2d`
  computes a conv and its input gradient (XLA:CPU's slow convolutions).
- :func:`sequential_loops`: ``sigprop.hessian`` runs its seeds' and probes' Lanczos loops in
  turn instead of vmapped.
- :func:`fast_start`: a command-line run's compile settings (an entry point owns its process),
  the persistent cache among them (:func:`sigprop.backend.compile_cache.enable_cache`).

Not here: :mod:`~sigprop.backend.xla_cpu`'s speed-ups, which act on XLA:CPU's lowering and
compiler options only and so need no question asked.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

import jax

from sigprop.backend import compile_cache


def is_cpu() -> bool:
    """Whether the default backend is XLA:CPU."""
    return jax.default_backend() == "cpu"


# Whether float64 is switched off for the programs traced now (:func:`without_float64`). A jax
# user context is part of jit's cache key and trace context, so a program traced with float64
# and one traced without are two programs, and nothing outside the ``with`` block changes.
# ``jax.make_user_context`` is public API (jax 0.10 and 0.12 checked); without it, a context
# variable, and the context clears jax's caches on entry and exit instead.
_MAKE_USER_CONTEXT = getattr(jax, "make_user_context", None)
_NO_FLOAT64 = _MAKE_USER_CONTEXT(default_value=False) if _MAKE_USER_CONTEXT else None
_NO_FLOAT64_VAR = contextvars.ContextVar("sigprop_no_float64", default=False)


def _float64_switched_off() -> bool:
    if _NO_FLOAT64 is not None:
        return bool(_NO_FLOAT64.value)
    return _NO_FLOAT64_VAR.get()


@contextlib.contextmanager
def without_float64():
    """Inside the block, :func:`has_float64` is False on every backend: programs traced there
    take the path of a backend without float64 (a TPU's), which is how the CPU tests check
    that path against the float64 one (``tests/test_float32_path.py``). Trace-time only: the
    switch is part of ``jax.jit``'s cache key (a ``jax.make_user_context``), so the programs
    compiled inside and outside the block are distinct and nothing process-wide changes."""
    if _NO_FLOAT64 is not None:
        with _NO_FLOAT64(True):
            yield
        return
    token = _NO_FLOAT64_VAR.set(True)  # fallback: jit would not see the switch, so drop its
    jax.clear_caches()                 # caches on the way in and out
    try:
        yield
    finally:
        _NO_FLOAT64_VAR.reset(token)
        jax.clear_caches()


def has_float64() -> bool:
    """Whether float64 arithmetic is available: CPU and GPU, not TPU (nor inside
    :func:`without_float64`). Where it is, metrics sum in float64 (an ill-conditioned Gram matrix
    as a float32 pair, a gradient norm in one pass, the spectral step's eigenvalues); without it
    they stay float32, with the accuracy :mod:`sigprop.metrics.spectral` states."""
    return jax.default_backend() != "tpu" and not _float64_switched_off()


def lapack_one_matrix_per_call(*, calls_side_by_side: bool) -> bool:
    """Whether a batch of matrices goes to LAPACK one matrix per call (``lax.map``) rather than as
    one batched call.

    jaxlib 0.10's batched CPU LAPACK kernels split a batch over XLA's intra-op thread pool and
    block a pool thread until the parts are done: two such calls at once exhausted a 2-thread
    pool and deadlocked (jax 0.10.2, 2-core CPU). One matrix per call is never split. Two calls
    run at once

    - where the caller's program may run independent calls side by side itself
      (``calls_side_by_side``; :mod:`sigprop.metrics.record`'s Cholesky conditioning check of
      batches over 64, one per layer: two layers' checks deadlocked): then always, whatever the
      backend and the device count (so it has been; per matrix, LAPACK's ``potrf`` takes 0.4 ms
      at 256 x 256);
    - where several CPU devices (``--xla_force_host_platform_device_count``) run the same
      program side by side: :func:`sigprop.backend.lapack.eigvalsh` (one call per program)
      asks with ``calls_side_by_side=False``, and goes one matrix per call with more than one
      CPU device only.
    """
    return calls_side_by_side or (is_cpu() and jax.local_device_count() > 1)


def shift_conv(stride: int, out_pixels: int) -> bool:
    """Whether ``conv2d(impl='auto')`` sums ``k * k`` strided slices times the kernel's taps
    (plain matmuls, forward and backward) instead of calling XLA's convolution: on XLA:CPU for
    strided convs and outputs of at most 4 pixels (2 x 2), where XLA:CPU's convolution (forward
    and input gradient) is 10-80x slower (``benchmarks/conv_impl.py``, cfg_10 / resnet56
    shapes); XLA's convolution everywhere else."""
    return is_cpu() and (stride > 1 or out_pixels <= 4)


def explicit_conv_transpose(stride: int, kernel: int) -> bool:
    """Whether XLA's convolution gets its input gradient as an explicit conv with the flipped
    kernel, in and out swapped, as an HWIO array (``sigprop.nn.layers.conv2d``), instead of
    JAX's transpose rule: on XLA:CPU, for stride-1 convs with odd kernels. JAX's rule gives XLA
    the same conv with an ``01oi`` kernel; inside a scan XLA:CPU keeps that layout and runs a
    naive loop, 10-50x slower than its Eigen conv (``benchmarks/conv_impl.py``, ``scan:
    lax/xla``)."""
    return is_cpu() and stride == 1 and kernel % 2 == 1


def sequential_loops() -> bool:
    """Whether ``sigprop.hessian`` runs its seeds and probes one after another (``lax.map``)
    instead of vmapped: on XLA:CPU, where a vmapped run's reorthogonalization reads strided
    basis blocks: a vmap of one seed took 2x the time per Lanczos step, and
    ``spectrum(order=90, probes=8)`` of the benchmark's 663k-parameter MLP 156 s vmapped
    against 52-66 s in turn. Accelerators vmap. The numbers are the same up to float32
    rounding (``tests/test_hessian.py``)."""
    return is_cpu()


def fast_start() -> None:
    """CLI runs are compile-bound: XLA:CPU's -O1 backend compiles ~2x faster than -O2 for ~15%
    slower kernels, and a persistent cache makes a second run start at once. Both only where
    the user has not chosen (``XLA_FLAGS``, ``JAX_COMPILATION_CACHE_DIR``); set before JAX
    initializes its backend."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=1").strip()
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        try:
            compile_cache.enable_cache(min_compile_time_secs=1.0)  # ~/.cache/sigprop/xla
        except OSError:  # read-only home: run without the cache
            pass
