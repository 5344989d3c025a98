"""Bias-corrected and accelerated (BCa) bootstrap intervals, seeded so that a re-run gives the same interval.

Why BCa and not the plain percentile interval: per-example accuracy differences are mostly 0
with a few +-1, so the percentile interval of their mean is a quantile of a lumpy, skewed
distribution and its bounds stick to atoms such as exactly 0. BCa (Efron & Tibshirani 1993,
ch. 14.3) shifts the quantiles by the bootstrap distribution's bias (z0) and skewness
(acceleration, from the jackknife), which is second-order accurate. ``scipy.stats.bootstrap``
does the resampling and the correction; this module only fixes the seed and says what a
degenerate sample means.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def _mean_difference(before, after, axis=-1):
    return np.mean(after - before, axis=axis)


def _special_case(center: np.ndarray) -> tuple[float, float, float] | None:
    """The answer for samples BCa cannot treat, or None: empty -> nan; non-finite -> nan interval; constant -> a point.

    ``center`` holds the per-example values whose mean is the statistic. A constant sample has
    a bootstrap distribution of one atom, where BCa's bias correction is undefined (scipy warns
    and returns nan); every resample has that mean, so the interval is the point itself.
    """
    if center.size == 0:
        return float("nan"), float("nan"), float("nan")
    if not np.isfinite(center).all():
        bad = int((~np.isfinite(center)).sum())
        warnings.warn(f"{bad} of {center.size} values are not finite: their bootstrap interval is nan",
                      RuntimeWarning, stacklevel=3)
        return float(center.mean()), float("nan"), float("nan")
    if np.ptp(center) == 0:
        v = float(center[0])
        return v, v, v
    return None


def _bca(data: tuple[np.ndarray, ...], statistic, *, paired: bool, n_boot: int, confidence: float, seed: int
         ) -> tuple[float, float]:
    # The constant case is handled before this; any other degenerate distribution is a bug, so it raises.
    with warnings.catch_warnings():
        warnings.simplefilter("error", stats.DegenerateDataWarning)
        res = stats.bootstrap(data, statistic, n_resamples=n_boot, confidence_level=confidence, method="BCa",
                              paired=paired, vectorized=True, rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise RuntimeError(f"the BCa interval came out [{low}, {high}] on {data[0].size} non-constant values")
    return low, high


def bootstrap_ci(values, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
                 ) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its BCa bootstrap interval.

    Empty input gives nan; a constant sample gives ``(v, v, v)``; non-finite values give the
    mean with a nan interval and a RuntimeWarning.
    """
    x = np.asarray(values, dtype=float).ravel()
    special = _special_case(x)
    if special is not None:
        return special
    return (float(x.mean()),
            *_bca((x,), _mean, paired=False, n_boot=n_boot, confidence=confidence, seed=seed))


def paired_bootstrap_ci(before, after, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
                        ) -> tuple[float, float, float]:
    """(mean of after - before, low, high): BCa interval resampling examples jointly (paired).

    Degenerate samples as in ``bootstrap_ci``, judged on the differences (an edit that changes
    no example's value gives ``(0, 0, 0)``).
    """
    a, b = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs equally many values, got {a.shape} and {b.shape}")
    a, b = a.ravel(), b.ravel()
    d = b - a
    special = _special_case(d)
    if special is not None:
        return special
    return (float(d.mean()),
            *_bca((a, b), _mean_difference, paired=True, n_boot=n_boot, confidence=confidence, seed=seed))
