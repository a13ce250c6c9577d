"""The spectral step, after the network: from the recorded Gram matrices, ``G = hi + lo`` in float64
(float32 without float64), ``G_hat`` (the Gram matrix of the unit rows) and the eigenvalues of
both, solved once for all requested metrics in one batched LAPACK call (``?syevd`` without
eigenvectors on CPU, see :func:`sigprop.backend.lapack.eigvalsh`). :class:`Stats` computes each
quantity once.

**Without float64** (a TPU; on CPU inside :func:`sigprop.backend.cpu.without_float64`) the
record is ``(G, R)``, ``R^T R = G`` the float32 QR factor of ``M^T``
(:func:`sigprop.metrics.record.row_factor`), and the step runs in float32: ``G_hat`` and its
eigenvalues from ``G``; the eigenvalues of ``G`` as the squared singular values of ``R``
(``s_i`` to ``~eps_32 s_max``; from ``eigvalsh(G)`` in float32 only to ``~sqrt(eps_32)
s_max``, which moved the effective rank of a collapsed 30-layer MLP by 2.3e-3). Stated
accuracy against the float64 path (``tests/test_float32_path.py``, every registered metric
on zoo MLPs, ResNets and transformers, collapsed ones included; measured worst case in
brackets):

- ``cosine_similarity``, ``token_cosine_similarity``: ``1e-6`` absolute (1.8e-7);
- ``stable_rank``, ``token_stable_rank``: ``2e-6`` relative (3.5e-7);
- ``effective_rank``, ``token_effective_rank``: ``1e-5`` relative (1.1e-6);
- ``token_residual_ratio``: ``1e-6`` relative + ``1e-6`` absolute, from ``R`` centered
  (:meth:`Stats.residual_ratio`; ``tr G - 1^T G 1 / T`` of a float32 ``G`` would cancel to
  ``ratio^2``: 3.2e-5 off at ratio 5e-4, near-identical tokens);
- ``grad_norm``, ``param_grad_norm`` (float32 scaled sums): ``1e-6`` relative (2.1e-7);
- the ``gns_*`` estimators (float32 sums that cancel to ``~1 / B_simple``): ``1e-4``
  relative (3.9e-6);
- every other metric has no float64 step: the same bits.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

from sigprop.backend import lapack
from sigprop.metrics.record import has_f64
from sigprop.metrics.tokens import token_residual_ratio


def _normalized(g):
    """``G_hat = D^-1/2 G D^-1/2``, ``D = diag(G)``: the Gram matrix of the unit rows (a zero row
    stays zero)."""
    norms = jnp.sqrt(jnp.clip(jnp.diagonal(g, axis1=-2, axis2=-1), 0.0))
    inv = jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
    return g * inv[..., :, None] * inv[..., None, :]


def _factor_eigenvalues(r):
    """Eigenvalues (ascending) of ``G = R^T R`` as the squared singular values of ``R``
    (float32): absolute error ``~eps_32 s_max`` in ``s = sqrt(lambda)``, where ``eigvalsh(G)``
    in float32 gives ``~sqrt(eps_32) s_max``."""
    s = jnp.linalg.svd(r.astype(jnp.float32), compute_uv=False)  # descending
    return jnp.flip(jnp.square(s), axis=-1)


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
        """``G = hi + lo`` in float64 where available; else ``G = hi`` in float32 (``lo`` then
        holds the factor ``R``, see :mod:`sigprop.metrics.record`)."""
        def make():
            if not has_f64():
                return self["gram_hi"].astype(jnp.float32)
            with self.float64():
                return self["gram_hi"].astype(jnp.float64) + self["gram_lo"].astype(jnp.float64)
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
            if not has_f64():
                return {n: _factor_eigenvalues(self["gram_lo"]) if n == "gram"
                        else lapack.eigvalsh(getattr(self, n)) for n in names}
            with self.float64():
                mats = jnp.stack([getattr(self, n) for n in names])
                lam = lapack.eigvalsh(mats)
            return dict(zip(names, lam))
        return self._cached("spectra", make)[which]

    def residual_ratio(self):
        """``||X - 1 mean_t(X)^T||_F / ||X||_F`` of each recorded matrix ``G = X X^T``
        (:func:`sigprop.metrics.tokens.token_residual_ratio` of :attr:`gram` where float64
        exists). Without float64, from the factor ``R`` (``R^T R = G``): ``||R C||_F /
        ||R||_F``, ``C = I - 1 1^T / T`` centering ``R``'s rows, absolute error ``~eps_32``;
        ``token_residual_ratio`` of a float32 ``G`` subtracts two numbers that agree to
        ``ratio^2`` relative and is off by ``~eps_32 / ratio`` (3e-5 at ratio 5e-4)."""
        if has_f64():
            with self.float64():
                return token_residual_ratio(self.gram)
        r = self["gram_lo"].astype(jnp.float32)
        centered = r - jnp.mean(r, axis=-1, keepdims=True)
        total = jnp.sum(jnp.square(r), axis=(-2, -1))
        rest = jnp.sum(jnp.square(centered), axis=(-2, -1))
        return jnp.where(total > 0, jnp.sqrt(rest / jnp.where(total > 0, total, 1.0)), 0.0)

    def finish(self, value):
        return value.astype(jnp.float32)
