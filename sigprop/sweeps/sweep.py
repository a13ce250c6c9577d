"""``sweep``: :func:`sigprop.analyze` over a grid of configs, sharded, persisted, resumable.

How a grid runs:

- Every grid point is built concretely first (``builder(**config)``), so a bad config fails at
  once with a ``ValueError`` naming the point, before anything is compiled.
- Points whose built models are equal (linen modules are frozen dataclasses) and whose inputs are
  equal are one computation: it runs once and every such point gets its numbers.
- A point runs as ``analyze`` would: the same jitted, seed-vmapped program (so a sweep and an
  ``analyze`` of an equal model and shape share one compile), the same seed keys
  (``fold_in(key, i)`` for seed ``i``: a point's numbers do not depend on the rest of the grid),
  the seed axis sharded over every device (:mod:`sigprop.backend.devices`).
- Points equal except for float-valued config entries (resnet's ``alpha``, a normalizer's ``eps``
  or ``reg_strength``) are tried as one program: the builder is called inside ``jit`` with those
  floats as traced scalars and the (points x seeds) axis is vmapped and sharded. A builder that
  needs the float's value in Python (``float(alpha)``, ``if alpha == 1``) cannot be traced; such a
  group falls back to one program per value.
- With ``out``, each finished point is written as soon as its program returns, atomically (a
  temporary ``.<id>.<pid>@<host>.tmp.npz`` renamed to ``<id>.npz``), and a rerun loads finished
  points instead of computing them: a sweep killed at any moment resumes with nothing lost or
  duplicated. Each point records its sweep's builder and grid (digest and axes); a sweep of
  another builder, or with points outside the grid of the points already in ``out``, is
  refused (other seeds, key or inputs of the same grid are other points, side by side).
- With ``executor`` (a ``dask.distributed.Client``, a ``ProcessPoolExecutor``, a submitit
  executor: anything with ``submit``), each unit of work (the points that compile to one
  program) is one task (:mod:`sigprop.sweeps.executors`); workers run it through the same engine call
  and write its points into ``out`` themselves.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

import jax

from sigprop.backend import devices
from sigprop.core.args import make_plan, run_config
from sigprop.core.results import LayerMetrics
from sigprop.sweeps.grid import builder_name, canonical, expand_grid
from sigprop.sweeps.store import (
    Point,
    folder_grid,
    grid_record,
    load_point,
    load_sweep,
    remove_stale_temporaries,
)
from sigprop.sweeps.units import compute_unit, is_shape, plan_units, resolve_points
from sigprop.util.checks import check_key, check_precision, check_seeds
from sigprop.util.keys import seed_keys
from sigprop.util.progress import Progress
from sigprop.util.warnings import warn_nonfinite as nonfinite


# ----------------------------------------------------------------------------------- sweep
def sweep(builder: Callable[..., Any], grid, inputs, *, seeds: int, out=None, key=0,
          precision: str = "highest", metrics=None, similar_batch_noise: float | None = None,
          gradient_correlation: bool = False, progress: bool = True, mesh=None,
          executor=None) -> list[Point]:
    """:func:`sigprop.analyze` at every point of ``grid``, compiled as little as possible.

    Args:
      builder: ``builder(**config)`` returns a model, e.g. ``sigprop.mlp``.
      grid: a dict ``name -> list of values`` (the cartesian product, the last name varying
        fastest) or a list of config dicts.
      inputs: a shape tuple, an array ``[batch, ...]`` (shared by every point and seed), or a
        callable ``config -> shape or array`` (e.g. a batch size from the config).
      seeds: random seeds per point (>= 1). Every point uses ``analyze``'s seed keys for ``key``:
        a point's numbers equal ``analyze(builder(**config), inputs, seeds=seeds, key=key)``
        (to float rounding when its float values ran traced in a group) whatever else the grid
        holds.
      out: a folder; each finished point is written there atomically as ``<id>.npz`` (the id a
        hash of the builder, config, inputs, seeds, key, precision and options), and points
        already there are loaded instead of computed. Read it back with :func:`load_sweep`.
        A folder holding points of another builder or grid is refused (a ``ValueError``
        naming what differs); a part of its grid, or other seeds or key, is fine.
      key: an int or a ``jax.random`` key.
      precision, metrics, similar_batch_noise, gradient_correlation: as in ``analyze``.
      progress: a progress bar on stderr (points done, rate, time left).
      mesh: a 1-D ``jax.sharding.Mesh`` (``sigprop.devices.mesh``); default every device.
        Under ``jax.distributed`` every process runs the same call, ``out`` must be a folder they
        all see, and process 0 writes it.
      executor: runs the units of work (each the points that compile to one program) as tasks:
        any object with ``concurrent.futures``' ``submit(fn, *args)``, e.g. a
        ``dask.distributed.Client`` (``sigprop.cluster.local_cluster(n)`` starts one here), a
        submitit executor (SLURM), a ``ProcessPoolExecutor`` (spawn context; the builder and
        inputs must pickle). Workers use their own devices and write finished points into
        ``out`` (a folder they all see) atomically, as this process would; the numbers are this
        process's, bit for bit, on the same kind and number of devices. A unit whose worker
        dies is lost alone: the executor retries it (Dask does) or a rerun computes it.

    Returns:
      ``[(config, LayerMetrics)]`` (:class:`Point`), one per grid point, in grid order; each
      ``LayerMetrics.config`` also holds the point's config (``"sweep_point"``, JSON), its id
      and its sweep's builder and grid (``"sweep_grid"``, JSON).
    """
    if not callable(builder):
        raise ValueError(f"builder must be a callable returning a model (e.g. sigprop.mlp); "
                         f"got {builder!r}")
    seeds = check_seeds(seeds)
    precision = check_precision(precision)
    root = check_key(key)
    if not (callable(inputs) or is_shape(inputs) or hasattr(inputs, "shape")
            or isinstance(inputs, (list, tuple))):
        raise ValueError("inputs must be a shape tuple, an array [batch, ...] or a callable "
                         f"config -> shape; got {type(inputs).__name__}")
    if out is not None:
        out = os.fspath(out)
        if os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"out={out!r} exists and is not a folder")
    if executor is not None:
        from sigprop.sweeps import (
            executors,  # only with an executor: import sigprop stays light
        )

        executors.check_executor(executor)
        if mesh is not None:
            raise ValueError("mesh= is of this process's devices; with executor= each worker "
                             "uses its own (pass one or the other)")
        if jax.process_count() > 1:
            raise ValueError("executor= under jax.distributed: the processes already share the "
                             "work; run the sweep without executor=")
    configs = expand_grid(grid)
    plan = make_plan(metrics, similar_batch_noise, gradient_correlation, None)
    points = resolve_points(builder, configs, inputs, seeds, key, precision, plan, out is not None)

    results: dict[int, LayerMetrics] = {}
    writer = out is not None and jax.process_index() == 0
    record = grid_record(builder_name(builder), points)
    if out is not None:
        os.makedirs(out, exist_ok=True)
        if writer:
            remove_stale_temporaries(out)
        for p in points:
            path = os.path.join(out, f"{p.id}.npz")
            if os.path.exists(path):
                results[p.index] = load_point(path).metrics
        record = folder_grid(out, record, list(results.values()))
    todo = [p for p in points if p.index not in results]
    keys_seen = dict.fromkeys(k for c in configs for k in c)
    varying = [k for k in keys_seen if len({_canonical_or_repr(c.get(k)) for c in configs}) > 1]
    grid_json = canonical(record)
    metas = {p.index: {**run_config(p.model, p.shape, seeds, key, p.x is not None, plan),
                       "sweep_point": p.config_json, "sweep_id": p.id, "sweep_grid": grid_json}
             for p in todo}
    configs_by_index = {p.index: p.config for p in todo}

    keys = seed_keys(root, seeds)
    shown = progress and jax.process_index() == 0
    bar = Progress(len(todo), "points") if shown and todo else None
    if shown and results:
        sys.stderr.write(f"sweep: {len(results)} of {len(points)} points already in {out}\n")

    def finished(done):
        for index, res in done:
            results[index] = res
            if bar is not None:
                c = configs_by_index[index]
                bar.advance(" ".join(f"{k}={c.get(k)}" for k in varying))

    try:
        if bar is not None:
            bar.__enter__()
        units = plan_units(todo)
        if executor is None:
            m = devices.mesh() if mesh is None else mesh
            for kind, group in units:
                finished(compute_unit(kind, group, builder, keys, precision, plan, m, metas,
                                      out if writer else None))
        elif units:
            tasks = executors.tasks(units, builder=builder, keys=keys, precision=precision,
                                    plan=plan, metas=metas, out=out)
            executors.run(executor, tasks, lambda task, r: finished(r["results"]),
                          where=out, total=len(points), have=lambda: len(results))
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    final = [Point(dict(p.config), results[p.index]) for p in points]
    _warn_nonfinite(final)
    return final


def _canonical_or_repr(v) -> str:
    try:
        return canonical(v)
    except TypeError:
        return repr(v)


def _warn_nonfinite(points: list[Point]) -> None:
    bad = [(p, p.metrics.first_nonfinite()) for p in points]
    bad = [(p, b) for p, b in bad if b is not None]
    if bad:
        (p, (kind, idx, name)) = bad[0]
        nonfinite(f"values in {len(bad)} of {len(points)} sweep points; in {p.config} they "
                  f"first appear in the {kind} of layer {name!r} (index {idx})")


__all__ = ["sweep", "load_sweep", "expand_grid", "Point"]
