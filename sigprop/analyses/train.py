"""``train``: train any model ``analyze`` accepts with an optax optimizer, and record every
``analyze`` metric (and the optimization quantities) along the way.

::

    jit( init per seed (x rate)
         -> lax.scan over records r = 0 .. R ( record at step s_r = min(r k, steps)
                                               -> fori_loop over the next min(k, steps - r k)
                                                  training steps ) )

with ``k = record_every``, ``R = ceil(steps / k)``; seeds (and a grid of learning rates) ride a
``vmap`` inside. Recording sits between the inner loops, never in a ``lax.cond`` of a step.
With ``progress=True`` the same record-and-steps body is one jitted call per record interval
(compiled once), so a progress bar can advance between calls.

Seed ``i`` starts from the weights ``analyze(model, probe, seeds=n, key=key)`` measures for seed
``i`` (:mod:`sigprop.objective`); every rate of a seed starts from those weights and sees the
same minibatches. The seed key ``k_i = fold_in(key, i)`` also draws:

- the minibatches: epoch ``e`` is ``permutation(fold_in(fold_in(k_i, 1), e), N)`` cut into
  ``N // batch_size`` batches (the remainder dropped), step ``t`` takes batch ``t mod (N // B)``
  of epoch ``t // (N // B)``; the whole dataset stays on the device, batches are gathered there;
- the Lanczos start of ``lambda_max``: ``fold_in(fold_in(k_i, 3), r)``.

The record at step ``s`` evaluates the next ``confusion_batches`` minibatches of this stream
(those of steps ``s, s + 1, ...``) at the parameters of step ``s``; step ``s`` then uses the
first one's gradient (computed once), so recording the losses alone costs no extra pass.

Every forward pass, in training and in recording, is in train mode: batch-statistics layers use
the batch in hand (their running averages are carried through the scan in ``rest`` and never
used).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sigprop.analyses import train_loop
from sigprop.analyses.train_result import SCALARS, TrainResult
from sigprop.core.args import make_plan, network, run_config
from sigprop.core.objective import Objective, objective
from sigprop.core.plan import Plan
from sigprop.util.checks import check_int, check_key, check_precision, check_seeds
from sigprop.util.keys import seed_keys
from sigprop.util.warnings import warn_nonfinite as nonfinite

__all__ = ["train", "TrainResult", "OPTIMIZERS", "SCALARS"]

# name -> learning_rate -> optax.GradientTransformation
OPTIMIZERS: dict[str, Callable] = {
    "sgd": lambda lr: optax.sgd(lr, momentum=0.9),
    "plain_sgd": lambda lr: optax.sgd(lr),
    "nesterov": lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
    "adam": lambda lr: optax.adam(lr),
    "adamw": lambda lr: optax.adamw(lr),
    "rmsprop": lambda lr: optax.rmsprop(lr),
}
DEFAULT_RATE = 0.1


# ------------------------------------------------------------------------------------------------
# Checks at the boundary


def _check_data(name, data, classes=None):
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{name}: expected a pair (images, labels); got {type(data).__name__}")
    images, labels = np.asarray(data[0]), np.asarray(data[1])
    if images.ndim < 2:
        raise ValueError(f"{name}: images must be [N, ...] with at least 2 dims; got shape "
                         f"{images.shape}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: labels must be 1-D integers [N]; got shape {labels.shape}, "
                         f"dtype {labels.dtype}")
    if len(images) != len(labels):
        raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels")
    if not np.issubdtype(images.dtype, np.number):
        raise ValueError(f"{name}: images must be numbers; got dtype {images.dtype}")
    integer = np.issubdtype(images.dtype, np.integer)  # token ids stay integer, as in analyze
    if classes is not None and len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"{name}: labels must lie in [0, {classes}) (the model's {classes} "
                         f"outputs); got labels in [{labels.min()}, {labels.max()}]")
    return (images.astype(np.int32 if integer else np.float32, copy=False),
            labels.astype(np.int32, copy=False))


def _check_rates(learning_rate, optimizer):
    if isinstance(optimizer, optax.GradientTransformation):
        if learning_rate is not None:
            raise ValueError("learning_rate= with an optax.GradientTransformation, which holds "
                             "its own rate: leave learning_rate unset, or pass a factory "
                             "rate -> GradientTransformation (e.g. optax.adam) for a grid")
        return np.zeros(1, np.float32), False
    grid = not isinstance(learning_rate, (int, float, np.integer, np.floating, type(None)))
    values = [DEFAULT_RATE] if learning_rate is None else (
        list(learning_rate) if grid else [learning_rate])
    if not values or not all(isinstance(v, (int, float, np.integer, np.floating))
                             and not isinstance(v, bool) and np.isfinite(v) and v > 0
                             for v in values):
        raise ValueError(f"learning_rate={learning_rate!r}: expected a number > 0 or a "
                         "non-empty sequence of them (a grid: a rate axis)")
    return np.asarray(values, np.float32), grid


def _check_optimizer(optimizer):
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={optimizer!r}; allowed: {', '.join(OPTIMIZERS)}, an "
                             "optax.GradientTransformation, or a callable rate -> "
                             "GradientTransformation")
        return OPTIMIZERS[optimizer]
    if isinstance(optimizer, optax.GradientTransformation) or callable(optimizer):
        return optimizer
    raise ValueError(f"optimizer={optimizer!r}; allowed: {', '.join(OPTIMIZERS)}, an "
                     "optax.GradientTransformation, or a callable rate -> GradientTransformation")


# ------------------------------------------------------------------------------------------------
# train


def train(model, data, *, steps: int, batch_size: int = 128, optimizer="sgd",
          learning_rate=None, record_every: int = 10, seeds: int = 1, key=0, held_out=None,
          probe_batch=None, metrics=None, similar_batch_noise: float | None = 0.1,
          confusion_batches: int = 4, record_lambda_max: bool = False, lanczos_order: int = 20,
          variables=None, taps=None, apply_kwargs=None, precision: str = "highest",
          progress: bool = False, _extra=None, _record: bool = True) -> TrainResult:
    """Train ``model`` on ``data`` for ``steps`` steps, recording every ``record_every`` steps.

    Each step: a minibatch of ``batch_size`` (shuffled per seed per epoch, see the module doc),
    the mean softmax cross-entropy against its labels (plus a model's extra loss terms, e.g.
    RegNorm's), train-mode batch statistics, one ``optimizer`` update. At each record, at steps
    ``0, k, 2k, ..., steps`` (``k = record_every``; step 0 is before any update, the last is
    after the last update), the result holds:

    - every ``analyze`` metric (``metrics=``, default the single-batch ones, plus
      ``similar_batch_correlation`` with noise ``similar_batch_noise``; ``None`` leaves it out),
      measured by the engine on the probe batch: the same batch at every record (default: the
      ``batch_size`` examples ``sigprop.data.subset(data, batch_size, key=0)`` picks, balanced
      over classes; or ``probe_batch=(images, labels)``) and the same pair-pass noise. The
      gradient metrics (``grad_norm``) differentiate the cross-entropy against the probe
      batch's own labels (not ``analyze``'s random labels), so step 0 equals ``analyze(model,
      probe_images, seeds=seeds, key=key, similar_batch_noise=..., loss=cross-entropy against
      probe_labels)``. ``metrics=()`` records none of them (and ignores
      ``similar_batch_noise``).
    - ``train_loss`` / ``train_accuracy``: the mean cross-entropy and accuracy (argmax of the
      outputs == label) over the next ``confusion_batches`` minibatches of the training stream (those of
      steps ``s, s + 1, ...``: distinct batches, disjoint within an epoch), at the recorded
      parameters, train mode (the first is the batch step ``s`` trains on, before its update).
      ``train_regularizer``: the mean of the model's extra loss terms over the same minibatches
      (RegNorm's penalty; 0 without): the optimized loss is their sum, the curves and training
      speed are the cross-entropy alone.
    - ``gradient_cosine_min`` / ``gradient_cosine_mean`` (``confusion_batches >= 2``): over the
      pairs ``i < j`` of those minibatches, the cosine ``<g_i, g_j> / (|g_i| |g_j|)`` of their
      loss gradients ``g_i`` w.r.t. all parameters. Sankararaman et al. (2019) call ``eta``
      with ``<g_i, g_j> >= -eta`` for all pairs the gradient confusion: the normalized gradient
      confusion is ``-gradient_cosine_min``.
    - ``held_out_loss`` / ``held_out_accuracy`` (``held_out=(images, labels)``): the means over
      the held-out set, in batches of ``min(batch_size, N_held)`` (the remainder dropped), each
      with its own batch statistics (train mode).
    - ``lambda_max`` (``record_lambda_max=True``): the top Ritz value after ``lanczos_order``
      Lanczos steps of the Hessian of the probe batch's loss w.r.t. all parameters
      (:func:`sigprop.hessian.lambda_max`, train-mode batch statistics).

    Args:
      model: anything ``analyze`` takes (a zoo model, a linen module, an nnx module or factory)
        returning logits ``[batch, classes]``.
      data: ``(images [N, ...], labels [N])``, e.g. ``sigprop.data.mnist()``; integer labels in
        ``[0, classes)``. The whole set is put on the device once.
      steps: training steps (>= 1). batch_size: minibatch size (<= N).
      optimizer: a name from :data:`OPTIMIZERS` (``"sgd"``: SGD with momentum 0.9;
        ``"plain_sgd"``, ``"nesterov"``, ``"adam"``, ``"adamw"``, ``"rmsprop"``), a callable
        ``rate -> optax.GradientTransformation`` (e.g. ``optax.adam``), or a
        ``GradientTransformation`` (then no ``learning_rate``).
      learning_rate: a number (default 0.1), or a sequence: a grid, vmapped (a ``rate`` axis).
      record_every: steps between records (>= 1). seeds: seeds (>= 1), vmapped. key: int or key.
      held_out: ``(images, labels)`` evaluated at every record, or None.
      probe_batch: ``(images, labels)`` for the ``analyze`` metrics and ``lambda_max``.
      confusion_batches: minibatches per record for the train loss and gradient cosines (>= 1,
        at most the batches in an epoch); each beyond the first costs one forward + backward.
      variables: linen weights to start from (as ``analyze``'s ``variables=``).
      taps, apply_kwargs: as in ``analyze``. precision: matmul precision of the whole
        program, training included (``"highest"``: full float32 also on GPU/TPU).
      progress: draw a progress bar on stderr (the program then runs as one call per record
        interval: the same body, compiled once).

    Returns:
      :class:`TrainResult`: ``[seed, (rate,) step]`` scalars and ``[seed, (rate,) step,
      layer]`` metrics (the ``rate`` axis only for a grid), ``step`` coordinates, and the
      final weights in ``.variables``.
    """
    steps = check_int("steps", steps)
    record_every = check_int("record_every", record_every)
    batch_size = check_int("batch_size", batch_size)
    confusion_batches = check_int("confusion_batches", confusion_batches)
    seeds = check_seeds(seeds)
    root = check_key(key)
    precision = check_precision(precision)
    opt = _check_optimizer(optimizer)
    rates, grid = _check_rates(learning_rate, opt)
    if record_lambda_max not in (True, False):
        raise ValueError(f"record_lambda_max={record_lambda_max!r}: expected True or False")
    lanczos = check_int("lanczos_order", lanczos_order, 2) if record_lambda_max else 0
    images, labels = _check_data("data", data)
    n = len(labels)
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} is larger than the dataset ({n} examples)")
    if confusion_batches > n // batch_size:
        raise ValueError(f"confusion_batches={confusion_batches}: more than the {n // batch_size} "
                         f"minibatches of {batch_size} in an epoch of {n} examples")
    if probe_batch is None:
        from sigprop.util.data import subset

        px, py = subset((images, labels), batch_size, key=0)
    else:
        px, py = _check_data("probe_batch", probe_batch)
    no_metrics = metrics is not None and not isinstance(metrics, str) and len(metrics) == 0
    plan = None if no_metrics else make_plan(metrics, similar_batch_noise, False, None)
    if plan is not None and not plan.pair:
        plan = dataclasses.replace(plan, noise=None)
    if plan is not None and plan.pair and np.issubdtype(px.dtype, np.integer):
        raise ValueError("similar_batch_noise adds noise to the inputs: integer inputs (token "
                         "ids) need similar_batch_noise=None")
    obj, shape, dtype, x = objective(model, px, seeds=seeds, variables=variables,
                                     apply_kwargs=apply_kwargs)
    if taps is not None:  # the objective's network observes the default taps; measure others
        obj = Objective(network(model, jax.ShapeDtypeStruct(shape, dtype), taps,
                                obj.net.apply_kwargs)[0], None, obj.given)
    classes = output_classes(obj, x)
    images, labels = _check_data("data", (images, labels), classes)
    _check_data("probe_batch", (px, py), classes)
    if images.shape[1:] != px.shape[1:]:
        raise ValueError(f"probe_batch: images of shape {px.shape[1:]}; the data's are "
                         f"{images.shape[1:]}")
    dev = dict(images=jnp.asarray(images), labels=jnp.asarray(labels), probe_x=x,
               probe_y=jnp.asarray(py))
    held_chunks = 0
    if held_out is not None:
        hx, hy = _check_data("held_out", held_out, classes)
        if hx.shape[1:] != images.shape[1:]:
            raise ValueError(f"held_out: images of shape {hx.shape[1:]}; the data's are "
                             f"{images.shape[1:]}")
        hb = min(batch_size, len(hy))
        if hb < 2:
            raise ValueError("held_out: needs at least 2 examples (batch statistics)")
        held_chunks = len(hy) // hb
        dev["held_x"] = jnp.asarray(hx[:held_chunks * hb].reshape(held_chunks, hb,
                                                                  *hx.shape[1:]))
        dev["held_y"] = jnp.asarray(hy[:held_chunks * hb].reshape(held_chunks, hb))
    cfg = train_loop.Config(steps, batch_size, record_every, opt, plan, confusion_batches,
                            lanczos, held_chunks, precision, bool(_record), _extra)
    keys = seed_keys(root, seeds)
    bar = None
    if progress:
        from sigprop.util.progress import Progress

        bar = Progress(steps, "steps")
    with bar or contextlib.nullcontext():
        state, recs = train_loop.execute(obj.net, cfg, keys, jnp.asarray(rates), obj.given,
                                         dev, None if bar is None else lambda n: bar.advance(n=n))
    config = run_config(model, shape, seeds, key, True, plan or Plan(()))
    config.update(optimizer=optimizer if isinstance(optimizer, str) else repr(optimizer),
                  learning_rate=None if isinstance(opt, optax.GradientTransformation)
                  else [float(r) for r in rates] if grid else float(rates[0]),
                  steps=steps, batch_size=batch_size, record_every=record_every,
                  data_size=n, confusion_batches=confusion_batches,
                  similar_batch_noise=None if plan is None else plan.noise,
                  held_out=0 if held_out is None else int(len(held_out[1])),
                  lambda_max_order=lanczos, probe_batch="given" if probe_batch is not None
                  else "subset(data, batch_size, key=0)")
    result = TrainResult.from_records(recs, cfg.record_steps(), rates if grid else None,
                                      config)
    result.variables = jax.tree_util.tree_map(
        lambda a: a if grid else a[:, 0],
        train_loop.variables(obj.net, state.params, state.rest, None))
    if _record:
        _warn_nonfinite(result)
    return result


def output_classes(obj, x) -> int:
    """The number of outputs (logits' last axis); a model without ``[batch, classes]`` logits
    is a ValueError."""
    def out(key, x):
        return obj.apply(*obj.split(obj.init(key, x)), x)[0]

    shapes = jax.eval_shape(out, jax.random.key(0), jax.ShapeDtypeStruct(x.shape, x.dtype))
    if not isinstance(shapes, jax.ShapeDtypeStruct) or len(shapes.shape) != 2:
        raise ValueError("model: train needs logits [batch, classes] (softmax cross-entropy "
                         f"against the data's labels); the model returns {shapes}")
    return int(shapes.shape[-1])


def _warn_nonfinite(result: TrainResult) -> None:
    bad = result.first_nonfinite()
    if bad is not None:
        what, step = bad
        nonfinite(f"values first appear at step {step} ({what})",
                  "they are kept as data (the finite flags and NaN losses in the result)")
