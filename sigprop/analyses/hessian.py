"""The loss Hessian's spectrum at initialization: Hessian-vector products, Lanczos, and the
stochastic Lanczos quadrature (SLQ) density, for any model ``analyze`` accepts.

The Hessian is that of the loss ``analyze`` differentiates (:mod:`sigprop.objective`), with
respect to all parameters or a filtered subset ``w`` (the others held fixed), at the network a
seed initializes. Batch-statistics layers run in train mode: each Hessian-vector product
differentiates through the batch mean and variance (with population statistics BatchNorm is
linear in its input and the outliers return; Ghorbani et al. 2019).

- Hessian-vector product, forward-over-reverse: ``H v = d/dt grad L(w + t v) |_{t=0}``
  (``jax.jvp`` of ``jax.grad``).
- Gauss-Newton: ``G v = J^T H_z J v``, ``J = dz/dw`` the Jacobian of the outputs ``z`` and
  ``H_z`` the Hessian of the loss w.r.t. ``z`` (softmax cross-entropy:
  ``(diag(p_i) - p_i p_i^T) / B`` per row ``i``); PSD for a convex loss.
- Lanczos with full reorthogonalization (classical Gram-Schmidt against the stored basis) in
  one ``lax.scan``: ``A Q_m^T = Q_m^T T_m + beta_m q_{m+1} e_m^T``; the Ritz values
  ``theta_j`` (eigenvalues of the tridiagonal ``T_m``) approximate the extreme eigenvalues.
- SLQ (Lin et al. 2016; Ghorbani et al. 2019): for a unit probe ``q`` uniform on the sphere,
  ``E[q^T f(H) q] = tr f(H) / n`` and ``q^T f(H) q ~= sum_j tau_j^2 f(theta_j)`` (exact for
  polynomials of degree <= 2m - 1), ``tau_j`` the first component of ``T_m``'s ``j``-th unit
  eigenvector; the weights ``tau_j^2`` sum to 1.
- Deflation: probe 0's run also gives the Ritz pairs that converged (residual
  ``beta_m |s_mj| <= DEFLATE_TOL * max |theta|``: the outliers). The other ``P - 1`` runs are
  Lanczos of ``H`` restricted to their orthogonal complement (``k`` converged, dimension
  ``n - k``), from Gaussian probes projected there and orthonormalized (a random orthonormal
  frame, which lowers the variance when ``P`` is not small against ``n``). The spectral
  measure ``(1/n) sum_i delta(lambda_i)`` is estimated by mass ``1/n`` on each converged
  ``theta_0j`` plus ``(n - k) / n * tau_pj^2 / (P - 1)`` on the other runs' nodes. Without
  deflation the outliers' weights ``(q . u_i)^2 ~ chi^2_1 / n`` carry most of the variance.
  Its moments give the trace ``tr H = n m_1`` and ``tr H^2 = n m_2`` (deflated Hutchinson).
  With one probe: plain SLQ of probe 0.
- Density: ``phi(t) = sum_j mass_j N(t; node_j, sigma^2)``, default ``sigma`` = the Ritz
  values' range / 100, on 1000 points spanning the range +- 5 sigma.

References:
  Ghorbani, Krishnan, Xiao, "An investigation into neural net optimization via Hessian
  eigenvalue density", ICML 2019, https://arxiv.org/abs/1901.10159
  Lin, Saad, Yang, "Approximating spectral densities of large matrices", SIAM Review 2016,
  https://arxiv.org/abs/1308.5467
  Rao, Sohl-Dickstein, "Is batch norm unique?" (claim 8 in science.md)
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from jax import lax

from sigprop.analyses.curvature import flatten, hvp_fn
from sigprop.analyses.lanczos import lanczos_run, ritz, tridiagonal
from sigprop.backend import cpu, xla_cpu
from sigprop.core import objective as objective_lib
from sigprop.util import npz
from sigprop.util.checks import check_int, check_key, check_precision, check_seeds
from sigprop.util.keys import PROBE_TAG, seed_keys, split_item, split_run

# --------------------------------------------------------------------------------------------
# The result


@dataclasses.dataclass(frozen=True)
class Spectrum:
    """What :func:`spectrum` measured, per seed (numpy arrays; ``P`` probes, order ``m``).

    Row 0 of the probe axis is the first run (of ``H`` from probe 0); rows ``1..P-1`` are the
    deflated runs (of ``(I - P_c) H (I - P_c)`` from the deflated probes); see the module doc.

    Attributes:
      nodes: ``[seeds, P, m]`` Ritz values ``theta`` of each run, ascending.
      weights: ``[seeds, P, m]`` their quadrature weights ``tau^2`` (each row sums to 1).
      converged: ``[seeds, m]`` the first run's Ritz pairs that were deflated (residual
        ``beta_m |s_mj| <= DEFLATE_TOL * max |theta|``).
      alphas, betas: ``[seeds, P, m]`` the tridiagonals (``betas[..., -1]`` is the residual
        norm ``beta_m`` after the last step).
      n_params: the dimension ``n`` of ``H`` (the selected parameters).
      config: the arguments of the run (JSON-able).
    """

    nodes: np.ndarray
    weights: np.ndarray
    converged: np.ndarray
    alphas: np.ndarray
    betas: np.ndarray
    n_params: int
    config: dict = dataclasses.field(default_factory=dict)

    _ARRAYS = ("nodes", "weights", "converged", "alphas", "betas")

    @property
    def order(self) -> int:
        return int(self.nodes.shape[-1])

    @property
    def probes(self) -> int:
        return int(self.nodes.shape[1])

    def _check_k(self, k, what="k") -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.order:
            raise ValueError(f"{what}={k!r} must be an integer in [1, order={self.order}]")
        return int(k)

    def quadrature(self) -> tuple[np.ndarray, np.ndarray]:
        """``(nodes [seeds, N], mass [seeds, N])``: the SLQ estimate of the spectral measure
        ``(1/n) sum_i delta(lambda_i)``. One probe: ``tau_0j^2`` on the first run's nodes.
        More: mass ``1/n`` on each deflated Ritz value ``theta_0j`` (``j`` converged, ``k`` of
        them) and ``(n - k) / n * tau_pj^2 / (P - 1)`` on the deflated runs' nodes. The
        masses sum to 1."""
        nodes = self.nodes.reshape(self.nodes.shape[0], -1).astype(np.float64)
        if self.probes == 1:
            return nodes, self.weights[:, 0].astype(np.float64)
        n = self.n_params
        conv = self.converged.astype(np.float64)
        k = conv.sum(-1, keepdims=True)
        first = conv / n
        rest = (n - k)[:, :, None] / n * self.weights[:, 1:] / (self.probes - 1)
        return nodes, np.concatenate([first, rest.reshape(rest.shape[0], -1)], -1)

    def moment(self, k: int) -> np.ndarray:
        """``[seeds]`` the ``k``-th moment ``sum mass * node^k`` of :meth:`quadrature` (before
        smoothing): an estimate of ``tr(H^k) / n``, unbiased for ``1 <= k <= 2m - 1`` up to
        the deflated pairs' residuals."""
        nodes, mass = self.quadrature()
        return np.sum(mass * nodes ** k, -1)

    @property
    def trace(self) -> np.ndarray:
        """``[seeds]`` ``tr H = n * moment(1)`` (deflated Hutchinson: exact on the converged
        Ritz vectors, Gaussian probes on their complement)."""
        return self.n_params * self.moment(1)

    @property
    def trace_sq(self) -> np.ndarray:
        """``[seeds]`` ``tr H^2 = |H|_F^2 = n * moment(2)``."""
        return self.n_params * self.moment(2)

    def _candidates(self) -> np.ndarray:
        """``[seeds, runs, m']``: per run, Ritz values of ``H`` on an orthonormal subspace
        (the first run's; each deflated run's joined with the deflated ``theta_0j``), -inf
        padded, descending."""
        first = self.nodes[:, :1]
        conv = np.where(self.converged, self.nodes[:, 0], -np.inf)
        pad = np.full(first.shape[:2] + (self.order,), -np.inf)
        runs = [np.concatenate([first, pad], -1)]
        if self.probes > 1:
            empty = self.converged.sum(-1) >= self.n_params  # nothing left to deflate into
            rest = np.where(empty[:, None, None], -np.inf, self.nodes[:, 1:])
            runs.append(np.concatenate([np.broadcast_to(conv[:, None], rest.shape), rest], -1))
        return -np.sort(-np.concatenate(runs, 1), -1)

    def top(self, k: int) -> np.ndarray:
        """``[seeds, k]`` the ``k`` largest eigenvalues, descending: per rank ``j``, the
        largest ``j``-th largest Ritz value over the runs (each is <= ``lambda_j`` by Cauchy
        interlacing, so the maximum is the tightest bound)."""
        k = self._check_k(k)
        return self._candidates()[..., :k].max(axis=1)

    @property
    def lambda_max(self) -> np.ndarray:
        """``[seeds]`` the largest eigenvalue (``top(1)``)."""
        return self.top(1)[:, 0]

    @property
    def lambda_min(self) -> np.ndarray:
        """``[seeds]`` the smallest eigenvalue (the smallest Ritz value of any run)."""
        return self.nodes[..., 0].min(axis=1)

    def outlier_ratio(self, k: int) -> np.ndarray:
        """``[seeds]`` ``lambda_1 / lambda_K`` (``K``: e.g. the number of classes)."""
        k = self._check_k(k, "K")
        t = self.top(k)
        return t[:, 0] / t[:, k - 1]

    def density(self, grid=None, sigma=None) -> tuple[np.ndarray, np.ndarray]:
        """``(grid [G], density [seeds, G])``: the SLQ density, :meth:`quadrature` smoothed,
        ``phi(t) = sum_j mass_j N(t; node_j, sigma^2)``.

        Defaults: ``sigma = (theta_max - theta_min) / 100`` over every seed and probe (1e-3
        if all Ritz values coincide); ``grid``: 1000 points over
        ``[theta_min - 5 sigma, theta_max + 5 sigma]``, so ``sum(density) * step ~= 1``. The
        smoothing adds ``sigma^2`` to the second moment."""
        lo, hi = float(self.nodes.min()), float(self.nodes.max())
        if sigma is None:
            sigma = (hi - lo) / 100 if hi > lo else 1e-3
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating)) \
                or not (sigma > 0 and np.isfinite(sigma)):
            raise ValueError(f"sigma={sigma!r} must be a finite number > 0")
        sigma = float(sigma)
        if grid is None:
            grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, 1000)
        grid = np.asarray(grid, np.float64)
        if grid.ndim != 1 or grid.size < 1 or not np.all(np.isfinite(grid)):
            raise ValueError(f"grid: expected a finite 1-D array; got shape {grid.shape}")
        nodes, mass = self.quadrature()
        out = np.zeros((nodes.shape[0], grid.size))
        chunk = max(1, 2 ** 22 // grid.size)
        for s in range(nodes.shape[0]):
            for a in range(0, nodes.shape[1], chunk):
                z = (grid[None, :] - nodes[s, a:a + chunk, None]) / sigma
                out[s] += mass[s, a:a + chunk] @ np.exp(-0.5 * z * z)
        return grid, out / (sigma * math.sqrt(2 * math.pi))

    # ------------------------------------------------------------------------------ io
    def to_dict(self) -> dict:
        """Every array (numpy), ``n_params`` and ``config``."""
        d = {k: getattr(self, k) for k in self._ARRAYS}
        d.update(n_params=self.n_params, config=dict(self.config))
        return d

    def save(self, path: str | os.PathLike) -> str:
        """One ``.npz`` (the arrays, plus ``n_params`` and ``config`` as JSON; no pickle).
        Returns the path written (``.npz`` appended if missing)."""
        meta = dict(format="sigprop.hessian/1", n_params=self.n_params, config=self.config)
        return npz.write(path, meta, {k: getattr(self, k) for k in self._ARRAYS})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Spectrum":
        """Read a file written by :meth:`save`."""
        path, meta, arrays = npz.read(path, "Hessian spectrum")
        if meta.get("format") != "sigprop.hessian/1" or set(cls._ARRAYS) - set(arrays):
            raise ValueError(f"{path} is not a sigprop Hessian spectrum file")
        return cls(**arrays, n_params=int(meta["n_params"]), config=meta["config"])


# --------------------------------------------------------------------------------------------
# spectrum: the boundary and the compiled core

DEFLATE_TOL = 1e-3  # a first-run Ritz pair is deflated if its residual <= this * max |theta|
PROBE_BATCH_BYTES = 2 ** 30  # Lanczos bases held at once (all seeds); more probes run in turn


def _vmapped() -> bool:
    """Whether seeds and probes are vmapped (accelerators) or run one after another (CPU): the
    CPU policy's :func:`sigprop.backend.cpu.sequential_loops`, which has the reason and the
    timings. The numbers are the same up to float32 rounding (tests/test_hessian.py)."""
    return not cpu.sequential_loops()


def _map(fn, xs, vmapped: bool):
    """``fn`` over the leading axis of ``xs``: vmapped, or one after another (``lax.map``)."""
    return jax.vmap(fn)(xs) if vmapped else lax.map(fn, xs)


def _seed_fn(net, loss_fn, flags, shape, order, batch, batches, gauss_newton, vmapped,
             extra_terms, key, x, given, labels):
    """Everything for one seed (see :func:`spectrum`)."""
    obj = objective_lib.Objective(net, loss_fn, extra_terms=extra_terms)
    k_data, k_run = split_item(key)  # the splits of sigprop.core.engine.measure_item
    if x is None:
        x = jax.random.normal(k_data, shape, jnp.float32)
    variables = obj.init(key, x) if given is None else given
    params, rest = obj.split(variables)
    mask = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), list(flags))
    target = split_run(k_run)[1] if labels is None else labels
    matvec = hvp_fn(obj, params, rest, x, target, mask, gauss_newton=gauss_newton)
    n = flatten(params, mask)[0].shape[0]
    g = jax.random.normal(jax.random.fold_in(key, PROBE_TAG), (1 + batches * batch, n))
    al0, be0, q_basis = lanczos_run(matvec, g[0], order)
    theta, vecs = jnp.linalg.eigh(tridiagonal(al0, be0[:-1]))
    converged = jnp.abs(be0[-1] * vecs[-1]) <= DEFLATE_TOL * jnp.max(jnp.abs(theta))
    out = dict(nodes=theta[None], weights=vecs[None, 0] ** 2, converged=converged,
               alphas=al0[None], betas=be0[None])
    if batches == 0:
        return out
    ritz_vecs = (vecs.T @ q_basis) * converged[:, None]  # [m, n], rows: deflated Ritz vectors

    def run(gb):
        starts = gb - (gb @ ritz_vecs.T) @ ritz_vecs
        if batch <= n - order:  # a random orthonormal frame of the complement (see spectrum)
            starts = jnp.linalg.qr(starts.T)[0].T
        return _map(lambda v: lanczos_run(matvec, v, order, locked=ritz_vecs)[:2], starts, vmapped)

    al, be = lax.map(run, g[1:].reshape(batches, batch, n))
    al, be = al.reshape(-1, order), be.reshape(-1, order)
    nodes, weights = ritz(al, be[:, :-1])
    return dict(nodes=jnp.concatenate([out["nodes"], nodes]),
                weights=jnp.concatenate([out["weights"], weights]), converged=converged,
                alphas=jnp.concatenate([out["alphas"], al]),
                betas=jnp.concatenate([out["betas"], be]))


def _core_fn(net, loss_fn, flags, shape, order, batch, batches, gauss_newton, vmapped,
             extra_terms, precision, impl, keys, x, given, labels):
    keys = jax.random.wrap_key_data(keys, impl=impl)
    one = lambda k, v: _seed_fn(net, loss_fn, flags, shape, order, batch,  # noqa: E731
                                batches, gauss_newton, vmapped, extra_terms, k, x, v, labels)
    with jax.default_matmul_precision(precision):
        if given is None:
            return _map(lambda k: one(k, None), keys, vmapped)
        return _map(lambda kv: one(*kv), (keys, given), vmapped)


_core = xla_cpu.fast_rng(jax.jit(_core_fn, static_argnames=(
    "net", "loss_fn", "flags", "shape", "order", "batch", "batches", "gauss_newton", "vmapped",
    "extra_terms", "precision", "impl"), compiler_options=xla_cpu.loop_options()))


def _check_labels(labels, shape):
    if labels is None:
        return None
    arr = np.asarray(labels)
    if not np.issubdtype(arr.dtype, np.integer) or arr.ndim != 1 or arr.shape[0] != shape[0]:
        raise ValueError(f"labels: expected integer labels [batch={shape[0]}]; got "
                         f"{arr.dtype} of shape {arr.shape}")
    return jnp.asarray(arr, jnp.int32)


def spectrum(model, inputs, *, variables=None, loss=None, params=None, order: int = 90,
             probes: int = 8, seeds: int = 1, key=0, gauss_newton: bool = False,
             labels=None, apply_kwargs: dict | None = None, regularizer: bool = True,
             precision: str = "highest") -> Spectrum:
    """The loss Hessian's spectrum of ``model`` at initialization, for ``seeds`` seeds at once.

    Per seed: the network ``analyze`` measures for that seed (same key splits, same inputs,
    same loss and labels), ``H`` the Hessian of its loss w.r.t. the selected parameters
    (train-mode batch statistics inside every product), ``probes`` Lanczos runs of ``order``
    steps from Gaussian starts: probe 0's run of ``H``, then ``probes - 1`` runs deflated of
    its converged Ritz pairs (module doc), vmapped over probes (in groups that keep the
    Lanczos bases under ``PROBE_BATCH_BYTES``) and seeds in one jitted call, whose compile time
    does not depend on ``order``; on CPU the same program runs seeds and probes one after
    another (:func:`_vmapped`). Float32 throughout.

    Args:
      model, inputs, variables, loss, apply_kwargs: as in :func:`sigprop.analyze`.
      params: which parameters: ``None`` (all), a glob over the ``/``-joined parameter paths
        (``"layer03/*"``, ``"*Norm*"``), a tuple of globs, or a predicate ``path -> bool``.
      order: Lanczos steps per probe (1 <= order <= number of selected parameters).
      probes: number of probe vectors (SLQ samples) per seed, >= 1. The moments' statistical
        error falls as ``1 / sqrt(probes - 1)``, faster once ``probes`` is a sizable fraction
        of ``n`` (the deflated probes are orthonormal).
      seeds, key: as in ``analyze`` (seed ``i`` uses ``fold_in(key, i)``).
      gauss_newton: the Gauss-Newton matrix ``J^T H_z J`` instead of the Hessian.
      labels: integer labels ``[batch]`` (softmax cross-entropy against them) instead of
        ``analyze``'s loss against random labels.
      regularizer: include the model's extra loss terms (RegNorm's penalty) in the loss whose
        Hessian is taken; ``False``: the loss alone, e.g. the cross-entropy Hessian [U]
        measures. Models without extra terms are unaffected.
      precision: matmul precision (``"highest"``: full float32 also on GPU/TPU).

    Returns:
      :class:`Spectrum`: ``top(k)`` ``[seeds, k]``, ``lambda_max`` / ``lambda_min`` /
      ``trace`` ``[seeds]``, ``outlier_ratio(K)``, ``density(grid, sigma)``.
    """
    seeds = check_seeds(seeds)
    root = check_key(key)
    precision = check_precision(precision)
    probes = check_int("probes", probes, 1)
    if gauss_newton not in (True, False):
        raise ValueError(f"gauss_newton={gauss_newton!r}: expected True or False")
    if regularizer not in (True, False):
        raise ValueError(f"regularizer={regularizer!r}: expected True or False")
    if loss is not None and not callable(loss):
        raise ValueError(f"loss={loss!r} must be a callable (outputs, key) -> scalar")
    obj, shape, dtype, x = objective_lib.objective(model, inputs, seeds=seeds,
                                                   variables=variables, loss=loss,
                                                   apply_kwargs=apply_kwargs)
    labels = _check_labels(labels, shape)
    if obj.given is not None:
        abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype),
                                          obj.given)
    else:
        abstract = jax.eval_shape(obj.init, jax.random.key(0),
                                  jax.ShapeDtypeStruct(shape, dtype))
    p_abstract = obj.split(abstract)[0]
    mask = objective_lib.param_mask(p_abstract, params)
    n = objective_lib.count(p_abstract, mask)
    order = check_int("order", order, 1, n, f" (the number of selected parameters is {n})")
    per_probe = seeds * order * n * 4  # one Lanczos basis per seed
    deflated = probes - 1  # the runs after the first, in ``batches`` vmapped groups of ``batch``
    batch = max(1, min(deflated, PROBE_BATCH_BYTES // max(per_probe, 1)))
    batches = -(-deflated // batch)
    batch = -(-deflated // batches) if batches else 1
    keys = seed_keys(root, seeds)
    impl = str(jax.random.key_impl(keys))
    out = _core(net=obj.net, loss_fn=loss, flags=tuple(jax.tree_util.tree_leaves(mask)),
                shape=shape, order=order, batch=batch, batches=batches,
                gauss_newton=gauss_newton, vmapped=_vmapped(), extra_terms=bool(regularizer),
                precision=precision, impl=impl,
                keys=jax.random.key_data(keys), x=x, given=obj.given, labels=labels)
    out = jax.tree_util.tree_map(np.asarray, out)
    out = {k: v[:, :probes] if v.ndim == 3 else v for k, v in out.items()}  # drop the padding
    spec = getattr(model, "spec", None)
    config = dict(model=type(model).__name__, norm=getattr(spec, "name", None),
                  inputs=list(shape), user_inputs=x is not None, seeds=seeds,
                  key=int(key) if isinstance(key, (int, np.integer)) else None,
                  params=params if isinstance(params, (str, type(None))) else
                  (list(params) if isinstance(params, tuple) else repr(params)),
                  order=order, probes=probes, gauss_newton=gauss_newton,
                  labels=labels is not None, regularizer=bool(regularizer))
    return Spectrum(**out, n_params=n, config=config)
