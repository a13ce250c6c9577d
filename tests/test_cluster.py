"""sigprop.cluster: a sweep's units of work on an executor, and the out folder's manifest.

Reference numbers come from the in-process sweep of the same grid (bitwise: a worker runs the
same engine call on one CPU device, as this process does). The Dask tests share one
``LocalCluster(host="127.0.0.1", processes=True)`` of 2 workers (loopback only), shut down in a
``finally``; every wait is bounded (thread and subprocess timeouts).
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

import sigprop
from sigprop import cli
from sigprop.core.results import equal
from sigprop.sweeps import executors as cluster
from sigprop.sweeps import store  # noqa: E402
from sigprop.sweeps.sweep import load_sweep, sweep

SHAPE = (8, 8)
GRID = {"depth": [1, 2, 3], "width": [8], "norm": ["layernorm", "batchnorm"],
        "n_classes": [10]}  # 6 points, 6 programs
VALUES = {"depth": [2], "width": [8], "norm": ["layernorm"], "n_classes": [10],
          "eps": [1e-5, 0.1, 1.0]}  # one traced program for the 3 eps values
TIMEOUT = 150  # seconds: any one sweep on the cluster


def assert_same_points(got, ref):
    assert [p.config for p in got] == [p.config for p in ref]
    for a, b in zip(got, ref):
        assert equal(a.metrics, b.metrics), a.config  # bit for bit
        meta = {k: v for k, v in a.metrics.meta.items() if k != "sweep_grid"}
        assert meta == {k: v for k, v in b.metrics.meta.items() if k != "sweep_grid"}


def result_files(out) -> list[str]:
    return sorted(n for n in os.listdir(out) if store.RESULT_FILE.fullmatch(n))


@pytest.fixture(scope="module")
def ref():
    """The in-process sweeps of GRID (2 seeds) and VALUES (3 seeds)."""
    return (sweep(sigprop.mlp, GRID, SHAPE, seeds=2, progress=False),
            sweep(sigprop.mlp, VALUES, SHAPE, seeds=3, progress=False))


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                     env=cluster.worker_env(1), config=cluster._worker_config(),
                                     silence_logs=50)
    try:
        c = distributed.Client(local, timeout=60)
        try:
            c.wait_for_workers(2, timeout=60)
            yield c
        finally:
            c.close()
    finally:
        local.close()


def bounded(fn, *args, timeout=TIMEOUT, **kwargs):
    """``fn(*args, **kwargs)`` in a thread, failing the test after ``timeout`` seconds."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(fn, *args, **kwargs).result(timeout=timeout)
    finally:
        pool.shutdown(wait=False)


# ------------------------------------------------------------------------------ bad inputs
def test_an_executor_without_submit_is_refused():
    with pytest.raises(ValueError, match=r"executor=.*submit\(fn, \*args\).*dask.distributed"
                                         r".*got str"):
        sweep(sigprop.mlp, GRID, SHAPE, seeds=2, executor="dask")
    with pytest.raises(ValueError, match="mp_context=multiprocessing.get_context"):
        with concurrent.futures.ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("fork")) as pool:
            sweep(sigprop.mlp, GRID, SHAPE, seeds=2, executor=pool)
    with pytest.raises(ValueError, match="mesh= .* executor="):
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            sweep(sigprop.mlp, GRID, SHAPE, seeds=2, executor=pool, mesh=sigprop.devices.mesh())
    with pytest.raises(ValueError, match=r"n_workers=0 must be an integer >= 1"):
        with cluster.local_cluster(0):
            pass


def test_cli_workers_0_and_an_unreachable_scheduler_are_clear_errors(capsys):
    argv = ["sweep", "--model", "mlp", "--depth", "2", "--width", "8", "--batch", "8",
            "--classes", "10", "--norm", "layernorm", "--seeds", "2", "--no-progress"]
    assert cli.main(argv + ["--workers", "0"]) == 2
    assert "--workers 0: expected a number of worker processes >= 1" in capsys.readouterr().err
    assert cli.main(argv + ["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "pass one of them" in capsys.readouterr().err
    pytest.importorskip("distributed")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    start = time.perf_counter()
    assert cli.main(argv + ["--scheduler", address]) == 2
    assert time.perf_counter() - start < 30
    err = capsys.readouterr().err
    assert f"scheduler '{address}': no Dask scheduler answered within 10 s" in err, err


def test_import_sigprop_never_imports_dask():
    code = ("import sys, sigprop, sigprop.sweeps.executors, sigprop.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -------------------------------------------------------------------- one grid per folder
def test_out_refuses_another_grid_naming_the_folder_and_what_differs(tmp_path, ref):
    first = sweep(sigprop.mlp, GRID, SHAPE, seeds=2, out=tmp_path, progress=False)
    record = json.loads(first[0].metrics.meta["sweep_grid"])
    assert record["builder"] == "sigprop.nn.mlp.mlp" and record["points"] == 6
    assert record["axes"] == {k: list(v) for k, v in GRID.items()}
    other = dict(GRID, depth=[1, 5])
    with pytest.raises(ValueError) as e:
        sweep(sigprop.mlp, other, SHAPE, seeds=2, out=tmp_path, progress=False)
    assert str(e.value) == (
        f"out={str(tmp_path)!r} holds the points of another sweep (6 points of "
        "sigprop.nn.mlp.mlp); this one differs in depth: [1, 2, 3] there, [1, 5] here. "
        "Use another out folder")
    with pytest.raises(ValueError, match=r"differs in builder sigprop.nn.mlp.mlp there, "
                                         r"test_cluster.other_builder here"):
        sweep(other_builder, GRID, SHAPE, seeds=2, out=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"differs in eps: \(none\) there, \[0.1\] here"):
        sweep(sigprop.mlp, dict(GRID, eps=[0.1]), SHAPE, seeds=2, out=tmp_path, progress=False)

    # a part of the grid, and another key for it, are the folder's sweep: fine
    part = sweep(sigprop.mlp, dict(GRID, depth=[3]), SHAPE, seeds=2, out=tmp_path,
                 progress=False)
    assert equal(part[0].metrics, first[4].metrics)  # depth 3, layernorm
    more = sweep(sigprop.mlp, dict(GRID, depth=[1]), SHAPE, seeds=2, key=1, out=tmp_path,
                 progress=False)  # (another key: other points, the same programs)
    assert json.loads(more[0].metrics.meta["sweep_grid"]) == record  # the folder's grid
    assert len(result_files(tmp_path)) == 8
    assert sorted(os.listdir(tmp_path)) == result_files(tmp_path)  # nothing else in out

    # points of an older sigprop (no record) are adopted
    for name in result_files(tmp_path):
        res = sigprop.LayerMetrics.load(tmp_path / name)
        old = tuple((k, v) for k, v in res.config if k != "sweep_grid")
        store.write_point(sigprop.LayerMetrics(dict(res), res.coords, old), str(tmp_path), name[:-4])
    again = sweep(sigprop.mlp, dict(GRID, depth=[1, 5], norm=["layernorm"]), SHAPE, seeds=2,
                  out=tmp_path, progress=False)
    assert equal(again[0].metrics, first[0].metrics)


def other_builder(depth, width, norm, n_classes):
    return sigprop.mlp(depth, width, norm=norm, n_classes=n_classes)


# ---------------------------------------------------------------------------- executors
def test_a_thread_pool_runs_the_units_and_shows_one_bar_over_points(tmp_path, ref, capsys):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        got = sweep(sigprop.mlp, GRID, SHAPE, seeds=2, out=tmp_path, executor=pool)
    assert_same_points(got, ref[0])
    err = capsys.readouterr().err
    assert "6/6 points" in err and "units" not in err
    assert result_files(tmp_path) == sorted(f"{p.metrics.meta['sweep_id']}.npz" for p in got)


def test_a_failed_unit_stops_the_sweep_and_a_rerun_computes_the_rest(tmp_path, ref,
                                                                    monkeypatch):
    work = cluster.work
    calls = []

    def flaky(task):
        calls.append(task)
        if len(calls) == 3:
            raise OSError("worker lost")
        return work(task)

    monkeypatch.setattr(cluster, "work", flaky)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with pytest.raises(RuntimeError, match=r"a task of 1 point\(s\) failed on the executor "
                                               r"\(OSError: worker lost\); \d of 6 points are "
                                               r"finished \(in .*\): rerun the same sweep"):
            sweep(sigprop.mlp, GRID, SHAPE, seeds=2, out=tmp_path, executor=pool,
                  progress=False)
    done = result_files(tmp_path)
    assert 2 <= len(done) < 6
    monkeypatch.undo()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        resumed = sweep(sigprop.mlp, GRID, SHAPE, seeds=2, out=tmp_path, executor=pool,
                        progress=False)
    assert_same_points(resumed, ref[0])
    assert len(result_files(tmp_path)) == 6


def test_a_spawned_process_pool_gives_the_in_process_numbers(tmp_path, ref):
    grid = dict(GRID, depth=[1], norm=["layernorm"])
    with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn")) as pool:
        with pytest.raises(ValueError, match="plain pickle.*module-level functions"):
            sweep(lambda **c: sigprop.mlp(**c), grid, SHAPE, seeds=2, executor=pool)
        got = bounded(sweep, sigprop.mlp, grid, SHAPE, seeds=2, out=tmp_path, executor=pool,
                      progress=False)
    assert_same_points(got, ref[0][:1])
    assert len(result_files(tmp_path)) == 1


# ---------------------------------------------------------------------------------- dask
def test_dask_gives_the_in_process_numbers_bit_for_bit(client, ref, tmp_path):
    got = bounded(sweep, sigprop.mlp, GRID, SHAPE, seeds=2, out=tmp_path / "grid",
                  executor=client, progress=False)
    assert_same_points(got, ref[0])
    assert result_files(tmp_path / "grid") == sorted(f"{p.metrics.meta['sweep_id']}.npz"
                                                     for p in got)
    assert_same_points(load_sweep(tmp_path / "grid"), sorted(
        ref[0], key=lambda p: store.point_order(p.config)))
    # a group of float values runs traced, as one program, on one worker
    got = bounded(sweep, sigprop.mlp, VALUES, SHAPE, seeds=3, executor=client, progress=False)
    assert_same_points(got, ref[1])


def test_a_worker_killed_mid_sweep_loses_only_its_unit(client, ref, tmp_path):
    client.restart()  # cold workers: every unit compiles (the kill lands while they work)
    pids = client.run(os.getpid)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        running = pool.submit(sweep, sigprop.mlp, GRID, SHAPE, seeds=2, out=tmp_path,
                              executor=client, progress=False)
        deadline, killed = time.time() + TIMEOUT, None
        while killed is None:
            assert time.time() < deadline, "no unit ran on the cluster in time"
            assert not running.done(), "the sweep finished before a worker could be killed"
            busy = [w for w, keys in client.processing().items() if keys and w in pids]
            if busy and result_files(tmp_path):  # workers warm, a unit in flight
                killed = busy[0]
                os.kill(pids[killed], signal.SIGKILL)
            time.sleep(0.05)
        got = running.result(timeout=TIMEOUT)
    finally:
        pool.shutdown(wait=False)
    assert pids[killed] not in client.run(os.getpid).values()  # it died (a nanny restarts it)
    assert_same_points(got, ref[0])
    files = result_files(tmp_path)
    assert files == sorted(f"{p.metrics.meta['sweep_id']}.npz" for p in got)  # each point once
    # a rerun finds every point (and removes the dead worker's temporaries, if any)
    again = sweep(sigprop.mlp, GRID, SHAPE, seeds=2, out=tmp_path, progress=False)
    assert_same_points(again, ref[0])
    assert sorted(os.listdir(tmp_path)) == files


def test_cli_workers_and_scheduler_run_the_sweep_on_dask(client, ref, tmp_path, capsys):
    argv = ["sweep", "--model", "mlp", "--depth", "1", "--width", "8", "--batch", "8",
            "--classes", "10", "--norm", "layernorm", "--seeds", "2", "--no-progress"]
    address = client.scheduler.address
    for where, extra in (("local", ["--workers", "1"]), ("existing", ["--scheduler", address])):
        assert bounded(cli.main, argv + ["--out", str(tmp_path / where), *extra]) == 0
        assert "sigprop sweep: 1 points, 2 seeds" in capsys.readouterr().out
        (point,) = load_sweep(tmp_path / where)
        assert equal(point.metrics, ref[0][0].metrics)  # GRID's first point: the same model
