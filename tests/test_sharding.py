"""Sharding over devices: ``analyze`` and ``sweep`` on 4 (forced host) devices equal 1 device.

JAX reads ``XLA_FLAGS`` once, at import, so each device count runs in its own Python process
(both at once); each writes its numbers to an ``.npz`` and its view of the shardings to JSON.
The seed count (3) and the sweep's (points x seeds) axis (9 items) are not multiples of 4: the
padding items must be computed and dropped without touching the real ones.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = r"""
import json, re, sys
import jax, numpy as np
import sigprop
from sigprop import devices
from sigprop.sweeps.sweep import sweep

sw, an, core = (sys.modules[f"sigprop.{m}"] for m in ("sweeps.units", "core.args", "core.engine"))
out_npz, out_json = sys.argv[1], sys.argv[2]


def scaled(depth, width, eps):
    return sigprop.mlp(depth, width, norm="layernorm", eps=eps, n_classes=10)


model = sigprop.mlp(2, 8, norm="layernorm", n_classes=10)
arrays = {}
res = sigprop.analyze(model, (8, 8), seeds=3, key=2)
for f, v in res.items():
    arrays["analyze/" + f] = v
grid = {"depth": [2], "width": [8], "eps": [1e-5, 0.1, 1.0]}  # traced: 3 x 3 = 9 items
before = core._core._cache_size()
points = sweep(scaled, grid, (8, 8), seeds=3, key=2, progress=False)
traces = core._core._cache_size() - before
points += sweep(sigprop.mlp, {"depth": [2], "width": [8], "norm": ["layernorm"],
                              "n_classes": [10]}, (8, 8), seeds=3, key=2, progress=False)
for i, p in enumerate(points):
    for f, v in p.metrics.items():
        arrays[f"sweep{i}/" + f] = v
# deeper nets, two units: one batched LAPACK call per device at once deadlocked jaxlib 0.10's
# CPU kernels on a 2-thread pool (sigprop.lapack.eigvalsh)
deep = sweep(sigprop.mlp, {"depth": [4, 8], "width": [16], "norm": ["batchnorm", "layernorm"]},
             (16, 16), seeds=2, key=0, progress=False)
for i, p in enumerate(deep):
    for f, v in p.metrics.items():
        arrays[f"deep{i}/" + f] = v
np.savez(out_npz, **arrays)

# the programs' outputs before they reach the host (both calls hit the jit caches above)
m = devices.mesh()
plan = an.make_plan(None, None, False, None)
abstract = jax.ShapeDtypeStruct((8, 8), np.float32)
common = dict(shape=(8, 8), dtype=jax.numpy.float32, x=None, variables=None, plan=plan,
              precision="highest", impl="threefry2x32", mesh=m)
keys = core.seed_keys(jax.random.key(2), 3)
n9 = devices.padded_size(9, m)
flat = np.tile(np.asarray(jax.random.key_data(keys)), (3, 1))
flat = np.concatenate([flat, np.repeat(flat[-1:], n9 - 9, axis=0)])
values = np.repeat(np.array([[1e-5], [0.1], [1.0]], np.float32), 3, axis=0)
values = np.concatenate([values, np.repeat(values[-1:], n9 - 9, axis=0)])
make = sw.TracedBuilder(scaled, {"depth": 2, "width": 8}, ("eps",))
swept = core._core(net=core.linen_network(scaled(2, 8, 1e-5), abstract, None), make=make,
                   keys=devices.shard_leading(flat, m), values=devices.shard_leading(values, m),
                   **common)["cosine_similarity"].value
data = np.asarray(jax.random.key_data(core.seed_keys(jax.random.key(2), devices.padded_size(3, m))))
analyzed = core._core(net=core.linen_network(model, abstract, None), make=None,
                      keys=devices.shard_leading(data, m), values=None,
                      **common)["cosine_similarity"].value
hlo = core._core.lower(net=core.linen_network(model, abstract, None), make=None,
                       keys=devices.shard_leading(data, m), values=None,
                       **common).compile().as_text()
info = dict(devices=jax.device_count(), traces=traces,
            collectives=sorted(set(re.findall(
                r"(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)\(", hlo))),
            cached=core._core._cache_size(),
            **{name: dict(shape=list(a.shape), spec=str(a.sharding.spec),
                          shards=sorted([s.device.id, s.data.shape[0]]
                                        for s in a.addressable_shards))
               for name, a in (("sweep", swept), ("analyze", analyzed))})
json.dump(info, open(out_json, "w"))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{device count: (numbers, sharding info)}`` for 1 and 4 host devices."""
    tmp = tmp_path_factory.mktemp("sharding")
    procs = {}
    for n in (1, 4):
        flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "",
                       os.environ.get("XLA_FLAGS", ""))
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={n}".strip())
        if "xla_backend_optimization_level" not in env["XLA_FLAGS"]:
            env["XLA_FLAGS"] += " --xla_backend_optimization_level=1"
        procs[n] = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(tmp / f"{n}.npz"), str(tmp / f"{n}.json")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    results = {}
    for n, proc in procs.items():
        output, _ = proc.communicate(timeout=420)
        assert proc.returncode == 0, output
        with np.load(tmp / f"{n}.npz") as data:
            numbers = {k: data[k] for k in data.files}
        results[n] = numbers, json.loads((tmp / f"{n}.json").read_text())
    return results


def test_the_subprocesses_see_1_and_4_devices(runs):
    assert runs[1][1]["devices"] == 1
    assert runs[4][1]["devices"] == 4


def test_4_devices_give_the_numbers_of_1(runs):
    one, four = runs[1][0], runs[4][0]
    assert one.keys() == four.keys()
    assert {k.split("/")[0] for k in one} == {"analyze", "sweep0", "sweep1", "sweep2", "sweep3",
                                             "deep0", "deep1", "deep2", "deep3"}
    for k in one:
        seeds = 2 if k.startswith("deep") else 3
        assert one[k].shape == four[k].shape and one[k].shape[0] == seeds, k  # padding dropped
        if one[k].dtype == bool:
            np.testing.assert_array_equal(four[k], one[k], err_msg=k)
        else:
            np.testing.assert_allclose(four[k], one[k], rtol=1e-6, atol=0, err_msg=k)
    # sweep's static point is analyze's own computation, on either device count
    np.testing.assert_array_equal(four["sweep3/cosine_similarity"],
                                  four["analyze/cosine_similarity"])


def test_the_sweep_group_ran_as_one_traced_program(runs):
    assert runs[1][1]["traces"] == 1 and runs[4][1]["traces"] == 1
    # the direct calls above hit the programs analyze and sweep compiled: analyze's (shared by
    # the sweep's static point) and the value group's, beside the 4 of the deep sweep
    assert runs[1][1]["cached"] == 2 + 4 and runs[4][1]["cached"] == 2 + 4


def test_no_data_crosses_devices(runs):
    """Each device runs its own items (``jax.shard_map``): the compiled program has no
    collective (the partitioner had all-reduced the Gram record's float64 check and
    all-gathered every Gram matrix for the LAPACK call)."""
    assert runs[4][1]["collectives"] == []
    assert runs[1][1]["collectives"] == []


@pytest.mark.parametrize("name, items", [("sweep", 9), ("analyze", 3)])
def test_outputs_are_split_over_the_4_devices(runs, name, items):
    info = runs[4][1][name]
    padded = 4 * -(-items // 4)
    assert info["shape"][0] == padded
    assert "points" in info["spec"]
    assert info["shards"] == [[d, padded // 4] for d in range(4)]  # a quarter on each device
    single = runs[1][1][name]
    assert single["shards"] == [[0, items]]
