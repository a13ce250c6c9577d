"""benchmarks/gpu.py runs (``--quick``, in-process, on whatever backend the suite runs on) and
writes every figure of issue 23, finite and positive, as JSON, and a README row."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"

FIGURES = ("first_call_analyze_resnet_s", "compile_analyze_resnet_s", "analyze_seed1_s",
           "bare_fwd_bwd_s", "analyze_over_bare", "seeds_vmap_ratio", "deep_analyze_s",
           "matmul_gflops", "deep_matmul_fraction", "lanczos_step_over_fwd_bwd",
           "first_call_hessian_spectrum_s", "hessian_spectrum_s", "train_record_over_bare")
TORCH_FIGURES = ("torch_probes_s", "torch_over_analyze_seed1")


def _load():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    result = _load().main(["--quick", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["figures"] == result["figures"]
    figures = written["figures"]
    n = written["sizes"]["many_seeds"]
    wanted = FIGURES + (f"analyze_seed{n}_per_seed_s",)
    if "torch_probes_s" in figures:
        wanted += TORCH_FIGURES + (f"torch_over_analyze_seed{n}_per_seed",)
    else:  # skipped, saying why
        assert written["details"]["torch"].startswith("skipped: ")
    missing = [k for k in wanted if k not in figures]
    assert not missing, f"figures missing: {missing}"
    bad = {k: v for k, v in figures.items() if not (math.isfinite(v) and v > 0)}
    assert not bad, f"figures not finite and positive: {bad}"
    printed = capsys.readouterr().out
    row = printed.strip().splitlines()[-1]
    assert row.startswith("| ") and row.endswith(" |") and "gpu.py --quick" in row
