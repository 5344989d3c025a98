"""Percentile bootstrap confidence intervals, seeded so that a re-run gives the same interval."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
                 ) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its percentile bootstrap interval."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1)
    alpha = (1.0 - confidence) / 2
    return float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_bootstrap_ci(before, after, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
                        ) -> tuple[float, float, float]:
    """(mean of after - before, low, high), resampling examples jointly (paired)."""
    a, b = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs equally many values, got {a.shape} and {b.shape}")
    return bootstrap_ci(b - a, n_boot=n_boot, confidence=confidence, seed=seed)
