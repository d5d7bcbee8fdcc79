"""Output folders a command owns: never assumed, one writer at a time, sets replaced whole.

    with OutputFolder("acts/", command="cache") as out:   # resolves, checks, locks
        out.check_space(planned_bytes, "the cache")
        staging = out.stage()                          # write the new set here
        ...
        out.commit()                                   # swap it in; the old set goes

- The path is resolved first (`a/b/..` is `a`, a symlink its target).
- A marker file (`MARKER`) lists the entries this toolkit wrote. A non-empty folder with
  entries the marker does not list is refused by name, unless `overwrite`; even then only
  listed entries are ever removed (files of ours with the same names are replaced).
- An advisory `fcntl.flock` on `LOCK` is held while the folder is open, and taken before the
  folder's content is looked at (a running writer's half-written files would otherwise read as
  foreign): a second run into the same folder is refused with the holder's pid. The kernel
  drops the lock when a process dies, so a crash leaves nothing that blocks the rerun.
- A new set is written into a staging folder beside the target and swapped in with one
  `renameat2(RENAME_EXCHANGE)` (two renames where that is missing; a run cut between them is
  rolled back by the next open): a kill at any instant leaves the old complete set or the new
  one. In a folder shared with foreign files the set's entries move in one by one.
- Writers that must keep files in place between runs (a training run's checkpoint) use
  `claim` before writing and `commit_in_place` at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from replacement.errors import SparseCircuitsError

MARKER = ".sparse-circuits-files.json"
"""The list of entries sparse-circuits wrote into a folder."""
LOCK = ".sparse-circuits.lock"
"""The file whose `flock` marks the folder as in use (it holds the writer's pid)."""
_NEW, _OLD = ".sc-new-", ".sc-old-"
_PROBE = ".write-test-"  # `replacement.validation`'s write probe (left by a kill at that instant)
_RENAME_EXCHANGE = 2
_SHOWN = 5  # foreign entries named in a refusal

# folders this process holds open, so a nested open (a CLI, then the API it calls) reuses them
_HELD: dict[Path, OutputFolder] = {}


class OutputFolderError(SparseCircuitsError):
    """An output folder that cannot be used: not ours, in use, or without room."""


class FolderInUseError(OutputFolderError):
    """Another process holds the folder's lock."""


def resolve_output(path: str | Path) -> Path:
    """The absolute path with `~`, `..` and symlinks resolved (checks then see the real folder)."""
    return Path(path).expanduser().resolve()


def read_marker(folder: Path) -> set[str]:
    """Entries the folder's marker lists (empty without a marker or with a damaged one)."""
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return set()
    files = data.get("files", []) if isinstance(data, dict) else data  # older markers: a list
    return {str(n) for n in files if isinstance(n, str)} if isinstance(files, list) else set()


def write_marker(folder: Path, names: Iterable[str], command: str = "") -> None:
    """Write the marker listing `names` (atomically)."""
    from replacement.atomic import write_json

    write_json(
        folder / MARKER,
        {"format": "sparse-circuits-output", "command": command, "files": sorted(set(names))},
    )


_MKSTEMP = re.compile(r"[a-z0-9_]{8}")
"""The random part `tempfile.mkstemp` puts in a name (`atomic_path`'s temporaries)."""


def _our_temporary(name: str, ours: Callable[[str], bool]) -> bool:
    """`.NAME.xxxx.tmp` of one of our files (the marker's included): being written, or left by a
    kill in `atomic_path`."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    inner, _, random = name[1:-4].rpartition(".")
    if not _MKSTEMP.fullmatch(random):  # exactly tempfile's 8-character name, nothing else
        return False
    return inner in (MARKER, LOCK) or ours(inner)


def foreign_entries(
    folder: Path, listed: set[str], legacy: Callable[[Path], bool] | None = None
) -> list[str]:
    """Entries of `folder` that sparse-circuits did not write (not listed, not recognised)."""

    def ours(name: str) -> bool:
        return name in listed or (legacy is not None and legacy(folder / name))

    names = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if name in (MARKER, LOCK) or name.startswith((_NEW, _PROBE)) or ours(name):
            continue
        if _our_temporary(name, ours):
            continue
        names.append(name)
    return names


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _lock(folder: Path, option: str) -> tuple[int, bool]:
    """Hold `folder/LOCK` (non-blocking); raise `FolderInUseError` naming the holder's pid.

    Returns the descriptor and whether this call created the lock file.
    """
    path = folder / LOCK
    for _ in range(5):
        try:
            fd, created = (
                os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644),
                True,
            )
        except FileExistsError:
            try:
                fd, created = os.open(path, os.O_RDWR | os.O_CLOEXEC), False
            except FileNotFoundError:  # removed meanwhile by a run that gave the folder up
                continue
        except FileNotFoundError:  # the folder itself was removed meanwhile (an empty one)
            folder.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderInUseError(
                f"{option} {str(folder)!r} is in use by another sparse-circuits run (pid "
                f"{holder}); wait for it to finish or choose another folder"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a lock file that a swap moved away or a refusal removed meanwhile
            pid = f"{os.getpid()}\n".encode()
            os.pwrite(fd, pid, 0)  # then cut: a reader never sees the file empty
            os.ftruncate(fd, len(pid))
            return fd, created
        os.close(fd)
    raise FolderInUseError(f"{option} {str(folder)!r} keeps changing; is another run writing it?")


def _holder(fd: int) -> str:
    """The pid in a held lock file (the holder writes it just after taking the lock)."""
    for _ in range(100):
        text = os.pread(fd, 64, 0).decode(errors="replace")
        pid = text.split("\n", 1)[0].strip()
        if pid.isdigit() and text.endswith("\n"):
            return pid
        time.sleep(0.02)
    return "unknown"


def _exchange(a: Path, b: Path) -> None:
    """Swap two folders' names atomically (renameat2); two renames where that is missing."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        at_cwd = -100
        if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
            raise OSError(err, os.strerror(err), str(b))
    # the window between the renames is rolled back by `OutputFolder._rollback`
    old = b.with_name(f".{b.name}{_OLD}{os.getpid()}")
    os.rename(b, old)
    os.rename(a, b)
    os.rename(old, a)


def _stale(folder: Path) -> bool:
    """A staging folder whose writer is gone (its lock is free)."""
    try:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


class OutputFolder:
    """A folder a command writes into; see the module docstring.

    Args:
        path: the folder (created if missing).
        command: the command's name, recorded in the marker.
        overwrite: allow a folder that holds entries we did not write (they are kept).
        option: the option's name in messages.
        legacy: recognises entries written before markers existed (exact names only).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        command: str,
        overwrite: bool = False,
        option: str = "--out",
        legacy: Callable[[Path], bool] | None = None,
    ):
        self.path = resolve_output(path)
        self.command, self.overwrite, self.option, self.legacy = command, overwrite, option, legacy
        self.shared = False
        self._fds: list[int] = []
        self._staging: Path | None = None
        self._depth = 0
        self._created = False

    # ---- open and close ----------------------------------------------------------------------
    def __enter__(self) -> OutputFolder:
        held = _HELD.get(self.path)
        if held is not None and held is not self:
            raise OutputFolderError(f"{self.option} {str(self.path)!r} is already open here")
        if self._depth == 0:
            self.open()
        self._depth += 1
        return self

    def __exit__(self, kind, value, tb) -> None:
        self._depth -= 1
        if kind is not None:
            self.discard()
        if self._depth == 0:
            self.close()

    def open(self) -> None:
        """Check the folder, take its lock, and refuse it if it holds foreign entries."""
        from replacement.validation import check_output_dir

        check_output_dir(self.path, self.option)
        self._rollback()
        self._created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        # the lock before the content: a running writer's half-written files are not foreign
        fd, made_lock = _lock(self.path, self.option)
        self._fds.append(fd)
        _HELD[self.path] = self
        try:
            self._remove_stale_staging()
            try:
                foreign = self._foreign()
            except OutputFolderError:
                if made_lock:  # a folder that is not ours keeps only what it held
                    (self.path / LOCK).unlink(missing_ok=True)
                raise
            listed = read_marker(self.path)
            for path in self.path.glob(".*.tmp"):  # a dead run's half-written files of ours
                if _our_temporary(path.name, lambda n: n in listed) and path.is_file():
                    path.unlink(missing_ok=True)
            self.shared = bool(foreign)
            ours = {p.name for p in self.path.iterdir()} - set(foreign) - {MARKER, LOCK}
            ours = {n for n in ours if not n.startswith(".") or n in listed}
            if ours != listed or not (self.path / MARKER).exists():
                write_marker(self.path, ours, self.command)  # claims legacy and new folders
        except BaseException:
            self.close()
            raise

    def _foreign(self) -> list[str]:
        """The foreign entries (refused by name unless `overwrite`)."""
        foreign = foreign_entries(self.path, read_marker(self.path), self.legacy)
        if foreign and not self.overwrite:
            shown = ", ".join(repr(n) for n in foreign[:_SHOWN])
            more = f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN else ""
            raise OutputFolderError(
                f"{self.option} {str(self.path)!r} holds files sparse-circuits did not write "
                f"({shown}{more}); choose a new or empty folder, or pass --overwrite (only "
                "files sparse-circuits wrote there are replaced; yours are kept)"
            )
        return foreign

    def close(self) -> None:
        """Release the lock(s); a folder we created that received nothing goes again."""
        if self._fds and self._created and self.path.is_dir():
            if {p.name for p in self.path.iterdir()} <= {MARKER, LOCK}:
                for name in (MARKER, LOCK):
                    (self.path / name).unlink(missing_ok=True)
                with contextlib.suppress(OSError):  # another run may be entering it
                    self.path.rmdir()
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        if _HELD.get(self.path) is self:
            del _HELD[self.path]

    def _rollback(self) -> None:
        """Roll back a swap cut between its two renames (before the lock: the folder is away)."""
        parent = self.path.parent
        if not parent.is_dir():
            return
        olds = sorted(parent.glob(f".{self.path.name}{_OLD}*"))
        if olds and not self.path.exists() and _stale(olds[0]):
            os.rename(olds[0], self.path)  # the old complete set

    def _remove_stale_staging(self) -> None:
        """Remove staging folders of dead runs (under the lock: no live run is staging)."""
        parent = self.path.parent
        olds = sorted(parent.glob(f".{self.path.name}{_OLD}*"))
        leftovers = [*parent.glob(f".{self.path.name}{_NEW}*"), *olds, *self.path.glob(f"{_NEW}*")]
        for leftover in leftovers:
            if leftover.is_dir() and _stale(leftover):
                shutil.rmtree(leftover, ignore_errors=True)

    # ---- checks -------------------------------------------------------------------------------
    def check_space(self, planned_bytes: int, what: str) -> None:
        """Refuse before any work when the disk lacks `planned_bytes` (plus 5%) of free space."""
        free = shutil.disk_usage(self.path).free
        need = int(planned_bytes * 1.05) + (1 << 20)
        if free < need:
            raise OutputFolderError(
                f"{self.option} {str(self.path)!r}: {what} needs about {_size(need)} but only "
                f"{_size(free)} is free on that disk; free some space, write elsewhere, or "
                "make it smaller"
            )

    # ---- a new set, swapped in whole ----------------------------------------------------------
    def stage(self) -> Path:
        """An empty staging folder for the new set (beside the target; inside it if shared)."""
        self.discard()
        cwd = Path.cwd()
        if self.shared or cwd == self.path or self.path in cwd.parents:
            staging = self.path / f"{_NEW}{os.getpid()}"
        else:
            staging = self.path.parent / f".{self.path.name}{_NEW}{os.getpid()}"
        _remove(staging)
        staging.mkdir()
        self._staging = staging
        # the staging folder's own lock becomes the folder's lock when it is swapped in
        self._fds.append(_lock(staging, self.option)[0])
        return staging

    def commit(self, names: Iterable[str] | None = None) -> list[Path]:
        """Make the staged set the folder's content; returns the new entries' final paths.

        `names`: the top-level entries of the set (default: everything staged).
        """
        staging = self._staging
        if staging is None:
            raise OutputFolderError("commit() without stage()")
        if names is None:
            names = [p.name for p in staging.iterdir() if p.name not in (MARKER, LOCK)]
        names = sorted(set(names))
        write_marker(staging, names, self.command)
        listed = read_marker(self.path)
        foreign = foreign_entries(self.path, listed, self.legacy)
        cwd_inside = Path.cwd() == self.path or self.path in Path.cwd().parents
        # swapping the folder a shell stands in would leave it in the deleted old one
        if not foreign and staging.parent == self.path.parent and not cwd_inside:
            _exchange(staging, self.path)  # staging now holds the old set
            shutil.rmtree(staging, ignore_errors=True)
        else:  # a folder shared with foreign files: only our entries move or go
            clash = [n for n in names if n in foreign]
            if clash:  # never replace a user's file of the same name; keep the new set aside
                self._staging = None
                raise OutputFolderError(
                    f"{self.option} {str(self.path)!r}: your {', '.join(map(repr, clash))} would "
                    f"be replaced by the new output of the same name; they are kept, and the new "
                    f"set waits in {str(staging)!r} (until the next run into this folder): move "
                    "it from there, or rename your files and run again"
                )
            for name in names:
                target = self.path / name
                if target.is_dir() and not target.is_symlink():
                    trash = self.path / f"{_NEW}{os.getpid()}-old-{name}"
                    os.rename(target, trash)
                    os.rename(staging / name, target)
                    shutil.rmtree(trash)
                else:
                    os.replace(staging / name, target)
            for name in sorted(listed - set(names)):
                _remove(self.path / name)
            write_marker(self.path, names, self.command)
            shutil.rmtree(staging, ignore_errors=True)
        self._staging = None
        return [self.path / name for name in names]

    def discard(self) -> None:
        """Remove a staged, uncommitted set (the folder keeps its complete old set)."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    # ---- files kept in place (a training run's checkpoint and metrics) ----------------------
    def claim(self, names: Iterable[str]) -> None:
        """List `names` in the marker before writing them, so a crash leaves them ours."""
        listed = read_marker(self.path)
        if not set(names) <= listed:
            write_marker(self.path, listed | set(names), self.command)

    def commit_in_place(self, names: Iterable[str]) -> list[Path]:
        """After writing `names` in place: remove the entries an earlier run listed, and only those."""
        keep = set(names)
        removed = []
        for name in sorted(read_marker(self.path) - keep):
            path = self.path / name
            if path.exists():
                _remove(path)
                removed.append(path)
        write_marker(self.path, keep, self.command)
        return removed


@contextlib.contextmanager
def owned(
    folder: str | Path | OutputFolder,
    *,
    command: str,
    overwrite: bool = False,
    legacy: Callable[[Path], bool] | None = None,
) -> Iterator[OutputFolder]:
    """`folder` open as an `OutputFolder` (one the caller opened is used as it is)."""
    if isinstance(folder, OutputFolder):
        with folder:
            yield folder
        return
    held = _HELD.get(resolve_output(folder))
    out = held or OutputFolder(folder, command=command, overwrite=overwrite, legacy=legacy)
    with out:
        yield out


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def add_overwrite_flag(parser: Any) -> None:
    """The `--overwrite` switch of a command with `--out`."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an --out folder that holds files sparse-circuits did not write "
        "(they are kept; only files it wrote there are replaced)",
    )
