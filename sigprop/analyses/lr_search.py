"""The learning-rate search: the largest stable rate of a grid, in one vmapped :func:`train` call
(as [BB]'s Figure 1 picks its rates)."""

from __future__ import annotations

import warnings

import numpy as np

from sigprop.analyses.train import train
from sigprop.analyses.train_result import RateSearch
from sigprop.util.warnings import NonFiniteWarning


def learning_rate_search(model, data, *, rates, steps: int, **train_kwargs) -> RateSearch:
    """The largest *stable* rate of the grid ``rates``, as [BB]'s Figure 1 picks its rates.

    One :func:`train` call with ``learning_rate=rates`` (a vmapped grid; ``metrics=()`` unless
    given: only the losses are recorded). A rate is stable when, for every seed, every recorded
    ``train_loss`` is finite and the last one is below the first (step 0): the training did not
    diverge and made progress. ``train_kwargs`` go to :func:`train` (``optimizer``,
    ``batch_size``, ``record_every`` (default ``steps``: records at 0 and at the end), ...).

    Returns:
      :class:`RateSearch`: ``rate`` (the largest stable one), ``rates``, ``stable [rates]``,
      ``initial_loss`` / ``final_loss [seeds, rates]``, and the training ``result``.
      No stable rate in the grid is a ValueError naming ``rates``.
    """
    try:
        grid = [float(r) for r in rates]
    except TypeError:
        raise ValueError(f"rates={rates!r}: expected a sequence of learning rates") from None
    if not grid:
        raise ValueError("rates=[]: give at least one learning rate")
    train_kwargs.setdefault("metrics", ())
    train_kwargs.setdefault("record_every", steps)
    if "learning_rate" in train_kwargs:
        raise ValueError("learning_rate=: learning_rate_search takes the grid as rates=")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteWarning)  # divergence is what it looks for
        result = train(model, data, steps=steps, learning_rate=grid, **train_kwargs)
    loss = np.asarray(result["train_loss"], np.float64)  # [seeds, rates, records]
    first, last = loss[..., 0], loss[..., -1]
    stable = (np.all(np.isfinite(loss), axis=-1) & (last < first)).all(axis=0)
    if not stable.any():
        raise ValueError(f"rates={grid}: no rate trains stably for {steps} steps (final train "
                         f"loss finite and below the initial one for every seed); try smaller "
                         "rates")
    best = max(r for r, s in zip(grid, stable) if s)
    return RateSearch(best, tuple(grid), tuple(bool(s) for s in stable), first, last, result)


__all__ = ["learning_rate_search", "RateSearch"]
