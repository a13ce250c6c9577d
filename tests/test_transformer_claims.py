"""Claims 13 and 14 (``sigprop.paper.transformer_claims``): the verdict logic on hand-made
``Data`` (pass, fail, inconclusive), the README byte windows and the next-byte loss. Fast: no
analysis runs here (the figures suite measures both experiments at quick size)."""

import importlib
import os

import jax.numpy as jnp
import numpy as np
import pytest

from sigprop.paper import transformer_claims as tc
from sigprop.paper.experiments import Data, text_sample
from sigprop.paper.experiments import transformers as tx

V = importlib.import_module("sigprop.paper.validate")
DEPTH = 6


# ------------------------------------------------------------------------------- claim 13


def _param_names(depth=DEPTH):
    names = ["embed"]
    for i in range(depth):
        names += [f"block{i:02d}/attn/{p}" for p in ("query", "key", "value", "out")]
        names += [f"block{i:02d}/mlp/fc1", f"block{i:02d}/mlp/fc2"]
    return names + ["classifier"]


def _xiong_data(post_rate, pre_rate, seeds=8, noise=0.02, seed=0):
    """fc2 gradient norms exp(rate * l) per seed (log-normal noise); every other kernel 1."""
    rng = np.random.default_rng(seed)
    names = _param_names()
    fc2 = [i for i, n in enumerate(names) if n.endswith("mlp/fc2")]
    arrays = {}
    for p, rate in (("post", post_rate), ("pre", pre_rate)):
        g = np.ones((seeds, len(names)))
        r = np.broadcast_to(np.asarray(rate, float), (seeds,))[:, None]
        g[:, fc2] = np.exp(r * np.arange(DEPTH) + noise * rng.standard_normal((seeds, DEPTH)))
        arrays[f"{p}/param_grad_norm"] = g
        arrays[f"{p}/layer_names"] = np.array([], str)
        arrays[f"{p}/param_layer_names"] = np.array(names)
    sizes = dict(seeds=seeds, depth=DEPTH, width=8, heads=2, seq_len=8, batch=2)
    return Data(arrays, {"sizes": sizes, "inputs": "README bytes (test)"})


def test_claim13_passes_when_post_grows_and_pre_is_flat():
    r = V.claim13(_xiong_data(0.2, 0.0))  # through validate's registration
    assert (r.id, r.verdict) == (13, "pass")
    assert r.measured["parts"] == {"A": "pass", "B": "pass", "C": "pass"}
    assert r.statistic["post_slope"] == pytest.approx(0.2, abs=0.02)
    assert r.p_value == pytest.approx(1 / 256)  # every seed positive: 1 of 2^8 flips
    lo, hi = r.ci["pre_slope_x_(depth-1)"]
    assert np.log(0.5) <= lo <= hi <= np.log(2)
    np.testing.assert_allclose(r.measured["fc2_grad_norm_per_layer"]["post"],
                               np.exp(0.2 * np.arange(DEPTH)), rtol=0.05)


def test_claim13_slopes_are_per_seed_least_squares():
    d = _xiong_data(np.linspace(0.1, 0.3, 8), 0.0, noise=0.0)
    np.testing.assert_allclose(tc.log_slopes(tc.fc2_grads(d, "post")), np.linspace(0.1, 0.3, 8))
    assert tc.fc2_grads(d, "pre").shape == (8, DEPTH)


def test_claim13_fails_when_post_shrinks():
    r = tc.claim13(_xiong_data(-0.2, 0.0))
    assert r.verdict == "fail" and r.measured["parts"]["A"] == "fail"
    assert r.measured["parts"]["B"] == "fail"


def test_claim13_fails_when_pre_is_far_from_flat():
    # Pre-LN's fitted last / first exp(5 x -0.3) = 0.22: the interval lies below ln 0.5
    r = tc.claim13(_xiong_data(0.2, -0.3))
    assert r.measured["parts"] == {"A": "pass", "B": "pass", "C": "fail"}
    assert r.verdict == "fail"


def test_claim13_inconclusive_without_a_clear_post_slope():
    # Post-LN's slopes straddle 0 (half the seeds each way): A decides nothing
    rates = np.array([0.05, -0.05] * 4)
    r = tc.claim13(_xiong_data(rates, -0.1))
    assert r.measured["parts"]["A"] == "inconclusive" and r.verdict == "inconclusive"
    # and Pre-LN on the edge of [ln 0.5, ln 2]: its interval straddles ln 0.5
    edge = tc.claim13(_xiong_data(0.2, np.log(0.5) / (DEPTH - 1), noise=0.1))
    assert edge.measured["parts"]["C"] == "inconclusive"


# ------------------------------------------------------------------------------- claim 14

DEPTHS = (4, 16, 64)


def _collapse_data(noskip=1e-4, skip=0.9, unscaled=(0.3, 0.7, 0.95), scaled=(0.1, 0.1, 0.1),
                   seeds=6, noise=0.01, seed=0):
    """Residual ratios decaying geometrically to ``noskip`` / ``skip`` x the first block's over 8
    blocks; last-block cosines per depth plus the same noise at every depth (the final norm's
    tap holds a decoy 0.5)."""
    arrays = {}
    blocks = 8
    for k, end in (("noskip", noskip), ("skip", skip)):
        r = 0.9 * end ** (np.arange(blocks) / (blocks - 1))
        arrays[f"attention/{k}/token_residual_ratio"] = np.tile(r, (seeds, 1))
        arrays[f"attention/{k}/token_cosine_similarity"] = np.zeros((seeds, blocks))
        arrays[f"attention/{k}/layer_names"] = np.array([f"block{i:02d}" for i in range(blocks)])
    for k, cos in (("unscaled", unscaled), ("scaled", scaled)):
        for n, c in zip(DEPTHS, cos):
            names = [f"block{i:02d}{t}" for i in range(n) for t in ("/ln1", "/ln2", "")]
            v = np.full((seeds, len(names) + 1), 0.5)
            v[:, -2] = c + noise * np.random.default_rng(seed).standard_normal(seeds)
            arrays[f"pre/{n}/{k}/token_cosine_similarity"] = v
            arrays[f"pre/{n}/{k}/layer_names"] = np.array(names + ["final_norm"])
    sizes = dict(attention_seeds=seeds, attention_depth=blocks, depth_seeds=seeds,
                 depths=list(DEPTHS), width=8, heads=2, seq_len=4, batch=2)
    return Data(arrays, {"sizes": sizes, "inputs": "N(0,1) tokens (test)"})


def test_claim14_passes():
    r = V.claim14(_collapse_data())
    assert (r.id, r.verdict) == (14, "pass")
    assert r.measured["parts"] == {"A": "pass", "B1": "pass", "B2": "pass"}
    assert r.measured["median_residual_ratio_last/first"] == pytest.approx(
        {"noskip": 1e-4, "skip": 0.9})
    assert r.measured["last_block_cosine"]["unscaled"][64] == pytest.approx(0.95, abs=0.02)
    assert r.p_value == pytest.approx(1 / 64)  # B2: 6 seeds, all one way
    np.testing.assert_allclose(r.measured["log10_residual_ratio_per_layer"]["noskip"][[0, -1]],
                               np.log10([0.9, 0.9e-4]))


def test_claim14_fails_when_skips_do_not_keep_the_tokens_apart():
    r = tc.claim14(_collapse_data(skip=0.4))
    assert r.measured["parts"]["A"] == "fail" and r.verdict == "fail"
    r = tc.claim14(_collapse_data(noskip=0.05))  # not collapsed enough without skips
    assert r.measured["parts"]["A"] == "fail" and r.verdict == "fail"


def test_claim14_fails_when_scaling_raises_the_cosine():
    r = tc.claim14(_collapse_data(scaled=(0.1, 0.5, 0.99)))
    assert r.measured["parts"] == {"A": "pass", "B1": "pass", "B2": "fail"}
    assert r.verdict == "fail"


def test_claim14_inconclusive_when_depth_does_not_decide():
    # the unscaled cosine does not move with depth (the same seeds' values at every depth)
    r = tc.claim14(_collapse_data(unscaled=(0.5, 0.5, 0.5), noise=0.05))
    assert r.measured["parts"]["B1"] == "inconclusive" and r.verdict == "inconclusive"
    assert r.statistic["B1_rho"] == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------- the data


def test_readme_windows_and_next_byte_loss():
    t = tx.readme_tokens(3, 10)
    assert t.dtype == np.int32 and t.shape == (3, 10)
    # windows 0, 8 and 15 of the frozen sample (evenly spaced among 16), their first 10 bytes
    for row, w in zip(t, (0, 8, 15)):
        assert bytes(row.astype(np.uint8)) == text_sample.WINDOWS[w][:10]
    assert bytes(t[0].astype(np.uint8)) == b"# sigprop\n"  # the README's first bytes
    with pytest.raises(ValueError, match="16 windows of 128 bytes"):
        tx.readme_tokens(17, 10)
    logits = np.random.default_rng(0).standard_normal((3, 10, 256)).astype(np.float32)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = -np.mean(np.take_along_axis(logp[:, :-1], t[:, 1:, None], -1))
    got = float(tx.next_byte_loss(t)(jnp.asarray(logits), None))
    assert got == pytest.approx(want, rel=1e-5)


def test_the_frozen_sample_is_the_committed_figures_tokens():
    """The full size reads all 16 windows whole: exactly the tokens the committed
    figures/data/xiong_gradients.npz was measured on, so a re-run reproduces it."""
    s = tx.XIONG.sizes(quick=False)
    t = tx.readme_tokens(s.batch, s.seq_len)
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "figures",
                        "data", "xiong_gradients.npz")
    np.testing.assert_array_equal(t, np.load(path)["tokens"])