"""Train one dictionary on a ladder of budgets until its held-out CE increase settles.

Shared by the claims sweep (`training.claims_sweep`) and the zoo recipe (`training.build_zoo`):
each rung is a full `Trainer` run in its own folder (`<folder>/t<tokens>`, checkpointed, so a
killed rung resumes), evaluated alone on the sweep's held-out rows (`training.claims_eval`),
and recorded in `entry["rungs"]`; `save` persists the entry after every rung, so a rerun skips
every finished rung. A rung that passes through its previous rung's state (the same settings
but the budget, the same schedule up to the previous rung's decay) starts from it there
(`training.rung_branch`): the same result for 60% of the steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.claims_eval import OriginalSide, evaluate_dictionary, figures
from training.config import TrainConfig
from training.convergence import has_converged


def machine(device: str) -> str:
    """Where a rung trained: the accelerator's name, or the CPU and its thread count."""
    import platform

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def final_loss(trainer: Any) -> float:
    """The run's last training loss (from its metrics file when the run had already finished)."""
    if trainer.last_metrics:
        return float(trainer.last_metrics["loss"])
    import json

    lines = (trainer.out_dir / "metrics.jsonl").read_text().splitlines()
    return float(json.loads(lines[-1])["loss"]) if lines else math.nan


def rung_record(
    where: str,
    tokens: int,
    steps: int,
    lr: float,
    train_seconds: float,
    eval_seconds: float,
    loss: float | None,
    measured: dict[str, Any],
) -> dict[str, Any]:
    """One rung as the results file keeps it: how it trained, its per-chunk sums
    (`evaluate_dictionary`) and the figures they give."""
    return {
        "machine": where,
        "tokens": tokens,
        "steps": steps,
        "lr": lr,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "final_loss": loss,
        **measured,
        "figures": figures(measured["chunks"]),
    }


def ladder_ended(setup: dict[str, Any], entry: dict[str, Any] | None) -> bool:
    """Whether a ladder entry converged or trained every budget of `setup`'s ladder (its cap)."""
    from training.convergence import budget_ladder

    budgets = budget_ladder(setup["start_tokens"], setup["cap_tokens"])
    return entry is not None and (bool(entry["converged"]) or len(entry["rungs"]) == len(budgets))


def kept_on_merge(have: dict[str, Any] | None, incoming: dict[str, Any]) -> bool:
    """Whether a ladder entry here (`have`) stays when the same ladder from elsewhere is merged:
    it has converged, or holds at least as many rungs (each rung is a full run of its own)."""
    return have is not None and (
        bool(have["converged"]) or len(have["rungs"]) >= len(incoming["rungs"])
    )


@dataclass
class Ladder:
    """One dictionary's ladder: where its rungs are recorded, trained and saved."""

    entry: dict[str, Any]
    """A dict with "rungs" and "converged" (a results file's entry)."""
    make_config: Callable[[int, Path], TrainConfig]
    """(tokens, rung folder) -> the rung's config."""
    folder: Path
    save: Callable[[], None]
    """Persists `entry` (called after every rung)."""
    label: str
    layer: int | None = None
    """The dictionary evaluated (default: the `layer` given to `train_ladders`)."""


def train_ladder(
    entry: dict[str, Any],
    budgets: Sequence[int],
    make_config: Callable[[int, Path], TrainConfig],
    folder: Path,
    layer: int,
    model: Any,
    data: Any,
    original: OriginalSide,
    save: Callable[[], None],
    log: Callable[[str], None],
    label: str,
    tolerance: float,
    floor: float = 0.0,
    converge: bool = True,
) -> None:
    """Train the rungs of `budgets` missing from `entry` (a dict with "rungs" and "converged")
    until the CE increase changed by less than `tolerance` (relative) or `floor` (nats) over the
    last doubling (when
    `converge`) or the budgets run out. `make_config(tokens, rung_folder)` gives each rung's
    config; `layer` is the dictionary evaluated."""
    train_ladders(
        [Ladder(entry, make_config, folder, save, label)],
        budgets,
        layer,
        model,
        data,
        original,
        log,
        tolerance,
        floor,
        converge,
    )


def train_ladders(
    ladders: Sequence[Ladder],
    budgets: Sequence[int],
    layer: int | None,
    model: Any,
    data: Any,
    original: OriginalSide,
    log: Callable[[str], None],
    tolerance: float,
    floor: float = 0.0,
    converge: bool = True,
) -> None:
    """`train_ladder` for several ladders, rung by rung: the rungs of one budget that are due
    train together (`training.trainer.train_many`: e2e runs of one seed share the original
    model's pass of each step; the result equals training each alone), then each is evaluated
    and its convergence decided. A ladder leaves when it has converged."""
    from training.heartbeat import Heartbeat
    from training.rung_branch import branch_step, start_from_branch
    from training.together import train_together, trainers_for
    from training.trainer import Trainer

    for ladder in ladders:
        ladder.entry.setdefault("rungs", [])
    previous = dict(zip(budgets[1:], budgets[:-1], strict=False))
    for tokens in budgets:
        due = [
            ladder
            for ladder in ladders
            if not ladder.entry.get("converged")
            and not any(r["tokens"] == tokens for r in ladder.entry["rungs"])
        ]
        if not due:
            continue
        configs = [ladder.make_config(tokens, ladder.folder / f"t{tokens}") for ladder in due]
        if tokens in previous:  # continue the previous rung where the two part, if they can
            for ladder, config in zip(due, configs, strict=True):
                start_from_branch(ladder.folder / f"t{previous[tokens]}", config)
        if len(due) == 1:
            trainers = [Trainer(configs[0], model=model, data=data)]
        else:
            trainers = trainers_for(configs, model, data)
        for ladder, trainer in zip(due, trainers, strict=True):
            trainer.branch_at = branch_step(trainer.config)  # for the next rung
            trainer.heartbeat = Heartbeat(log, f"{ladder.label} {tokens:,}-token rung")
        if len(due) == 1:
            results = [trainers[0].train()]
        else:
            results = train_together(trainers, model)
        for ladder, config, trainer, trained in zip(due, configs, trainers, results, strict=True):
            at = layer if ladder.layer is None else ladder.layer
            _record_rung(ladder, tokens, config, trainer, trained[at], model, original)
            curve = [(r["tokens"], r["figures"]["ce_increase"]) for r in ladder.entry["rungs"]]
            ladder.entry["converged"] = not converge or has_converged(curve, tolerance, floor)
            ladder.save()
            f = ladder.entry["rungs"][-1]["figures"]
            log(
                f"{ladder.label} {tokens:,} tokens: {trainer.train_seconds:.0f} s, "
                f"L0 {f['l0']:.1f}, CE increase {f['ce_increase']:.4f}, FVU {f['fvu']:.3f}, "
                f"downstream FVU {f['downstream_fvu']:.3f} ({f['downstream_fvu_normed']:.3f} "
                "normalised)" + (" (converged)" if ladder.entry["converged"] and converge else "")
            )


def _record_rung(
    ladder: Ladder,
    tokens: int,
    config: TrainConfig,
    trainer: Any,
    dictionary: Any,
    model: Any,
    original: OriginalSide,
) -> None:
    """Evaluate a trained rung alone on the held-out rows and append it to the ladder."""
    # the optimiser steps' time over every process that trained the rung (a rung finished
    # before a kill is not counted again as 0 s), with its share of passes shared with other
    # runs; evaluation is timed apart
    start = time.perf_counter()
    measured = evaluate_dictionary(model, dictionary.eval(), original)
    ladder.entry["rungs"].append(
        rung_record(
            machine(config.device),
            tokens,
            trainer.step,
            float(config.lr),
            trainer.train_seconds,
            time.perf_counter() - start,
            final_loss(trainer),
            measured,
        )
    )
    if trainer.branched_from is not None:
        ladder.entry["rungs"][-1]["branched_from"] = trainer.branched_from
