"""Intervals and verdicts for the claims sweep: paired chunk bootstrap, seeds, matched L0.

A comparison of two arms is a difference of a metric (B - A) averaged over a grid of common
L0 values (log-L0 interpolation of each arm's curve) or over shared sparsities (equal k). Its
95% interval comes from a bootstrap that resamples, in each draw, the evaluation chunks (the same
chunk weights for every run: the rows are shared, so the comparison is paired) and each arm's
seeds. A verdict follows from the interval alone: on the paper's side -> agrees, on the other
side -> disagrees, straddling zero -> inconclusive; unconverged runs make it inconclusive too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from jaxtyping import Float, Int

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


def at_l0_draws(
    l0: Float[np.ndarray, "points draws"],
    metric: Float[np.ndarray, "points draws"],
    grid: Float[np.ndarray, " grid"],
) -> Float[np.ndarray, "grid draws"]:
    """The metric of each draw's curve (column d: draw d's points) interpolated at `grid` on a
    log-L0 axis, all draws at once, with `np.interp`'s arithmetic: the end values outside the
    curve, a knot's own value on it, else the line between its neighbours."""
    order = np.argsort(l0, axis=0, kind="stable")
    x = np.log(np.take_along_axis(l0, order, axis=0))
    y = np.take_along_axis(metric, order, axis=0)
    g = np.log(grid)[:, None]
    if x.shape[0] == 1:
        return np.broadcast_to(y[0], (g.shape[0], y.shape[1])).copy()
    j = (x[None] <= g[:, None]).sum(axis=1) - 1  # the knot at or below each grid value
    left = np.clip(j, 0, x.shape[0] - 2)
    x0, x1 = np.take_along_axis(x, left, axis=0), np.take_along_axis(x, left + 1, axis=0)
    y0, y1 = np.take_along_axis(y, left, axis=0), np.take_along_axis(y, left + 1, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        line = (y1 - y0) / (x1 - x0) * (g - x0) + y0
    line = np.where(g == x0, y0, line)
    line = np.where(j < 0, y[0], line)
    return np.where(j >= x.shape[0] - 1, y[-1], line)


def chunk_weights(n_chunks: int, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """[n_draws, n_chunks] multiplicities of a chunk bootstrap (row 0: every chunk once)."""
    draws = rng.multinomial(n_chunks, np.full(n_chunks, 1 / n_chunks), size=n_draws)
    draws[0] = 1
    return draws.astype(float)


@functools.lru_cache(maxsize=8)
def _chunk_draws(n_chunks: int, n_draws: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """`chunk_weights` of a fresh generator (read-only) and the generator's state after them:
    every interval of a report draws the same weights, and the multinomial draws took a sixth
    of the report's time."""
    rng = np.random.default_rng(seed)
    weights = chunk_weights(n_chunks, n_draws, rng)
    weights.setflags(write=False)
    return weights, rng.bit_generator.state


def seed_picks(
    seeds: dict[str, list[int]], n_draws: int, rng: np.random.Generator
) -> dict[str, Int[np.ndarray, "draws seeds"]]:
    """Per arm, its seeds drawn with replacement in each draw (row 0: the seeds themselves).

    One `integers` call with each column's own bound draws the same stream as one
    `rng.choice(seeds, len(seeds))` per draw and arm in turn (tested), so the intervals are
    those a per-draw loop gives, at a small part of its cost.
    """
    sizes = [len(s) for s in seeds.values()]
    bounds = np.repeat(np.asarray(sizes, dtype=np.int64), sizes)
    drawn = rng.integers(0, np.broadcast_to(bounds, (n_draws - 1, bounds.size)))
    picks, start = {}, 0
    for (arm, own), n in zip(seeds.items(), sizes, strict=True):
        values = np.asarray(own, dtype=np.int64)
        picks[arm] = np.vstack([values[None], values[drawn[:, start : start + n]]])
        start += n
    return picks


def seed_mean(per_seed: dict[int, np.ndarray], picks: Int[np.ndarray, "draws seeds"]) -> np.ndarray:
    """Each draw's mean over its picked seeds: `per_seed[s]` has the draws last ([..., draws]),
    the result too."""
    order = sorted(per_seed)
    stacked = np.moveaxis(np.stack([np.asarray(per_seed[s]) for s in order]), -1, 1)
    where = np.searchsorted(np.asarray(order), picks)  # [draws, picked]
    gathered = stacked[where, np.arange(picks.shape[0])[:, None]]  # [draws, picked, ...]
    return np.moveaxis(gathered.mean(axis=1), 0, -1)


Statistic = Callable[
    [Float[np.ndarray, "draws chunks"], dict[str, Int[np.ndarray, "draws seeds"]]], np.ndarray
]
"""A statistic of every draw at once: (chunk weights, each arm's picked seeds) -> its values,
draws last ([draws] for one component, [components, draws] for several)."""


def bootstrap(
    statistic: Statistic,
    n_chunks: int,
    seeds: dict[str, list[int]],
    n_draws: int = N_DRAWS,
    seed: int = 0,
) -> Interval:
    """Percentile interval of `statistic(chunk_weights, seeds_per_arm)` over paired draws.

    Draw 0 uses every chunk once and every seed once: the point estimate. Other draws resample
    chunks (shared by all runs) and, per arm, its seeds with replacement.
    """
    return bootstrap_many(lambda w, s: statistic(w, s)[None], n_chunks, seeds, n_draws, seed)[0]


def bootstrap_many(
    statistic: Statistic,
    n_chunks: int,
    seeds: dict[str, list[int]],
    n_draws: int = N_DRAWS,
    seed: int = 0,
) -> list[Interval]:
    """`bootstrap` of a statistic with several components ([components, draws]), all read on
    the same draws: one interval per component (each a percentile interval of its own finite
    values)."""
    weights, state = _chunk_draws(n_chunks, n_draws, seed)
    rng = np.random.default_rng()
    rng.bit_generator.state = state  # where drawing the chunk weights left the stream
    values = np.asarray(statistic(weights, seed_picks(seeds, n_draws, rng)), dtype=float)
    out = []
    for column in values.reshape(-1, n_draws):
        finite = column[np.isfinite(column)]
        if finite.size == 0:
            out.append(Interval(float("nan"), float("nan"), float("nan")))
            continue
        low, high = np.percentile(finite, [2.5, 97.5])
        out.append(Interval(float(column[0]), float(low), float(high)))
    return out
