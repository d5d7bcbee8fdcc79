"""A progress line every few minutes from a run that trains without a progress bar.

The claims sweep and the zoo build train rungs of up to hours with `verbose=False` (several
processes share a log), so a rung would otherwise say nothing between its start and its end.
"""

from __future__ import annotations

import time
from collections.abc import Callable

EVERY_S = 600.0
"""Seconds between two lines of one run."""


def duration_text(seconds: float) -> str:
    """`45 s`, `12 min`, `2.3 h`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Heartbeat:
    """Called after each optimiser step with (steps done, total steps); logs the step, the
    seconds a step took since the last line and the time left at that pace, at most once every
    `every_s` seconds (`EVERY_S` when not given)."""

    def __init__(
        self,
        log: Callable[[str], None],
        label: str,
        every_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.log, self.label, self.clock = log, label, clock
        self.every_s = EVERY_S if every_s is None else every_s
        self._since: tuple[float, int] | None = None  # (time, step) of the pace's start

    def __call__(self, step: int, total: int) -> None:
        now = self.clock()
        if self._since is None:
            self._since = (now, step)
            return
        then, before = self._since
        if now - then < self.every_s or step <= before:
            return
        pace = (now - then) / (step - before)
        self.log(
            f"{self.label}: step {step:,} of {total:,} ({100 * step / total:.0f}%), "
            f"{pace:.2f} s a step, about {duration_text((total - step) * pace)} left"
        )
        self._since = (now, step)
