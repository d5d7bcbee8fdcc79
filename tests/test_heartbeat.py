"""A run without a progress bar says where it is every few minutes (`training.heartbeat`)."""

from __future__ import annotations

from training.heartbeat import Heartbeat, duration_text


def test_a_line_at_most_every_interval_with_the_pace_since_the_last_line():
    """Steps at 2 s each, lines at most every 10 s: the pace is measured over the steps since
    the previous line, and the time left is the steps left at that pace."""
    now = [0.0]
    said: list[str] = []
    beat = Heartbeat(said.append, "run", every_s=10.0, clock=lambda: now[0])
    for step in range(1, 21):  # the first call only starts the clock (resumed runs: any step)
        now[0] = 2.0 * step
        beat(step, 100)
    assert said == [
        "run: step 6 of 100 (6%), 2.00 s a step, about 3 min left",
        "run: step 11 of 100 (11%), 2.00 s a step, about 3 min left",
        "run: step 16 of 100 (16%), 2.00 s a step, about 3 min left",
    ]
    now[0] = 40.0 + 50.0  # one slow step: the pace is (90 - 32) s over steps 17-21
    beat(21, 100)
    assert said[-1] == "run: step 21 of 100 (21%), 11.60 s a step, about 15 min left"


def test_durations_read_in_the_unit_that_fits():
    assert [duration_text(s) for s in (45, 600, 5400, 9000)] == ["45 s", "10 min", "1.5 h", "2.5 h"]
