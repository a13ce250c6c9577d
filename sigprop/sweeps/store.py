"""A sweep's folder: one ``<id>.npz`` per finished point, written atomically, read back sorted.

A point is saved to ``.<id>.<process id>@<host>.tmp.npz``, flushed, and renamed to
``<id>.npz``: a reader (or a resumed sweep) sees a point whole or not at all, also when
workers on several machines share the folder. Each point records its sweep's grid
(``"sweep_grid"``: builder, size, digest, axes), so a folder never mixes two sweeps.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import time
from typing import NamedTuple

from sigprop.core.results import LayerMetrics

RESULT_FILE = re.compile(r"[0-9a-f]{16}\.npz")  # a finished point; temporaries never match
_TMP = re.compile(r"\.([0-9a-f]{16})\.(\d+)(?:@([A-Za-z0-9.-]+))?\.tmp\.npz")
_STALE_S = 24 * 3600  # another machine's temporary is judged by its age


class Point(NamedTuple):
    """One grid point's result: its config and its :class:`~sigprop.LayerMetrics`."""

    config: dict
    metrics: LayerMetrics


def write_point(result: LayerMetrics, out: str, pid: str) -> None:
    """Atomically: save to ``.<id>.<process id>@<host>.tmp.npz``, flush to disk, rename to
    ``<id>.npz`` (workers on several machines may share ``out``)."""
    tmp = os.path.join(out, f".{pid}.{os.getpid()}@{_host()}.tmp.npz")
    result.save(tmp)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(out, f"{pid}.npz"))
    try:  # make the rename itself durable (POSIX)
        dfd = os.open(out, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host"


def remove_stale_temporaries(out: str) -> None:
    """Delete temporaries left by killed sweeps: this machine's whose process is gone, and other
    machines' older than a day (their process ids mean nothing here)."""
    host = _host()
    for name in os.listdir(out):
        m = _TMP.fullmatch(name)
        if not m:
            continue
        if m.group(3) not in (None, host):
            try:
                if time.time() - os.path.getmtime(os.path.join(out, name)) > _STALE_S:
                    os.remove(os.path.join(out, name))
            except OSError:
                pass
            continue
        try:
            os.kill(int(m.group(2)), 0)
        except ProcessLookupError:
            try:
                os.remove(os.path.join(out, name))
            except FileNotFoundError:
                pass
        except (PermissionError, OSError):
            pass  # alive (another user's), or not ours to judge


def grid_record(builder: str, points) -> dict:
    """What each point records of its sweep (``"sweep_grid"`` in its config, JSON): the
    builder's name, the grid's size and digest (order-free), and its axes (each name's
    values)."""
    grid = sorted({p.config_json for p in points})
    axes: dict = {}
    for p in points:
        for k, v in json.loads(p.config_json).items():
            if v not in axes.setdefault(k, []):
                axes[k].append(v)
    return dict(builder=builder, points=len(grid), axes=axes,
                sha256=hashlib.sha256("\n".join(grid).encode()).hexdigest()[:16])


def folder_grid(out: str, record: dict, loaded: list[LayerMetrics]) -> dict:
    """The grid record this sweep's new points carry: ``record``, or the folder's where this
    grid is a part of it (same builder, every value in its axes). Points of another builder or
    grid already in ``out`` (its first point and the points this sweep loads are checked) are a
    ``ValueError`` naming the folder and what differs. Points of an older sigprop, which carry
    no record, are adopted."""
    names = sorted(n for n in os.listdir(out) if RESULT_FILE.fullmatch(n))
    metas = [m.meta for m in loaded] + [load_point(os.path.join(out, n)).metrics.meta
                                        for n in names[:1]]
    for meta in metas:
        if "sweep_grid" not in meta:
            continue
        there = json.loads(meta["sweep_grid"])
        if there.get("sha256") == record["sha256"] and there.get("builder") == record["builder"]:
            return there
        a, b = there.get("axes", {}), record["axes"]
        problems = [f"builder {there.get('builder')} there, {record['builder']} here"] \
            if there.get("builder") != record["builder"] else []
        problems += [f"{k}: {a.get(k, '(none)')} there, {b.get(k, '(none)')} here"
                     for k in dict.fromkeys([*a, *b])
                     if k not in a or k not in b or any(v not in a[k] for v in b[k])]
        if problems:
            raise ValueError(f"out={out!r} holds the points of another sweep "
                             f"({there.get('points')} points of {there.get('builder')}); this "
                             f"one differs in {'; '.join(problems)}. Use another out folder")
        return there
    return record


def load_point(path: str) -> Point:
    try:
        res = LayerMetrics.load(path)
        config = json.loads(res.meta["sweep_point"])
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path} is not a finished sweep point ({e}); delete it to recompute "
                         "the point") from e
    return Point(config, res)


def point_order(config: dict):
    def rank(v):
        if v is None:
            return (0, 0, "")
        if isinstance(v, bool):
            return (1, int(v), "")
        if isinstance(v, (int, float)):
            return (2, 0, "") if math.isnan(v) else (2, v, "")
        if isinstance(v, str):
            return (3, 0, v)
        return (4, 0, json.dumps(v, sort_keys=True))

    return tuple((k, rank(config[k])) for k in sorted(config))


def load_sweep(out) -> list[Point]:
    """The finished points in the folder ``out`` of :func:`sweep`: ``[(config, LayerMetrics)]``.

    Sorted by config: by the sorted config keys, numbers numerically, strings alphabetically
    (then by file name, for points with equal configs from sweeps with other inputs, seeds or
    key). Configs come back from JSON (tuples as lists). Temporaries of a killed sweep
    (``.*.tmp.npz``) are ignored."""
    out = os.fspath(out)
    if not os.path.isdir(out):
        raise ValueError(f"out={out!r} is not a folder written by sigprop.sweep")
    names = sorted(n for n in os.listdir(out) if RESULT_FILE.fullmatch(n))
    points = [(n, load_point(os.path.join(out, n))) for n in names]
    return [p for _, p in sorted(points, key=lambda np_: (point_order(np_[1].config), np_[0]))]


__all__ = ["Point", "load_sweep"]
