"""Sweeps past one machine: a sweep's units of work as tasks on an executor, and a local Dask
cluster.

``sigprop.sweep(..., executor=ex)`` plans its grid as here (units: the points that compile to
one program), bundles the units that share a program into one :class:`Task` (so no two workers
compile the same program), and hands each task to ``ex.submit(work, task)``. A worker runs
:func:`work`: the sweep's own per-unit path (``engine.execute`` on the worker's devices, under
the driver's jax options), writing each finished point into ``out`` atomically, exactly as an
in-process sweep does. The driver shows one progress bar over points as tasks come back.

Executors: anything with ``concurrent.futures``' ``submit(fn, *args)`` whose futures have
``done()``, ``result()`` and ``cancel()``:

- ``dask.distributed.Client`` (the engine tested and documented; the ``cluster`` extra):
  :func:`local_cluster` on this machine, :func:`connect` to an existing scheduler, or a
  ``dask_jobqueue.SLURMCluster``'s client. Dask reruns a task whose worker died
  (``distributed.scheduler.allowed-failures``, 3 by default).
- a submitit executor (one SLURM job per task), or
- ``concurrent.futures.ProcessPoolExecutor`` with the spawn context (plain pickle: the builder
  and inputs must be module-level functions, e.g. ``sigprop.mlp``).

A worker that dies loses only its unit: its finished points are already in ``out``, the
executor reruns the unit or a rerun of the same sweep computes it (same ids, same files, equal
numbers: nothing lost, nothing duplicated).

Nothing here imports dask until :func:`local_cluster` or :func:`connect` is called.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import dataclasses
import logging
import os
import pickle
import queue
import re
import socket
import time
import uuid
from typing import Any, Callable

import jax
import numpy as np

from sigprop.backend import devices
from sigprop.sweeps.units import compute_unit
from sigprop.util.checks import check_int

_POLL_S = 0.05  # how often the driver looks at futures without add_done_callback


# ------------------------------------------------------------------------------------ tasks
@dataclasses.dataclass
class Task:
    """Units of work shipped to a worker (pickled) and run by :func:`work`.

    ``units``: ``(kind, [job, ...])`` as the sweep planned them, with the points' built models
    (the worker calls the builder again only inside ``jit``, for a group of float values);
    ``keys``: the seed keys' raw data of ``impl``; ``metas``: each point's
    ``LayerMetrics.config``; ``settings``: the driver's jax options that change numbers."""

    units: list
    builder: Any
    keys: np.ndarray
    impl: str
    precision: str
    plan: Any
    metas: dict
    out: str | None
    settings: dict
    token: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def points(self) -> int:
        return sum(len(job) for _, group in self.units for job in group)

    def __dask_tokenize__(self):  # a unique task key, without hashing the models
        return self.token


# jax options that change a program's numbers: a worker runs under the driver's values
_SETTINGS = ("enable_x64", "threefry_partitionable", "default_matmul_precision",
             "numpy_rank_promotion", "numpy_dtype_promotion")


def tasks(units, *, builder, keys, precision, plan, metas, out) -> list[Task]:
    """One task per program: units whose first job has the same model and input shape (points
    differing only in their input arrays) go together; each task carries its points' metas."""
    bundles: dict = {}
    for i, (kind, group) in enumerate(units):
        p = group[0][0]
        try:
            k = (kind, p.model, p.shape, str(p.dtype))
            hash(k)
        except TypeError:  # an unhashable model: its own task
            k = i
        bundles.setdefault(k, []).append((kind, group))
    settings = {name: getattr(jax.config, f"jax_{name}") for name in _SETTINGS}
    data = np.asarray(jax.random.key_data(keys))
    impl = str(jax.random.key_impl(keys))
    return [Task(units=b, builder=builder, keys=data, impl=impl, precision=precision, plan=plan,
                 metas={p.index: metas[p.index] for _, g in b for job in g for p in job},
                 out=out, settings=settings) for b in bundles.values()]


def work(task: Task) -> dict:
    """A worker's side of a :class:`Task`: each unit through the sweep's own per-unit path on
    this process's devices, under the driver's jax options, its points written to ``task.out``.

    Returns ``{"results": [(grid index, LayerMetrics)], "seconds": time in the units,
    "cpu_seconds": this process's CPU time meanwhile, "worker": "host:pid"}``."""
    start, cpu = time.perf_counter(), time.process_time()
    keys = jax.random.wrap_key_data(task.keys, impl=task.impl)
    mesh = devices.mesh(jax.local_devices())
    done = []
    with contextlib.ExitStack() as stack:
        for name, value in task.settings.items():
            stack.enter_context(getattr(jax, name)(value))
        for kind, group in task.units:
            done += compute_unit(kind, group, task.builder, keys, task.precision, task.plan, mesh,
                                 task.metas, task.out)
    return dict(results=done, seconds=time.perf_counter() - start,
                cpu_seconds=time.process_time() - cpu,
                worker=f"{socket.gethostname()}:{os.getpid()}")


# --------------------------------------------------------------------------------- driving
def check_executor(executor) -> None:
    """A ``ValueError`` unless ``executor`` can run a sweep's tasks."""
    if not callable(getattr(executor, "submit", None)):
        raise ValueError(f"executor={executor!r}: expected an object with a submit(fn, *args) "
                         "method: a dask.distributed.Client (sigprop.cluster.local_cluster(n), "
                         "sigprop.cluster.connect(address)), a submitit executor, or a "
                         "concurrent.futures.ProcessPoolExecutor; got "
                         f"{type(executor).__name__}")
    if isinstance(executor, concurrent.futures.ProcessPoolExecutor):
        context = getattr(executor, "_mp_context", None)
        if context is not None and context.get_start_method() == "fork":
            raise ValueError("executor: a ProcessPoolExecutor that forks (JAX is multithreaded; "
                             "a forked worker can deadlock): pass "
                             "mp_context=multiprocessing.get_context('spawn')")


def run(executor, todo: list[Task], on_done: Callable[[Task, dict], None], *, where=None,
        total: int = 0, have: Callable[[], int] = lambda: 0) -> None:
    """Submit every task, then call ``on_done(task, result)`` as each one finishes (in the
    order they finish). A task that fails stops the run: the others are cancelled (a running
    one still writes its points) and its error is raised; a ``ValueError`` or ``TypeError``
    as it is, anything else (a lost worker, a JAX runtime error) as a ``RuntimeError`` saying
    how many points are finished and that a rerun computes the rest."""
    if isinstance(executor, concurrent.futures.ProcessPoolExecutor) and todo:
        try:
            pickle.dumps(todo[0])
        except Exception as e:  # noqa: BLE001 - say what cannot travel, before submitting
            raise ValueError(f"executor: a ProcessPoolExecutor sends tasks with plain pickle, "
                             f"which fails here ({type(e).__name__}: {e}); use module-level "
                             "functions for the builder and inputs (e.g. sigprop.mlp), or a "
                             "dask.distributed.Client (cloudpickle)") from e
    futures: dict = {}
    finished: queue.Queue = queue.Queue()  # filled by done-callbacks (dask's, concurrent's)
    polled = []  # futures without add_done_callback (submitit's jobs): polled
    try:
        for task in todo:
            f = executor.submit(work, task)
            futures[f] = task
            if callable(getattr(f, "add_done_callback", None)):
                f.add_done_callback(finished.put)
            else:
                polled.append(f)
        for _ in range(len(futures)):
            f = _next(finished, polled)
            try:
                result = f.result()
            except (ValueError, TypeError):
                raise
            except Exception as e:
                place = f" (in {where})" if where else ""
                first = str(e).splitlines()[0] if str(e) else ""
                raise RuntimeError(
                    f"sweep: a task of {futures[f].points} point(s) failed on the executor "
                    f"({type(e).__name__}: {first}); {have()} of {total} points are "
                    f"finished{place}: rerun the same sweep to compute the rest") from e
            on_done(futures[f], result)
    finally:
        for f in futures:
            if not f.done():
                f.cancel()


def _next(finished: queue.Queue, polled: list):
    """The next future that is done: from the callbacks' queue, or found by polling."""
    while True:
        for i, f in enumerate(polled):
            if f.done():
                return polled.pop(i)
        try:
            return finished.get(timeout=_POLL_S if polled else None)
        except queue.Empty:
            pass


# ---------------------------------------------------------------------------------- dask
def _distributed():
    try:
        import distributed
    except ImportError as e:
        raise ValueError("a Dask cluster needs dask.distributed: pip install "
                         "'sigprop[cluster]'") from e
    return distributed


def worker_env(devices_per_worker: int = 1) -> dict:
    """Environment of a local worker process: this process's ``XLA_FLAGS`` (so workers compile
    as this process does) with ``devices_per_worker`` host devices (CPU)."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "",
                   os.environ.get("XLA_FLAGS", "")).split()
    flags.append(f"--xla_force_host_platform_device_count={devices_per_worker}")
    return {"XLA_FLAGS": " ".join(flags)}


def _worker_config() -> dict:
    """Dask's configuration for local workers: without the statistical profiler, which samples
    every worker thread's Python stack every 10 ms and made tracing a model ~40% slower
    (read after dask.distributed is imported: its defaults are loaded then)."""
    import dask

    config = copy.deepcopy(dask.config.get("distributed"))
    config["worker"]["profile"]["enabled"] = False
    return {"distributed": config}


def _warm() -> int:
    """Run on each worker: start jax's backend before the first task (this module, imported
    to unpickle the call, has imported what a task runs)."""
    return len(jax.local_devices())


@contextlib.contextmanager
def local_cluster(n_workers: int, *, devices_per_worker: int = 1, timeout: float = 120.0):
    """A Dask cluster on this machine, its client yielded and everything shut down on exit.

    ``n_workers`` processes on 127.0.0.1 (a nanny restarts one that dies), one task at a time
    each (``threads_per_worker=1``), each with its own jax: ``devices_per_worker`` host
    devices, this process's ``XLA_FLAGS`` (:func:`worker_env`), Dask's profiler off. Each
    worker imports sigprop and starts its backend before the context is entered (within
    ``timeout`` seconds)."""
    n_workers = check_int("n_workers", n_workers)
    devices_per_worker = check_int("devices_per_worker", devices_per_worker)
    distributed = _distributed()
    cluster = distributed.LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address="127.0.0.1:0", env=worker_env(devices_per_worker),
        config=_worker_config(), silence_logs=logging.ERROR)
    try:
        client = distributed.Client(cluster, timeout=timeout)
        try:
            client.wait_for_workers(n_workers, timeout=timeout)
            client.run(_warm)
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def connect(address: str, timeout: float = 10.0):
    """A ``dask.distributed.Client`` of the scheduler at ``address`` (``tcp://host:8786``); a
    ``ValueError`` naming the address when none answers within ``timeout`` seconds."""
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"scheduler={address!r}: expected an address like tcp://host:8786")
    distributed = _distributed()
    try:
        return distributed.Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as e:
        raise ValueError(f"scheduler {address!r}: no Dask scheduler answered within "
                         f"{timeout:g} s ({type(e).__name__}: {e}); start one (dask scheduler) "
                         "or check the address, e.g. tcp://host:8786") from e


__all__ = ["Task", "tasks", "work", "run", "check_executor", "local_cluster", "connect",
           "worker_env"]
