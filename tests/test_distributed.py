"""Multi-process JAX, run for real: ``analyze`` and ``sweep`` under ``jax.distributed``.

Two processes on 127.0.0.1 (CPU, 2 host devices each, jax's gloo CPU collectives) call
``jax.distributed.initialize`` and run the same calls, the seed axis sharded over the 4 global
devices; a third process runs them alone on 4 host devices. All three start at once, each
writes its numbers to an ``.npz`` and what it holds of the sharded outputs to JSON. The item
counts (6 seeds; 2 points x 3 seeds per traced group) are not multiples of 4: padding is
computed and dropped. Every process is bounded by a timeout and killed in a ``finally``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = r"""
import json, os, sys
import jax

tag, port, rank, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if port != "-":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=rank, initialization_timeout=90)
import numpy as np
import sigprop
from sigprop import devices

core, an = sys.modules["sigprop.core.engine"], sys.modules["sigprop.core.args"]
model = sigprop.mlp(2, 8, norm="layernorm", n_classes=10)
arrays = {}
for f, v in sigprop.analyze(model, (8, 8), seeds=6, key=2).items():
    arrays["analyze/" + f] = v
grid = {"depth": [2, 3], "width": [8], "norm": ["layernorm"], "n_classes": [10],
        "eps": [1e-5, 0.1]}  # per depth, one traced program of 2 points x 3 seeds
out = os.path.join(folder, "sweep-" + ("pair" if port != "-" else "alone"))
for i, p in enumerate(sigprop.sweep(sigprop.mlp, grid, (8, 8), seeds=3, key=2, out=out,
                                    progress=False)):
    for f, v in p.metrics.items():
        arrays[f"sweep{i}/" + f] = v
np.savez(os.path.join(folder, f"{tag}.npz"), **arrays)

# what this process holds of a sharded output (the call hits analyze's compiled program)
m = devices.mesh()
data = np.asarray(jax.random.key_data(core.seed_keys(jax.random.key(2), 8)))
sharded = core._core(net=core.linen_network(model, jax.ShapeDtypeStruct((8, 8), np.float32),
                                            None),
                     make=None, shape=(8, 8), dtype=jax.numpy.float32,
                     keys=devices.shard_leading(data, m), x=None, variables=None, values=None,
                     plan=an.make_plan(None, None, False, None), precision="highest",
                     impl="threefry2x32")["cosine_similarity"].value
info = dict(processes=jax.process_count(), index=jax.process_index(),
            devices=jax.device_count(), local=sorted(d.id for d in jax.local_devices()),
            shape=list(sharded.shape), fully_addressable=sharded.is_fully_addressable,
            devices_of_shards=sorted(s.device.id for s in sharded.addressable_shards),
            shards={s.index[0].start or 0: np.asarray(s.data).tolist()  # first row: its rows
                    for s in sharded.addressable_shards})
json.dump(info, open(os.path.join(folder, f"{tag}.json"), "w"))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "",
                   os.environ.get("XLA_FLAGS", ""))
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}".strip())
    if "xla_backend_optimization_level" not in env["XLA_FLAGS"]:
        env["XLA_FLAGS"] += " --xla_backend_optimization_level=1"
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{"p0", "p1": the two jax.distributed processes, "alone": one process, 4 devices}``:
    ``(numbers, what the process holds)``."""
    tmp = tmp_path_factory.mktemp("distributed")
    port = str(_free_port())
    args = {"p0": (port, "0", 2), "p1": (port, "1", 2), "alone": ("-", "0", 4)}
    procs = {}
    try:
        for tag, (p, rank, n) in args.items():
            procs[tag] = subprocess.Popen([sys.executable, "-c", SCRIPT, tag, p, rank, str(tmp)],
                                          env=_env(n), stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True)
        logs = {tag: proc.communicate(timeout=170)[0] for tag, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results = {}
    for tag, proc in procs.items():
        assert proc.returncode == 0, f"{tag}:\n{logs[tag][-4000:]}"
        with np.load(tmp / f"{tag}.npz") as data:
            results[tag] = {k: data[k] for k in data.files}, json.loads(
                (tmp / f"{tag}.json").read_text())
    results["folder"] = tmp
    return results


def test_two_processes_see_four_global_devices_and_hold_two_each(runs):
    alone = runs["alone"][1]
    assert alone["processes"] == 1 and alone["devices"] == 4 and alone["fully_addressable"]
    assert sorted(alone["shards"]) == ["0", "2", "4", "6"]  # a quarter of the 8 items each
    held = {}
    for rank, tag in enumerate(("p0", "p1")):
        info = runs[tag][1]
        assert info["processes"] == 2 and info["index"] == rank and info["devices"] == 4
        assert info["shape"] == alone["shape"] and not info["fully_addressable"]
        assert info["devices_of_shards"] == info["local"] and len(info["local"]) == 2
        assert all(len(rows) == 2 for rows in info["shards"].values())
        held.update({start: (tag, rows) for start, rows in info["shards"].items()})
    # together the two hold the whole array, each row once, equal to the lone process's
    assert sorted(held) == sorted(alone["shards"])
    assert {held[s][0] for s in ("0", "2")} == {"p0"} and {held[s][0] for s in ("4", "6")} \
        == {"p1"}
    for start, (_, rows) in held.items():
        assert rows == alone["shards"][start]


def test_the_numbers_equal_one_process_on_four_devices(runs):
    alone = runs["alone"][0]
    assert {k.split("/")[0] for k in alone} == {"analyze", "sweep0", "sweep1", "sweep2",
                                                "sweep3"}
    for tag in ("p0", "p1"):  # every process gets every number (gathered)
        numbers = runs[tag][0]
        assert numbers.keys() == alone.keys()
        for k in alone:
            assert numbers[k].shape == alone[k].shape, k
            assert numbers[k].shape[0] == (6 if k.startswith("analyze") else 3), k  # no padding
            np.testing.assert_array_equal(numbers[k], alone[k], err_msg=f"{tag} {k}")


def test_process_0_wrote_the_sweep_folder(runs):
    from sigprop.core.results import equal
    from sigprop.sweeps.sweep import load_sweep

    pair = load_sweep(runs["folder"] / "sweep-pair")
    alone = load_sweep(runs["folder"] / "sweep-alone")
    assert len(pair) == 4 and [p.config for p in pair] == [p.config for p in alone]
    assert all(equal(a.metrics, b.metrics) for a, b in zip(pair, alone))
    names = sorted(os.listdir(runs["folder"] / "sweep-pair"))
    assert names == sorted(os.listdir(runs["folder"] / "sweep-alone"))  # no temporaries left
