"""A ladder's next rung starts from its previous rung's state where their paths part.

Two runs that differ only in their budget take the same steps until the shorter one's lr
decay begins: the same batches (drawn by step and seed), the same warm-up and the same flat
lr. The longer run's state at that step IS the shorter run's, so a rung of 2T tokens can
load the T rung's checkpoint at its decay start (`BRANCH_FILE`, kept by `Trainer.branch_at`)
and train only the rest: 60% of its steps with the default decay over the last 20%. The
result equals training it from scratch (tested bit for bit); the checks below refuse to
branch whenever anything but the budget differs or the schedules part earlier.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from replacement.atomic import atomic_path
from training.config import ConfigError, TrainConfig
from training.run_files import BRANCH_FILE, CHECKPOINT_FILE, METRICS_FILE
from training.trainer import _RESUMABLE_FIELDS

_BUDGET_FIELDS = {"total_tokens", "buffer_tokens"}
"""Fields a rung may differ in from the run it branches from (the buffer only sizes the
activation buffer, which a branched run never has: see `can_branch`)."""


def branch_step(config: TrainConfig) -> int:
    """The step at which a run's checkpoint can start a longer run: its decay start."""
    return config.decay_start


def can_branch(earlier: TrainConfig, later: TrainConfig) -> bool:
    """Whether `later` passes through `earlier`'s state at `branch_step(earlier)`: every
    setting but the budget equal, a longer budget, and the same lr factor at every step before
    the branch. Local runs branch only from an activation cache (a buffer's refills are not
    in the checkpoint)."""
    a, b = earlier.to_dict(), later.to_dict()
    if any(a.get(k) != v for k, v in b.items() if k not in _BUDGET_FIELDS | _RESUMABLE_FIELDS):
        return False
    if later.objective == "local" and later.activations is None:
        return False
    step = branch_step(earlier)
    return (
        later.total_steps > earlier.total_steps
        and 0 < step <= branch_step(later)
        and all(earlier.lr_factor(s) == later.lr_factor(s) for s in range(step))
    )


def start_from_branch(earlier_folder: Path, later: TrainConfig) -> int | None:
    """Give `later` (a rung not started yet) the checkpoint `earlier_folder` kept at its
    branch step, and the metrics lines up to it; returns that step, or None when there is
    no such checkpoint or `can_branch` refuses. The copy's train_seconds is 0 (a rung's
    seconds are its own steps) and it names the run it continues (`Trainer.branched_from`)."""
    source = earlier_folder / BRANCH_FILE
    folder = Path(later.out_dir)
    if not source.is_file() or (folder / CHECKPOINT_FILE).exists():
        return None
    state = torch.load(source, map_location="cpu", weights_only=False)
    try:
        earlier = TrainConfig.from_dict(state["config"])
    except ConfigError:  # written by another version of the trainer: train from scratch
        return None
    if not can_branch(earlier, later) or int(state["step"]) != branch_step(earlier):
        return None
    state["config"] = later.to_dict()
    state["train_seconds"] = 0.0
    state["branched_from"] = {"tokens": int(earlier.total_tokens), "step": int(state["step"])}
    folder.mkdir(parents=True, exist_ok=True)
    metrics = earlier_folder / METRICS_FILE
    if metrics.is_file():
        lines = [ln for ln in metrics.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln)["step"] <= state["step"]]
        with atomic_path(folder / METRICS_FILE) as tmp:
            tmp.write_text("".join(ln + "\n" for ln in kept))
    with atomic_path(folder / CHECKPOINT_FILE) as tmp:  # last: its presence means branched
        torch.save(state, tmp)
    return int(state["step"])
