"""A sweep on a 2-worker local Dask cluster vs the same sweep in one process.

The grid: mlp and uniform cnn x 3 normalizers x 4 depths, 8 seeds (24 points, 24 programs),
built by the CLI's sweep builder (what ``sigprop sweep --workers 2`` runs); both sweeps write
every point to an ``out`` folder. Each repeat runs the in-process sweep in a fresh Python
process (every program compiles, nothing is warm) and the Dask sweep on a fresh cluster
(``sigprop.cluster.local_cluster``: one process, one thread and one host device per worker),
alternating which goes first. Prints, per repeat:

- the walls: in-process, Dask (sweep only, workers started and warm), cluster start
  (processes, imports, backend), and the ratios (target: Dask / in-process <= 1.3);
- the per-unit overhead: ``(Dask wall x workers - time the workers spent in units) / units``
  (what a unit costs beyond its compile and run: shipping, scheduling, idle workers at the
  end), and the workers' CPU seconds per unit against the in-process sweep's;
- whether every saved array is bitwise equal to the in-process sweep's.

    python benchmarks/cluster.py [--repeats 2] [--workers 2] [--seeds 8]

On a machine shared with other work the walls move with its load; compare the ratios of one
run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import sigprop
from sigprop.cli.sweep import sweep_inputs, sweep_model
from sigprop.core.results import equal
from sigprop.sweeps import executors as cluster

NORMS = ("batchnorm", "layernorm", "rmsnorm")
DEPTHS = (2, 4, 8, 16)


def grid(batch: int = 16, image: int = 8) -> list[dict]:
    """The 24 points: (mlp width 64 | uniform cnn width 16) x NORMS x DEPTHS."""
    points = []
    for model in ("mlp", "cnn"):
        for norm in NORMS:
            for depth in DEPTHS:
                c = dict(model=model, norm=norm, depth=depth, batch=batch, classes=10)
                if model == "mlp":
                    c.update(width=64)
                else:
                    c.update(cfg="uniform", width=16, image=image)
                points.append(c)
    return points


def in_process(out: str, seeds: int) -> dict:
    """The sweep in this process: ``{"wall", "cpu"}`` seconds."""
    start, cpu = time.perf_counter(), time.process_time()
    sigprop.sweep(sweep_model, grid(), sweep_inputs, seeds=seeds, out=out, progress=False)
    return dict(wall=time.perf_counter() - start, cpu=time.process_time() - cpu)


def on_dask(out: str, seeds: int, workers: int) -> dict:
    """The sweep on a fresh local cluster: walls, and each task's seconds and CPU seconds."""
    tasks, run = [], cluster.run

    def timed(executor, todo, on_done, **kw):  # record what the workers report per task
        return run(executor, todo, lambda t, r: (tasks.append(r), on_done(t, r)), **kw)

    cluster.run = timed
    try:
        start = time.perf_counter()
        with cluster.local_cluster(workers) as client:
            up = time.perf_counter() - start
            start = time.perf_counter()
            sigprop.sweep(sweep_model, grid(), sweep_inputs, seeds=seeds, out=out,
                          executor=client, progress=False)
            wall = time.perf_counter() - start
    finally:
        cluster.run = run
    return dict(wall=wall, start=up, units=len(tasks), seconds=sum(t["seconds"] for t in tasks),
                cpu=sum(t["cpu_seconds"] for t in tasks))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--in-process", metavar="OUT", help=argparse.SUPPRESS)  # the child's part
    args = p.parse_args(argv)
    if args.in_process:
        print(json.dumps(in_process(args.in_process, args.seeds)))
        return
    print(f"{len(grid())} points, {args.seeds} seeds, {args.workers} workers, "
          f"{os.cpu_count()} cores; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"{'repeat':>6} {'in-process':>11} {'dask':>7} {'start':>6} {'dask/in':>8} "
          f"{'(dask+start)/in':>16} {'per-unit overhead':>18} {'CPU s/unit in, dask':>20} "
          f"{'bitwise':>8}")
    for r in range(args.repeats):
        tmp = tempfile.mkdtemp(prefix="sigprop-bench-")
        try:
            runs = {}
            for which in (("in", "dask") if r % 2 == 0 else ("dask", "in")):
                out = os.path.join(tmp, which)
                if which == "in":
                    child = subprocess.run(
                        [sys.executable, __file__, "--in-process", out, "--seeds",
                         str(args.seeds)], capture_output=True, text=True, check=True)
                    runs["in"] = json.loads(child.stdout.splitlines()[-1])
                else:
                    runs["dask"] = on_dask(out, args.seeds, args.workers)
            a = sigprop.load_sweep(os.path.join(tmp, "in"))
            b = sigprop.load_sweep(os.path.join(tmp, "dask"))
            same = len(a) == len(b) == len(grid()) and all(
                x.config == y.config and equal(x.metrics, y.metrics) for x, y in zip(a, b))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        i, d = runs["in"], runs["dask"]
        overhead = (d["wall"] * args.workers - d["seconds"]) / d["units"]
        print(f"{r:>6} {i['wall']:>10.1f}s {d['wall']:>6.1f}s {d['start']:>5.1f}s "
              f"{d['wall'] / i['wall']:>8.2f} {(d['wall'] + d['start']) / i['wall']:>16.2f} "
              f"{overhead * 1e3:>15.0f} ms {i['cpu'] / len(grid()):>11.2f}, "
              f"{d['cpu'] / d['units']:.2f} {str(same):>8}", flush=True)


if __name__ == "__main__":
    main()
