"""experiments/_bootstrap.py: BCa intervals against an exact reference, seeds, degenerate samples.

Oracle: for a 0/1 sample with k ones out of n, the bootstrap distribution of the mean is
exactly Binomial(n, k/n) / n and the jackknife is two values, so the BCa interval
(Efron & Tibshirani 1993, 14.3) can be computed without resampling. With 20,000 resamples
the Monte Carlo interval lands on the same atoms of that distribution.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats
from scipy.special import ndtr, ndtri

from lens.experiments import bootstrap_ci, paired_bootstrap_ci


def exact_bca(k: int, n: int, confidence: float) -> tuple[float, float]:
    """The BCa interval of the mean of k ones and n - k zeros, from the exact bootstrap distribution."""
    boot = stats.binom(n, k / n)  # number of ones in a resample
    z0 = ndtri(boot.cdf(k - 1) + boot.pmf(k) / 2)  # ties count half, as scipy does
    jack = np.r_[np.full(k, (k - 1) / (n - 1)), np.full(n - k, k / (n - 1))]
    u = jack.mean() - jack
    a = (u ** 3).sum() / (6 * ((u ** 2).sum()) ** 1.5)
    z = ndtri((1 - confidence) / 2)
    levels = [ndtr(z0 + (z0 + zz) / (1 - a * (z0 + zz))) for zz in (z, -z)]
    return tuple(float(boot.ppf(level) / n) for level in levels)


def percentile_interval(k: int, n: int, confidence: float) -> tuple[float, float]:
    boot = stats.binom(n, k / n)
    alpha = (1 - confidence) / 2
    return float(boot.ppf(alpha) / n), float(boot.ppf(1 - alpha) / n)


def test_hand_cases():
    # 0 and 1: resampled means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4; symmetric, so the bias
    # correction z0 and the acceleration are 0 and BCa is the percentile interval
    assert bootstrap_ci([0.0, 1.0], n_boot=20000, confidence=0.95) == (0.5, 0.0, 1.0)
    assert bootstrap_ci([0.0, 1.0], n_boot=20000, confidence=0.4) == (0.5, 0.5, 0.5)  # inside the middle atom
    assert paired_bootstrap_ci([1, 1, 0, 0], [1, 1, 1, 1], n_boot=20000) == (0.5, 0.0, 1.0)


@pytest.mark.parametrize(("k", "n"), [(3, 120), (5, 30)])
def test_bca_matches_the_exact_interval_of_a_01_sample(k, n):
    x = np.r_[np.ones(k), np.zeros(n - k)]
    rng = np.random.default_rng(7)
    rng.shuffle(x)
    mean, low, high = bootstrap_ci(x, n_boot=20000, seed=1)
    assert mean == pytest.approx(k / n)
    assert (low, high) == pytest.approx(exact_bca(k, n, 0.95), abs=1e-12)
    # the check can tell the methods apart: the percentile interval sits one atom lower on both sides
    assert percentile_interval(k, n, 0.95) == pytest.approx((low - 1 / n, high - 1 / n), abs=1e-12)


def test_equals_scipy_bca_with_the_same_generator():
    x = np.random.default_rng(3).gamma(0.5, size=37)  # skewed, continuous
    ref = stats.bootstrap((x,), np.mean, n_resamples=999, method="BCa", rng=np.random.default_rng(11))
    mean, low, high = bootstrap_ci(x, n_boot=999, seed=11)
    assert mean == pytest.approx(x.mean())
    assert (low, high) == (ref.confidence_interval.low, ref.confidence_interval.high)
    assert low < mean < high


def test_paired_resamples_examples_jointly():
    rng = np.random.default_rng(5)
    before = rng.normal(size=53)
    after = before + 0.3 + 0.1 * rng.normal(size=53)
    mean, low, high = paired_bootstrap_ci(before, after, n_boot=2000, seed=2)
    assert mean == pytest.approx(np.mean(after - before))
    # resampling pairs = resampling the per-example differences
    assert (low, high) == pytest.approx(bootstrap_ci(after - before, n_boot=2000, seed=2)[1:], abs=1e-12)
    # unpaired, the spread of the examples themselves (sd 1) would swamp a 0.3 shift
    assert 0.25 < low < 0.3 < high < 0.35
    with pytest.raises(ValueError, match="equally many"):
        paired_bootstrap_ci([1, 2], [1])


def test_a_small_accuracy_gain_is_not_stuck_at_zero():
    """3 of 120 answers gained, none lost (the README's ZeroTuning row): the percentile interval's
    lower bound is exactly 0, an atom of the resampled sums; BCa's correction moves it off."""
    before = np.r_[np.zeros(3), np.ones(103), np.zeros(14)]
    after = np.r_[np.ones(3), np.ones(103), np.zeros(14)]
    mean, low, high = paired_bootstrap_ci(before, after)
    assert mean == pytest.approx(0.025)
    assert percentile_interval(3, 120, 0.95)[0] == 0.0
    assert low != 0.0 and low == pytest.approx(1 / 120) and high == pytest.approx(8 / 120)


def test_seeded():
    x = np.random.default_rng(0).normal(size=29)
    assert bootstrap_ci(x, seed=5) == bootstrap_ci(x, seed=5)
    assert bootstrap_ci(x, seed=5) != bootstrap_ci(x, seed=6)
    assert paired_bootstrap_ci(x, x ** 2, seed=4) == paired_bootstrap_ci(x, x ** 2, seed=4)


def test_degenerate_samples():
    nan3 = bootstrap_ci([])
    assert all(np.isnan(v) for v in nan3) and all(np.isnan(v) for v in paired_bootstrap_ci([], []))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's DegenerateDataWarning must not leak
        assert bootstrap_ci([0.7] * 9) == (0.7, 0.7, 0.7)
        assert bootstrap_ci([2.0]) == (2.0, 2.0, 2.0)
        # an edit that changed no answer: the difference is exactly 0, and so is its interval
        assert paired_bootstrap_ci([1, 0, 1, 1], [1, 0, 1, 1]) == (0.0, 0.0, 0.0)
        assert paired_bootstrap_ci([1, 2, 3], [2, 3, 4]) == (1.0, 1.0, 1.0)
    with pytest.warns(RuntimeWarning, match="1 of 3 values are not finite"):
        mean, low, high = bootstrap_ci([1.0, float("nan"), 2.0])
    assert np.isnan(mean) and np.isnan(low) and np.isnan(high)
