"""Bootstrap intervals of the spliced-loss figures over sequences.

Tokens of one sequence share their context, so they are not independent draws: the unit of
resampling is the sequence. Every figure of `spliced_loss` is a ratio of sums over predictions
(CE increase = (sum CE_spliced - sum CE_original) / n, loss recovered = (sum CE_ablated -
sum CE_spliced) / (sum CE_ablated - sum CE_original)), so a resample re-weights each sequence's
sums by how often it was drawn. The same resamples serve every row and every figure, so
differences between rows of one report are paired.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

RESAMPLES = 1000
"""Bootstrap resamples of the sequences."""
SEED = 0
"""Seed of the resampling: the same evaluation gives the same intervals."""
LEVEL = 0.95
"""Coverage of the percentile intervals."""
_CHUNK = 100  # resamples drawn at once: keeps the count matrix at 100 x n_sequences


def resampled_sums(
    columns: Float[np.ndarray, "sequences k"], resamples: int = RESAMPLES, seed: int = SEED
) -> Float[np.ndarray, "resamples k"]:
    """Column sums over `resamples` draws of the rows (sequences) with replacement.

    Draw b takes n = len(columns) row indices `rng.integers(0, n, n)` with
    `rng = np.random.default_rng(seed)`, in order, 100 draws at a time.
    """
    rng = np.random.default_rng(seed)
    n = columns.shape[0]
    out = []
    for start in range(0, resamples, _CHUNK):
        b = min(_CHUNK, resamples - start)
        counts = np.zeros((b, n))
        np.add.at(counts, (np.arange(b)[:, None], rng.integers(0, n, size=(b, n))), 1.0)
        out.append(counts @ columns)
    return np.concatenate(out)


def percentile_interval(values: Float[np.ndarray, " resamples"]) -> list[float] | None:
    """The central `LEVEL` percentile interval of a figure's resampled values, or None where
    any resample is undefined (a zero denominator)."""
    if not np.all(np.isfinite(values)):
        return None
    tail = 100 * (1 - LEVEL) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]
