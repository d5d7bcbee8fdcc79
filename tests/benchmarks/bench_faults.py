"""Fault table (issue 25, item 10): kill -9, full disk and two writers, on five commands.

For each of `cache`, `train`, `features`, `trace` and `compare` (small settings, the default
model and zoo dictionaries):
- reference: one uninterrupted run into its own folder; "old": a run with other settings;
- kill -9 (`--kills` times): a run into a copy of the old folder (train: an empty one) is
  killed at an instant drawn uniformly over the reference's run time; the folder must then hold
  the old set or the new one whole (train: its checkpoint), and rerunning the same command
  must give results equal to the reference (cache: byte-identical files; train: equal
  tensors and metrics; features, trace: equal tensors and files, the pair ids aside;
  compare: equal results.json, run times aside), and the folder hold only our files;
- full disk: a run into a copy of the old folder under a 16 KB file-size limit
  (RLIMIT_FSIZE, SIGXFSZ ignored) must exit 1 with one error line, no traceback, the old
  set intact and no staging folder left;
- two writers (`--writers` times): two runs into one new folder, the second started together
  with the first, then at random instants over the first 60% of the reference's run time: one
  finishes, the other is refused naming the first's pid (or, if they did not overlap, both
  finish), the result equals the reference and the folder holds only our files;
- bad inputs: the CLI table test (`tests/test_cli_errors.py`) run once, cases passed/tried.

Resumable: every finished trial is stored in `<work>/results.json` and skipped on a rerun.

    flock /tmp/cpu.lock python tests/benchmarks/bench_faults.py [--work /tmp/faults]
        [--kills 10] [--writers 3] [--commands cache,train,...,bad_inputs] [--table]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PROMPT = "def add(a, b):\n    return a +"
COMMANDS: dict[str, tuple[list[str], list[str]]] = {
    # name: (the run's arguments, the "old" run's arguments)
    "cache": (
        ["cache", "--layers", "0", "--tokens", "4000", "--shards", "2", "--quiet"],
        ["cache", "--layers", "0", "--tokens", "2000", "--shards", "2", "--quiet"],
    ),
    "train": (
        ["train", "--layers", "0", "--n-features", "256", "--k", "8", "--tokens", "16384",
         "--batch-tokens", "1024", "--buffer-tokens", "8192", "--val-tokens", "1024",
         "--checkpoint-every", "1", "--quiet"],
        [],
    ),
    "features": (
        ["features", "--dictionaries", "sae_local", "--max-tokens", "2000", "--quiet"],
        ["features", "--dictionaries", "sae_local", "--max-tokens", "1000", "--quiet"],
    ),
    "trace": (
        ["trace", PROMPT, "--max-feature-nodes", "100", "--quiet"],
        ["trace", "x = [1, 2,", "--max-feature-nodes", "50", "--quiet"],
    ),
    "compare": (  # one set, no baselines: about 10 s a run on 2 cores
        ["compare", "--sets", "sae_local", "--tasks", "close_bracket", "--pairs", "8",
         "--baselines", "none", "--graph-prompts", "0", "--loss-rows", "2", "--quiet"],
        ["compare", "--sets", "sae_local", "--tasks", "close_bracket", "--pairs", "4",
         "--baselines", "none", "--graph-prompts", "0", "--loss-rows", "2", "--quiet"],
    ),
}  # fmt: skip
DISK_LIMIT = 16 << 10
_LIMITED = textwrap.dedent(
    """
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    import sparse_circuits_cli
    sys.exit(sparse_circuits_cli.main(sys.argv[2:]))
    """
)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
            "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip


def _start(argv: list[str], out: Path, limit: int | None = None) -> subprocess.Popen:
    head = [sys.executable, "-c", _LIMITED, str(limit)] if limit else [
        sys.executable, "-m", "sparse_circuits_cli"]  # fmt: skip
    return subprocess.Popen(
        [*head, *argv, "--out", str(out)], env=_env(), cwd=out.parent,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _run(argv: list[str], out: Path, limit: int | None = None) -> tuple[int, str, float]:
    start = time.perf_counter()
    proc = _start(argv, out, limit)
    stdout, stderr = proc.communicate()
    return proc.returncode, stderr, time.perf_counter() - start


# ---- what a folder holds, with what may differ between equal runs taken out --------------------
def _content(folder: Path) -> dict[str, Any] | None:
    """The folder's results in a comparable form (None: no folder)."""
    if not folder.is_dir():
        return None
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or any(p.startswith(".") for p in path.relative_to(folder).parts):
            continue
        name = str(path.relative_to(folder))
        if path.suffix == ".safetensors":
            tensors = load_file(str(path))  # the header holds the random pair id
            out[name] = {k: v.numpy().tobytes() for k, v in sorted(tensors.items())}
        elif name.endswith(("graph.json", "atlas.json")) or name.startswith("layer_"):
            data = (
                json.loads(_unpathed(path, folder)) if path.suffix == ".json" else path.read_bytes()
            )
            if isinstance(data, dict):
                data.pop("pair_id", None)
                data.pop("tensors_sha256", None)  # of the file, whose header holds the pair id
            out[name] = _no_times(data)  # a graph records its own wall times
        elif name == "results.json":
            out[name] = _no_times(json.loads(path.read_text()))
        elif name == "report.md":
            out[name] = re.sub(r"Run time \d+ s", "Run time", path.read_text())
        elif name == "checkpoint.pt":
            continue  # holds the config and RNG state; its result is the layer files
        elif path.suffix in (".json", ".jsonl", ".md", ".txt"):
            out[name] = _unpathed(path, folder)  # a run records its own --out folder
        else:
            out[name] = path.read_bytes()
    return out


def _unpathed(path: Path, folder: Path) -> str:
    """The file's text with the run's folder written as OUT (runs into other folders compare)."""
    text = path.read_text()
    for form in {str(folder.resolve()), str(folder)}:
        text = text.replace(form, "OUT")
    return text


def _no_times(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _no_times(v) for k, v in data.items() if k not in ("seconds", "threads")}
    if isinstance(data, list):
        return [_no_times(v) for v in data]
    return data


def _not_ours(folder: Path) -> list[str]:
    """Entries of the folder that its marker does not list (our lock, marker, temporaries aside)."""
    from replacement.output_folder import foreign_entries, read_marker

    return foreign_entries(folder, read_marker(folder)) if folder.is_dir() else []


def _leftovers(folder: Path) -> list[str]:
    """Staging folders and temporaries a run left beside or in the folder."""
    found = [p.name for p in folder.parent.iterdir() if ".sc-" in p.name]
    if folder.is_dir():
        found += [p.name for p in folder.iterdir() if ".sc-" in p.name or p.name.endswith(".tmp")]
    return found


# ---- trials ------------------------------------------------------------------------------------
def prepare(work: Path, name: str) -> dict[str, Any]:
    """The reference and old runs of a command (their folders and the reference's time)."""
    base = work / name
    base.mkdir(parents=True, exist_ok=True)
    info_path = base / "info.json"
    if info_path.exists():
        return json.loads(info_path.read_text())
    argv, old_argv = COMMANDS[name]
    rc, err, seconds = _run(argv, base / "ref")
    assert rc == 0, err
    if old_argv:
        rc, err, _ = _run(old_argv, base / "old")
        assert rc == 0, err
    else:
        (base / "old").mkdir()
    info = {"seconds": seconds}
    info_path.write_text(json.dumps(info))
    return info


def _fresh(work: Path, name: str, trial: str) -> Path:
    """A trial folder holding a copy of the old set."""
    folder = work / name / "trials" / trial / "out"
    if folder.parent.exists():
        shutil.rmtree(folder.parent)
    folder.parent.mkdir(parents=True)
    shutil.copytree(work / name / "old", folder, symlinks=True)
    return folder


def kill_trial(work: Path, name: str, i: int, seconds: float) -> dict[str, Any]:
    """kill -9 at a random instant, check old-or-new, rerun, compare with the reference."""
    argv = COMMANDS[name][0]
    folder = _fresh(work, name, f"kill{i}")
    old, ref = _content(work / name / "old"), _content(work / name / "ref")
    delay = random.Random(f"{name}-{i}").uniform(0.05, 1.0) * seconds
    proc = _start(argv, folder)
    time.sleep(delay)
    finished = proc.poll() is not None
    if not finished:
        proc.send_signal(signal.SIGKILL)
    proc.communicate()
    after = _content(folder)
    whole = True if name == "train" else after in (old, ref)
    rc, err, _ = _run(argv, folder)
    equal = rc == 0 and _content(folder) == ref
    return {"delay": round(delay, 2), "finished_first": finished, "old_or_new": whole,
            "rerun_equal": equal, "leftovers": _leftovers(folder), "not_ours": _not_ours(folder),
            "error": err[-300:] if rc else ""}  # fmt: skip


def disk_trial(work: Path, name: str) -> dict[str, Any]:
    """A run under a 16 KB file-size limit: one line, exit 1, old set whole, nothing left."""
    argv = COMMANDS[name][0]
    folder = _fresh(work, name, "disk")
    old = _content(work / name / "old")
    rc, err, _ = _run(argv, folder, limit=DISK_LIMIT)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    one_line = len(lines) == 1 and lines[0].startswith(f"sparse-circuits {name}: error:")
    return {"rc": rc, "one_line": one_line, "traceback": "Traceback" in err,
            "old_whole": _content(folder) == old or name == "train",
            "leftovers": _leftovers(folder), "message": lines[-1][:300] if lines else ""}  # fmt: skip


def writers_trial(work: Path, name: str, j: int, seconds: float) -> dict[str, Any]:
    """Two runs into one new folder, the second started `delay` after the first (trial 0: 0)."""
    argv = COMMANDS[name][0]
    folder = work / name / "trials" / f"writers{j}" / "out"
    if folder.parent.exists():
        shutil.rmtree(folder.parent)
    folder.parent.mkdir(parents=True)
    delay = random.Random(f"{name}-writers-{j}").uniform(0.0, 0.6) * seconds if j else 0.0
    procs = [_start(argv, folder)]
    time.sleep(delay)
    procs.append(_start(argv, folder))
    results = [(p.pid, *p.communicate(), p.returncode) for p in procs]
    codes = sorted(r[3] for r in results)
    refused = [r for r in results if r[3] == 1]
    named = bool(refused) and all(
        f"pid {other[0]}" in r[2] for r in refused for other in results if other is not r
    )
    return {"delay": round(delay, 2), "codes": codes, "refused_with_pid": named,
            "result_equal": _content(folder) == _content(work / name / "ref"),
            "not_ours": _not_ours(folder), "messages": [r[2].strip()[-200:] for r in refused]}  # fmt: skip


def bad_inputs() -> dict[str, Any]:
    """The CLI table test: cases passed and tried."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(REPO / "tests" / "test_cli_errors.py")],
        env=_env(), cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", tail)) else 0
    failed = int(m.group(1)) if (m := re.search(r"(\d+) failed", tail)) else 0
    return {"tried": passed + failed, "handled": passed, "summary": tail}


# ---- the table ---------------------------------------------------------------------------------
def _disk_ok(disk: dict[str, Any] | None) -> str:
    if not disk:
        return "-"
    ok = disk["rc"] == 1 and disk["one_line"] and not disk["traceback"]
    return "yes" if ok and disk["old_whole"] and not disk["leftovers"] else "no"


def _writers_ok(trials: list[dict[str, Any]]) -> str:
    if not trials:
        return "-"
    refused = [t for t in trials if t["codes"] == [0, 1] and t["refused_with_pid"]]
    apart = [t for t in trials if t["codes"] == [0, 0]]  # the second started after the first ended
    ok = sum(t["result_equal"] and not t.get("not_ours") for t in [*refused, *apart])
    return f"{ok}/{len(trials)} ({len(refused)} refused by pid, {len(apart)} did not overlap)"


def table(results: dict[str, Any], kills: int, writers: int) -> str:
    rows = [
        "| command | kill -9 at a random instant: old or new set whole, only our files | rerun "
        "equal to uninterrupted | full disk (16 KB limit): one line, exit 1, old set whole | two "
        "writers: the second refused by pid (or no overlap), result equal |",
        "|---|---|---|---|---|",
    ]
    for name in COMMANDS:
        done = [t for i in range(kills) if (t := results.get(f"{name}/kill/{i}"))]
        if not done:
            continue
        whole = sum(t["old_or_new"] and not t["leftovers"] and not t.get("not_ours") for t in done)
        equal = sum(t["rerun_equal"] for t in done)
        before = sum(t["finished_first"] for t in done)
        two = [t for j in range(writers) if (t := results.get(f"{name}/writers/{j}"))]
        what = "n/a (resume)" if name == "train" else f"{whole}/{len(done)}"
        rows.append(
            f"| `{name}` | {what} | {equal}/{len(done)} ({before} ended before the kill) | "
            f"{_disk_ok(results.get(f'{name}/disk'))} | {_writers_ok(two)} |"
        )
    bad = results.get("bad_inputs")
    if bad:
        rows += ["", f"Bad inputs (`tests/test_cli_errors.py`): {bad['handled']} of "
                     f"{bad['tried']} handled with a named error and no traceback."]  # fmt: skip
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/sparse_circuits_faults")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--writers", type=int, default=10, help="two-writer trials per command")
    parser.add_argument("--commands", default=",".join([*COMMANDS, "bad_inputs"]))
    parser.add_argument("--table", action="store_true", help="print the table of stored results")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = work / "results.json"
    results: dict[str, Any] = json.loads(store.read_text()) if store.exists() else {}

    def record(key: str, fn, *a) -> None:
        if key in results:
            return
        results[key] = fn(*a)
        store.write_text(json.dumps(results, indent=1))
        print(key, json.dumps(results[key])[:300], flush=True)

    for name in [] if args.table else args.commands.split(","):
        if name == "bad_inputs":
            record("bad_inputs", bad_inputs)
            continue
        info = prepare(work, name)
        print(f"{name}: reference run {info['seconds']:.1f} s", flush=True)
        for i in range(args.kills):
            record(f"{name}/kill/{i}", kill_trial, work, name, i, info["seconds"])
        record(f"{name}/disk", disk_trial, work, name)
        for j in range(args.writers):
            record(f"{name}/writers/{j}", writers_trial, work, name, j, info["seconds"])
    print(table(results, args.kills, args.writers))


if __name__ == "__main__":
    main()
