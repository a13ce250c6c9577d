"""``sigprop figures --quick``: every figure regenerates, and what each draws is what it claims
(orders, slopes, theory within the claim's tolerance), not just a file. The same experiments
then pass every ``sigprop validate --quick`` claim without measuring again (one definition).

Marked ``figures`` (about 7 minutes on 2 cores): ``python -m pytest -m "figures or notebooks or reference"``.
"""

import importlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from sigprop.paper import experiments, figures

pytestmark = pytest.mark.figures
V = importlib.import_module("sigprop.paper.validate")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    t0 = time.perf_counter()
    res = figures.make_all(quick=True, out=str(out), progress=False)
    return out, res, time.perf_counter() - t0


def drawn(made, name):
    return made[1][name]["drawn"]


def test_every_figure_written_within_budget(made):
    out, res, seconds = made
    assert sorted(res) == sorted(figures.names())
    for name in res:
        for ext in ("png", "pdf"):
            assert os.path.getsize(out / f"{name}.{ext}") > 10_000
        assert (out / "data" / f"{name}.npz").exists()
    # the acceptance is 10 minutes on 2 cores; under the README's command the notebooks suite
    # runs beside this one (one xdist worker each), hence the margin
    assert seconds < 900, f"sigprop figures --quick took {seconds:.0f} s"


def test_one_script_per_figure():
    scripts = {f[:-3] for f in os.listdir(os.path.join(ROOT, "figures")) if f.endswith(".py")}
    assert scripts == set(figures.names())


def test_replot_reads_the_cache(made, monkeypatch):
    out = made[0]
    monkeypatch.setattr(experiments, "_MEMO", {})  # this process forgets; the file remains
    monkeypatch.setattr(experiments.Experiment, "run",
                        lambda *a, **k: pytest.fail("measured again instead of the cache"))
    r = figures.make("closed_forms", quick=True, out=str(out))
    np.testing.assert_array_equal(r["drawn"]["cosine/measured"],
                                  drawn(made, "closed_forms")["cosine/measured"])


def test_script_runs_from_the_cache(made):
    out = made[0]
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, os.path.join(ROOT, "figures", "closed_forms.py"),
                        "--quick", "--out", str(out)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "closed_forms.png" in p.stdout and time.perf_counter() - t0 < 60


def test_recompute_measures_again(made, monkeypatch):
    calls = []
    monkeypatch.setattr(experiments.Experiment, "run",
                        lambda self, quick, progress=None: calls.append(self.name)
                        or experiments._MEMO[(self.name, True)])
    figures.make("closed_forms", quick=True, out=str(made[0]), recompute=True)
    assert calls == ["closed_forms"]


def test_resnet_variance(made):
    d = drawn(made, "resnet_variance")
    blocks = len(d["post/none"])
    for norm in ("none", "weightnorm", "sws"):  # exponential: >= 1.3 per block
        assert d[f"post/{norm}"][-1] ** (1 / (blocks - 1)) >= 1.3, norm
    for norm in ("batchnorm", "layernorm", "instancenorm", "groupnorm", "frn"):
        assert d[f"post/{norm}"][-1] <= 1.5 * blocks, norm  # at most linear
    s = made[1]["resnet_variance"]["data"].sizes  # groupnorm: neither instancenorm nor layernorm
    assert all(w % s.group_size == 0 and 1 < s.group_size < w for w in s.post_widths)
    for norm in ("weightnorm", "sws"):
        assert d[f"post/{norm}+skipinit"].max() <= 2.0
    np.testing.assert_array_equal(d["post/theory_2^l"], 2.0 ** np.arange(blocks))
    np.testing.assert_array_equal(d["post/theory_l+1"], np.arange(1, blocks + 1))
    growth = d["pre/none"][-1] ** (1 / (blocks - 1))
    assert 1.7 <= growth <= 2.3  # 2^l
    # batchnorm: each block adds the same amount (the law's slope from block 0 within 20%)
    steps = np.diff(d["pre/batchnorm"])
    law = np.diff(d["pre/theory_l+1"])
    assert np.all(np.abs(steps / law - 1) < 0.2), (steps, law)


def test_cnn_cosine(made):
    d = drawn(made, "cnn_cosine")
    s = made[1]["cnn_cosine"]["data"].sizes
    final = [d[f"norms/{k}"][-1] for k in
             ("layernorm", f"groupnorm(g={s.gn_large})", f"groupnorm(g={s.gn_small})",
              "instancenorm")]
    assert np.all(np.diff(final) < 0), final
    groups = np.array([d[f"groups/{g}"][-1] for g in s.group_sizes])
    assert np.all(np.diff(groups) > -0.02) and groups[-1] - groups[0] > 0.3, groups


def test_groupnorm_rank(made):
    d = drawn(made, "groupnorm_rank")
    eff = d["effective/measured"]
    assert eff[0] > eff[2] > eff[4] > eff[6]  # group sizes 1, 4, 16, 64
    a, b = d["effective/fit_coefficients"]
    assert a > 0  # rank grows with sqrt(width / g)
    resid = eff - d["effective/fit"]
    r2 = 1 - np.sum(resid ** 2) / np.sum((eff - eff.mean()) ** 2)
    assert r2 > 0.85, r2
    assert d["stable/measured"][0] > d["stable/measured"][-1]


def test_cnn_gradients(made):
    d = drawn(made, "cnn_gradients")
    s = made[1]["cnn_gradients"]["data"].sizes
    ratio = dict(zip(d["ratio_labels"], d["ratio"]))
    order = ["instancenorm", f"groupnorm(g={s.gn_small})", f"groupnorm(g={s.gn_large})",
             "layernorm"]
    assert np.all(np.diff([ratio[k] for k in order]) < 0), ratio
    assert ratio["batchnorm"] > 1 and ratio["batchnorm"] > ratio["layernorm"]
    # the bars are the drawn curves' first / last values (mean over seeds of the ratio)
    assert ratio["instancenorm"] == max(v for k, v in ratio.items() if k != "batchnorm")


def test_u_figure1(made):
    d = drawn(made, "u_figure1")
    sim = {k.split("/")[1]: v for k, v in d.items() if k.startswith("similar")}
    grad = {k.split("/")[1]: v for k, v in d.items() if k.startswith("gradient")}
    assert sim["batchnorm"][-1] < sim["bmlv"][-1] < sim["lmbv"][-1] < sim["layernorm"][-1]
    assert sim["layernorm"][-1] > 0.95 and sim["batchnorm"][-1] < 0.7
    assert grad["batchnorm"][0] < 0.1 < 0.5 < grad["layernorm"][0]
    # batch-mean subtraction decorrelates: the batch-mean normalizers below the per-sample ones
    assert max(sim["batchnorm"][-1], sim["bmlv"][-1]) < min(sim["layernorm"][-1],
                                                            sim["lmbv"][-1])
    assert set(sim) == {"none", "batchnorm", "layernorm", "bmlv", "lmbv", "prelayernorm",
                        "regnorm"}
    assert "real MNIST" in made[1]["u_figure1"]["data"].meta["inputs"]


def test_u_figure2(made):
    d = drawn(made, "u_figure2")
    g = d["noskip/grad/batchnorm"]
    rate = np.exp(-2 * np.polyfit(np.arange(len(g)), np.log(g), 1)[0])
    assert rate >= 1.2  # exponential growth going backward without skips
    ln = d["noskip/grad/layernorm"]
    assert ln[0] / ln[-1] < 2  # layernorm: no explosion
    gs = d["skip/grad/batchnorm"]
    blocks = 3 * (made[1]["u_figure2"]["data"].sizes.depth - 2) // 6
    assert (gs[0] / gs[-1]) ** 2 <= 2 * (blocks + 1)
    assert d["noskip/similar/batchnorm"][-1] < 0.9 < 0.97 < d["noskip/similar/layernorm"][-1]
    # the theory line: sqrt(pi / (pi - 1)) per layer
    law = d["noskip/grad/theory"]
    np.testing.assert_allclose(law[:-1] / law[1:], np.sqrt(np.pi / (np.pi - 1)), rtol=1e-6)


def test_closed_forms(made):
    d = drawn(made, "closed_forms")
    assert np.max(np.abs(d["cosine/measured"] - d["cosine/theory"])) <= 0.03
    assert abs(float(d["grad/fitted_rate"]) / (np.pi / (np.pi - 1)) - 1) <= 0.05


def test_brock_spp(made):
    # the NF-ResNet's law and tolerances, in one place
    from test_gallery import check_nf_resnet

    d = drawn(made, "brock_spp")
    s = made[1]["brock_spp"]["data"].sizes
    var = d["activation_variance/none"]
    assert var[-1] / var[0] > 1e3  # unnormalized: exponential
    bn_branch = d["residual_variance/batchnorm"]
    assert np.all((bn_branch > 0.3) & (bn_branch < 3))  # a normalized branch: variance ~1
    # the dashed law: 1 + l alpha^2 after block l of every stage
    np.testing.assert_allclose(d["nf_stream/law"],
                               np.tile(1 + s.nf_alpha ** 2 * np.arange(1, s.blocks + 1),
                                       len(s.widths)))
    check_nf_resnet(d["activation_variance/sws+nf"], d["residual_variance/sws+nf"], s)


def test_hessian_density(made):
    d = drawn(made, "hessian_density")
    data = made[1]["hessian_density"]["data"]
    assert {k.split("/")[0] for k in d} == {"0", str(data.sizes.claim_step)}  # steps 0 and 50
    for key, dens in d.items():
        c, norm = key.split("/")
        grid = data[f"hessian/{norm}/{c}/grid"]
        grid = grid[0] if grid.ndim > 1 else grid
        assert np.all(dens >= 0)
        assert abs(np.trapezoid(dens, grid) - 1) < 0.05, key  # a density: mass 1 on the grid


def test_outlier_ratio(made):
    d = drawn(made, "outlier_ratio")
    for key, v in d.items():
        assert np.all(v >= 1.0), key  # lambda_1 >= lambda_K


def test_training_trajectories(made):
    d = drawn(made, "training_trajectories")
    for key, v in d.items():
        if key.startswith("train_loss/"):
            assert v[-1] < 0.8 * v[0], key  # every normalizer shown trains at its tuned rate


def test_bb_figure1_spearman(made):
    from scipy.stats import (
        spearmanr,  # an independent reference (scikit-learn's dependency)
    )

    d = drawn(made, "bb_figure1")
    data = made[1]["bb_figure1"]["data"]
    assert len(d["cosine"]) >= 3
    rho = spearmanr(d["cosine"], d["mean_loss"]).statistic
    assert d["rho"] == pytest.approx(rho, abs=1e-12)
    assert 0 < d["p"] <= 1
    ln10 = np.log(10)
    for key, v in d.items():
        if key.startswith("loss/"):
            norm = key.split("/")[1]
            # the tuned rate trained on the selection seeds (final cross-entropy <= 0.9 ln 10)
            # and is one of the grid's rates that did
            rates = list(data[f"train/{norm}/rates"])
            status = data[f"train/{norm}/status"][rates.index(float(data[f"train/{norm}/rate"]))]
            assert status == "trains", key
            assert np.all(np.isfinite(v)) and v[-1] < 0.9 * ln10, key


def test_coord_check(made):
    d = drawn(made, "coord_check")
    slopes = d["slopes"]  # [steps + 1, layers] log-log slopes of RMS vs width
    assert list(d["shown_steps"]) == [0, 1, len(slopes) - 1]  # init, step 1 and the last
    assert np.all(np.abs(slopes[0]) < 0.1)  # He init: every layer's scale flat in width
    # one SGD step: the logits grow ~ width, the hidden layers' scales not yet
    assert slopes[1, -1] > 0.5 and np.all(np.abs(slopes[1, :-1]) < 0.1), slopes[1]
    assert slopes[-1, -1] > 0.25  # at the quick sizes (3 steps) the logits still grow last
    assert slopes[-1, -1] > np.max(slopes[-1, :-1]) + 0.2


@pytest.fixture(scope="module")
def made_transformers(tmp_path_factory):
    """The transformer figures alone (``-k "xiong or token_collapse"`` need not draw the rest;
    within the whole suite ``made`` has measured them and this reads the memo)."""
    out = tmp_path_factory.mktemp("transformer_figures")
    return out, figures.make_all(quick=True, only=["xiong_gradients", "token_collapse"],
                                 out=str(out), progress=False)


def test_xiong_gradients(made_transformers):
    out, res = made_transformers
    r = res["xiong_gradients"]
    d, data = r["drawn"], r["data"]
    assert os.path.getsize(out / "xiong_gradients.png") > 10_000
    assert "README bytes" in data.meta["inputs"]
    tc = importlib.import_module("sigprop.paper.transformer_claims")
    # the drawn lines are the claim's fc2 gradient norms (seed means, one per block)
    for p in ("post", "pre"):
        np.testing.assert_allclose(d[p], tc.fc2_grads(data, p).mean(axis=0))
        assert len(d[p]) == data.sizes.depth
    c = V.claim13(data)
    assert str(d["verdict"]) == c.verdict and c.verdict in ("pass", "fail", "inconclusive")
    # Post-LN's slope above Pre-LN's in every seed (part B; at quick size too)
    assert np.all(d["post_slopes"] > d["pre_slopes"]) and c.measured["parts"]["B"] == "pass"


def test_token_collapse(made_transformers):
    out, res = made_transformers
    r = res["token_collapse"]
    d, data = r["drawn"], r["data"]
    assert os.path.getsize(out / "token_collapse.png") > 10_000
    assert "N(0, 1) tokens" in data.meta["inputs"]
    # (a) without skips the tokens collapse (claim 14's 1e-2 on the median last / first)
    assert d["median_decay"][0] < 1e-2 and d["ratio/noskip"][-1] < 1e-2 * d["ratio/noskip"][0]
    assert d["ratio/skip"][-1] > d["ratio/noskip"][-1]
    # (b) the unscaled cosine rises with depth; 1/sqrt(depth) keeps it lower at every depth
    assert np.all(np.diff(d["cosine/unscaled"]) > 0)
    assert np.all(d["cosine/scaled"] < d["cosine/unscaled"])
    c = V.claim14(data)
    assert str(d["verdict"]) == c.verdict
    assert c.measured["parts"]["B1"] == c.measured["parts"]["B2"] == "pass"


@pytest.fixture(scope="module")
def made_era(tmp_path_factory):
    """The claim 15-18 figures alone (``-k era`` need not draw the rest; within the whole
    suite ``made`` has measured them and this reads the memo)."""
    out = tmp_path_factory.mktemp("era_figures")
    return out, figures.make_all(quick=True, only=list(ERA), out=str(out), progress=False)


ERA = {"dyt_init": 15, "qk_norm": 16, "deepnorm_gradients": 17, "curse_of_depth": 18}


def test_era_figures_draw_their_claims(made_era):
    out, res = made_era
    ec = importlib.import_module("sigprop.paper.era_claims")
    for name, claim in ERA.items():
        assert os.path.getsize(out / f"{name}.png") > 10_000, name
        d, data = res[name]["drawn"], res[name]["data"]
        c = V.CLAIM_EXPERIMENTS[claim][1](data)
        assert str(d["verdict"]) == c.verdict and c.id == claim, name
    # claim 15: the drawn lines are the claim's per-block stream numbers
    d, data = res["dyt_init"]["drawn"], res["dyt_init"]["data"]
    t = ec.dyt_test(data)
    for k in ("ln", "dyt"):
        np.testing.assert_allclose(d[f"variance/{k}"], t["variance"][k].mean(axis=0))
        assert len(d[f"cosine/{k}"]) == data.sizes.depth
        assert len(d[f"grad/{k}"]) == 2 * data.sizes.depth  # attention and MLP per block
    # claim 16: without QK-norm the largest logit grows layer after layer, with it it does not
    d = res["qk_norm"]["drawn"]
    assert np.all(np.diff(np.log(d["logit_max/plain"])) > 0)
    assert d["logit_max/layernorm"][-1] < d["logit_max/plain"][-1]
    assert d["entropy/layernorm"][-1] > d["entropy/plain"][-1]
    assert list(d["widths"]) == list(res["qk_norm"]["data"].sizes.widths)
    # claim 17: DeepNorm's per-block gradients within a factor 2 of each other
    d = res["deepnorm_gradients"]["drawn"]
    assert d["deepnorm"].max() < 2 * d["deepnorm"].min()
    # claim 18: Pre-LN's stream variance grows block after block, LNS ends lower
    d = res["curse_of_depth"]["drawn"]
    assert np.all(np.diff(d["variance/pre"]) > 0)
    assert d["variance/lns"][-1] < d["variance/pre"][-1]


def test_gns_tracking_draws_its_claim(made):
    """Claim 19's figure: the drawn verdict and per-seed rho are the claim's, and both B_simple
    series are on the same records."""
    d, data = drawn(made, "gns_tracking"), made[1]["gns_tracking"]["data"]
    c = V.CLAIM_EXPERIMENTS[19][1](data)
    assert str(d["verdict"]) == c.verdict and c.id == 19
    np.testing.assert_allclose(d["rho"], c.measured["rho_per_seed"])
    steps = np.asarray(data["steps"])
    assert d["norm"].shape == d["model"].shape == steps.shape
    assert np.all(np.isfinite(d["norm"])) and np.all(np.isfinite(d["model"]))


def test_validate_reads_the_same_experiments(made, monkeypatch):
    # the claims read the figures' data: nothing is measured again (claim 8's WRN setting
    # runs only at full size)
    monkeypatch.setattr(experiments.Experiment, "run",
                        lambda *a, **k: pytest.fail("validate measured again"))
    results = V.validate(quick=True, progress=False)
    # claims 7, 8 and 12-19 are statistical: at quick sizes they may be inconclusive (or
    # fail; never "pass" without p < 0.05); the others must pass
    statistical = (7, 8, 12, 13, 14, 15, 16, 17, 18, 19)
    failed = {r.id: r.measured for r in results if not r.passed and r.id not in statistical}
    assert not failed, failed
    for r in results:
        if r.id in statistical:
            assert r.verdict in ("pass", "fail", "inconclusive") and r.p_value is not None
            assert r.verdict != "pass" or r.p_value < 0.05, (r.id, r.p_value)
    c8 = next(r for r in results if r.id == 8).measured
    assert set(c8["verdict_per_setting"]) == {"mlp"}
    rho = next(r for r in results if r.id == 12).statistic
    assert rho == pytest.approx(drawn(made, "bb_figure1")["rho"])
    assert [r.id for r in results] == list(V.CLAIMS)


def test_unknown_figure_is_a_clear_error(capsys):
    from sigprop import cli

    assert cli.main(["figures", "--quick", "--only", "nope"]) == 2
    assert "--only nope: unknown; allowed: resnet_variance" in capsys.readouterr().err
    with pytest.raises(ValueError, match="figure='nope'"):
        figures.get("nope")
