"""Intervals and density-matched comparisons over features."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jaxtyping import Float, Int

FREQUENCY_BINS = (0.0, 1e-3, 3e-3, 1e-2, 3e-2, 1.0)
"""Edges of the firing-frequency bins (share of tokens) for density-matched comparisons."""


def bootstrap_mean(
    values: Float[np.ndarray, " n"], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean and a percentile bootstrap interval over the values (NaNs dropped)."""
    v = values[~np.isnan(values)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(v.mean()), float(lo), float(hi)


def frequency_bin(
    frequency: Float[np.ndarray, " n"], edges: Sequence[float] = FREQUENCY_BINS
) -> Int[np.ndarray, " n"]:
    """Bin index of each unit's firing frequency (-1: never fires)."""
    out = np.searchsorted(np.asarray(edges), frequency, side="right") - 1
    return np.where(frequency > 0, out.clip(0, len(edges) - 2), -1)


def matched_difference(
    a: Float[np.ndarray, " n"],
    freq_a: Float[np.ndarray, " n"],
    b: Float[np.ndarray, " m"],
    freq_b: Float[np.ndarray, " m"],
    n_boot: int = 1000,
    seed: int = 0,
    min_per_bin: int = 5,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Mean of a - b within frequency bins, bins weighted by min(n_a, n_b), with a bootstrap
    interval resampling features inside each bin (density-matched comparison)."""
    rng = np.random.default_rng(seed)
    ba, bb = frequency_bin(freq_a), frequency_bin(freq_b)
    parts = []
    for k in range(len(FREQUENCY_BINS) - 1):
        va = a[(ba == k) & ~np.isnan(a)]
        vb = b[(bb == k) & ~np.isnan(b)]
        if va.size >= min_per_bin and vb.size >= min_per_bin:
            parts.append((va, vb, min(va.size, vb.size)))
    if not parts:
        return float("nan"), float("nan"), float("nan")
    weights = np.array([w for *_, w in parts], dtype=float)
    weights /= weights.sum()
    point = sum(w * (va.mean() - vb.mean()) for w, (va, vb, _) in zip(weights, parts, strict=True))
    boots = np.zeros(n_boot)
    for w, (va, vb, _) in zip(weights, parts, strict=True):
        ma = va[rng.integers(0, va.size, (n_boot, va.size))].mean(1)
        mb = vb[rng.integers(0, vb.size, (n_boot, vb.size))].mean(1)
        boots += w * (ma - mb)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return float(point), float(lo), float(hi)


def difference(
    a: Float[np.ndarray, " n"],
    b: Float[np.ndarray, " m"],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Mean of a minus mean of b with a bootstrap interval (independent resampling)."""
    va, vb = a[~np.isnan(a)], b[~np.isnan(b)]
    if va.size == 0 or vb.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boots = va[rng.integers(0, va.size, (n_boot, va.size))].mean(1) - vb[
        rng.integers(0, vb.size, (n_boot, vb.size))
    ].mean(1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return float(va.mean() - vb.mean()), float(lo), float(hi)


def verdict(lo: float, hi: float) -> str:
    """'higher' / 'lower' when the interval of a difference excludes 0, else 'inconclusive'."""
    if np.isnan(lo) or np.isnan(hi):
        return "n/a"
    return "higher" if lo > 0 else "lower" if hi < 0 else "inconclusive"
