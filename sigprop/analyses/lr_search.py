"""The learning-rate protocol: a bracketing grid, each rate classified as *diverged*, *did not
train* or *trains*, and the rate chosen by the cross-entropy late in training, on seeds other
than the ones a result is reported on.

[BB] trains "at the largest stable initial learning rate" (SGD + momentum 0.9); [U] grid-searches
the rate "for each of the approaches ... identical hyperparameter tuning". "Stable" alone
is not enough: a network that sits at chance (cross-entropy ln K) the whole run is stable and
did not train. The protocol (:func:`learning_rate_search`):

1. The grid ``rates`` (default :data:`DEFAULT_RATES`: 1e-3, 3e-3, ..., 3, 10, factors of ~3),
   one vmapped :func:`sigprop.train` call, on ``seeds`` selection seeds drawn from ``key``
   (default 1; report runs use other keys, e.g. ``train(..., key=0)``).
2. Per seed and rate, from the cross-entropy recorded every ``record_every`` steps (default
   ``steps // 20``; spikes between records are not seen): the run *diverged* if a recorded loss
   is non-finite or above ``2 x`` its step-0 loss; it *did not train* if its final
   cross-entropy is above ``0.9 ln K`` (``K`` classes). A rate *trains* when it trains for every
   seed; it is *diverged* when any seed diverged; else it *did not train*.
3. The grid brackets the choice: while the largest rate trains, a rate 3x larger (the 1-3
   pattern) is tried, up to :data:`MAX_EXTENSIONS` times; while the chosen rate is the smallest,
   a smaller one is tried likewise.
4. The chosen ``rate`` minimizes the seed-mean of the mean cross-entropy over the last 20% of
   the steps among the rates that train; ``largest_stable`` (the largest rate that did not
   diverge) is reported beside it. No rate trains: ``rate`` is None, reported as such.

The loss is the cross-entropy alone (``train_loss``); a model's extra loss terms (RegNorm's
penalty) are optimized but not part of any criterion.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from sigprop.analyses.train import train
from sigprop.util.checks import check_int
from sigprop.util.warnings import NonFiniteWarning

DEFAULT_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
MAX_EXTENSIONS = 4  # per direction: up to 810 above the default grid, down to 1.2e-5 below it
DIVERGE_FACTOR = 2.0  # a recorded loss above this x the step-0 loss: diverged
TRAIN_FRACTION = 0.9  # final cross-entropy above this x ln K: did not train
LATE_FRACTION = 0.2  # the chosen rate minimizes the cross-entropy over the last 20% of steps

TRAINS, DID_NOT_TRAIN, DIVERGED = "trains", "did not train", "diverged"


@dataclasses.dataclass(frozen=True)
class RateSearch:
    """What :func:`learning_rate_search` did and found (see the module doc).

    ``rate``: the chosen rate (None: no rate trains); ``largest_stable``: the largest rate that
    did not diverge (None: all diverged); ``rates``: the grid as run (sorted, extensions
    included); ``status``: per rate, ``"trains"``, ``"did not train"`` or ``"diverged"``;
    ``loss [seeds, rates, records]``: the recorded cross-entropy at ``step``; ``late_loss
    [seeds, rates]``: its mean over the last 20% of the steps; ``classes``: K; ``seeds``,
    ``key``: the selection seeds."""

    rate: float | None
    largest_stable: float | None
    rates: tuple
    status: tuple
    loss: np.ndarray
    step: tuple
    late_loss: np.ndarray
    classes: int
    seeds: int
    key: int

    @property
    def stable(self) -> tuple:
        """Per rate: did not diverge."""
        return tuple(s != DIVERGED for s in self.status)

    @property
    def trains(self) -> bool:
        return self.rate is not None

    @property
    def initial_loss(self) -> np.ndarray:
        return self.loss[..., 0]

    @property
    def final_loss(self) -> np.ndarray:
        return self.loss[..., -1]

    def status_of(self, rate: float) -> str:
        return self.status[self.rates.index(float(rate))]

    def summary(self) -> str:
        """One line per rate, then the choice: what was decided, and why."""
        lines = [f"rate {r:g}: {s} (final cross-entropy {np.mean(self.final_loss[:, i]):.3g}, "
                 f"last-20% mean {np.mean(self.late_loss[:, i]):.3g})"
                 for i, (r, s) in enumerate(zip(self.rates, self.status))]
        chosen = ("no rate trains" if self.rate is None else
                  f"chosen {self.rate:g} (lowest last-20% cross-entropy among the rates that "
                  "train)")
        bar = TRAIN_FRACTION * math.log(self.classes)
        lines.append(f"{chosen}; largest stable {self.largest_stable}; {self.seeds} selection "
                     f"seeds from key {self.key}; did not train = final cross-entropy > "
                     f"{TRAIN_FRACTION} ln {self.classes} = {bar:.3g}")
        return "\n".join(lines)


def _next_rate(rate: float, up: bool) -> float:
    """The 1-3 pattern's neighbour: 1 -> 3 -> 10 (up), 10 -> 3 -> 1 (down)."""
    mant = rate / 10.0 ** math.floor(math.log10(rate) + 1e-9)
    if up:
        return float(f"{rate * (3.0 if mant < 2 else 10 / 3):.3g}")
    return float(f"{rate / (10 / 3 if mant < 2 else 3.0):.3g}")


def classify(loss: np.ndarray, classes: int) -> np.ndarray:
    """Per seed and rate of ``loss [seeds, rates, records]`` (cross-entropy, record 0 at step 0):
    ``2`` diverged, ``1`` did not train, ``0`` trains (the module doc's criteria)."""
    first = loss[..., :1]
    diverged = ~np.all(np.isfinite(loss) & (loss <= DIVERGE_FACTOR * first), axis=-1)
    untrained = loss[..., -1] > TRAIN_FRACTION * math.log(classes)
    return np.where(diverged, 2, np.where(untrained, 1, 0))


def learning_rate_search(model, data, *, steps: int, rates=DEFAULT_RATES, seeds: int = 2,
                         key: int = 1, classes: int | None = None,
                         record_every: int | None = None, **train_kwargs) -> RateSearch:
    """Choose a learning rate by the protocol of the module doc, and say what it found.

    Args:
      model, data: as in :func:`sigprop.train` (logits ``[batch, K]``, integer labels).
      steps: training steps per run (>= 5).
      rates: the starting grid (positive numbers; extended as the module doc says).
      seeds, key: the selection seeds (report on other keys: the default ``key=1`` leaves
        ``train``'s default ``key=0`` to the reported runs).
      classes: K for the ``0.9 ln K`` criterion (default: the largest label + 1).
      record_every: steps between recorded losses (default ``max(1, steps // 20)``).
      **train_kwargs: to :func:`sigprop.train` (``optimizer``, ``batch_size``, ...;
        ``metrics=()`` unless given).

    Returns:
      :class:`RateSearch` (``rate`` None when no rate trains; ``summary()`` explains).
    """
    try:
        grid = sorted({float(r) for r in rates})
    except (TypeError, ValueError):
        raise ValueError(f"rates={rates!r}: expected a sequence of learning rates") from None
    if not grid or not all(math.isfinite(r) and r > 0 for r in grid):
        raise ValueError(f"rates={rates!r}: give at least one positive, finite learning rate")
    if "learning_rate" in train_kwargs:
        raise ValueError("learning_rate=: learning_rate_search takes the grid as rates=")
    steps = check_int("steps", steps, 5)
    record_every = max(1, steps // 20) if record_every is None else \
        check_int("record_every", record_every)
    labels = np.asarray(data[1])
    classes = int(labels.max()) + 1 if classes is None else check_int("classes", classes, 2)
    train_kwargs.setdefault("metrics", ())

    def run(grid_rates):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonFiniteWarning)  # divergence is what it looks for
            res = train(model, data, steps=steps, learning_rate=list(grid_rates), seeds=seeds,
                        key=key, record_every=record_every, **train_kwargs)
        return np.asarray(res["train_loss"], np.float64), tuple(int(s) for s in res.step)

    loss, step = run(grid)
    late = np.asarray(step) >= (1 - LATE_FRACTION) * steps

    def choose():
        worst = classify(loss, classes).max(axis=0)  # [rates]: the worst seed decides
        score = np.where(worst == 0, loss[..., late].mean(axis=-1).mean(axis=0), np.inf)
        return worst, (int(np.argmin(score)) if np.isfinite(score).any() else None)

    def extend(rate, up):
        nonlocal grid, loss
        extra, _ = run([rate])
        grid = grid + [rate] if up else [rate] + grid
        loss = np.concatenate([loss, extra] if up else [extra, loss], axis=1)

    for _ in range(MAX_EXTENSIONS):  # bracket above: until the largest rate fails
        if choose()[0][-1] != 0:
            break
        extend(_next_rate(grid[-1], True), True)
    for _ in range(MAX_EXTENSIONS):  # bracket below: until the chosen rate is not the smallest
        if choose()[1] != 0:
            break
        extend(_next_rate(grid[0], False), False)
    worst, best = choose()
    names = {0: TRAINS, 1: DID_NOT_TRAIN, 2: DIVERGED}
    stable = [r for r, w in zip(grid, worst) if w != 2]
    return RateSearch(
        rate=None if best is None else grid[best], largest_stable=max(stable) if stable else None,
        rates=tuple(grid), status=tuple(names[int(w)] for w in worst), loss=loss, step=step,
        late_loss=loss[..., late].mean(axis=-1), classes=classes, seeds=int(seeds), key=int(key))


__all__ = ["learning_rate_search", "RateSearch", "DEFAULT_RATES", "classify", "TRAINS",
           "DID_NOT_TRAIN", "DIVERGED"]
