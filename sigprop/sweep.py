"""``sweep``: :func:`~sigprop.analyze.analyze` over a grid of configs, sharded, persisted, resumable.

How a grid runs:

- Every grid point is built concretely first (``builder(**config)``), so a bad config fails at
  once with a ``ValueError`` naming the point, before anything is compiled.
- Points whose built models are equal (linen modules are frozen dataclasses) and whose inputs are
  equal are one computation: it runs once and every such point gets its numbers.
- A point runs as ``analyze`` would: the same jitted, seed-vmapped program (so a sweep and an
  ``analyze`` of an equal model and shape share one compile), the same seed keys
  (``fold_in(key, i)`` for seed ``i``: a point's numbers do not depend on the rest of the grid),
  the seed axis sharded over every device (:mod:`sigprop.devices`).
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
  program) is one task (:mod:`sigprop.cluster`); workers run it through the same engine call
  and write its points into ``out`` themselves.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import itertools
import json
import logging
import os
import sys
import warnings
from typing import Any, Callable

import jax
import numpy as np

from sigprop import cluster, devices, engine
from sigprop.analyze import (
    NonFiniteWarning,
    check_inputs,
    check_key,
    check_precision,
    check_seeds,
    make_plan,
    network,
    run_config,
)
from sigprop.engine import seed_keys
from sigprop.progress import Progress
from sigprop.results import LayerMetrics
from sigprop.sweep_store import (  # noqa: F401 (_RESULT, _order, _write: the tests' view)
    _RESULT,
    Point,
    _folder_grid,
    _grid_record,
    _load_point,
    _order,
    _remove_stale_temporaries,
    _write,
    load_sweep,
)

log = logging.getLogger(__name__)

_UNTRACEABLE: set = set()  # value groups whose builder could not be traced (not retried)


# ------------------------------------------------------------------------------------- grid
def expand_grid(grid) -> list[dict]:
    """The grid's points as config dicts, in order.

    ``grid`` is a dict ``name -> list of values`` (the cartesian product in the dict's order, the
    last name varying fastest) or a list of config dicts (taken as they are). NumPy scalars become
    Python scalars (so builders' ``isinstance(v, int)`` checks and JSON work)."""
    if isinstance(grid, dict):
        names = list(grid)
        for name in names:
            if not isinstance(name, str):
                raise ValueError(f"grid: keys must be parameter names (str); got {name!r}")
            values = grid[name]
            if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, range,
                                                                            np.ndarray)):
                raise ValueError(f"grid[{name!r}] must be a list of values; got {values!r} "
                                 f"(write [{values!r}] for a single value)")
            if len(values) == 0:
                raise ValueError(f"grid[{name!r}] is empty")
        points = [dict(zip(names, combo)) for combo in itertools.product(*grid.values())]
    elif isinstance(grid, (list, tuple)):
        points = list(grid)
        for i, p in enumerate(points):
            if not isinstance(p, dict) or not all(isinstance(k, str) for k in p):
                raise ValueError(f"grid[{i}] must be a config dict name -> value; got {p!r}")
    else:
        raise ValueError("grid must be a dict name -> list of values, or a list of config dicts; "
                         f"got {type(grid).__name__}")
    if not points:
        raise ValueError("grid has no points")
    return [{k: _py(v) for k, v in p.items()} for p in points]


def _py(v):
    if isinstance(v, np.generic):
        return v.item()
    return v


def _builder_params(builder) -> tuple[list[str], bool]:
    """``(parameter names, takes **kwargs)`` of ``builder`` (empty, True when unknown)."""
    try:
        sig = inspect.signature(builder)
    except (TypeError, ValueError):
        return [], True
    names = [p.name for p in sig.parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


def _builder_name(builder) -> str:
    """A name for ``builder`` that is stable across processes (it enters the points' ids)."""
    if isinstance(builder, functools.partial):
        return f"{_builder_name(builder.func)}(*{_canonical(list(builder.args))}, " \
               f"**{_canonical(builder.keywords)})"
    return f"{getattr(builder, '__module__', '?')}.{getattr(builder, '__qualname__', type(builder).__qualname__)}"


# ---------------------------------------------------------------------------- ids and JSON
def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, functools.partial) or callable(v):
        return _builder_name(v)
    raise TypeError(f"{v!r} ({type(v).__name__}) has no JSON form")


def _canonical(obj) -> str:
    """Canonical JSON: sorted keys, no spaces; functions and classes as ``module.qualname``."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _key_json(key):
    if isinstance(key, (int, np.integer)):
        return int(key)
    return {"impl": str(jax.random.key_impl(key)),
            "data": np.asarray(jax.random.key_data(key)).tolist()}


def _digest(x) -> str:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    return hashlib.sha256(x.tobytes() + str(x.shape).encode()).hexdigest()


# ------------------------------------------------------------------------------- kernels
class _Traced:
    """``model = builder(**static, **{names[i]: values[i]})``, callable on traced ``values``.

    Hashable and comparable (a static argument of :func:`_run_values`)."""

    def __init__(self, builder, static: dict, names: tuple[str, ...]):
        self.builder, self.static, self.names = builder, static, names
        self._key = (builder, _hashable(static), names)
        hash(self._key)  # raises TypeError for unhashable builders or values

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Traced) and self._key == other._key

    def __call__(self, values):
        return self.builder(**self.static, **{n: values[i] for i, n in enumerate(self.names)})


def _hashable(v):
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    return v


# --------------------------------------------------------------------------------- points
@dataclasses.dataclass
class _Point:
    index: int
    config: dict
    model: Any
    shape: tuple
    dtype: Any
    x: Any  # the inputs array, or None (each seed draws N(0, 1) inputs)
    xdigest: str | None
    id: str
    config_json: str


def _resolve(builder, configs, inputs, seeds, key, precision, plan, strict) -> list[_Point]:
    """Build and validate every point; compute its id."""
    params, var_kw = _builder_params(builder)
    bname = _builder_name(builder)
    fixed_x = None if callable(inputs) or _is_shape(inputs) else inputs
    fixed_digest = None if fixed_x is None else _digest(fixed_x)
    points, seen = [], {}
    for i, config in enumerate(configs):
        where = f"grid point {i} {config}"
        unknown = sorted(set(config) - set(params))
        if unknown and not var_kw:
            raise ValueError(f"{where}: {bname} takes no parameter(s) {', '.join(unknown)}; "
                             f"its parameters: {', '.join(params)}")
        try:
            model = builder(**config)
        except TypeError as e:
            raise ValueError(f"{where}: {e}; {bname}'s parameters: {', '.join(params)}") from e
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e
        point_inputs = inputs(config) if callable(inputs) else inputs
        try:
            shape, dtype, x = check_inputs(model, point_inputs)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e
        xdigest = None if x is None else (fixed_digest if point_inputs is fixed_x else _digest(x))
        try:
            config_json = _canonical(config)
        except TypeError as e:
            if strict:
                raise ValueError(f"{where}: cannot be saved ({e}); use JSON values (numbers, "
                                 "strings, lists) or named functions") from e
            config_json = json.dumps({k: repr(v) for k, v in config.items()}, sort_keys=True)
        ident = dict(builder=bname, model=type(model).__name__, config=json.loads(config_json),
                     inputs=list(shape) if x is None else dict(shape=list(shape), sha256=xdigest),
                     seeds=seeds, key=_key_json(key), precision=precision)
        if plan.pair:  # as 0.1 named them (the ids of its sweeps stay valid)
            ident["options"] = {k: v for k, v in dict(
                similar_batch_noise=plan.noise if "similar_batch_correlation" in plan.metrics
                else None, similar_batch="similar_batch_correlation" in plan.metrics,
                gradient_correlation="gradient_correlation" in plan.metrics).items() if v}
        pid = hashlib.sha256(_canonical(ident).encode()).hexdigest()[:16]
        if strict and pid in seen and seen[pid] != config:
            raise ValueError(f"{where} and {seen[pid]} are different configs with the same saved "
                             "form; give their values distinct names")
        seen.setdefault(pid, config)
        points.append(_Point(i, config, model, shape, dtype, x, xdigest, pid, config_json))
    return points


def _is_shape(inputs) -> bool:
    return isinstance(inputs, (tuple, list)) and all(isinstance(d, (int, np.integer))
                                                     for d in inputs)


def _plan(points: list[_Point]) -> list[tuple[str, list[list[_Point]]]]:
    """Units of work, in grid order: ``("static", [job])`` or ``("values", [job, job, ...])``,
    where a job is the points sharing one computation (equal model, shape and inputs) and a
    ``"values"`` unit holds jobs whose configs differ only in float values."""
    jobs: dict = {}
    for p in points:
        jobs.setdefault((p.model, p.shape, p.xdigest), []).append(p)
    units, groups = [], {}
    for job in jobs.values():
        gkey = _value_group(job[0])
        if gkey is None:
            units.append(("static", [job]))
        else:
            groups.setdefault(gkey, []).append(job)
    for group in groups.values():
        if len(group) > 1:
            units.append(("values", group))
        else:
            units.append(("static", group))
    units.sort(key=lambda u: u[1][0][0].index)
    return units


def _float_names(config: dict) -> tuple[str, ...]:
    return tuple(sorted(k for k, v in config.items() if isinstance(v, float)))


def _value_group(p: _Point):
    """What a point shares with the points that differ from it only in float values (or None)."""
    floats = _float_names(p.config)
    if not floats:
        return None
    static = {k: v for k, v in p.config.items() if k not in floats}
    try:
        gkey = (_hashable(static), floats, p.shape, p.xdigest, type(p.model))
        hash(gkey)
    except (TypeError, AttributeError):
        return None
    return gkey


def _is_runtime_error(e: Exception) -> bool:
    return isinstance(e, (jax.errors.JaxRuntimeError, MemoryError))


def _network(p: _Point):
    return network(p.model, jax.ShapeDtypeStruct(p.shape, p.dtype), None)[0]


def _run_unit(kind, group, builder, keys, precision, plan, mesh) -> list[dict]:
    """The engine's outputs ``{name: Named [seeds, ...]}`` of each job of the unit."""
    first = group[0][0]
    if kind == "values":
        names = _float_names(first.config)
        static = {k: v for k, v in first.config.items() if k not in names}
        try:
            make = _Traced(builder, static, names)
        except TypeError:
            make = None
        if make is not None and make not in _UNTRACEABLE:
            seeds, n = keys.shape[0], len(group)
            values = np.array([[job[0].config[k] for k in names] for job in group], np.float32)
            data = np.tile(np.asarray(jax.random.key_data(keys)), (n, 1))  # point-major
            flat_keys = jax.random.wrap_key_data(data, impl=jax.random.key_impl(keys))
            try:
                out = engine.execute(_network(first), first.shape, first.dtype, flat_keys,
                                     first.x, None, plan, precision, mesh, make=make,
                                     values=np.repeat(values, seeds, axis=0))
            except Exception as e:  # noqa: BLE001 - a builder that cannot take traced floats
                if _is_runtime_error(e):
                    raise
                _UNTRACEABLE.add(make)
                log.info("sweep: %s with traced %s failed (%s: %s); one program per value",
                         _builder_name(builder), ", ".join(names), type(e).__name__,
                         str(e).splitlines()[0] if str(e) else "")
            else:
                log.info("sweep: %d points differing in %s as one program", len(group),
                         ", ".join(names))
                return [jax.tree_util.tree_map(
                    lambda v, j=j: v.reshape(n, seeds, *v.shape[1:])[j], out)
                    for j in range(n)]
    return [engine.execute(_network(job[0]), job[0].shape, job[0].dtype, keys, job[0].x, None,
                           plan, precision, mesh) for job in group]


def _compute(kind, group, builder, keys, precision, plan, mesh, metas: dict,
             out: str | None) -> list[tuple[int, LayerMetrics]]:
    """Run one unit; write each of its points to ``out`` (unless None) as soon as the unit's
    program returns. Returns ``[(grid index, LayerMetrics)]``; ``metas[index]`` is the point's
    ``LayerMetrics.config``. The one path of both the in-process loop and a worker's task."""
    done = []
    for job, arrays in zip(group, _run_unit(kind, group, builder, keys, precision, plan, mesh)):
        for p in job:
            res = LayerMetrics.from_engine(arrays, metas[p.index])
            if out is not None:
                _write(res, out, p.id)
            done.append((p.index, res))
    return done


# ----------------------------------------------------------------------------------- sweep
def sweep(builder: Callable[..., Any], grid, inputs, *, seeds: int, out=None, key=0,
          precision: str = "highest", metrics=None, similar_batch_noise: float | None = None,
          gradient_correlation: bool = False, progress: bool = True, mesh=None,
          executor=None) -> list[Point]:
    """:func:`~sigprop.analyze.analyze` at every point of ``grid``, compiled as little as possible.

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
    if not (callable(inputs) or _is_shape(inputs) or hasattr(inputs, "shape")
            or isinstance(inputs, (list, tuple))):
        raise ValueError("inputs must be a shape tuple, an array [batch, ...] or a callable "
                         f"config -> shape; got {type(inputs).__name__}")
    if out is not None:
        out = os.fspath(out)
        if os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"out={out!r} exists and is not a folder")
    if executor is not None:
        cluster.check_executor(executor)
        if mesh is not None:
            raise ValueError("mesh= is of this process's devices; with executor= each worker "
                             "uses its own (pass one or the other)")
        if jax.process_count() > 1:
            raise ValueError("executor= under jax.distributed: the processes already share the "
                             "work; run the sweep without executor=")
    configs = expand_grid(grid)
    plan = make_plan(metrics, similar_batch_noise, gradient_correlation, None)
    points = _resolve(builder, configs, inputs, seeds, key, precision, plan, out is not None)

    results: dict[int, LayerMetrics] = {}
    writer = out is not None and jax.process_index() == 0
    record = _grid_record(_builder_name(builder), points)
    if out is not None:
        os.makedirs(out, exist_ok=True)
        if writer:
            _remove_stale_temporaries(out)
        for p in points:
            path = os.path.join(out, f"{p.id}.npz")
            if os.path.exists(path):
                results[p.index] = _load_point(path).metrics
        record = _folder_grid(out, record, list(results.values()))
    todo = [p for p in points if p.index not in results]
    keys_seen = dict.fromkeys(k for c in configs for k in c)
    varying = [k for k in keys_seen if len({_canonical_or_repr(c.get(k)) for c in configs}) > 1]
    grid_json = _canonical(record)
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
        units = _plan(todo)
        if executor is None:
            m = devices.mesh() if mesh is None else mesh
            for kind, group in units:
                finished(_compute(kind, group, builder, keys, precision, plan, m, metas,
                                  out if writer else None))
        elif units:
            tasks = cluster.tasks(units, builder=builder, keys=keys, precision=precision,
                                  plan=plan, metas=metas, out=out)
            cluster.run(executor, tasks, lambda task, r: finished(r["results"]),
                        where=out, total=len(points), have=lambda: len(results))
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    final = [Point(dict(p.config), results[p.index]) for p in points]
    _warn_nonfinite(final)
    return final


def _canonical_or_repr(v) -> str:
    try:
        return _canonical(v)
    except TypeError:
        return repr(v)


def _warn_nonfinite(points: list[Point]) -> None:
    bad = [(p, p.metrics.first_nonfinite()) for p in points]
    bad = [(p, b) for p, b in bad if b is not None]
    if bad:
        (p, (kind, idx, name)) = bad[0]
        warnings.warn(
            f"non-finite values in {len(bad)} of {len(points)} sweep points; in {p.config} they "
            f"first appear in the {kind} of layer {name!r} (index {idx}); they are flagged in "
            "LayerMetrics.finite / grad_finite",
            NonFiniteWarning,
            stacklevel=3,
        )


__all__ = ["sweep", "load_sweep", "expand_grid", "Point"]
