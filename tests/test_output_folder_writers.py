"""Two writers into one output folder (issue 25, item 3): the second is refused by pid, always.

A first writer (a child process) opens a folder with `OutputFolder` and pauses at each instant
where the folder looks half-written: lock taken but its pid not yet written, the marker's
temporary file half-written, a claimed file's temporary half-written, an entry moved in but
not yet listed, a new set staged, the staged set's marker half-written, the set swapped in
with the old one not yet removed. At each pause a second writer must be refused naming the
first's pid, never told that the folder holds files sparse-circuits did not write. A first writer killed (-9)
while its marker temporary exists leaves a folder that the next run opens as its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from replacement.output_folder import LOCK, MARKER, FolderInUseError, OutputFolder, read_marker

REPO = Path(__file__).resolve().parents[1]

# The first writer: prints the name of each instant it pauses at and waits for a line on stdin.
_FIRST = textwrap.dedent(
    """
    import fcntl, sys
    from pathlib import Path
    import replacement.atomic as atomic
    import replacement.output_folder as of
    from replacement.output_folder import MARKER, OutputFolder

    def pause(name):
        print(name, flush=True)
        sys.stdin.readline()

    real_flock, real_write_json = fcntl.flock, atomic.write_json
    first_flock = [True]

    def flock(fd, op):  # the folder's lock taken, its pid not yet written
        real_flock(fd, op)
        if first_flock[0] and op & fcntl.LOCK_EX:
            first_flock[0] = False
            pause("locked")

    def write_json(path, data):  # the marker's temporary written halfway
        if Path(path).name != MARKER:
            return real_write_json(path, data)
        with atomic.atomic_path(path) as tmp:
            tmp.write_text('{"format": "sparse-circ')
            pause("marker-temp")
            tmp.write_text(atomic.json.dumps(data))

    real_exchange = of._exchange

    def exchange(a, b):  # the new set swapped in, the old one beside it, not yet removed
        real_exchange(a, b)
        pause("swapped")

    fcntl.flock, atomic.write_json, of._exchange = flock, write_json, exchange
    with OutputFolder(sys.argv[1], command="first") as out:
        out.claim(["result.json"])
        with atomic.atomic_path(out.path / "result.json") as tmp:
            tmp.write_text("[1, 2")
            pause("result-temp")
            tmp.write_text("[1, 2, 3]")
        (out.path / "moved-in.json").write_text("{}")  # a set's entry moved in, not yet listed
        pause("unlisted")
        out.claim(["result.json", "moved-in.json"])  # now listed (the marker pauses again)
        staging = out.stage()
        (staging / "set.json").write_text("[]")
        pause("staged")
        out.commit()  # the staged marker pauses half-written, then the swap
    pause("closed")
    """
)


class _First:
    """The first writer, stepped from one pause to the next."""

    def __init__(self, folder: Path):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _FIRST, str(folder)], env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip

    def reached(self) -> str:
        line = self.proc.stdout.readline().strip()
        assert line, self.proc.stderr.read()
        return line

    def go(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def _second(folder: Path) -> str:
    """A second writer's refusal (the test fails if it gets the folder or another error)."""
    with pytest.raises(FolderInUseError) as refused, OutputFolder(folder, command="second"):
        pass
    return str(refused.value)


def test_a_second_writer_is_refused_by_pid_at_every_instant_of_the_first(tmp_path):
    folder = tmp_path / "out"
    first = _First(folder)
    try:
        # lock taken, pid not yet written: the second waits briefly for the pid
        assert first.reached() == "locked"
        answer: list[str] = []
        second = threading.Thread(target=lambda: answer.append(_second(folder)))
        second.start()
        time.sleep(0.3)
        first.go()
        second.join()
        assert f"in use by another sparse-circuits run (pid {first.proc.pid})" in answer[0]
        instants = [  # (where the first is, whether a half-written file is in the folder)
            ("marker-temp", True), ("marker-temp", True), ("result-temp", True),
            ("unlisted", True), ("marker-temp", True),
            ("staged", True), ("marker-temp", True),  # the injected one (the new set's is beside)
            ("swapped", False),  # the injected one went with the old set
        ]  # fmt: skip
        for instant, half_written in instants:
            assert first.reached() == instant
            if instant == "unlisted":  # and a temporary of our marker injected by hand
                (folder / f".{MARKER}.injected.tmp").write_text("{")
            temporaries = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
            assert bool(temporaries) == half_written, (instant, temporaries)
            message = _second(folder)
            assert f"(pid {first.proc.pid})" in message and "did not write" not in message, (
                instant, message)  # fmt: skip
            first.go()
        assert first.reached() == "closed"
        first.go()
        assert first.proc.wait(timeout=30) == 0, first.proc.stderr.read()
    finally:
        if first.proc.poll() is None:
            first.kill()
    # free again: the next writer gets it and finds the committed set
    with OutputFolder(folder, command="third"):
        assert sorted(p.name for p in folder.iterdir()) == [MARKER, LOCK, "set.json"]
        assert read_marker(folder) == {"set.json"}


def test_a_writer_killed_while_writing_its_marker_leaves_a_folder_the_rerun_opens(tmp_path):
    folder = tmp_path / "out"
    first = _First(folder)
    try:
        assert first.reached() == "locked"
        first.go()
        assert first.reached() == "marker-temp"  # the open's marker: the folder is new
        first.go()
        assert first.reached() == "marker-temp"  # claiming result.json, half-written
        assert [p for p in folder.iterdir() if p.name.startswith(f".{MARKER}.")]
    finally:
        first.kill()
    # the dead run's lock and temporary do not block the rerun, which finds the folder ours
    with OutputFolder(folder, command="rerun") as out:
        out.claim(["result.json"])
        names = sorted(p.name for p in folder.iterdir())
    assert names == [MARKER, LOCK]
    assert read_marker(folder) == {"result.json"}
