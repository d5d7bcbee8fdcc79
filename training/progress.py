"""One-line progress messages for the slow start of a run (loading, tokenizing, filling).

Printed to stderr with the seconds since the process started, so a user sees from the first
second what a run is doing before its progress bar appears.
"""

from __future__ import annotations

import sys
import time

_START = time.monotonic()


def progress(enabled: bool, message: str) -> None:
    """Print `[+12.3s] message` to stderr when `enabled`."""
    if enabled:
        print(f"[+{time.monotonic() - _START:5.1f}s] {message}", file=sys.stderr, flush=True)
