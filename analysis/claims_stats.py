"""Intervals and verdicts for the claims sweep: paired chunk bootstrap, seeds, matched L0.

A comparison of two arms is a difference of a metric (B - A) averaged over a grid of common
L0 values (log-L0 interpolation of each arm's curve) or over shared sparsities (equal k). Its
95% interval comes from a bootstrap that resamples, in each draw, the evaluation chunks (the same
chunk weights for every run: the rows are shared, so the comparison is paired) and each arm's
seeds. A verdict follows from the interval alone: on the paper's side -> agrees, on the other
side -> disagrees, straddling zero -> inconclusive; unconverged runs make it inconclusive too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

N_DRAWS = 1000


@dataclass
class Interval:
    """A point estimate with its 95% bootstrap interval."""

    estimate: float
    low: float
    high: float

    def text(self, digits: int = 4) -> str:
        """`0.0123 [0.0100, 0.0150]`."""
        return f"{self.estimate:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def verdict(interval: Interval, paper_sign: int, converged: bool = True) -> str:
    """agrees / disagrees / inconclusive from an interval of B - A and the sign the paper claims."""
    if not converged:
        return "inconclusive (not every run converged)"
    if paper_sign * interval.low > 0 and paper_sign * interval.high > 0:
        return "agrees"
    if paper_sign * interval.low < 0 and paper_sign * interval.high < 0:
        return "disagrees"
    return "inconclusive"


def matched_grid(curves: Sequence[tuple[np.ndarray, np.ndarray]], n: int = 5) -> np.ndarray:
    """`n` log-spaced L0 values inside every curve's L0 range (empty when they do not overlap)."""
    lo = max(float(np.min(x)) for x, _ in curves)
    hi = min(float(np.max(x)) for x, _ in curves)
    if not (hi > lo > 0):
        return np.array([])
    return np.geomspace(lo, hi, n)


def at_l0(l0: np.ndarray, metric: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The metric of one curve interpolated at `grid` on a log-L0 axis."""
    order = np.argsort(l0)
    return np.interp(np.log(grid), np.log(np.asarray(l0)[order]), np.asarray(metric)[order])


def chunk_weights(n_chunks: int, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """[n_draws, n_chunks] multiplicities of a chunk bootstrap (row 0: every chunk once)."""
    draws = rng.multinomial(n_chunks, np.full(n_chunks, 1 / n_chunks), size=n_draws)
    draws[0] = 1
    return draws.astype(float)


def bootstrap(
    statistic: Callable[[np.ndarray, dict[str, list[int]]], float],
    n_chunks: int,
    seeds: dict[str, list[int]],
    n_draws: int = N_DRAWS,
    seed: int = 0,
) -> Interval:
    """Percentile interval of `statistic(chunk_weights, seeds_per_arm)` over paired draws.

    Draw 0 uses every chunk once and every seed once: the point estimate. Other draws resample
    chunks (shared by all runs) and, per arm, its seeds with replacement.
    """
    return bootstrap_many(lambda w, s: [statistic(w, s)], n_chunks, seeds, n_draws, seed)[0]


def bootstrap_many(
    statistic: Callable[[np.ndarray, dict[str, list[int]]], Sequence[float]],
    n_chunks: int,
    seeds: dict[str, list[int]],
    n_draws: int = N_DRAWS,
    seed: int = 0,
) -> list[Interval]:
    """`bootstrap` of a statistic with several components, all read on the same draws: one
    interval per component (each a percentile interval of its own finite values)."""
    rng = np.random.default_rng(seed)
    weights = chunk_weights(n_chunks, n_draws, rng)
    values = []
    for d in range(n_draws):
        picked = (
            seeds
            if d == 0
            else {arm: list(rng.choice(s, size=len(s), replace=True)) for arm, s in seeds.items()}
        )
        values.append(np.asarray(statistic(weights[d], picked), dtype=float))
    out = []
    for column in np.stack(values, axis=1):
        finite = column[np.isfinite(column)]
        if finite.size == 0:
            out.append(Interval(float("nan"), float("nan"), float("nan")))
            continue
        low, high = np.percentile(finite, [2.5, 97.5])
        out.append(Interval(float(column[0]), float(low), float(high)))
    return out
