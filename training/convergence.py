"""When a training run has converged: a ladder of budgets that doubles until a metric settles.

A run's held-out metric (CE increase) is measured at budgets T0, 2 T0, 4 T0, ... each a full
training run with its own learning-rate schedule (a schedule that decays to the end of its own
budget cannot be read off midway). The run has converged when the metric changed by less than
`tolerance` (relative) or by less than `floor` (absolute) over the last doubling; the ladder stops
there or at its cap. The floor is for metrics near zero, where a relative change is chunk noise
(a ReLU SAE at L0 250 sits at 0.0019 nats, and moved 4% between 8M and 16M tokens by 8e-5 nats).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from replacement.errors import SparseCircuitsError

DEFAULT_TOLERANCE = 0.02
"""Relative change over the last doubling below which a run counts as converged (issue 22)."""

DEFAULT_FLOOR = 5e-4
"""Absolute change (nats of CE increase) over the last doubling below which a run counts as
converged whatever the relative change: a tenth of the smallest difference a claim resolves (the
skip claim's -0.0055 at k=32), and 4x the seed-to-seed spread of the runs that need it."""


def budget_ladder(start_tokens: int, cap_tokens: int) -> list[int]:
    """Token budgets start, 2 start, 4 start, ... up to and including the cap (which ends it).

    The cap itself is the last rung when it is not a doubling of the start, so a run never
    trains past it.
    """
    if start_tokens <= 0:
        raise ValueError(f"start_tokens must be positive; got {start_tokens}")
    if cap_tokens < start_tokens:
        raise ValueError(f"cap_tokens {cap_tokens} is below start_tokens {start_tokens}")
    rungs = [int(start_tokens)]
    while rungs[-1] * 2 <= cap_tokens:
        rungs.append(rungs[-1] * 2)
    if rungs[-1] < cap_tokens:
        rungs.append(int(cap_tokens))
    return rungs


def relative_change(curve: Sequence[tuple[int, float]]) -> float | None:
    """|m(last) - m(previous)| / |m(previous)| of a (tokens, metric) curve; None below 2 rungs."""
    if len(curve) < 2:
        return None
    (_, previous), (_, last) = curve[-2], curve[-1]
    scale = max(abs(previous), 1e-12)
    return abs(last - previous) / scale


def has_converged(
    curve: Sequence[tuple[int, float]], tolerance: float = DEFAULT_TOLERANCE, floor: float = 0.0
) -> bool:
    """True when the metric changed by less than `tolerance` (relative) or `floor` (absolute)
    over the last doubling of tokens.

    `curve` holds (training tokens, held-out metric) in increasing tokens. A last rung that is
    not a doubling of the previous one (the ladder's cap) does not count as a doubling.
    """
    if len(curve) < 2:
        return False
    (t_prev, _), (t_last, _) = curve[-2], curve[-1]
    if t_last < 2 * t_prev:
        return False
    change = relative_change(curve)
    absolute = abs(curve[-1][1] - curve[-2][1])
    return (change is not None and change < tolerance) or absolute < floor


def raised_cap(setup: dict[str, Any], start_tokens: int, cap_tokens: int, where: str) -> int:
    """The cap a resumed (or merged) sweep runs under: a sweep's cap may rise, never fall.

    Raising it extends the ladders that ended at the old cap unconverged and leaves every
    converged one as it was, so all runs still follow one rule (a run stops when it settles or
    at the cap). The old cap must be a rung of the new ladder, or the ladders would have a rung
    that is no longer on it; a lower cap would leave rungs above the cap. Raises
    `SparseCircuitsError` naming both caps otherwise.
    """
    old = int(setup["cap_tokens"])
    if cap_tokens == old:
        return old
    if cap_tokens < old or old not in budget_ladder(start_tokens, cap_tokens):
        raise SparseCircuitsError(
            f"{where!r} was recorded with --cap-tokens {old:,}; a sweep's cap can only be "
            f"raised to a doubling of it (got {cap_tokens:,}), so its ladders keep their rungs"
        )
    return cap_tokens


def merged_cap(ours: dict[str, Any], theirs: dict[str, Any], where: str) -> int:
    """The cap of two merged ladder files' setups: the higher one, whose ladder must hold the
    lower cap as a rung (`raised_cap`); raises `SparseCircuitsError` otherwise."""
    low, high = sorted((ours, theirs), key=lambda s: int(s["cap_tokens"]))
    return raised_cap(low, int(ours["start_tokens"]), int(high["cap_tokens"]), where)
