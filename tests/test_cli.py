"""The command line (``sigprop ...`` / ``python -m sigprop``) and the quickstart job, at small sizes.

Expected numbers are recomputed here from the returned arrays with numpy (the table), or from
arrays built by hand (``summarize``); no expected value is taken from the code under test.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import sigprop
from sigprop import cli
from sigprop.core.results import from_arrays
from sigprop.metrics import ACT_METRICS
from sigprop.nn import normalizers
from sigprop.paper import quickstart
from sigprop.sweeps.sweep import load_sweep

N_NORMALIZERS = 20  # science.md's 18, dyt (Zhu et al. 2025) and sigma_reparam (Zhai et al. 2023)


def test_normalizers_command_lists_every_name(capsys):
    assert cli.main(["normalizers"]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == N_NORMALIZERS
    assert printed == normalizers.names()
    assert {"batchnorm", "layernorm", "groupnorm", "rmsnorm", "evonorm_b0", "none"} <= set(printed)


def test_analyze_command_prints_and_saves(capsys, tmp_path):
    out = tmp_path / "r.npz"
    rc = cli.main(["analyze", "--model", "mlp", "--depth", "3", "--width", "16",
                   "--norm", "layernorm", "--batch", "8", "--seeds", "2", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert any("cosine_similarity" in line for line in text.splitlines()), text
    assert out.exists()

    res = sigprop.LayerMetrics.load(out)
    cos = np.asarray(res.cosine_similarity)
    assert cos.shape == (2, 3)
    assert np.asarray(res.grad_norm).shape == (2, 3)
    assert len(res.layer_names) == 3
    assert np.all(np.isfinite(cos))
    assert np.asarray(res.finite).all()
    assert res.meta["norm"] == "layernorm"

    # the printed final-layer mean is the saved array's (to the 4 significant digits printed)
    line = next(ln for ln in text.splitlines() if "final cosine_similarity" in ln)
    printed_mean = float(line.split()[2])
    assert printed_mean == pytest.approx(float(cos[:, -1].mean()), rel=1e-3, abs=1e-4)


def test_analyze_command_bad_normalizer_is_a_clean_error(capsys):
    rc = cli.main(["analyze", "--model", "mlp", "--norm", "nope"])
    assert rc == 2
    captured = capsys.readouterr()
    assert "sigprop: error:" in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert "nope" in captured.err
    for name in normalizers.names():
        assert name in captured.err, f"{name!r} not listed: {captured.err}"


def test_quickstart_small(tmp_path, capsys):
    png = tmp_path / "q.png"
    norms = ("batchnorm", "layernorm")
    results, table = quickstart.run(norms, seeds=2, batch=8, image=8, out=str(png))

    assert png.exists() and png.stat().st_size > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(results) == set(norms)
    for name in norms:
        assert name in table
    assert "2 seeds" in table
    assert np.asarray(results["batchnorm"].cosine_similarity).shape == (2, 10)  # cfg_10: 10 layers
    assert np.asarray(results["layernorm"].cosine_similarity).shape == (2, 10)
    assert table in capsys.readouterr().out  # verbose by default: the table is printed

    # the table's numbers are the results': final-layer cosine, mean over seeds, 3 decimals
    for name in norms:
        line = next(ln for ln in table.splitlines() if ln.split() and ln.split()[0] == name)
        printed = float(line.split()[1])
        cos_final = np.asarray(results[name].cosine_similarity)[:, -1]
        assert printed == round(float(cos_final.mean()), 3), (name, line, cos_final)


def test_summarize_on_hand_built_metrics():
    """``summarize`` against numpy on arrays built here (no analysis involved)."""
    rng = np.random.default_rng(0)
    seeds, layers, glayers = 3, 4, 5
    acts = rng.uniform(0.1, 2.0, size=(seeds, layers, 6))
    acts[..., 5] = 1.0  # the finite flag
    grads = np.stack([rng.uniform(0.1, 5.0, size=(seeds, glayers)), np.ones((seeds, glayers))],
                     axis=-1)
    lm = from_arrays(acts, grads, [f"layer{i}" for i in range(layers)],
                     [f"layer{i}" for i in range(glayers)], {})

    (row,) = quickstart.summarize({"mine": lm})
    g = grads[..., 0]
    ratio = g[:, 0] / g[:, -1]
    cos = acts[:, -1, ACT_METRICS.index("cosine_similarity")]
    rank = acts[:, -1, ACT_METRICS.index("stable_rank")]
    assert row["norm"] == "mine"
    assert row["grad_ratio"] == pytest.approx(ratio.mean(), rel=1e-12)
    assert row["grad_ratio_std"] == pytest.approx(ratio.std(), rel=1e-12)
    assert row["cosine"] == pytest.approx(cos.mean(), rel=1e-12)
    assert row["cosine_std"] == pytest.approx(cos.std(), rel=1e-12)
    assert row["stable_rank"] == pytest.approx(rank.mean(), rel=1e-12)
    assert row["stable_rank_std"] == pytest.approx(rank.std(), rel=1e-12)

    table = quickstart.format_table([row], seeds)
    assert f"{ratio.mean():.2f}" in table
    assert f"{cos.mean():.3f}" in table


def test_python_dash_m_sigprop():
    proc = subprocess.run([sys.executable, "-m", "sigprop", "normalizers"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == normalizers.names()


# ---------------------------------------------------------------------------------- sweep
def sweep_args(*extra):
    return ["sweep", "--model", "mlp", "--depth", "2", "--width", "8", "--batch", "8",
            "--classes", "10", "--seeds", "3", *extra]


def test_sweep_command_table_files_and_resume(capsys, tmp_path):
    out = tmp_path / "grid"
    argv = sweep_args("--norm", "layernorm,groupnorm", "--group-size", "4", "--out", str(out))
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "2/2 points" in captured.err  # the progress bar
    points = load_sweep(out)
    assert [(p.config["norm"], p.config.get("group_size")) for p in points] == [
        ("groupnorm", 4), ("layernorm", None)]
    assert len(list(out.iterdir())) == 2
    lines = captured.out.splitlines()
    assert lines[1].split()[:2] == ["norm", "group_size"] and str(out) in lines[-1]
    for p in points:  # the table's numbers are the saved points' (mean over seeds, as printed)
        row = next(ln.split() for ln in lines if ln.split()[:1] == [p.config["norm"]])
        cos = np.asarray(p.metrics.cosine_similarity)[:, -1]
        g = np.asarray(p.metrics.grad_norm)
        assert float(row[2]) == round(float(cos.mean()), 3)
        assert float(row[5]) == pytest.approx(float((g[:, 0] / g[:, -1]).mean()), rel=1e-2)
        assert p.metrics.meta["inputs"] == (8, 8) and p.metrics.seeds == 3

    assert cli.main(argv) == 0  # a rerun computes nothing and prints the same table
    again = capsys.readouterr()
    assert "2 of 2 points already in" in again.err and again.out == captured.out


@pytest.mark.parametrize("argv, expected", [
    (["--model", "mlp", "--norm", "batchnorm,groupnorm,evonorm_s0", "--depth", "3",
      "--width", "16,32", "--group-size", "4,8", "--batch", "8,16"],
     # a group size is an axis of the grouped normalizers only
     [("batchnorm", 16, None, 8), ("batchnorm", 16, None, 16), ("batchnorm", 32, None, 8),
      ("batchnorm", 32, None, 16)]
     + [(n, w, g, b) for n in ("groupnorm", "evonorm_s0") for w in (16, 32) for g in (4, 8)
        for b in (8, 16)]),
    (["--model", "cnn", "--depth", "4"], [("batchnorm", 64, None, 64)]),
    (["--model", "wrn", "--norm", "layernorm"], [("layernorm", 2, None, 64)]),
    (["--model", "resnet56", "--batch", "4"], [("batchnorm", None, None, 4)]),
])
def test_sweep_command_grid(monkeypatch, capsys, argv, expected):
    seen = {}

    def fake(builder, grid, inputs, **kw):
        seen.update(grid=grid, shapes=[inputs(c) for c in grid], models=[builder(**c) for c in grid],
                    **kw)
        return []

    monkeypatch.setattr(sys.modules["sigprop.sweeps.sweep"], "sweep", fake)
    assert cli.main(["sweep", *argv]) == 0
    grid = seen["grid"]
    assert [(c["norm"], c.get("width"), c.get("group_size"), c["batch"]) for c in grid] == expected
    assert seen["seeds"] == 3 and seen["out"] is None and seen["progress"] is True
    for c, shape, model in zip(grid, seen["shapes"], seen["models"]):
        if c["model"] == "mlp":
            assert shape == (c["batch"], c["width"]) and model.depth == 3
        else:
            assert shape == (c["batch"], 32, 32, 3)
        assert model.spec.name == c["norm"]
        assert dict(model.spec.options).get("group_size") == c.get("group_size")
    if argv[1] == "cnn":
        assert grid[0]["cfg"] == "uniform" and len(seen["models"][0].layers) == 4


@pytest.mark.parametrize("argv, message", [
    (["--model", "resnet56", "--depth", "20"], "resnet56 has a fixed depth"),
    (["--model", "cnn", "--width", "32"], "--depth/--width are for --cfg uniform"),
    (["--model", "mlp", "--norm", "batchnorm", "--group-size", "4"],
     "--group-size applies to groupnorm, evonorm_s0"),
    (["--model", "mlp", "--norm", "nope"], "unknown normalizer norm='nope'"),
    (["--model", "mlp", "--norm", "groupnorm", "--width", "8", "--group-size", "3"],
     "group_size=3 must be a positive divisor"),
    (["--model", "mlp", "--depth", "0"], "depth=0 must be an integer >= 1"),
    (["--model", "wrn", "--cfg", "cfg_10"], "--cfg is for --model cnn"),
])
def test_sweep_command_errors_are_clean(capsys, argv, message):
    assert cli.main(["sweep", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sigprop: error:") and message in err and "Traceback" not in err
