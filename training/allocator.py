"""Keep freed memory in the process on glibc, so a training step's large tensors reuse pages.

glibc serves every allocation above its mmap threshold (at most 32 MiB by default) with a
fresh mapping and unmaps it on free. An e2e step on the default model makes a dozen
(tokens x vocabulary) float tensors of 64 MiB each, and every one of them then page-faults
in anew: on a CPU that was about a sixth of the step (`tests/benchmarks/bench_allocator.py`).
Raising the mmap and trim thresholds keeps such blocks in the heap for the next step. The
cost is that the process holds on to its peak memory, which a training process reaches
again every step anyway. It changes no result: only where tensors live.

The training commands (`sparse-circuits train`, `claims`, `python -m training.build_zoo`)
call `keep_freed_memory` at start; a notebook may call it itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 1 << 30
"""Blocks up to 1 GiB come from (and go back to) the heap."""


def keep_freed_memory(threshold_bytes: int = THRESHOLD_BYTES) -> bool:
    """Raise glibc's mmap and trim thresholds to `threshold_bytes`; returns whether both took
    effect (False on a C library without `mallopt`, e.g. macOS or musl: nothing changes)."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    value = min(int(threshold_bytes), 2**31 - 1)
    return bool(mallopt(M_MMAP_THRESHOLD, value)) and bool(mallopt(M_TRIM_THRESHOLD, value))
