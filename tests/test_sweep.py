"""sigprop.sweep: grids, one compile per shape, traced float values, persistence and resume.

Compiles dominate: every test reuses the two small models below where it can (jit caches are
process-wide, and ``sweep`` runs a point through ``analyze``'s own jitted program).
Reference numbers come from ``sigprop.analyze`` of the same model, inputs, seeds and key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import sigprop
from sigprop.core.results import LayerMetrics, equal, from_arrays
from sigprop.sweeps import store, units  # noqa: E402
from sigprop.sweeps.sweep import Point, expand_grid, load_sweep, sweep

core = sys.modules["sigprop.core.engine"]
SHAPE = (8, 8)
EPS = [1e-5, 1e-3, 0.1, 1.0]
TRACED = []  # eps values seen as tracers by `scaled` (one entry per trace)


def scaled(depth, width, eps):
    """A builder whose float ``eps`` reaches the model's module code (LayerNorm's epsilon)."""
    if isinstance(eps, jax.core.Tracer):
        TRACED.append(eps)
    return sigprop.mlp(depth, width, norm="layernorm", eps=eps, n_classes=10)


def concrete(depth, width, eps):
    """The same models, but the builder needs eps's value in Python: cannot be traced."""
    return sigprop.mlp(depth, width, norm="layernorm", eps=float(eps), n_classes=10)


def labelled(depth, width, label):
    """``label`` does not change the model: points differing in it are one computation."""
    del label
    return sigprop.mlp(depth, width, norm="layernorm", n_classes=10)


def model(depth=2, **eps):
    return sigprop.mlp(depth, 8, norm="layernorm", n_classes=10, **eps)


def assert_same(res: LayerMetrics, ref: LayerMetrics, rtol=0.0):
    assert res.layer_names == ref.layer_names and res.grad_layer_names == ref.grad_layer_names
    for name in res.metric_names + ("finite", "grad_finite"):
        np.testing.assert_allclose(np.asarray(getattr(res, name)),
                                   np.asarray(getattr(ref, name)), rtol=rtol, atol=0, err_msg=name)


# ---------------------------------------------------------------------------------- grid
def test_grid_dict_is_a_cartesian_product_last_key_fastest():
    grid = {"norm": ["batchnorm", "layernorm"], "depth": np.array([2, 10]), "alpha": [0.5]}
    points = expand_grid(grid)
    assert points == [dict(norm="batchnorm", depth=2, alpha=0.5),
                      dict(norm="batchnorm", depth=10, alpha=0.5),
                      dict(norm="layernorm", depth=2, alpha=0.5),
                      dict(norm="layernorm", depth=10, alpha=0.5)]
    assert all(type(p["depth"]) is int for p in points)  # numpy scalars become Python's
    listed = [dict(depth=2), dict(depth=3, width=4)]
    assert expand_grid(listed) == listed


@pytest.mark.parametrize("grid, match", [
    ({"depth": 3}, r"grid\['depth'\] must be a list of values"),
    ({"norm": "batchnorm"}, r"grid\['norm'\] must be a list"),
    ({"depth": []}, r"grid\['depth'\] is empty"),
    ([], "no points"),
    ([{"depth": 2}, 3], r"grid\[1\] must be a config dict"),
    ("depth=2", "grid must be a dict"),
])
def test_bad_grids(grid, match):
    with pytest.raises(ValueError, match=match):
        sweep(sigprop.mlp, grid, SHAPE, seeds=1)


def test_bad_arguments_name_the_parameter():
    grid = {"depth": [2], "width": [8]}
    with pytest.raises(ValueError, match="seeds=0"):
        sweep(sigprop.mlp, grid, SHAPE, seeds=0)
    with pytest.raises(ValueError, match="key="):
        sweep(sigprop.mlp, grid, SHAPE, seeds=1, key="zero")
    with pytest.raises(ValueError, match="precision="):
        sweep(sigprop.mlp, grid, SHAPE, seeds=1, precision="max")
    with pytest.raises(ValueError, match="builder must be a callable"):
        sweep("mlp", grid, SHAPE, seeds=1)
    with pytest.raises(ValueError, match="inputs"):
        sweep(sigprop.mlp, grid, {"batch": 8}, seeds=1)


def test_unknown_grid_key_lists_the_builders_parameters():
    with pytest.raises(ValueError, match=r"takes no parameter\(s\) widht; its parameters: "
                                         r"depth, width, eps"):
        sweep(scaled, {"depth": [2], "widht": [8], "eps": [0.1]}, SHAPE, seeds=1)
    with pytest.raises(ValueError, match=r"missing .*width.*parameters: depth, width, eps"):
        sweep(scaled, {"depth": [2], "eps": [0.1]}, SHAPE, seeds=1)
    # builders taking **options: the builder's own check, with the grid point named
    with pytest.raises(ValueError, match=r"grid point 1 \{'depth': 2, 'width': 8, 'norm': "
                                         r"'batchnorm', 'group_size': 4\}.*allowed"):
        sweep(sigprop.mlp, [dict(depth=2, width=8, norm="groupnorm", group_size=4),
                            dict(depth=2, width=8, norm="batchnorm", group_size=4)], SHAPE, seeds=1)
    with pytest.raises(ValueError, match=r"grid point 0 .*group_size=3 must be a positive "
                                         r"divisor of the width"):
        sweep(sigprop.mlp, {"depth": [2], "width": [8], "norm": ["groupnorm"],
                            "group_size": [3]}, SHAPE, seeds=1)
    with pytest.raises(ValueError, match=r"grid point 0 .*batch size 1"):
        sweep(sigprop.mlp, {"depth": [2], "width": [8], "norm": ["batchnorm"]}, (1, 8), seeds=1)


# ---------------------------------------------------------------------- numbers, compiles
def test_a_point_equals_analyze_with_the_same_key(capsys):
    (point,) = sweep(sigprop.mlp, {"depth": [2], "width": [8], "norm": ["layernorm"],
                                   "n_classes": [10]}, SHAPE, seeds=3, key=5)
    assert isinstance(point, Point) and point.config == dict(depth=2, width=8, norm="layernorm",
                                                             n_classes=10)
    ref = sigprop.analyze(model(), SHAPE, seeds=3, key=5)
    assert_same(point.metrics, ref)  # exactly: the same program, keys and inputs
    meta = point.metrics.meta
    assert json.loads(meta["sweep_point"]) == point.config and len(meta["sweep_id"]) == 16
    assert {k: meta[k] for k in ref.meta} == ref.meta  # analyze's record, plus the sweep's
    err = capsys.readouterr().err
    assert "1/1 points" in err and "/s" in err and "left" in err  # the progress bar

    sweep(sigprop.mlp, {"depth": [2], "width": [8], "norm": ["layernorm"], "n_classes": [10]},
          SHAPE, seeds=3, progress=False)
    assert capsys.readouterr().err == ""


def test_float_values_ride_one_compile_and_match_analyze():
    TRACED.clear()
    before = core._core._cache_size()
    grid = {"depth": [2], "width": [8], "eps": EPS}
    points = sweep(scaled, grid, SHAPE, seeds=3, key=1, progress=False)
    assert len(TRACED) == 1  # the builder was traced once for the 4 values x 3 seeds
    assert core._core._cache_size() == before + 1
    assert [p.config["eps"] for p in points] == EPS
    for i in (0, 3):  # traced eps vs analyze's program with eps a constant: float rounding
        assert_same(points[i].metrics, sigprop.analyze(model(eps=EPS[i]), SHAPE, seeds=3, key=1),
                    rtol=2e-5)
    var = np.asarray([p.metrics.activation_variance for p in points])
    assert np.all(var[3] < 0.9 * var[0])  # eps = 1 shrinks LayerNorm's output

    compiled = core._core._cache_size()  # (the analyze calls above compiled their own)
    again = sweep(scaled, grid, SHAPE, seeds=3, key=1, progress=False)  # nothing recompiles
    assert len(TRACED) == 1 and core._core._cache_size() == compiled
    for a, b in zip(points, again):
        assert equal(a.metrics, b.metrics)


def test_untraceable_builder_falls_back_to_one_program_per_value(caplog):
    caplog.set_level("INFO", logger="sigprop.sweeps.units")
    points = sweep(concrete, {"depth": [2], "width": [8], "eps": [EPS[0], EPS[3]]}, SHAPE,
                   seeds=3, key=1, progress=False)
    assert "ConcretizationTypeError" in caplog.text and "one program per value" in caplog.text
    for p in points:
        assert_same(p.metrics, sigprop.analyze(model(eps=p.config["eps"]), SHAPE, seeds=3, key=1))


def test_equal_models_are_computed_once(monkeypatch):
    calls = []
    run = core.execute
    monkeypatch.setattr(core, "execute", lambda *a, **k: calls.append(a[0]) or run(*a, **k))
    points = sweep(labelled, {"depth": [2], "width": [8], "label": ["a", "b", "c"]}, SHAPE,
                   seeds=3, progress=False)
    assert len(calls) == 1
    assert [p.config["label"] for p in points] == ["a", "b", "c"]
    assert equal(points[0].metrics, points[2].metrics)


def test_inputs_callable_and_array():
    x = np.asarray(jax.random.normal(jax.random.key(3), SHAPE))
    (p,) = sweep(sigprop.mlp, {"depth": [2], "width": [8], "norm": ["layernorm"],
                               "n_classes": [10]}, lambda config: x, seeds=3, progress=False)
    assert_same(p.metrics, sigprop.analyze(model(), x, seeds=3))
    assert p.metrics.meta["user_inputs"] is True
    seen = []
    points = sweep(labelled, {"depth": [2], "width": [8], "label": [4, 8]},
                   lambda c: seen.append(c) or (c["label"], 8), seeds=3, progress=False)
    assert [c["label"] for c in seen] == [4, 8]
    assert [p.metrics.meta["inputs"] for p in points] == [(4, 8), (8, 8)]


# --------------------------------------------------------------------------- persistence
def test_out_writes_one_file_per_point_and_reruns_load_them(tmp_path, monkeypatch):
    grid = {"depth": [2], "width": [8], "eps": EPS}
    first = sweep(scaled, grid, SHAPE, seeds=3, key=1, out=tmp_path, progress=False)
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 4 and all(store.RESULT_FILE.fullmatch(n) for n in names)
    for p in first:
        back = LayerMetrics.load(tmp_path / f"{p.metrics.meta['sweep_id']}.npz")
        assert equal(back, p.metrics) and back.meta == p.metrics.meta

    # a rerun computes nothing; a deleted point is recomputed alone
    monkeypatch.setattr(units, "run_unit", lambda *a: pytest.fail("recomputed a saved point"))
    again = sweep(scaled, grid, SHAPE, seeds=3, key=1, out=tmp_path, progress=False)
    assert [p.config for p in again] == [p.config for p in first]
    assert all(equal(a.metrics, b.metrics) for a, b in zip(first, again))
    monkeypatch.undo()
    os.remove(tmp_path / f"{first[0].metrics.meta['sweep_id']}.npz")
    computed = []
    run_unit = units.run_unit
    monkeypatch.setattr(units, "run_unit", lambda kind, group, *a: computed.append(
        [p.config for job in group for p in job]) or run_unit(kind, group, *a))
    third = sweep(scaled, grid, SHAPE, seeds=3, key=1, out=tmp_path, progress=False)
    assert len(computed) == 1 and len(computed[0]) == 1
    assert sorted(os.listdir(tmp_path)) == names
    assert all(equal(a.metrics, b.metrics) for a, b in zip(first, third))

    # other seeds, key or inputs are other points (other files) in the same folder
    monkeypatch.undo()
    sweep(scaled, grid, SHAPE, seeds=3, key=2, out=tmp_path, progress=False)
    assert len(os.listdir(tmp_path)) == 8
    assert len(load_sweep(tmp_path)) == 8


def hand_made(config: dict, value: float) -> LayerMetrics:
    acts = np.full((2, 3, 6), value, np.float32)
    grads = np.ones((2, 3, 2), np.float32)
    names = ("a", "b", "c")
    return from_arrays(acts, grads, names, names, dict(sweep_point=json.dumps(config)))


def test_load_sweep_order_and_temporaries(tmp_path):
    configs = [dict(norm="layernorm", depth=10), dict(norm="batchnorm", depth=10),
               dict(norm="batchnorm", depth=2), dict(norm="batchnorm", depth=2.5)]
    for i, c in enumerate(configs):
        store.write_point(hand_made(c, i), str(tmp_path), f"{i:016x}")
    # a killed sweep's temporary (its process is gone) and unrelated files are not points
    hand_made(dict(norm="none", depth=1), 9).save(tmp_path / f".{0:016x}.999999999.tmp.npz")
    (tmp_path / "notes.txt").write_text("x")
    points = load_sweep(tmp_path)
    assert [p.config for p in points] == [configs[2], configs[3], configs[1], configs[0]]
    assert [float(p.metrics.cosine_similarity[0, 0]) for p in points] == [2, 3, 1, 0]
    store.remove_stale_temporaries(str(tmp_path))
    assert not any(n.endswith(".tmp.npz") for n in os.listdir(tmp_path))
    with pytest.raises(ValueError, match="not a folder"):
        load_sweep(tmp_path / "notes.txt")


KILLED = """
import sys
from sigprop.sweeps.sweep import sweep
sys.path.insert(0, {tests!r})
from test_sweep import labelled
sweep(labelled, {grid!r}, (8, 8), seeds=3, out={out!r}, progress=False)
"""


def test_sweep_killed_with_sigkill_resumes_with_nothing_lost_or_duplicated(tmp_path):
    # three programs (depths 1, 2, 3; the labels ride along): the kill lands while the
    # second or third compiles or runs, or while a point is being written
    grid = {"depth": [1, 2, 3], "width": [8], "label": ["a", "b"]}
    script = KILLED.format(tests=os.path.dirname(__file__), grid=grid, out=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    try:
        while not any(store.RESULT_FILE.fullmatch(n) for n in os.listdir(tmp_path)):
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "no point finished in time"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = [n for n in os.listdir(tmp_path) if store.RESULT_FILE.fullmatch(n)]
    assert 1 <= len(done) < 6, done  # not all six

    resumed = sweep(labelled, grid, SHAPE, seeds=3, out=tmp_path, progress=False)
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 6 and all(store.RESULT_FILE.fullmatch(n) for n in files)
    ids = [p.metrics.meta["sweep_id"] for p in resumed]
    assert sorted(f"{i}.npz" for i in ids) == files  # each point exactly once
    loaded = load_sweep(tmp_path)
    assert sorted(json.dumps(p.config, sort_keys=True) for p in loaded) == sorted(
        json.dumps(p.config, sort_keys=True) for p in resumed)
    whole = sweep(labelled, grid, SHAPE, seeds=3, progress=False)  # uninterrupted, in memory
    for a, b in zip(resumed, whole):
        assert a.config == b.config
        assert_same(a.metrics, b.metrics)


@pytest.mark.slow
def test_optional_metrics_ride_along():
    kw = dict(seeds=3, key=1, similar_batch_noise=0.1, gradient_correlation=True)
    points = sweep(scaled, {"depth": [2], "width": [8], "eps": [EPS[0], EPS[3]]}, SHAPE,
                   progress=False, **kw)
    for p in points:
        ref = sigprop.analyze(model(eps=p.config["eps"]), SHAPE, **kw)
        assert p.metrics.similar_batch_correlation is not None
        assert p.metrics.meta["options"] == ref.meta["options"]
        assert_same(p.metrics, ref, rtol=2e-5)
