"""Stopping a training run cleanly: the first Ctrl-C (SIGINT) becomes a flag read between
steps, so the checkpoint written there is exact; a second one interrupts at once."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from replacement.errors import SparseCircuitsError


class TrainingInterrupted(SparseCircuitsError):
    """Ctrl-C stopped training at a step boundary; a checkpoint of that step was written."""

    def __init__(self, step: int, total: int, checkpoint: Path):
        super().__init__(
            f"interrupted after step {step} of {total}; checkpoint {str(checkpoint)!r} holds it, "
            "and running again with the same settings resumes from there"
        )
        self.step, self.total, self.checkpoint = step, total, checkpoint


@contextlib.contextmanager
def stop_on_interrupt(enabled: bool) -> Iterator[threading.Event]:
    """Turn the first Ctrl-C into a flag read at step boundaries; a second one interrupts at once."""
    flag = threading.Event()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        flag.set()
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
