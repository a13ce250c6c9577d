"""Claims 15-18 (``sigprop.paper.era_claims``): the parts' tests (``greater``, ``inside``) and each
claim's verdict on hand-made ``Data`` whose verdict is known (pass, fail, inconclusive). Fast:
no analysis runs here but the quick validation at the end (marked ``figures``: it measures the
four quick experiments, about 30 s)."""

import importlib
import math

import numpy as np
import pytest

from sigprop.paper import era_claims as ec
from sigprop.paper.experiments import Data

V = importlib.import_module("sigprop.paper.validate")
SEEDS = 8
P_ALL = 1 / 2 ** SEEDS  # exact sign-flip p when every seed points the predicted way


def _registered(claim: int, d: Data):
    """Claim ``claim``'s check as validate runs it (from its registry)."""
    return V.CLAIM_EXPERIMENTS[claim][1](d)


def _noise(shape, scale, seed=0):
    return scale * np.random.default_rng(seed).standard_normal(shape)


def _data(arrays: dict, **sizes) -> Data:
    return Data(arrays, {"sizes": dict(seeds=SEEDS, heads=2, seq_len=8, batch=2, **sizes),
                         "inputs": "test inputs"})


def _stream_names(depth):
    """Pre-LN taps: blockNN/ln1, blockNN/ln2, blockNN, ..., final_norm."""
    return [f"block{i:02d}{t}" for i in range(depth) for t in ("/ln1", "/ln2", "")] \
        + ["final_norm"]


def _on_stream(depth, values, decoy=123.0):
    """``[seeds, taps]`` with ``values [seeds, depth]`` at the block taps, ``decoy`` elsewhere."""
    names = _stream_names(depth)
    out = np.full((SEEDS, len(names)), decoy)
    out[:, [i for i, n in enumerate(names) if "/" not in n and n != "final_norm"]] = values
    return out, np.array(names)


# ---------------------------------------------------------------------------- the parts


def test_greater_and_inside():
    up = np.linspace(0.1, 0.3, SEEDS)
    g = ec.greater(up)
    assert g["verdict"] == "pass" and g["p"] == pytest.approx(P_ALL)
    assert g["mean"] == pytest.approx(0.2) and g["ci"][0] <= 0.2 <= g["ci"][1]
    assert ec.greater(-up)["verdict"] == "fail"
    assert ec.greater(np.array([0.1, -0.1] * 4))["verdict"] == "inconclusive"
    # equivalence: well inside, well outside (above hi, below lo), straddling a bound
    assert ec.inside(up - 0.2, -0.5, 0.5)["verdict"] == "pass"
    assert ec.inside(up - 0.2, -0.5, 0.5)["p"] == pytest.approx(P_ALL)
    assert ec.inside(up + 1.0, -0.5, 0.5)["verdict"] == "fail"
    assert ec.inside(up - 1.0, -0.5, 0.5)["verdict"] == "fail"
    assert ec.inside(0.5 + np.array([0.1, -0.1] * 4), -0.5, 0.5)["verdict"] == "inconclusive"
    # a value that is not finite decides nothing
    bad = np.array([np.inf] + [0.1] * (SEEDS - 1))
    assert ec.greater(bad)["verdict"] == ec.inside(bad, -1, 1)["verdict"] == "inconclusive"


def test_log_slopes_per_seed():
    rates = np.linspace(-0.1, 0.2, SEEDS)
    y = np.exp(rates[:, None] * np.arange(6) + 1.0)
    np.testing.assert_allclose(ec.log_slopes(y), rates, atol=1e-12)


# ------------------------------------------------------------------------------- claim 15

DEPTH15 = 6


def _dyt_data(var_ratio=1.0, cos_shift=0.0, grad_ratio=1.0, noise=0.02):
    arrays = {}
    blocks = np.arange(1, DEPTH15 + 1)
    for k in ("ln", "dyt"):
        dyt = k == "dyt"
        var = (1 + blocks) * (var_ratio if dyt else 1.0)
        var = var * np.exp(_noise((SEEDS, DEPTH15), noise, 1))
        cos = 0.1 * blocks + (cos_shift if dyt else 0.0) + _noise((SEEDS, DEPTH15), noise, 2)
        arrays[f"{k}/activation_variance"], names = _on_stream(DEPTH15, var)
        arrays[f"{k}/token_cosine_similarity"], _ = _on_stream(DEPTH15, cos)
        arrays[f"{k}/layer_names"] = names
        g = np.exp(-0.2 * np.arange(2 * DEPTH15))  # first / last = exp(2.2)
        g = np.tile(g, (SEEDS, 1)) * np.exp(_noise((SEEDS, 2 * DEPTH15), noise, 3))
        if dyt:
            g[:, 0] *= grad_ratio
        arrays[f"{k}/grad_norm"] = g
        arrays[f"{k}/grad_layer_names"] = np.array(
            [f"block{i:02d}/{s}" for i in range(DEPTH15) for s in ("attn", "mlp")])
    return _data(arrays, depth=DEPTH15, width=8)


def test_claim15_passes_when_dyt_matches_layernorm():
    r = _registered(15, _dyt_data())  # through validate's registration
    assert (r.id, r.verdict) == (15, "pass")
    assert r.measured["parts"] == {"A": "pass", "B": "pass", "C": "pass"}
    assert r.measured["last_block_variance"]["ln"] == pytest.approx(1 + DEPTH15, rel=0.05)
    assert r.measured["grad_first/last"]["ln"] == pytest.approx(math.exp(2.2), rel=0.05)
    assert r.p_value == pytest.approx(P_ALL)


def test_claim15_fails_and_is_inconclusive():
    r = ec.claim15(_dyt_data(var_ratio=0.3))  # DyT's stream variance 0.3 x LayerNorm's
    assert r.measured["parts"]["A"] == "fail" and r.verdict == "fail"
    assert r.statistic["A"] == pytest.approx(math.log(0.3), abs=0.02)
    r = ec.claim15(_dyt_data(cos_shift=-0.3))
    assert r.measured["parts"]["B"] == "fail" and r.verdict == "fail"
    r = ec.claim15(_dyt_data(grad_ratio=3.0))
    assert r.measured["parts"]["C"] == "fail"
    # the variance ratio on the bound (a factor 2) with noise: equivalence not decided
    r = ec.claim15(_dyt_data(var_ratio=2.0, noise=0.2))
    assert r.measured["parts"]["A"] == "inconclusive" and r.verdict == "inconclusive"


# ------------------------------------------------------------------------------- claim 16

DEPTH16, WIDTHS = 5, (8, 16)


def _qk_data(plain_rate=0.8, qk_rate=0.0, noise=0.02):
    arrays = {}
    layers = np.arange(DEPTH16)
    for w in WIDTHS:
        for k, rate, ent in (("plain", plain_rate, 0.9 - 0.2 * layers),
                             ("layernorm", qk_rate, 0.9 + 0.0 * layers)):
            label = f"qk/{w}/{k}"
            m = 3.0 * np.exp(rate * layers + _noise((SEEDS, DEPTH16), noise, w))
            arrays[f"{label}/attention_logit_max"] = m
            arrays[f"{label}/attention_entropy"] = np.clip(
                ent + _noise((SEEDS, DEPTH16), noise, w + 1), 0, 1)
            arrays[f"{label}/attention_layer_names"] = np.array(
                [f"block{i:02d}/attn" for i in layers])
            arrays[f"{label}/layer_names"] = np.array([f"block{i:02d}" for i in layers])
    return _data(arrays, depth=DEPTH16, widths=list(WIDTHS))


def test_claim16_passes_when_qk_norm_keeps_the_logits_put():
    r = _registered(16, _qk_data())
    assert (r.id, r.verdict) == (16, "pass")
    assert r.measured["parts"] == {"A": "pass", "B": "pass", "C": "pass", "D": "pass"}
    assert r.statistic["A"] == pytest.approx(0.8, abs=0.02)  # the plain logits' log slope
    assert r.statistic["B"] == pytest.approx(0.8 * (DEPTH16 - 1), abs=0.05)
    assert set(r.measured["last_layer_per_width"]["plain"]) == set(WIDTHS)


def test_claim16_fails_and_is_inconclusive():
    r = ec.claim16(_qk_data(plain_rate=-0.3))  # plain logits falling with depth
    assert r.measured["parts"]["A"] == "fail" and r.verdict == "fail"
    r = ec.claim16(_qk_data(qk_rate=0.5))  # QK-norm's logits grow by e^2 over the layers
    assert r.measured["parts"]["D"] == "fail" and r.verdict == "fail"
    r = ec.claim16(_qk_data(qk_rate=math.log(2) / (DEPTH16 - 1), noise=0.2))  # last/first 2
    assert r.measured["parts"]["D"] == "inconclusive" and r.verdict == "inconclusive"


# ------------------------------------------------------------------------------- claim 17

DEPTH17 = 6
KERNELS = ("attn/query", "attn/key", "attn/value", "attn/out", "mlp/fc1", "mlp/fc2")


def _deep_data(post_rate=0.1, deep_rate=0.0, noise=0.01):
    names = ["embed"] + [f"block{i:02d}/{k}" for i in range(DEPTH17) for k in KERNELS] \
        + ["classifier"]
    arrays = {}
    for k, rate in (("post", post_rate), ("deepnorm", deep_rate)):
        r = np.broadcast_to(np.asarray(rate, float), (SEEDS,))[:, None]
        per_block = np.exp(r * np.arange(DEPTH17) + _noise((SEEDS, DEPTH17), noise))
        g = np.full((SEEDS, len(names)), 7.0)  # embed and classifier: not blocks
        for b in range(DEPTH17):
            idx = [i for i, n in enumerate(names) if n.startswith(f"block{b:02d}/")]
            g[:, idx] = per_block[:, b:b + 1] / np.sqrt(len(KERNELS))  # root-sum-square
        arrays[f"{k}/param_grad_norm"] = g
        arrays[f"{k}/param_layer_names"] = np.array(names)
        arrays[f"{k}/layer_names"] = np.array([], str)
    return _data(arrays, depth=DEPTH17, width=8)


def test_claim17_block_grads_are_root_sum_squares():
    d = _deep_data(noise=0.0)
    np.testing.assert_allclose(ec.block_grads(d, "post"),
                               np.tile(np.exp(0.1 * np.arange(DEPTH17)), (SEEDS, 1)))


def test_claim17_verdicts():
    r = _registered(17, _deep_data())
    assert (r.id, r.verdict) == (17, "pass")
    assert r.measured["parts"] == {"A": "pass", "B": "pass", "C": "pass"}
    assert r.measured["fitted_last/first"]["post"] == pytest.approx(math.exp(0.5), rel=0.02)
    r = ec.claim17(_deep_data(post_rate=-0.1))  # Post-LN's gradients grow toward the input
    assert r.measured["parts"]["A"] == "fail" and r.verdict == "fail"
    r = ec.claim17(_deep_data(deep_rate=0.3))  # DeepNorm steeper than Post-LN
    assert r.measured["parts"]["B"] == "fail" and r.measured["parts"]["C"] == "fail"
    r = ec.claim17(_deep_data(post_rate=np.array([0.05, -0.05] * 4)))
    assert r.measured["parts"]["A"] == "inconclusive" and r.verdict == "inconclusive"


# ------------------------------------------------------------------------------- claim 18

DEPTH18 = 8


def _lns_data(pre_growth=1.0, lns_growth=0.1, noise=0.02):
    arrays = {}
    blocks = np.arange(DEPTH18)
    for k, rate in (("pre", pre_growth), ("lns", lns_growth)):
        r = np.broadcast_to(np.asarray(rate, float), (SEEDS,))[:, None]
        var = 1 + r * blocks + _noise((SEEDS, DEPTH18), noise, 4)
        arrays[f"{k}/activation_variance"], arrays[f"{k}/layer_names"] = _on_stream(DEPTH18, var)
        arrays[f"{k}/residual_variance"] = np.full((SEEDS, 2 * DEPTH18), 0.25)
        arrays[f"{k}/branch_layer_names"] = np.array(
            [f"block{i:02d}/{s}_branch" for i in blocks for s in ("attn", "mlp")])
    return _data(arrays, depth=DEPTH18, width=8)


def test_claim18_verdicts():
    r = _registered(18, _lns_data())
    assert (r.id, r.verdict) == (18, "pass")
    assert r.measured["parts"] == {"A": "pass", "B": "pass"}
    assert r.statistic["A"] == pytest.approx(math.log(1 + (DEPTH18 - 1)), abs=0.05)
    assert ec.claim18(_lns_data(pre_growth=-0.1)).measured["parts"]["A"] == "fail"
    r = ec.claim18(_lns_data(lns_growth=2.0))  # LNS growing faster than Pre-LN
    assert r.measured["parts"]["B"] == "fail" and r.verdict == "fail"
    r = ec.claim18(_lns_data(lns_growth=np.array([0.8, 1.2] * 4), noise=0.0))
    assert r.measured["parts"]["B"] == "inconclusive" and r.verdict == "inconclusive"


def test_claim18_contribution_is_branch_over_incoming_stream():
    d = _lns_data(noise=0.0)
    c = ec.contribution(d, "pre")  # (0.25 + 0.25) / (1 + (l - 1)) for blocks l = 1..7
    np.testing.assert_allclose(c, np.tile(0.5 / (1 + np.arange(DEPTH18 - 1)), (SEEDS, 1)))


# ------------------------------------------------------------------------------- registry


def test_claims_15_to_18_are_registered():
    assert set(ec.TABLE) <= set(V.CLAIMS) and V.CLAIMS == tuple(sorted(V.CLAIM_EXPERIMENTS))
    assert all(V.CLAIM_EXPERIMENTS[c] == ec.TABLE[c] for c in ec.TABLE)


@pytest.mark.figures
def test_quick_validate_verdict_structure():
    """The four quick runs (about 30 s): every claim statistical, its parts' statistics,
    intervals and p-values reported; 16 and 18 pass with every seed one way (p = 1/256)."""
    results = V.validate(quick=True, claims=(15, 16, 17, 18), progress=False)
    assert [r.id for r in results] == [15, 16, 17, 18]
    for r in results:
        assert r.verdict in V.VERDICTS and 0 < r.p_value <= 1
        assert r.verdict != "pass" or r.p_value < 0.05
        parts = r.measured["parts"]
        assert set(r.statistic) == set(r.ci) == set(parts) == set(r.measured["p"])
        for k, (lo, hi) in r.ci.items():
            assert lo <= hi, (r.id, k)
        assert r.seconds < 60
        assert r.to_dict()["verdict"] == r.verdict
    by_id = {r.id: r for r in results}
    assert by_id[16].verdict == by_id[18].verdict == "pass"
    assert by_id[16].p_value == by_id[18].p_value == pytest.approx(P_ALL)
