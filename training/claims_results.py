"""The claims sweep's results file (`<out>/claims_sweep.json`): reading it against a sweep's
settings, the record of each point, taking in what other processes wrote, and merging the
results of the same sweep run elsewhere. Writes go through `training.sweep_locks`, so that
processes side by side lose nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from replacement.errors import SparseCircuitsError
from training.claims_plan import SweepPoint
from training.convergence import merged_cap, raised_cap
from training.ladder import kept_on_merge
from training.sweep_locks import read_results, update_results
from training.token_rows import take_rows

if TYPE_CHECKING:
    from training.claims_settings import SweepSettings

RESULTS_FILE = "claims_sweep.json"
FORMAT_VERSION = 2


def point_record(results: dict[str, Any], point: SweepPoint) -> dict[str, Any]:
    """The results entry of `point` (created, with no seeds, if the sweep has none yet)."""
    return results["runs"].setdefault(
        point.name,
        {
            "claim": point.claim,
            "arm": point.arm,
            "stage": point.stage,
            "fields": dict(point.fields),
            "seeds": {},
        },
    )


def recorded_setup(setup: dict[str, Any]) -> dict[str, Any]:
    """A results file's setup with the values older sweeps used where they did not record one:
    they ran the model on every step and had no absolute convergence floor."""
    return {"activation_cache": "none", "floor": 0.0, **setup}


def check_setup(path: Path, results: dict[str, Any], settings: SweepSettings) -> None:
    """Refuse to resume a results file of another format or recorded with other settings
    (the cap may differ: `raised_cap` checks it)."""
    if results.get("version") != FORMAT_VERSION:
        raise SparseCircuitsError(
            f"{str(path)!r} is not a claims sweep of format {FORMAT_VERSION}; use another --out"
        )
    recorded = recorded_setup(results["setup"])
    diff = {
        k: (recorded.get(k), v)
        for k, v in settings.recorded().items()
        if recorded.get(k) != v and k != "cap_tokens"
    }
    if diff:
        raise SparseCircuitsError(
            f"{str(path)!r} was recorded with other settings {diff} (recorded, given); rerun with "
            "the recorded values to resume, or use another --out"
        )


def load_results(out: Path, settings: SweepSettings) -> dict[str, Any]:
    """The results file (a new one if absent); refuses one recorded with other settings."""
    path = out / RESULTS_FILE
    results = read_results(path)
    if results is None:
        return {"version": FORMAT_VERSION, "setup": settings.recorded(), "runs": {}}
    check_setup(path, results, settings)
    results["setup"]["cap_tokens"] = raised_cap(
        results["setup"], settings.start_tokens, settings.cap_tokens, str(path)
    )
    return results


def refresh(path: Path, results: dict[str, Any]) -> None:
    """Take in every run other processes recorded (the file is the reference)."""
    current = read_results(path)
    if current is not None:
        results["runs"] = current["runs"]


def merge_results(out: str | Path, other: str | Path) -> tuple[int, int]:
    """Take into `out`'s results every run of the sweep results file `other` (the same sweep
    run elsewhere, e.g. its e2e runs on an accelerator); returns (entries taken, kept).

    A (point, seed) is taken when `out` lacks it or holds fewer rungs of an unfinished ladder;
    an entry `out` already has at least as far is kept. Both files must record the same
    settings (checked before anything is written).
    """
    path = Path(out).resolve() / RESULTS_FILE
    if not Path(other).is_file():
        raise SparseCircuitsError(
            f"--merge {str(other)!r} is not a file; expected a {RESULTS_FILE}"
        )
    try:
        theirs = json.loads(Path(other).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SparseCircuitsError(f"--merge {str(other)!r} is not JSON ({exc})") from exc
    if theirs.get("version") != FORMAT_VERSION:
        raise SparseCircuitsError(
            f"{str(other)!r} is not a claims sweep of format {FORMAT_VERSION}; nothing merged"
        )
    counts = [0, 0]

    def merge(current: dict[str, Any] | None) -> dict[str, Any]:
        if current is None:
            counts[0] = sum(len(r["seeds"]) for r in theirs["runs"].values())
            return theirs
        take_rows(current["setup"], theirs["setup"], str(path), str(other))
        if "train_tokens" in theirs["setup"]:  # follows from the rows, checked just above
            current["setup"].setdefault("train_tokens", theirs["setup"]["train_tokens"])
        volatile = ("eval_rows", "rows_sha256", "cap_tokens", "train_tokens")
        mine = {k: v for k, v in current["setup"].items() if k not in volatile}
        given = {k: v for k, v in theirs["setup"].items() if k not in volatile}
        if recorded_setup(mine) != recorded_setup(given):
            raise SparseCircuitsError(
                f"{str(other)!r} was recorded with settings {given}; {str(path)!r} with {mine}: "
                "only runs of the same sweep can be merged"
            )
        current["setup"]["cap_tokens"] = merged_cap(current["setup"], theirs["setup"], str(other))
        for name, run in theirs["runs"].items():
            record = current["runs"].setdefault(name, {**run, "seeds": {}})
            for seed, entry in run["seeds"].items():
                have = record["seeds"].get(seed)
                ahead = kept_on_merge(have, entry)
                record["seeds"][seed] = have if ahead else entry
                counts[1 if ahead else 0] += 1
        return current

    update_results(path, merge)
    return counts[0], counts[1]
