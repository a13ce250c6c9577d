"""Eigenvalues without eigenvectors on CPU: jaxlib's LAPACK ``?syevd`` called directly.

``jnp.linalg.eigvalsh`` always asks LAPACK for the eigenvectors too. The spectral step of the
ranks needs eigenvalues only, so on CPU it calls jaxlib's ``?syevd`` FFI target with
``mode='N'``: 1.3-1.6x faster on 3200 matrices of 32 x 32 (80-110 ms vs 128-171 ms, jaxlib
0.10.2, 2-core CPU); 2.0x in float64 (99-103 ms vs 197-205 ms) and 2.1-2.2x in float32 (80-82 ms
vs 173-175 ms) with jaxlib 0.12.0.1 (same target, attributes and eigenvalues; 2-core CPU, three
runs). The FFI target and its attributes are not public API: the call is version-gated
(:data:`TESTED_JAXLIB`) and probed once on matrices with known eigenvalues; any other jaxlib, or
any failure, means ``jnp.linalg.eigvalsh``, and
``tests/test_metrics.py::test_eigenvalues_only_path_is_found_while_tracing`` fails (on a jaxlib
outside :data:`TESTED_JAXLIB`: skips, saying so), so a silent fallback is noticed.

With more than one CPU device in the process (``--xla_force_host_platform_device_count``), each
matrix gets its own LAPACK call: jaxlib 0.10's batched CPU kernels deadlock when calls run side by
side (:func:`sigprop.backend.cpu.lapack_one_matrix_per_call`, the CPU policy, says when).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sigprop.backend import cpu


def syevd_values(g, mode: str):
    """jaxlib's LAPACK ``?syevd`` FFI target on symmetric matrices ``[..., n, n]`` (lower
    triangle): their eigenvalues (ascending) and LAPACK's ``info``, over any leading batch axes.
    ``mode='N'`` skips the eigenvectors, which ``jnp.linalg.eigvalsh`` always computes."""
    from jaxlib import lapack

    target = lapack.prepare_lapack_call("syevd_ffi", np.dtype(g.dtype))  # also loads LAPACK
    n, batch = g.shape[-1], g.shape[:-2]
    d = g.ndim  # column-major matrices, batch axes outermost (as jax's own lowering does)
    layout = tuple(range(d - 2)) + (d - 1, d - 2)  # major-to-minor
    _, w, info = jax.ffi.ffi_call(
        target,
        (jax.ShapeDtypeStruct(g.shape, g.dtype), jax.ShapeDtypeStruct(batch + (n,), g.dtype),
         jax.ShapeDtypeStruct(batch, jnp.int32)),
        input_output_aliases={0: 0},
        input_layouts=[layout],
        output_layouts=[layout, None, None],
        vmap_method="broadcast_all",  # the target loops over leading batch axes itself
    )(g, mode=np.uint8(ord(mode)), uplo=np.uint8(ord("L")))
    return w, info


TESTED_JAXLIB = {(0, 10), (0, 12)}  # (major, minor) versions the ?syevd call was checked on


@functools.cache
def eigenvalues_only_works() -> bool:
    """Whether :func:`syevd_values` without eigenvectors runs here and gives the eigenvalues of
    a known batch of matrices (float32 and float64). It relies on jaxlib's LAPACK FFI target and
    its attributes, which are not public API: a jaxlib outside :data:`TESTED_JAXLIB`, or any
    failure, means ``jnp.linalg`` instead."""
    import jaxlib

    version = tuple(int(v) for v in jaxlib.__version__.split(".")[:2])
    if version not in TESTED_JAXLIB:
        return False  # tests/test_metrics.py::test_eigenvalues_only_path... skips: re-check
    try:
        q, _ = np.linalg.qr(np.arange(1.0, 26.0).reshape(5, 5) ** 0.5)
        want = np.array([[0.5, 1.0, 2.0, 3.0, 7.0], [-1.0, 0.25, 4.0, 5.0, 6.0]])
        a = np.stack([q @ np.diag(w) @ q.T for w in want])  # a batch of two: layouts matter
        a[:, 0, 4] += 1.0  # ?syevd reads the lower triangle only
        for dtype in (np.float32, np.float64):
            # run now, also when first asked while tracing (ops there are staged, not run)
            with jax.ensure_compile_time_eval(), jax.enable_x64(dtype == np.float64):
                w, info = jax.jit(syevd_values, static_argnums=1)(a.astype(dtype), "N")
                w, info = np.asarray(w), np.asarray(info)
            if np.any(info != 0) or w.dtype != dtype or not np.allclose(w, want, rtol=1e-5, atol=1e-5):
                return False
        return True
    except Exception:  # a fast path only: any failure falls back to jnp.linalg
        return False


def eigvalsh(g):
    """Eigenvalues (ascending) of symmetric matrices ``[..., n, n]``, NaN where LAPACK fails.

    On CPU, LAPACK's ``?syevd`` without eigenvectors when jaxlib's FFI target allows it
    (:func:`eigenvalues_only_works`; 1.3-1.6x (jaxlib 0.10), 2.0-2.2x (jaxlib 0.12) faster
    than ``jnp.linalg.eigvalsh``, which always computes eigenvectors, on 3200 matrices of
    32 x 32); else ``jnp.linalg.eigvalsh``."""
    if g.ndim > 2 and cpu.lapack_one_matrix_per_call(calls_side_by_side=False):
        # several CPU devices run this call side by side: a batched call could deadlock
        flat = g.reshape((-1,) + g.shape[-2:])
        return lax.map(eigvalsh, flat).reshape(g.shape[:-1])
    if g.ndim >= 2 and cpu.is_cpu() and eigenvalues_only_works():
        w, info = syevd_values(g, "N")
        return jnp.where((info == 0)[..., None], w, jnp.nan)
    return jnp.linalg.eigvalsh(g)


__all__ = ["eigvalsh", "eigenvalues_only_works", "syevd_values", "TESTED_JAXLIB"]
