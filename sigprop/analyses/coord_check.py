"""``coord_check``: muP's coordinate check (Yang et al. 2021), per layer, over widths.

For each width ``w``, ``builder(w)`` is trained for ``steps`` steps with :func:`sigprop.train`
(the same program, recording only these scales), and at steps ``0, 1, ..., steps`` every
observed activation (every activation tap ``analyze`` reports, in its order) and the output
logits of the fixed probe batch ``x`` give two coordinate sizes:

    RMS(x) = sqrt(mean_{all entries} x^2),    l1(x) = mean_{all entries} |x|

(``RMS^2`` is ``analyze``'s ``activation_variance + channel_squared_mean``). Plotted against
the width on log-log axes, one line per layer and one panel per step, a flat line is a
width-stable layer; a slope ``a`` means the coordinates grow as ``width^a``. In the standard
parametrization (He init, a fixed learning rate), the step-0 lines are flat and training makes
the logits grow with the width (slope up to 1 for SGD: the update of the last layer adds
``O(lr * width)`` to each logit), which muP's parametrization removes.

Reference: Yang, Hu et al., "Tensor Programs V: Tuning Large Neural Networks via Zero-Shot
Hyperparameter Transfer", 2021, https://arxiv.org/abs/2203.03466 (its coordinate check,
appendix D.1).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sigprop.core.plan import Named
from sigprop.util.checks import check_int

__all__ = ["coord_check", "CoordCheck", "OUTPUT"]

OUTPUT = "output"  # the layer name of the model's outputs (the logits)


def _scales_of(y):
    """``[RMS, l1]`` of one array (float32)."""
    y = jax.lax.stop_gradient(y).astype(jnp.float32)
    return jnp.stack([jnp.sqrt(jnp.mean(jnp.square(y))), jnp.mean(jnp.abs(y))])


def scales(net, variables, x) -> Named:
    """``[RMS, l1]`` of every activation tap and of the outputs (named :data:`OUTPUT`, last):
    a :class:`~sigprop.core.plan.Named` ``[layers + 1, 2]``. Train mode (batch statistics)."""
    named, out = net.observe(variables, x, _scales_of)
    rows = _scales_of(out)[None]
    value = rows if named.value is None else jnp.concatenate([named.value, rows])
    return Named(tuple(named.names) + (OUTPUT,), value)


# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class CoordCheck:
    """The coordinate sizes of a :func:`coord_check`.

    ``rms_per_seed`` / ``l1_per_seed``: ``[widths, seeds, steps + 1, layers]``; ``rms`` / ``l1``
    their means over seeds ``[widths, steps + 1, layers]``; ``layers`` ends with
    :data:`OUTPUT` (the logits)."""

    widths: tuple
    steps: tuple
    layers: tuple
    rms_per_seed: np.ndarray
    l1_per_seed: np.ndarray
    config: dict = dataclasses.field(default_factory=dict)

    @property
    def rms(self) -> np.ndarray:
        return self.rms_per_seed.mean(axis=1)

    @property
    def l1(self) -> np.ndarray:
        return self.l1_per_seed.mean(axis=1)

    def _scale(self, scale: str) -> np.ndarray:
        if scale not in ("rms", "l1"):
            raise ValueError(f"scale={scale!r}; allowed: rms, l1")
        return self.rms if scale == "rms" else self.l1

    def slopes(self, scale: str = "rms") -> np.ndarray:
        """``[steps + 1, layers]``: the least-squares slope of ``log(scale)`` against
        ``log(width)`` (0: width-stable; ``a``: grows as ``width^a``)."""
        y = np.log(self._scale(scale))  # [W, T, L]
        x = np.log(np.asarray(self.widths, np.float64))
        x = x - x.mean()
        return np.einsum("w,wtl->tl", x, y - y.mean(axis=0)) / np.sum(x * x)

    def to_pandas(self):
        """One row per (width, seed, step, layer) with ``rms`` and ``l1``."""
        import pandas as pd

        idx = np.indices(self.rms_per_seed.shape).reshape(4, -1)
        return pd.DataFrame(dict(
            width=np.asarray(self.widths)[idx[0]], seed=idx[1],
            step=np.asarray(self.steps)[idx[2]],
            layer=np.asarray(self.layers, dtype=object)[idx[3]],
            rms=self.rms_per_seed.reshape(-1), l1=self.l1_per_seed.reshape(-1)))

    def plot(self, ax=None, scale: str = "rms"):
        """muP's coordinate-check figure: one panel per step, ``scale`` vs width on log-log
        axes, one line per layer (light to dark with depth; the outputs dashed). ``ax``: a
        sequence of ``steps + 1`` matplotlib axes, or None for a new figure. Returns the
        figure."""
        import matplotlib.pyplot as plt

        values = self._scale(scale)
        n = len(self.steps)
        if ax is None:
            fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.0), sharey=True, squeeze=False)
            axes = list(axes[0])
        else:
            axes = list(np.ravel(ax)) if not hasattr(ax, "plot") else [ax]
            if len(axes) != n:
                raise ValueError(f"ax: {len(axes)} axes for {n} steps")
            fig = axes[0].figure
        colors = plt.cm.viridis(np.linspace(0.0, 0.9, max(len(self.layers) - 1, 1)))
        for t, a in enumerate(axes):
            for j, name in enumerate(self.layers):
                out = name == OUTPUT
                a.plot(self.widths, values[:, t, j], ls="--" if out else "-", marker="o", ms=3,
                       color="k" if out else colors[j], label=name)
            a.set_xscale("log", base=2)
            a.set_yscale("log")
            a.set_title(f"step {self.steps[t]}")
            a.set_xlabel("width")
        axes[0].set_ylabel(f"{'RMS' if scale == 'rms' else 'mean |x|'} of the coordinates")
        axes[-1].legend(fontsize=6, loc="best")
        fig.tight_layout()
        return fig


def coord_check(builder: Callable, widths, *, steps: int = 3, data=None, inputs=None,
                batch_size: int = 64, optimizer="plain_sgd", learning_rate: float = 0.1,
                seeds: int = 1, key=0, taps=None, apply_kwargs=None) -> CoordCheck:
    """muP's coordinate check of ``builder`` over ``widths`` (see the module doc).

    Args:
      builder: ``width -> model`` (anything :func:`sigprop.train` takes), e.g.
        ``lambda w: sigprop.mlp(4, w)``; every width must give the same layer names.
      widths: at least two distinct widths (integers >= 1).
      steps: training steps (>= 1); the scales are recorded at ``0, 1, ..., steps``.
      data: ``(images, labels)`` to train on; default: ``inputs`` (a shape ``(N, ...)``,
        default ``(4 * batch_size, 32, 32, 3)``) of N(0, 1) inputs with labels uniform over
        the model's outputs, both drawn from ``key``.
      batch_size, optimizer, learning_rate, seeds, key, taps, apply_kwargs: as in
        :func:`sigprop.train` (default: plain SGD at 0.1, muP's setting). The probe batch is
        :func:`sigprop.train`'s default (``batch_size`` examples of ``data``, the same for
        every width and step).

    Returns:
      :class:`CoordCheck`, ``[widths, (seeds,) steps + 1, layers]`` arrays and a ``plot``.
    """
    from sigprop.analyses import train as train_lib
    from sigprop.core.objective import objective

    try:
        widths = tuple(int(w) for w in widths)
    except (TypeError, ValueError):
        raise ValueError(f"widths={widths!r}: expected a sequence of integers") from None
    if len(set(widths)) < 2 or min(widths) < 1:
        raise ValueError(f"widths={widths}: give at least two distinct widths >= 1")
    if not callable(builder):
        raise ValueError(f"builder={builder!r}: expected a callable width -> model")
    steps = check_int("steps", steps)
    models = [builder(w) for w in widths]
    if data is None:
        shape = tuple(inputs) if inputs is not None else (4 * batch_size, 32, 32, 3)
        if len(shape) < 2 or shape[0] < batch_size:
            raise ValueError(f"inputs={inputs!r}: a shape (N, ...) with N >= batch_size")
        kx, ky = jax.random.split(jax.random.key(key) if isinstance(key, int) else key)
        x = np.asarray(jax.random.normal(kx, shape, jnp.float32))
        obj = objective(models[0], x[:batch_size], apply_kwargs=apply_kwargs)[0]
        classes = train_lib.output_classes(obj, jnp.asarray(x[:batch_size]))
        data = (x, np.asarray(jax.random.randint(ky, shape[:1], 0, classes), np.int32))
    elif inputs is not None:
        raise ValueError("inputs= with data=: give one of them")
    from sigprop.analyses.analyze import layer_names

    probe_x = np.asarray(data[0])[:batch_size]
    layers = None
    for w, model in zip(widths, models):  # traced abstractly: nothing compiles
        names = tuple(layer_names(model, probe_x, taps=taps, apply_kwargs=apply_kwargs)["layer"])
        if layers is not None and names != layers:
            raise ValueError(f"builder: width {w} gives the layers {names}, width "
                             f"{widths[0]} gave {layers}: the widths must share their layers")
        layers = names
    per_width = []
    for model in models:
        res = train_lib.train(model, data, steps=steps, batch_size=batch_size,
                              optimizer=optimizer, learning_rate=learning_rate, record_every=1,
                              seeds=seeds, key=key, metrics=(), confusion_batches=1, taps=taps,
                              apply_kwargs=apply_kwargs, _extra=scales)
        per_width.append(np.asarray(res["coordinates"]))  # [seeds, steps + 1, L, 2]
    arr = np.stack(per_width)
    config = dict(widths=list(widths), steps=steps, batch_size=batch_size,
                  optimizer=optimizer if isinstance(optimizer, str) else repr(optimizer),
                  learning_rate=learning_rate, seeds=seeds, model=type(models[0]).__name__)
    return CoordCheck(widths, tuple(range(steps + 1)), tuple(res.coords["coord_layer"]),
                      arr[..., 0], arr[..., 1], config)
