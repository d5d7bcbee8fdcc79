"""tools/cpu_session.sh's workers stop when asked: they start with SIGINT at its default, and
`stop` reaches a worker that ignored SIGINT outside its loop once the loop catches it.

Stand-ins play the workers (a fake `sparse-circuits` on PATH, a Python process), and
$WORKERS_MATCH narrows `stop` to them, so a real worker on the machine is left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "cpu_session.sh"
pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")

# A worker: reports how it found SIGINT, then waits for one (the default handler raises).
FAKE_CLI = """#!{python}
import signal, sys, time
from pathlib import Path
state = Path({state!r})
ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
state.write_text("ignored" if ignored else "default")
try:
    time.sleep(60)
except KeyboardInterrupt:
    state.write_text("interrupted")
"""

# An older worker: SIGINT ignored in its setup, then a loop whose handler sets a flag and
# restores the ignoring disposition, as training.interrupts does for such a process.
LEGACY = """
import signal, sys, threading, time
from pathlib import Path
state = Path(sys.argv[1])
signal.signal(signal.SIGINT, signal.SIG_IGN)
state.write_text("setup")
time.sleep(1.5)
flag = threading.Event()
def handler(signum, frame):
    flag.set()
    signal.signal(signal.SIGINT, previous)
previous = signal.signal(signal.SIGINT, handler)
state.write_text("loop")
deadline = time.time() + 30
while not flag.is_set() and time.time() < deadline:
    time.sleep(0.05)
state.write_text("stopped in its loop" if flag.is_set() else "never stopped")
"""


def wait_for(path: Path, wanted: set[str], seconds: float = 20.0) -> str:
    deadline = time.time() + seconds
    while time.time() < deadline:
        found = path.read_text() if path.exists() else ""
        if found in wanted:
            return found
        time.sleep(0.05)
    return path.read_text() if path.exists() else ""


def stop(marker: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**env, "WORKERS_MATCH": marker, "STOP_POLL": "0.2"}
    return subprocess.run(
        ["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=40
    )


def test_a_detached_worker_keeps_sigint_and_stops_on_it(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state = tmp_path / "state"
    fake = bin_dir / "sparse-circuits"
    fake.write_text(FAKE_CLI.format(python=sys.executable, state=str(state)))
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOGS": str(tmp_path / "logs"),
           "CLAIMS": str(tmp_path / "claims")}  # fmt: skip
    # the script starts with SIGINT at its default (pytest may have been started ignoring it)
    default = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    subprocess.run(["bash", str(SCRIPT), "claims", "nothing"], env=env, check=True, timeout=30,
                   preexec_fn=default)  # fmt: skip
    try:
        # without job control bash would have started it with SIGINT ignored
        assert wait_for(state, {"ignored", "default"}) == "default"
        done = stop(str(fake), env)
        assert done.returncode == 0 and "workers stopped" in done.stdout
        assert wait_for(state, {"interrupted"}) == "interrupted"
    finally:  # a stand-in left behind by a failure goes too
        subprocess.run(["pkill", "-KILL", "-f", str(fake)], check=False)


def test_stop_reaches_a_worker_that_ignored_sigint_until_its_loop(tmp_path):
    state = tmp_path / "legacy-state"
    worker = subprocess.Popen([sys.executable, "-c", LEGACY, str(state)], start_new_session=True)
    try:
        assert wait_for(state, {"setup"}) == "setup"
        done = stop(str(state), dict(os.environ))  # sent while SIGINT is ignored: dropped
        assert done.returncode == 0
        assert f"worker {worker.pid} ignores SIGINT" in done.stderr
        assert worker.wait(timeout=10) == 0
        assert state.read_text() == "stopped in its loop"
    finally:
        if worker.poll() is None:
            worker.kill()
