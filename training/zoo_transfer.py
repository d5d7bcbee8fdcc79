"""Move the zoo's ladders between machines: an accelerator trains the e2e sets, this machine
ships the zoo (`build_zoo --export-runs DEST` there, `build_zoo --merge DEST` here).

An accelerator lent for a session keeps nothing and returns only small files, so the export
holds what `ship` and a later resume need: the ladder file (`zoo_ladders.json`: every rung's
figures) and, for each (set, layer), its final rung's weights and card, not checkpoints, not
earlier rungs (each rung is a full run of its own, so a resume never reads them). The merge
takes a (set, layer) whose ladder there is further than here, with its final rung's files, and
refuses a ladder file recorded with other settings or on other token rows. `record_runs` writes
the ladder file alone (figures, no weights), small enough to commit every session, since this
project's machines may keep nothing but the repository: an unfinished ladder merged from it
trains on from its next rung.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from replacement.atomic import atomic_path
from replacement.errors import SparseCircuitsError
from training.convergence import merged_cap
from training.ladder import kept_on_merge, ladder_ended
from training.token_rows import take_rows

FINAL_RUNG_FILES = ("card.json", "layer_*.json", "layer_*.safetensors")
"""What `ship` reads from a rung folder."""


def _final_rungs(results: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(set, layer, tokens of its last rung) of every ladder trained here (not one taken from
    a claims sweep, whose weights live in the sweep's folder)."""
    return [
        (name, layer, int(entry["rungs"][-1]["tokens"]))
        for name, record in results["sets"].items()
        for layer, entry in record["layers"].items()
        if entry["rungs"] and "same_run_as" not in entry
    ]


def _copy_rung(source: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for pattern in FINAL_RUNG_FILES:
        for f in sorted(source.glob(pattern)):
            with atomic_path(dest / f.name) as tmp:
                shutil.copyfile(f, tmp)


def export_runs(runs: Path, dest: Path, ladder_file: str) -> int:
    """Copy `runs`' ladder file and every ladder's final rung files into `dest` (a new or empty
    folder); returns the rungs copied."""
    from training.sweep_locks import read_results

    results = read_results(runs / ladder_file)
    if results is None:
        raise SystemExit(f"{runs / ladder_file} does not exist: nothing trained to export")
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"--export-runs {dest} is not empty; give a new folder")
    found = _final_rungs(results)
    for name, layer, tokens in found:
        rung = Path(name) / f"layer{layer}" / f"t{tokens}"
        _copy_rung(runs / rung, dest / rung)
    dest.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest / ladder_file) as tmp:
        tmp.write_text(json.dumps(results))
    return len(found)


def record_runs(runs: Path, dest: Path, ladder_file: str, sets: list[str]) -> int:
    """Write `runs`' ladders of `sets` as figures only (per-chunk sums on each ladder's last two
    rungs, no weights) to `dest`/`ladder_file`, replacing the record there; returns the ladders
    written. Committed, it survives a lost machine: `merge_runs` takes it into an empty --runs,
    and each unfinished ladder trains on from its next rung (from scratch: no weights came)."""
    from training.sweep_locks import read_results

    results = read_results(runs / ladder_file)
    if results is None:
        raise SystemExit(f"{runs / ladder_file} does not exist: nothing trained to record")
    if dest.exists() and any(p.name != ladder_file for p in dest.iterdir()):
        raise SystemExit(f"--transfer {dest} holds other files; give a folder of its own")
    kept = {n: results["sets"][n] for n in sets if n in results["sets"]}
    extra = {"baselines": results["baselines"]} if "baselines" in results else {}
    for record in kept.values():
        for entry in record["layers"].values():
            for rung in entry["rungs"][:-2]:
                rung.pop("chunks", None)
    dest.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest / ladder_file) as tmp:
        written = {"setup": results["setup"], **extra, "sets": kept}
        tmp.write_text(json.dumps(written, separators=(",", ":")))
    return sum(len(r["layers"]) for r in kept.values())


def merge_runs(runs: Path, other: Path, ladder_file: str) -> tuple[int, int]:
    """Take into `runs` every (set, layer) ladder of `other` (an `export_runs` folder) that is
    further than the one here, with its final rung files; returns (taken, kept)."""
    from training.sweep_locks import update_results

    path = other / ladder_file
    if not path.is_file():
        raise SystemExit(
            f"--merge {other}: no {ladder_file} there; expected a --export-runs folder"
        )
    theirs = json.loads(path.read_text())
    absent = {
        (n, layer) for n, layer, t in _final_rungs(theirs)
        if not (other / n / f"layer{layer}" / f"t{t}" / "card.json").is_file()
    }  # fmt: skip
    # an unfinished ladder may come as figures only (a `record_runs` file): its next rung
    # trains from scratch; a finished one is what ship reads, so its files must come
    missing = [
        f"{n} layer {layer}"
        for n, layer in sorted(absent)
        if ladder_ended(theirs["setup"], theirs["sets"][n]["layers"][layer])
    ]
    if missing:
        raise SystemExit(f"--merge {other} lacks the final rung files of {missing}")
    counts = [0, 0]

    def merge(current: dict[str, Any] | None) -> dict[str, Any]:
        if current is None:
            current = {"setup": theirs["setup"], "sets": {}}
        mine, given = current["setup"], theirs["setup"]
        try:
            take_rows(mine, given, str(runs), str(other))
        except SparseCircuitsError as exc:
            raise SystemExit(str(exc)) from exc
        strip = ("rows_sha256", "cap_tokens")
        if {k: v for k, v in mine.items() if k not in strip} != {
            k: v for k, v in given.items() if k not in strip
        }:
            raise SystemExit(f"{other} was recorded with {given}; {runs} with {mine}")
        try:  # ladders built under a raised cap elsewhere run under it here too
            mine["cap_tokens"] = merged_cap(mine, given, str(other))
        except SparseCircuitsError as exc:
            raise SystemExit(str(exc)) from exc
        for layer, fitted in theirs.get("baselines", {}).items():  # same rows: checked above
            for name, rung in fitted.items():
                current.setdefault("baselines", {}).setdefault(layer, {}).setdefault(name, rung)
        for name, record in theirs["sets"].items():
            here = current["sets"].setdefault(name, {"layers": {}})["layers"]
            for layer, entry in record["layers"].items():
                if "same_run_as" in entry:  # a claims sweep's run there: no weights came
                    counts[1] += 1
                    continue
                have = here.get(layer)
                ahead = kept_on_merge(have, entry)
                if not ahead and entry["rungs"] and (name, layer) not in absent:
                    rung = Path(name) / f"layer{layer}" / f"t{entry['rungs'][-1]['tokens']}"
                    _copy_rung(other / rung, runs / rung)  # before the ladder says it is here
                if not ahead:
                    here[layer] = entry
                counts[1 if ahead else 0] += 1
        return current

    runs.mkdir(parents=True, exist_ok=True)
    update_results(runs / ladder_file, merge)
    return counts[0], counts[1]
