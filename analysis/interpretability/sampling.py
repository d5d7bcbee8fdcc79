"""Examples as delphi draws them: contexts (windows of `window` tokens) sampled across the
quantiles of their maximum activation, plus non-activating contexts, per unit.

`Examples` holds, for each unit, the sampled windows' token indices and which tokens fire,
and the tokens highlighted for fuzzing: the firing tokens ("correct") and as many non-firing
tokens of the same window drawn at random ("wrong").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool, Float, Int

from analysis.interpretability.units import UnitActs


@dataclass
class SampleSettings:
    """How examples are drawn (delphi's defaults, scaled to a small corpus)."""

    window: int = 32
    """Tokens per context."""
    n_quantiles: int = 10
    """Quantile bins of the activating contexts' maximum activation."""
    per_quantile: int = 5
    """Activating contexts drawn per bin."""
    n_negative: int = 50
    """Non-activating contexts drawn per unit."""
    min_contexts: int = 10
    """A unit needs this many activating contexts in a split to be scored (else: too rare)."""


@dataclass
class Examples:
    """Sampled contexts of every unit of a source on one split."""

    window_token: Int[np.ndarray, "units samples window"]
    """Flat token index of each position of each sampled context (0 where unused)."""
    activating: Bool[np.ndarray, "units samples"]
    valid: Bool[np.ndarray, "units samples"]
    fires: Bool[np.ndarray, "units samples window"]
    wrong: Bool[np.ndarray, "units samples window"]
    """Randomly highlighted non-firing tokens (as many as fire), activating contexts only."""
    scored: Bool[np.ndarray, " units"]
    """Units with at least `min_contexts` activating contexts."""
    window_max: Float[np.ndarray, "units samples"]


def window_maxima(acts: UnitActs, window: int) -> Float[np.ndarray, "units windows"]:
    """Maximum activation of each unit in each window (dense; windows never cross rows when
    `window` divides the row length)."""
    n_windows = acts.n_tokens // window
    out = np.zeros((acts.n_units, n_windows), dtype=np.float32)
    w = acts.token // window
    keep = w < n_windows
    keys = acts.unit[keep].astype(np.int64) * n_windows + w[keep]
    if keys.size:
        bounds = np.flatnonzero(np.diff(keys)) + 1
        starts = np.concatenate([[0], bounds])
        maxima = np.maximum.reduceat(acts.value[keep], starts)
        out.reshape(-1)[keys[starts]] = maxima
    return out


def sample_examples(acts: UnitActs, settings: SampleSettings, seed: int) -> Examples:
    """Draw each unit's contexts (see the module docstring)."""
    rng = np.random.default_rng(seed)
    W = settings.window
    wmax = window_maxima(acts, W)
    n_units, n_windows = wmax.shape
    n_act = settings.n_quantiles * settings.per_quantile
    S = n_act + settings.n_negative
    windows = np.zeros((n_units, S), dtype=np.int64)
    activating = np.zeros((n_units, S), dtype=bool)
    valid = np.zeros((n_units, S), dtype=bool)
    scored = np.zeros(n_units, dtype=bool)
    for u in range(n_units):
        row = wmax[u]
        on = np.flatnonzero(row > 0)
        if on.size < settings.min_contexts or on.size == n_windows:
            continue
        scored[u] = True
        ranked = on[np.argsort(row[on], kind="stable")]
        picks = []
        for part in np.array_split(ranked, settings.n_quantiles):
            if part.size:
                picks.append(rng.choice(part, min(settings.per_quantile, part.size), replace=False))
        picks = np.concatenate(picks)
        windows[u, : picks.size] = picks
        activating[u, : picks.size] = valid[u, : picks.size] = True
        draws = rng.integers(0, n_windows, size=settings.n_negative * 4)
        off = np.unique(draws[row[draws] == 0])[: settings.n_negative]
        rng.shuffle(off)
        windows[u, n_act : n_act + off.size] = off
        valid[u, n_act : n_act + off.size] = True
    window_token = windows[:, :, None] * W + np.arange(W)
    units = np.broadcast_to(np.arange(n_units)[:, None, None], window_token.shape)
    fires = (acts.lookup(units, window_token) > 0) & activating[:, :, None]
    # wrong highlights: as many random non-firing tokens of the same window as fire in it
    noise = rng.random(fires.shape)
    noise[fires] = 2.0
    rank = noise.argsort(axis=-1).argsort(axis=-1)
    n_fire = fires.sum(-1, keepdims=True)
    wrong = (rank < n_fire) & ~fires & activating[:, :, None]
    return Examples(
        window_token,
        activating,
        valid,
        fires,
        wrong,
        scored,
        np.take_along_axis(wmax, windows, axis=1) * valid,
    )
