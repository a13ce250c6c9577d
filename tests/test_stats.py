"""``sigprop.util.stats`` against independent references: scipy's Spearman rho and its exact
permutation tests, brute-force enumerations written out here, and analytic p-values."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps  # an independent reference (scikit-learn's dependency)

from sigprop.util import stats


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=12), rng.normal(size=12)
    a[3] = a[5]  # a tie
    assert stats.spearman(a, b) == pytest.approx(sps.spearmanr(a, b).statistic, abs=1e-12)


def test_spearman_test_exact_p_matches_scipy_permutation_test():
    rng = np.random.default_rng(1)
    a = rng.normal(size=7)
    b = a + rng.normal(size=7)
    got = stats.spearman_test(a, b)
    # one sample's order permuted (scipy's recipe for a correlation): all 7! pairings
    ref = sps.permutation_test((b,), lambda y: sps.spearmanr(a, y).statistic,
                               permutation_type="pairings", alternative="greater",
                               n_resamples=np.inf)
    assert got["p_greater"] == pytest.approx(ref.pvalue, abs=1e-12)
    ref_less = sps.permutation_test((b,), lambda y: sps.spearmanr(a, y).statistic,
                                    permutation_type="pairings", alternative="less",
                                    n_resamples=np.inf)
    assert got["p_less"] == pytest.approx(ref_less.pvalue, abs=1e-12)


def test_spearman_test_perfect_order_has_the_smallest_exact_p():
    a = np.arange(6.0)
    t = stats.spearman_test(a, a ** 2)
    assert t["rho"] == 1.0 and t["p_greater"] == pytest.approx(1 / math.factorial(6))


def test_spearman_test_monte_carlo_for_ten_points():
    rng = np.random.default_rng(2)
    a = rng.normal(size=10)
    b = rng.normal(size=10)
    t = stats.spearman_test(a, b)
    ref = sps.spearmanr(a, b, alternative="greater").pvalue  # t-approximation
    assert abs(t["p_greater"] - ref) < 0.05


def test_sign_flip_enumerates_every_flip():
    d = np.array([0.5, 1.2, -0.3, 0.8, 2.0])
    flips = [np.mean(np.array(s) * d) for s in itertools.product((1, -1), repeat=5)]
    want = np.mean(np.array(flips) >= d.mean() - 1e-12)
    t = stats.sign_flip_test(d)
    assert t["p_greater"] == pytest.approx(want) and t["mean"] == pytest.approx(d.mean())
    # all positive: only the identity reaches it
    assert stats.sign_flip_test(np.abs(d))["p_greater"] == pytest.approx(1 / 32)


def test_two_sample_test_matches_scipy():
    x = np.array([1.2, 2.3, 3.1, 2.9, 4.0])
    y = np.array([0.4, 1.0, 1.1, 0.2, 0.9])  # every x above every y
    t = stats.two_sample_test(x, y)
    ref = sps.permutation_test((x, y), lambda a, b: np.mean(a) - np.mean(b),
                               permutation_type="independent", alternative="greater",
                               n_resamples=np.inf)
    assert t["p_greater"] == pytest.approx(ref.pvalue, abs=1e-12)
    assert t["p_greater"] == pytest.approx(1 / math.comb(10, 5))


def test_bootstrap_interval_covers_the_mean_and_shrinks():
    rng = np.random.default_rng(3)
    x = rng.normal(1.0, 1.0, size=400)
    lo, hi = stats.bootstrap_ci((x,), np.mean)
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert lo < x.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)  # the normal-theory width


def test_verdicts():
    assert stats.verdict(0.01, 0.99) == "pass"
    assert stats.verdict(0.9, 0.02) == "fail"
    assert stats.verdict(0.2, 0.8) == "inconclusive"
    assert stats.combine(["pass", "pass"]) == "pass"
    assert stats.combine(["pass", "inconclusive"]) == "inconclusive"
    assert stats.combine(["inconclusive", "fail"]) == "fail"


def test_bad_samples_are_clear_errors():
    with pytest.raises(ValueError, match="spearman_test"):
        stats.spearman_test([1, 2], [3, 4])
    with pytest.raises(ValueError, match="sign_flip_test"):
        stats.sign_flip_test([1.0])


def test_bootstrap_test_agrees_with_its_interval():
    rng = np.random.default_rng(4)
    x = rng.normal(0.5, 1.0, size=50)
    t = stats.bootstrap_test((x,), np.mean)
    lo, hi = stats.bootstrap_ci((x,), np.mean)
    assert (t["p_greater"] < 0.025) == (lo > 0)  # the same replicates
    # the normal-theory one-sided p of the mean, within Monte Carlo and bootstrap error
    z = x.mean() / (x.std(ddof=1) / np.sqrt(len(x)))
    assert abs(t["p_greater"] - sps.norm.sf(z)) < 0.02
    assert t["p_less"] > 0.9
