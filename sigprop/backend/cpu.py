"""One CPU policy: what sigprop chooses when it runs on XLA:CPU, decided here and nowhere else.

- :func:`fast_start`: a command-line run's compile settings (an entry point owns its process).
- :func:`is_cpu`: whether a program will run on XLA:CPU (the backends' own workarounds,
  :mod:`~sigprop.backend.xla_cpu` and :mod:`~sigprop.backend.lapack`, ask this).
"""

from __future__ import annotations

import os

import jax


def is_cpu() -> bool:
    """Whether the default backend is XLA:CPU."""
    return jax.default_backend() == "cpu"


def fast_start() -> None:
    """CLI runs are compile-bound: XLA:CPU's -O1 backend compiles ~2x faster than -O2 for ~15%
    slower kernels, and a persistent cache makes a second run start at once. Both only where
    the user has not chosen (``XLA_FLAGS``, ``JAX_COMPILATION_CACHE_DIR``); set before JAX
    initializes its backend."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=1").strip()
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        cache = os.path.join(os.path.expanduser("~"), ".cache", "sigprop", "xla")
        try:
            os.makedirs(cache, exist_ok=True)
            jax.config.update("jax_compilation_cache_dir", cache)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        except OSError:  # read-only home: run without the cache
            pass
