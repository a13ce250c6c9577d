"""Curvature building blocks, pure and jittable (usable inside ``lax.scan``): the parameters as one
flat vector, the loss of that vector, Hessian- and Gauss-Newton-vector products, and the top
Hessian eigenvalue by Lanczos (:func:`lambda_max`, which training records).

- Hessian-vector product, forward-over-reverse: ``H v = d/dt grad L(w + t v) |_{t=0}``
  (``jax.jvp`` of ``jax.grad``).
- Gauss-Newton: ``G v = J^T H_z J v``, ``J = dz/dw`` the Jacobian of the outputs ``z`` and
  ``H_z`` the Hessian of the loss w.r.t. ``z`` (softmax cross-entropy:
  ``(diag(p_i) - p_i p_i^T) / B`` per row ``i``); PSD for a convex loss.

The spectrum driver is :mod:`sigprop.analyses.hessian`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.flatten_util
import jax.numpy as jnp

from sigprop.analyses.lanczos import lanczos, tridiagonal


def flatten(params, mask=None) -> tuple[jax.Array, Callable]:
    """``(w, to_params)``: the leaves of ``params`` selected by ``mask`` (a pytree of bools, see
    :func:`sigprop.objective.param_mask`; ``None``: all) raveled into one vector ``w``, and
    ``to_params(w)``, the full ``params`` with those leaves replaced (the others held fixed)."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    flags = [True] * len(leaves) if mask is None else jax.tree_util.tree_leaves(mask)
    if len(flags) != len(leaves):
        raise ValueError(f"mask: {len(flags)} flags for {len(leaves)} parameter leaves")
    picked = [a for a, f in zip(leaves, flags) if f]
    w, unravel = jax.flatten_util.ravel_pytree(picked)

    def to_params(v):
        new = iter(unravel(v))
        return jax.tree_util.tree_unflatten(tree, [next(new) if f else a
                                                   for a, f in zip(leaves, flags)])

    return w, to_params


def flat_loss(obj, params, rest, x, target, mask=None) -> tuple[Callable, jax.Array]:
    """``(f, w0)``: ``f(w)`` = the scalar loss ``obj.loss`` of the batch ``x`` against
    ``target`` (integer labels or a key) as a function of the selected parameters ``w``
    (:func:`flatten`), and their current values ``w0``. Train-mode batch statistics."""
    w0, to_params = flatten(params, mask)

    def f(w):
        return obj.loss(to_params(w), rest, x, target)[0]

    return f, w0


def hvp_fn(obj, params, rest, x, target, mask=None, *, gauss_newton=False) -> Callable:
    """``matvec(v) = H v`` (``[n] -> [n]``), ``H`` the Hessian of :func:`flat_loss` at ``w0``
    (``gauss_newton=True``: the Gauss-Newton matrix ``J^T H_z J``, which leaves out the model's
    extra loss terms). Forward-over-reverse (``jax.jvp`` of ``jax.grad``: a product costs
    2.3-2.6x a forward + backward pass, benchmarks/hessian.py; 3x in matmul flops, as the
    tangent doubles each matmul of the forward and the backward). A model with a
    ``custom_vjp`` (no forward mode, e.g. the zoo's CPU convolution) gets reverse-over-reverse,
    linearized once (the vjp of the gradient)."""
    if not gauss_newton:
        f, w0 = flat_loss(obj, params, rest, x, target, mask)
        return _linear(jax.grad(f), w0, reverse=_has_custom_vjp(f, w0))
    w0, to_params = flatten(params, mask)

    def outputs(w):
        return obj.apply(to_params(w), rest, x)[0]

    z, vjp = jax.vjp(outputs, w0)
    if _has_custom_vjp(outputs, w0):
        transposed = jax.vjp(lambda u: vjp(u)[0], jnp.zeros_like(z))[1]  # u -> J^T u, reversed
        jvp = lambda v: transposed(v)[0]  # noqa: E731
    else:
        jvp = lambda v: jax.jvp(outputs, (w0,), (v,))[1]  # noqa: E731
    h_z = _linear(jax.grad(lambda o: obj.output_loss(o, target)), z)
    return lambda v: vjp(h_z(jvp(v)))[0]


def _linear(fn, w0, reverse=False):
    """``v -> J_fn(w0) v`` for a function with a symmetric Jacobian (a gradient): ``jax.jvp``
    (each product recomputes the primal: ``jax.linearize`` measured 6x slower per product
    through the zoo's scanned layers), or (``reverse``) the vjp, linearized once."""
    if reverse:
        vjp = jax.vjp(fn, w0)[1]
        return lambda v: vjp(v)[0]
    return lambda v: jax.jvp(fn, (w0,), (v,))[1]


def _has_custom_vjp(fn, w0) -> bool:
    """Whether ``fn(w0)`` calls a ``jax.custom_vjp`` function (which forward mode cannot
    differentiate)."""
    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name.startswith("custom_vjp"):
                return True
            for v in eqn.params.values():
                for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns") and walk(inner):
                        return True
        return False

    return walk(jax.make_jaxpr(fn)(w0).jaxpr)


def lambda_max(loss: Callable, w, key, order: int = 20):
    """The largest Ritz value of the Hessian of ``loss`` (``[n] -> scalar``) at ``w`` after
    ``order`` Lanczos steps from a N(0, 1) start drawn with ``key``: a lower bound on
    ``lambda_max(H)``, converged for ``order`` ~ 20 when the top eigenvalue is an outlier.
    Pure and jittable (e.g. inside a training ``lax.scan``)."""
    matvec = _linear(jax.grad(loss), w, reverse=_has_custom_vjp(loss, w))
    v0 = jax.random.normal(key, w.shape, w.dtype)
    alphas, betas = lanczos(matvec, v0, order)
    return jnp.linalg.eigvalsh(tridiagonal(alphas, betas))[-1]


__all__ = ["flatten", "flat_loss", "hvp_fn", "lambda_max"]
