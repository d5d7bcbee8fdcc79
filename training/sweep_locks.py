"""Several sweep processes on one folder: each run trained by one of them, every result kept.

Run `sparse-circuits claims --out DIR` (or the zoo's training stage) in N shells to use N cores
or accelerators. A process takes a run by holding an advisory `flock` on `<run folder>/.claimed`
while it trains it, and skips runs another process holds; the kernel drops the lock when its
holder dies, so a killed process's run is taken by the next one that looks. The shared results
file is updated under its own lock: read, this run's entry put in, written atomically. So no
process loses what another recorded. An activation cache the local runs share is written by
the first process that needs it while the others wait (`shared_cache`).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from replacement.atomic import write_json

CLAIM_FILE = ".claimed"
"""Held (flock) by the process training the run whose folder holds it."""


@contextmanager
def claimed(folder: Path) -> Iterator[bool]:
    """True while this process holds the run in `folder`; False (at once) when another does."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / CLAIM_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Wait for and hold the lock file `path` (shared by every process of one sweep)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def lock_path(results_path: Path) -> Path:
    """The lock guarding `results_path` (a hidden file beside it)."""
    return results_path.with_name(f".{results_path.name}.lock")


def update_results(
    path: Path, update: Callable[[dict[str, Any] | None], dict[str, Any]]
) -> dict[str, Any]:
    """Under the file's lock: read it (None when absent), apply `update`, write what it returns
    atomically, and return that."""
    with locked(lock_path(path)):
        current = json.loads(path.read_text()) if path.is_file() else None
        new = update(current)
        write_json(path, new)
        return new


def save_entry(path: Path, results: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Put this process's entry `results[k0][k1]...` into the shared file, keeping everything
    else the file holds, then take the file's other entries into `results`.

    Missing parents are created from `results`' own (their other children left out); our
    entry's object in `results` is never replaced, so a caller still filling it keeps it.
    """

    def put(current: dict[str, Any] | None) -> dict[str, Any]:
        merged = current if current is not None else {**results, keys[0]: {}}
        _graft(merged, results, keys)
        return merged

    _absorb(results, update_results(path, put), keys)


def _graft(dst: dict[str, Any], src: dict[str, Any], keys: tuple[str, ...]) -> None:
    d, s = dst, src
    for k, child in zip(keys[:-1], keys[1:], strict=True):
        if k not in d:
            d[k] = {**s[k], child: {}}
        d, s = d[k], s[k]
    d[keys[-1]] = s[keys[-1]]


def _absorb(ours: dict[str, Any], theirs: dict[str, Any], keys: tuple[str, ...]) -> None:
    # the file wins everywhere but on our entry's path; what only we hold is kept
    for k, v in theirs.items():
        on_path = bool(keys) and k == keys[0]
        if on_path and len(keys) == 1:
            continue
        if isinstance(v, dict) and isinstance(ours.get(k), dict):
            _absorb(ours[k], v, keys[1:] if on_path else ())
        else:
            ours[k] = v


def read_results(path: Path) -> dict[str, Any] | None:
    """The file as last written whole (None when absent); read under its lock."""
    with locked(lock_path(path)):
        return json.loads(path.read_text()) if path.is_file() else None


def shared_cache(
    folder: Path,
    dtype: str,
    hooks: list[str],
    model: Any,
    train_data: Any,
    log: Callable[[str], None],
) -> Path:
    """The activation cache in `folder` of `hooks` over `train_data`'s training rows, written
    on first use by one process while the others wait for it (its lock beside the folder).

    A cache already there is used when it holds every hook in `dtype`; which rows it holds is
    checked by each run (`Trainer`: the token rows' hash), so other rows fail loudly there.
    """
    from training.activation_cache import ActivationCache, write_activation_cache

    with locked(folder.with_name(f".{folder.name}.lock")):
        if (folder / "manifest.json").is_file():
            cache = ActivationCache(folder)
            if set(hooks) <= set(cache.hooks) and cache.manifest["dtype"] == dtype:
                return folder
        log(f"writing the activation cache of {hooks} ({dtype}) to {folder}")
        start = time.perf_counter()
        write_activation_cache(
            model, train_data, hooks, folder, dtype=dtype, n_shards=4, verbose=False
        )
        log(f"activation cache written in {time.perf_counter() - start:.0f} s")
    return folder
