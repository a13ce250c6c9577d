"""The spectral step, after the network: from the recorded Gram matrices, ``G = hi + lo`` in float64
(float32 on TPU), ``G_hat`` (the Gram matrix of the unit rows) and the eigenvalues of both, solved
once for all requested metrics in one batched LAPACK call (``?syevd`` without eigenvectors on CPU,
see :func:`sigprop.backend.lapack.eigvalsh`). :class:`Stats` computes each quantity once.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

from sigprop.backend import lapack
from sigprop.metrics.record import has_f64


def _normalized(g):
    """``G_hat = D^-1/2 G D^-1/2``, ``D = diag(G)``: the Gram matrix of the unit rows (a zero row
    stays zero)."""
    norms = jnp.sqrt(jnp.clip(jnp.diagonal(g, axis1=-2, axis2=-1), 0.0))
    inv = jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
    return g * inv[..., :, None] * inv[..., None, :]


def entropy_rank(sigma):
    """``exp(-sum_i p_i log p_i)``, ``p_i = sigma_i / sum_j sigma_j`` (0 for all-zero ``sigma``)."""
    total = jnp.sum(sigma, axis=-1, keepdims=True)
    p = sigma / jnp.where(total > 0, total, 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return jnp.where(total[..., 0] > 0, jnp.exp(entropy), 0.0)


class Stats:
    """The records of one analysis (``[..., layers, ...]`` arrays, any leading axes) and the
    quantities derived from them, each computed once when a metric first asks for it. The
    eigenvalue problems that the requested metrics need (``spectra``) run as one batched call.

    Records: ``moments [..., L, 3]``, ``gram_hi`` / ``gram_lo [..., L, B, B]``, ``grad [..., G,
    2]``, ``pair [..., L]``, ``pair_grad [..., G, 2]``, ``branch [..., K, 2]``."""

    def __init__(self, records: dict, spectra: tuple[str, ...] = ()):
        self.records = records
        self._spectra = spectra  # which of "gram", "gram_hat" need eigenvalues
        self._cache: dict = {}

    def __getitem__(self, name):
        return self.records[name]

    def _cached(self, name, fn):
        if name not in self._cache:
            self._cache[name] = fn()
        return self._cache[name]

    def float64(self):
        return jax.enable_x64(True) if has_f64() else contextlib.nullcontext()

    @property
    def gram(self):
        """``G = hi + lo`` (float64 where available)."""
        def make():
            with self.float64():
                dt = jnp.float64 if has_f64() else jnp.float32
                return self["gram_hi"].astype(dt) + self["gram_lo"].astype(dt)
        return self._cached("gram", make)

    @property
    def gram_hat(self):
        def make():
            with self.float64():
                return _normalized(self.gram)
        return self._cached("gram_hat", make)

    def eigenvalues(self, which: str):
        """Eigenvalues (ascending) of ``gram`` or ``gram_hat``; every requested spectrum comes
        from one batched call."""
        def make():
            names = self._spectra or (which,)
            with self.float64():
                mats = jnp.stack([getattr(self, n) for n in names])
                lam = lapack.eigvalsh(mats)
            return dict(zip(names, lam))
        return self._cached("spectra", make)[which]

    def finish(self, value):
        return value.astype(jnp.float32)
