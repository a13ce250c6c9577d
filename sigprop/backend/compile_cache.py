"""The opt-in persistent compilation cache: :func:`enable_cache` (public as
``sigprop.enable_cache``).

sigprop's programs are compile-bound on a first call (ResNet-56 ``analyze``: 12-28 s on an H200,
``hessian.spectrum(order=90)`` of a 663k-parameter MLP 38 s; issue 23). JAX can keep compiled
executables on disk and load them in a later process. That is a process-wide JAX setting, so
sigprop never turns it on by itself on import (``tests/test_cache.py`` checks): a user, or an
entry point that owns its process (:func:`sigprop.backend.cpu.fast_start`, the CLI's), asks for it.
"""

from __future__ import annotations

import os

import jax

DEFAULT_DIR = os.path.join("~", ".cache", "sigprop", "xla")
"""Where :func:`enable_cache` keeps the executables when no path is given."""


def enable_cache(path: str | os.PathLike | None = None, *,
                 min_compile_time_secs: float = 1.0) -> str:
    """Keep every program that takes at least ``min_compile_time_secs`` to compile in JAX's
    persistent compilation cache at ``path``; a later process (or a later call after
    ``jax.clear_caches()``) with the same program, jax version and device loads it instead
    of compiling.

    Process-wide (JAX's ``jax_compilation_cache_dir`` and
    ``jax_persistent_cache_min_compile_time_secs``), and off unless this is called: importing
    sigprop sets nothing. Entries are keyed on the program, the compile options and the
    jax / jaxlib versions and the backend, so a cache directory may be shared between
    versions and machines; delete the directory to empty it.

    Args:
      path: the cache directory (created if missing); default ``~/.cache/sigprop/xla``.
      min_compile_time_secs: programs that compile faster are not written (default 1 s: the
        small programs of a run would cost more disk reads than they save).

    Returns:
      The absolute path of the cache directory.

    Example::

        import sigprop
        sigprop.enable_cache("/scratch/sigprop-xla")  # before the first analyze of the run
        sigprop.analyze(sigprop.resnet56(), (64, 32, 32, 3))  # compiles once, then from disk
    """
    if isinstance(min_compile_time_secs, bool) or not isinstance(min_compile_time_secs,
                                                                 (int, float)):
        raise ValueError(f"min_compile_time_secs={min_compile_time_secs!r}: expected a number "
                         "of seconds >= 0")
    if min_compile_time_secs < 0:
        raise ValueError(f"min_compile_time_secs={min_compile_time_secs!r}: expected >= 0")
    path = os.path.abspath(os.path.expanduser(os.fspath(DEFAULT_DIR if path is None else path)))
    os.makedirs(path, exist_ok=True)
    moved = jax.config.jax_compilation_cache_dir not in (None, path)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    if moved:  # JAX opens its cache once, at the first compile after a directory is set
        _reset_jax_cache()
    return path


def disable_cache() -> None:
    """Undo :func:`enable_cache`: no persistent cache for the rest of the process (JAX's
    default). For tests and notebooks; the files stay on disk."""
    jax.config.update("jax_compilation_cache_dir", None)
    _reset_jax_cache()


def _reset_jax_cache() -> None:
    """Make JAX open its persistent cache again at the next compile (with the directory set
    now): ``jax.experimental.compilation_cache``'s ``reset_cache`` (jax 0.10 and 0.12 have
    it); without it the directory JAX opened first stays in use."""
    try:
        from jax.experimental.compilation_cache import compilation_cache
    except ImportError:
        return
    reset = getattr(compilation_cache, "reset_cache", None)
    if reset is not None:
        reset()


__all__ = ["enable_cache", "disable_cache", "DEFAULT_DIR"]
