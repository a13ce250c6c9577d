"""A sweep's units of work: every grid point built and checked, points grouped into units (the
points that compile to one program; points differing only in float config values ride one
traced, vmapped program), and :func:`compute_unit`, the one path that runs a unit, in process or
on a worker, and writes its points. Executors import this module, never the sweep driver."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Any

import jax
import numpy as np

from sigprop.core import engine
from sigprop.core.args import check_inputs, network
from sigprop.core.results import LayerMetrics
from sigprop.sweeps.grid import (
    builder_name,
    builder_params,
    canonical,
    digest,
    key_json,
)
from sigprop.sweeps.store import write_point
from sigprop.util.cache import BoundedSet

log = logging.getLogger(__name__)

# value groups whose builder could not be traced (not retried): the most recent 256
UNTRACEABLE = BoundedSet(256)

# ------------------------------------------------------------------------------- kernels
class TracedBuilder:
    """``model = builder(**static, **{names[i]: values[i]})``, callable on traced ``values``.

    Hashable and comparable (a static argument of :func:`_run_values`)."""

    def __init__(self, builder, static: dict, names: tuple[str, ...]):
        self.builder, self.static, self.names = builder, static, names
        self._key = (builder, hashable(static), names)
        hash(self._key)  # raises TypeError for unhashable builders or values

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, TracedBuilder) and self._key == other._key

    def __call__(self, values):
        return self.builder(**self.static, **{n: values[i] for i, n in enumerate(self.names)})


def hashable(v):
    if isinstance(v, dict):
        return tuple(sorted((k, hashable(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(hashable(x) for x in v)
    return v


# --------------------------------------------------------------------------------- points
@dataclasses.dataclass
class PlannedPoint:
    index: int
    config: dict
    model: Any
    shape: tuple
    dtype: Any
    x: Any  # the inputs array, or None (each seed draws N(0, 1) inputs)
    xdigest: str | None
    id: str
    config_json: str


def resolve_points(builder, configs, inputs, seeds, key, precision, plan, strict) -> list[PlannedPoint]:
    """Build and validate every point; compute its id."""
    params, var_kw = builder_params(builder)
    bname = builder_name(builder)
    fixed_x = None if callable(inputs) or is_shape(inputs) else inputs
    fixed_digest = None if fixed_x is None else digest(fixed_x)
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
        xdigest = None if x is None else (fixed_digest if point_inputs is fixed_x else digest(x))
        try:
            config_json = canonical(config)
        except TypeError as e:
            if strict:
                raise ValueError(f"{where}: cannot be saved ({e}); use JSON values (numbers, "
                                 "strings, lists) or named functions") from e
            config_json = json.dumps({k: repr(v) for k, v in config.items()}, sort_keys=True)
        ident = dict(builder=bname, model=type(model).__name__, config=json.loads(config_json),
                     inputs=list(shape) if x is None else dict(shape=list(shape), sha256=xdigest),
                     seeds=seeds, key=key_json(key), precision=precision)
        if plan.pair:  # as 0.1 named them (the ids of its sweeps stay valid)
            ident["options"] = {k: v for k, v in dict(
                similar_batch_noise=plan.noise if "similar_batch_correlation" in plan.metrics
                else None, similar_batch="similar_batch_correlation" in plan.metrics,
                gradient_correlation="gradient_correlation" in plan.metrics).items() if v}
        pid = hashlib.sha256(canonical(ident).encode()).hexdigest()[:16]
        if strict and pid in seen and seen[pid] != config:
            raise ValueError(f"{where} and {seen[pid]} are different configs with the same saved "
                             "form; give their values distinct names")
        seen.setdefault(pid, config)
        points.append(PlannedPoint(i, config, model, shape, dtype, x, xdigest, pid, config_json))
    return points


def is_shape(inputs) -> bool:
    return isinstance(inputs, (tuple, list)) and all(isinstance(d, (int, np.integer))
                                                     for d in inputs)


def plan_units(points: list[PlannedPoint]) -> list[tuple[str, list[list[PlannedPoint]]]]:
    """Units of work, in grid order: ``("static", [job])`` or ``("values", [job, job, ...])``,
    where a job is the points sharing one computation (equal model, shape and inputs) and a
    ``"values"`` unit holds jobs whose configs differ only in float values."""
    jobs: dict = {}
    for p in points:
        jobs.setdefault((p.model, p.shape, p.xdigest), []).append(p)
    units, groups = [], {}
    for job in jobs.values():
        gkey = value_group(job[0])
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


def float_names(config: dict) -> tuple[str, ...]:
    return tuple(sorted(k for k, v in config.items() if isinstance(v, float)))


def value_group(p: PlannedPoint):
    """What a point shares with the points that differ from it only in float values (or None)."""
    floats = float_names(p.config)
    if not floats:
        return None
    static = {k: v for k, v in p.config.items() if k not in floats}
    try:
        gkey = (hashable(static), floats, p.shape, p.xdigest, type(p.model))
        hash(gkey)
    except (TypeError, AttributeError):
        return None
    return gkey


def is_runtime_error(e: Exception) -> bool:
    return isinstance(e, (jax.errors.JaxRuntimeError, MemoryError))


def point_network(p: PlannedPoint):
    return network(p.model, jax.ShapeDtypeStruct(p.shape, p.dtype), None)[0]


def run_unit(kind, group, builder, keys, precision, plan, mesh) -> list[dict]:
    """The engine's outputs ``{name: Named [seeds, ...]}`` of each job of the unit."""
    first = group[0][0]
    if kind == "values":
        names = float_names(first.config)
        static = {k: v for k, v in first.config.items() if k not in names}
        try:
            make = TracedBuilder(builder, static, names)
        except TypeError:
            make = None
        if make is not None and make not in UNTRACEABLE:
            seeds, n = keys.shape[0], len(group)
            values = np.array([[job[0].config[k] for k in names] for job in group], np.float32)
            data = np.tile(np.asarray(jax.random.key_data(keys)), (n, 1))  # point-major
            flat_keys = jax.random.wrap_key_data(data, impl=jax.random.key_impl(keys))
            try:
                out = engine.execute(point_network(first), first.shape, first.dtype, flat_keys,
                                     first.x, None, plan, precision, mesh, make=make,
                                     values=np.repeat(values, seeds, axis=0))
            except Exception as e:  # noqa: BLE001 - a builder that cannot take traced floats
                if is_runtime_error(e):
                    raise
                UNTRACEABLE.add(make)
                log.info("sweep: %s with traced %s failed (%s: %s); one program per value",
                         builder_name(builder), ", ".join(names), type(e).__name__,
                         str(e).splitlines()[0] if str(e) else "")
            else:
                log.info("sweep: %d points differing in %s as one program", len(group),
                         ", ".join(names))
                return [jax.tree_util.tree_map(
                    lambda v, j=j: v.reshape(n, seeds, *v.shape[1:])[j], out)
                    for j in range(n)]
    return [engine.execute(point_network(job[0]), job[0].shape, job[0].dtype, keys, job[0].x, None,
                           plan, precision, mesh) for job in group]


def compute_unit(kind, group, builder, keys, precision, plan, mesh, metas: dict,
             out: str | None) -> list[tuple[int, LayerMetrics]]:
    """Run one unit; write each of its points to ``out`` (unless None) as soon as the unit's
    program returns. Returns ``[(grid index, LayerMetrics)]``; ``metas[index]`` is the point's
    ``LayerMetrics.config``. The one path of both the in-process loop and a worker's task."""
    done = []
    for job, arrays in zip(group, run_unit(kind, group, builder, keys, precision, plan, mesh)):
        for p in job:
            res = LayerMetrics.from_engine(arrays, metas[p.index])
            if out is not None:
                write_point(res, out, p.id)
            done.append((p.index, res))
    return done
