"""``sigprop.hessian``: the loss Hessian's spectrum at initialization (stochastic Lanczos quadrature,
deflated) and its building blocks. Implemented in :mod:`sigprop.analyses.hessian`,
:mod:`sigprop.analyses.curvature` and :mod:`sigprop.analyses.lanczos`."""

from sigprop.analyses.curvature import flat_loss, flatten, hvp_fn, lambda_max
from sigprop.analyses.hessian import DEFLATE_TOL, PROBE_BATCH_BYTES, Spectrum, spectrum
from sigprop.analyses.lanczos import lanczos, ritz, tridiagonal

__all__ = ["spectrum", "Spectrum", "lambda_max", "hvp_fn", "flat_loss", "flatten", "lanczos",
           "ritz", "tridiagonal", "DEFLATE_TOL", "PROBE_BATCH_BYTES"]
