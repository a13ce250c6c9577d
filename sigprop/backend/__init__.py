"""Backends: the devices a call runs on (:mod:`~sigprop.backend.devices`), the CPU policy (every
choice sigprop makes by backend, with its reason: :mod:`~sigprop.backend.cpu`) and every
workaround for one backend, each version-gated and scoped to the programs that use it
(:mod:`~sigprop.backend.xla_cpu`, :mod:`~sigprop.backend.lapack`). Nothing here is set
process-wide (but by :func:`~sigprop.backend.cpu.fast_start`, which only an entry point calls,
and by :func:`~sigprop.backend.compile_cache.enable_cache`, the opt-in persistent compilation
cache: ``sigprop.enable_cache``)."""
