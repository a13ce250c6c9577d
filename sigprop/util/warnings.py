"""The warnings sigprop raises: a NaN/Inf in a result is data, flagged, and announced once."""

import warnings


class NonFiniteWarning(RuntimeWarning):
    """A layer produced NaN or Inf; the result flags it (``LayerMetrics.finite``)."""


FLAGGED = "they are flagged in LayerMetrics.finite / grad_finite"


def warn_nonfinite(what: str, kept: str = FLAGGED, stacklevel: int = 3) -> None:
    """A :class:`NonFiniteWarning` ``"non-finite <what>; <kept>"`` (where they appear first, and
    how the result keeps them: a NaN/Inf is data), attributed to the caller's caller's caller
    (``stacklevel`` counted from the function that calls this one)."""
    warnings.warn(f"non-finite {what}; {kept}", NonFiniteWarning, stacklevel=stacklevel + 1)
