"""Lanczos with full reorthogonalization in one ``lax.scan``, and its tridiagonal's quadrature.

Pure and jittable, for any symmetric ``matvec`` on flat vectors (``sigprop.hessian`` builds the
Hessian's and the Gauss-Newton matrix's). ``A Q_m^T = Q_m^T T_m + beta_m q_{m+1} e_m^T``; the
Ritz values (eigenvalues of ``T_m``) approximate ``A``'s extreme eigenvalues, and the squared
first components of ``T_m``'s eigenvectors are the Gauss quadrature weights of the spectral
measure seen from ``q_1`` (Golub & Meurant, *Matrices, Moments and Quadrature*, 2010).

Written here rather than taken from matfree: the deflated SLQ of ``sigprop.hessian`` needs
runs kept orthogonal to locked vectors and a restart, in the same step, when the Krylov space
becomes invariant.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax


def lanczos(matvec: Callable, v0, order: int, *, basis: bool = False):
    """``order`` Lanczos steps of the symmetric ``matvec`` from ``v0``, with full
    reorthogonalization, as one ``lax.scan`` (its body does not depend on ``order``).

    ``q_1 = v0 / |v0|``; step ``i``: ``w = A q_i - alpha_i q_i - beta_{i-1} q_{i-1}``,
    ``alpha_i = q_i^T A q_i``, then ``w`` is orthogonalized against every stored ``q``
    (block by block, :func:`_project_out`), ``beta_i = |w|``, ``q_{i+1} = w / beta_i``.
    On breakdown (``beta_i <= sqrt(n) eps max_j (|alpha_j| + beta_j)``: the Krylov space is
    invariant) ``beta_i = 0`` and the run continues from a pseudo-random vector orthogonalized
    in the same step (no NaN; the Ritz values stay eigenvalues of the projection, the
    restarted block gets SLQ weight 0).

    Returns:
      ``(alphas [order], betas [order - 1])``, the tridiagonal ``T`` (diagonal, off-diagonal);
      ``basis=True``: also ``Q [order, n]``, whose rows are the orthonormal Lanczos vectors.
    """
    alphas, betas, q_basis = lanczos_run(matvec, v0, order)
    if basis:
        return alphas, betas[:-1], q_basis
    return alphas, betas[:-1]


def lanczos_run(matvec, v0, order: int, locked=None):
    """``(alphas [m], betas [m], Q [m, n])``; ``betas[-1]`` is the residual norm.

    ``locked [r, n]``: orthonormal (or zero) rows every Lanczos vector is kept orthogonal to
    (the stored basis starts with them): the run is then Lanczos of ``(I - P) A (I - P)`` on
    their orthogonal complement, ``P`` the projector onto them, from ``(I - P) v0``."""
    n = v0.shape[0]
    dtype = v0.dtype
    tol = math.sqrt(n) * float(jnp.finfo(dtype).eps)
    r = 0 if locked is None else locked.shape[0]
    if r:
        v0 = v0 - locked.T @ (locked @ v0)
    nrm0 = jnp.linalg.norm(v0)
    q = v0 / jnp.where(nrm0 > 0, nrm0, jnp.ones((), dtype))
    restart = jax.random.normal(jax.random.key(0x5eed), (n,), dtype)  # rolled by the step

    def step(carry, i):
        q_basis, q, q_prev, beta_prev, scale = carry
        q_basis = lax.dynamic_update_index_in_dim(q_basis, q, r + i, 0)
        filled = r + i + 1  # rows of the basis written so far (the rest are zeros)
        w = matvec(q)
        alpha = jnp.vdot(q, w)
        w = w - alpha * q - beta_prev * q_prev
        w = _project_out(q_basis, w, filled)
        beta = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(alpha) + beta)
        broken = beta <= tol * scale
        # Only a breakdown pays a second pass over the basis (under vmap both branches run:
        # two matrix-vector products, still half the time XLA:CPU took for one [n, 2] product).
        w = lax.cond(broken, lambda: _project_out(q_basis, jnp.roll(restart, i), filled),
                     lambda: w)
        nrm = jnp.linalg.norm(w)
        beta = jnp.where(broken, jnp.zeros((), dtype), beta)
        q_next = w / jnp.where(nrm > 0, nrm, jnp.ones((), dtype))
        return (q_basis, q_next, q, beta, scale), (alpha, beta)

    zero = jnp.zeros((), dtype)
    rows = -(-(r + order) // BLOCK) * BLOCK  # whole blocks: a block never reads past the end
    buffer = jnp.zeros((rows - r, n), dtype)
    if r:
        buffer = jnp.concatenate([locked.astype(dtype), buffer])
    init = (buffer, q, jnp.zeros_like(q), zero, zero)
    (q_basis, _, _, _, _), (alphas, betas) = lax.scan(step, init, jnp.arange(order))
    return alphas, betas, q_basis[r:r + order]


BLOCK = 2  # basis rows per block of the reorthogonalization (fastest of 1-32 on a 2-core CPU)


def _project_out(q_basis, v, filled):
    """``v`` orthogonalized against the first ``filled`` rows of ``Q`` (may be traced), block by
    block (``BLOCK`` rows ``Q_b`` at a time, ``v <- v - Q_b^T (Q_b v)``: block modified
    Gram-Schmidt), so that step ``i`` of a run reads the ``i`` rows stored so far, not the
    whole buffer (at order 90 the mean step took 5.2-5.3 forward + backward passes instead of
    8.7-8.9 with ``v - Q^T (Q v)`` over the buffer, on a 2-core CPU: benchmarks/hessian.py).
    The rows after ``filled``, up to the end of its block, must be zero."""
    def block(b, v):
        q = lax.dynamic_slice_in_dim(q_basis, b * BLOCK, BLOCK, 0)
        return v - q.T @ (q @ v)

    return lax.fori_loop(0, (filled + BLOCK - 1) // BLOCK, block, v)


def tridiagonal(alphas, betas):
    """The symmetric tridiagonal matrix ``[..., m, m]`` with diagonal ``alphas [..., m]`` and
    off-diagonal ``betas [..., m - 1]``."""
    def one(a, b):
        return jnp.diag(a) + jnp.diag(b, 1) + jnp.diag(b, -1)

    for _ in range(alphas.ndim - 1):
        one = jax.vmap(one)
    return one(alphas, betas)


def ritz(alphas, betas):
    """``(nodes, weights)`` of the Lanczos quadrature (batched over leading axes): ``nodes``
    ascending, the eigenvalues ``theta_j`` of ``T``; ``weights = tau_j^2``, the squared first
    components of its unit eigenvectors (they sum to 1)."""
    nodes, vecs = jnp.linalg.eigh(tridiagonal(alphas, betas))
    return nodes, vecs[..., 0, :] ** 2


__all__ = ["lanczos", "lanczos_run", "ritz", "tridiagonal", "BLOCK"]
