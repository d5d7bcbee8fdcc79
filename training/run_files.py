"""The files a training run writes in its out_dir, and its metrics log.

A run's folder holds only these (replacement.output_folder): a rerun, resume or `--overwrite`
may replace them and nothing else.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from replacement.atomic import atomic_path

CHECKPOINT_FILE = "checkpoint.pt"
BRANCH_FILE = "branch.pt"
"""The checkpoint at `Trainer.branch_at` (training.rung_branch): a longer run continues it."""
METRICS_FILE = "metrics.jsonl"
LAYER_EXTS = ("safetensors", "json")
"""Each trained dictionary is `layer_<l>.<ext>` for these."""


def earlier_output(path: Path) -> bool:
    """Files a training run writes (checkpoint, metrics, layer files, report and card)."""
    names = ("report.json", "card.json", CHECKPOINT_FILE, METRICS_FILE, BRANCH_FILE)
    return path.name in names or bool(re.fullmatch(r"layer_\d+\.(json|safetensors)", path.name))


def logged_step(line: str) -> float:
    """The step of a metrics line; a line cut short by a killed process counts as never logged."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def trim_metrics(out_dir: Path, step: int, resumed: bool) -> dict[str, Any] | None:
    """Drop the metrics lines beyond `step` (a resumed run recomputes them; a fresh run drops
    all). Returns the record of `step` itself when it is the last one kept: a run resumed at
    its logged last step (say, killed after its final step) then has that step's figures for
    its card, as the uninterrupted run had."""
    path = out_dir / METRICS_FILE
    if not resumed:
        if path.exists():
            path.unlink()
        return None
    if not path.exists():
        return None
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    keep = [ln for ln in lines if logged_step(ln) <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(ln + "\n" for ln in keep))
    if keep and logged_step(keep[-1]) == step:
        return json.loads(keep[-1])
    return None


def append_metrics(out_dir: Path, record: dict[str, Any]) -> None:
    """One step's record as a line of out_dir's metrics log."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")
