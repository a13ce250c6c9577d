"""``sigprop validate --quick``: every claim passes on a CPU, and the closed forms hold against
sigprop's own measurements (claims 9-11 at width >= 1024 / ResNet-56).

The default run covers the MLP claims (5, 6, 9, 10: about a minute); the whole quick validation
(about 5 minutes on 2 cores) is marked ``slow``: ``python -m pytest -m slow``."""

import importlib
import json

import jax
import numpy as np
import pytest

from sigprop import cli
from sigprop.backend import cpu
from sigprop.paper import experiments

V = importlib.import_module("sigprop.paper.validate")  # sigprop.validate is the function


def _run(tmp_path_factory, claims=None):
    path = tmp_path_factory.mktemp("validate") / "claims.json"
    argv = ["validate", "--quick", "--json", str(path)]
    if claims:
        argv += ["--claims", ",".join(map(str, claims))]
    with pytest.MonkeyPatch.context() as mp:
        # no persistent compilation cache inside the test process
        mp.setattr(cpu, "fast_start", lambda: None)
        rc = cli.main(argv)
    with open(path) as f:
        data = json.load(f)
    return rc, data, {c["id"]: c for c in data["claims"]}


@pytest.fixture(scope="module")
def mlp_report(tmp_path_factory):
    return _run(tmp_path_factory, (5, 6, 9, 10))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return _run(tmp_path_factory)


def test_quick_validate_mlp_claims(mlp_report):
    rc, data, claims = mlp_report
    failed = {i: (c["measured"], c["expected"]) for i, c in claims.items() if not c["passed"]}
    assert not failed, failed
    assert rc == 0 and sorted(claims) == [5, 6, 9, 10]


@pytest.mark.slow
def test_quick_validate_passes_every_claim(report):
    rc, data, claims = report
    # claims 8 and 12 are reported whatever they measure (see test_figures), not required
    failed = {i: (c["measured"], c["expected"]) for i, c in claims.items()
              if not c["passed"] and i not in (8, 12)}
    assert not failed, failed
    assert sorted(claims) == list(range(1, 13))
    assert data["mode"] == "quick" and data["total"] == 12
    assert isinstance(claims[12]["measured"]["spearman_rho"], float)
    for c in claims.values():
        assert set(c) >= {"id", "passed", "measured", "expected", "setting"}


def test_arccos_map_through_wide_relu_mlp(mlp_report):
    c = mlp_report[2][9]["measured"]
    assert "width 1024" in mlp_report[2][9]["setting"]
    measured = np.array(c["cosine_measured"])
    # the arc-cosine map (Cho & Saul) written out here, applied layer by layer to every pair's
    # input cosine of the claim's batch (N(0, 1), key 9), then averaged over pairs
    s = experiments.get("closed_forms").sizes(quick=True)
    x = np.asarray(jax.random.normal(jax.random.key(9), (s.arccos_batch, s.wide)), np.float64)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    c_l = np.clip((xn @ xn.T)[~np.eye(len(x), dtype=bool)], -1, 1)
    want = []
    for _ in range(s.arccos_depth):
        c_l = np.clip((np.sqrt(1 - c_l ** 2) + (np.pi - np.arccos(c_l)) * c_l) / np.pi, -1, 1)
        want.append(c_l.mean())
    np.testing.assert_allclose(c["cosine_theory"], want, atol=1e-5)  # the JSON keeps 5 digits
    assert np.max(np.abs(measured - np.array(want))) <= 0.03
    assert abs(want[0] - 1 / np.pi) < 0.02  # nearly orthogonal inputs: 1/pi after one layer


def test_batchnorm_gradient_rate_within_5_percent(mlp_report):
    c = mlp_report[2][10]["measured"]
    assert c["theory"] == pytest.approx(np.pi / (np.pi - 1), rel=1e-4)
    assert abs(c["rate"] / c["theory"] - 1) <= 0.05


@pytest.mark.slow
def test_preact_resnet56_second_moment(report):
    c = report[2][11]["measured"]
    assert "ResNet-56" in report[2][11]["setting"]
    # doubling per block (seed mean within 3 standard errors of 2)
    assert abs(c["none_growth_per_block"] - 2) <= 3 * c["none_growth_standard_error"]
    assert c["none_growth_standard_error"] < 0.1
    bn = np.diff(np.array(c["batchnorm_second_moment"]))
    assert np.all((bn > 0.7) & (bn < 1.3))  # each normalized branch adds ~1: linear growth


def test_unknown_claim_is_a_clear_error():
    with pytest.raises(ValueError, match="claims=.*allowed: 1, 2, 3"):
        V.validate(claims=(13,), progress=False)


def test_failed_claim_is_reported_with_numbers():
    res = V.ClaimResult(3, "t", "s", {"x": np.float32(1.5), "y": np.array([1.0, np.nan])}, "e",
                        False)
    table = V.format_table([res])
    assert "[FAIL] claim 3" in table and "x 1.5" in table and "0/1 claims passed" in table
    d = V.to_json([res], quick=True)
    assert d["claims"][0]["passed"] is False and d["claims"][0]["measured"]["y"] == [1.0, None]
    json.dumps(d)


def test_the_experiment_memo_is_bounded_and_holds_every_experiment():
    """This process's memo of measured experiments keeps the most recently used (a bounded
    dict), with room for every experiment in both modes."""
    from sigprop.util.cache import BoundedDict

    assert isinstance(experiments._MEMO, BoundedDict)
    assert experiments._MEMO._size >= 2 * len(experiments.names())
    d = BoundedDict(2)
    d["a"], d["b"] = 1, 2
    assert d["a"] == 1 and "b" in d  # reading "a" makes "b" the least recently used
    d["c"] = 3
    assert dict(d) == {"a": 1, "c": 3} and len(d) == 2 and "b" not in d
