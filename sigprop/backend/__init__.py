"""Backends: the devices a call runs on (:mod:`~sigprop.backend.devices`) and every workaround for
one backend, each version-gated and scoped to the programs that use it (:mod:`~sigprop.backend.xla_cpu`,
:mod:`~sigprop.backend.lapack`). Nothing here is set process-wide."""
