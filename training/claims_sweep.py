"""The claims sweep: every point of `training.claims_plan`, per seed, trained until it converges.

    sparse-circuits claims --out runs/claims [--claims braun,gated,skip] [--points GLOB,..]
        [--seeds 2] [--start-tokens 1e6] [--cap-tokens 6.4e7] [--eval-tokens 1e6]
        [--activation-cache float32|float16|bfloat16|none]

Each (point, seed) trains a ladder of budgets (`training.convergence.budget_ladder`), each rung a
normal `Trainer` run in `<out>/runs/<point>/seed<s>/t<tokens>` (checkpointed, so a killed rung
resumes), until its held-out CE increase changed by less than the tolerance over the last
doubling or the cap is reached. After each rung its per-chunk evaluation sums
(`training.claims_eval`) are written to `<out>/claims_sweep.json` (atomically), so a rerun skips
every finished rung without loading anything heavy beyond the model: resuming a finished sweep
trains nothing.

Evaluation rows are the default corpus's held-out files plus rows reserved from the end of the
training split (never trained on by any run) until `eval_tokens` is reached.

Local runs read their activations from one activation cache of the training rows
(`<out>/activations/layer<L>`, written once, float32 by default so that they see exactly the
model's activations): the model's forward was about two thirds of a local rung's time. The same
command started in several shells shares the work (`training.sweep_locks`): each run is trained
by one process, and every process's results land in the one results file
(`training.claims_results`). What defines a sweep: `training.claims_settings`; its points:
`training.claims_plan`; the closed-form baselines: `training.claims_baseline`.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from replacement.errors import SparseCircuitsError
from replacement.hook_table import block_hook
from training.claims_baseline import fit_baseline
from training.claims_eval import original_side
from training.claims_plan import CLAIMS, SweepPoint, claim_points
from training.claims_results import RESULTS_FILE, load_results, point_record, refresh
from training.claims_settings import SweepSettings, selected_points
from training.config import TrainConfig, run_identity
from training.convergence import budget_ladder
from training.data import TokenData, token_mask
from training.ladder import Ladder, train_ladders
from training.sweep_locks import claimed, save_entry, shared_cache
from training.token_rows import read_rows, record_rows, rows_digest

WAIT_SECONDS = 30
"""How often a process with nothing else to do looks whether the lr-tuning runs another process
holds have finished."""


def split_rows(data: TokenData, eval_tokens: int) -> tuple[TokenData, torch.Tensor, int]:
    """Training data without the reserved rows, the evaluation rows, and how many were reserved.

    Evaluation = the held-out split's first rows up to `eval_tokens` tokens; where the held-out
    split is smaller, rows from the end of the training split make up the rest, and those rows
    leave the training data, so no run ever sees them.
    """
    ctx = data.val.shape[1]
    wanted = math.ceil(eval_tokens / ctx)
    needed = max(0, wanted - data.val.shape[0])
    if needed >= data.train.shape[0] // 2:
        raise SparseCircuitsError(
            f"--eval-tokens {eval_tokens:,} would take {needed} of {data.train.shape[0]} training "
            "rows; choose fewer evaluation tokens"
        )
    if not needed:
        return data, data.val[:wanted], 0
    reserved = data.train[data.train.shape[0] - needed :]
    train = data.train[: data.train.shape[0] - needed]
    rows = torch.cat([data.val, reserved])
    return TokenData(train, data.val, data.bos, data.special_ids), rows, needed


def _config(
    point: SweepPoint,
    seed: int,
    tokens: int,
    lr: float,
    settings: SweepSettings,
    folder: Path,
    cache: Path | None = None,
) -> TrainConfig:
    steps = max(1, tokens // settings.batch_tokens)
    fields = {k: v for k, v in point.fields.items() if k != "lr"}
    local = fields.get("objective", "local") == "local"
    return TrainConfig(
        **{
            "model": "default",
            "n_features": settings.n_features,
            "ctx_len": settings.ctx_len,
            "batch_tokens": settings.batch_tokens,
            "warmup_steps": max(1, min(50, steps // 10)),
            **fields,
        },
        lr=lr,
        seed=seed,
        total_tokens=int(tokens),
        out_dir=str(folder),
        device=settings.device,
        evaluate=False,
        verbose=False,
        checkpoint_every=200,
        buffer_tokens=max(4 * settings.batch_tokens, min(65536, int(tokens))),
        activations=str(cache) if cache is not None and local else None,
    ).validate()


def tuned_lr(results: dict[str, Any], claim: str, arm: str) -> float | None:
    """The tune point's lr with the lowest final training loss for (claim, arm); None if unrun."""
    best: tuple[float, float] | None = None
    for run in results["runs"].values():
        if (run.get("claim"), run.get("arm"), run.get("stage")) != (claim, arm, "tune"):
            continue
        rungs = run["seeds"].get("0", {}).get("rungs", [])
        if not rungs:
            return None
        loss = rungs[-1]["final_loss"]
        if math.isfinite(loss) and (best is None or loss < best[0]):
            best = (loss, run["fields"]["lr"])
    return None if best is None else best[1]


def run_key(point: SweepPoint, seed: int, lr: float, settings: SweepSettings) -> dict[str, Any]:
    """The identity (`training.config.run_identity`) of a (point, seed)'s first rung: equal
    keys, equal ladders."""
    return run_identity(_config(point, seed, settings.start_tokens, lr, settings, Path(".")))


def _twin(
    results: dict[str, Any],
    plan: list[SweepPoint],
    point: SweepPoint,
    seed: int,
    lr: float,
    settings: SweepSettings,
) -> SweepPoint | None:
    """The first point before `point` in the plan whose run for `seed` is the same training run
    (Braun's local ReLU SAEs are the gated claim's ReLU ones while ReLU's tuned lr is the sweep
    lr), or None. Another point's tuned lr counts only once its tuning runs have ended."""
    if point.stage != "sweep":
        return None
    key = run_key(point, seed, lr, settings)
    for other in plan:
        if other.name == point.name:
            return None
        if other.stage != "sweep":
            continue
        other_lr = other.fields["lr"]
        if other_lr == "tuned":
            other_lr = tuned_lr(results, other.claim, other.arm)
        if other_lr is not None and run_key(other, seed, float(other_lr), settings) == key:
            return other
    return None


def _take_twin(
    results: dict[str, Any], path: Path, point: SweepPoint, twin: SweepPoint, seed: int, log: Any
) -> None:
    """Record the twin's finished ladder as `point`'s too, marked as the same run."""
    import copy

    entry = copy.deepcopy(results["runs"][twin.name]["seeds"][str(seed)])
    entry["same_run_as"] = twin.name
    point_record(results, point)["seeds"][str(seed)] = entry
    save_entry(path, results, ("runs", point.name, "seeds", str(seed)))
    log(f"{point.name} seed {seed}: the same run as {twin.name}; its ladder taken, none trained")


def run_claims(
    settings: SweepSettings, log: Any = print, model: Any = None, data: TokenData | None = None
) -> dict[str, Any]:
    """Train and evaluate every unfinished rung of every point; returns the results.

    `model` and `data` default to the embedded model and its corpus (loaded only when some
    rung is left to train). Runs another process holds (the same command in another shell)
    are left to it.
    """
    from replacement.model import load_model
    from training.data import load_token_data

    settings.validate()
    out = Path(settings.out).resolve()
    results = load_results(out, settings)
    ladder = budget_ladder(settings.start_tokens, settings.cap_tokens)
    if settings.up_to is not None:  # this process only; a ladder is still ended by the cap
        ladder = [t for t in ladder if t <= settings.up_to]
    points = selected_points(claim_points(tuple(settings.claims), settings.layer), settings.points)
    pending = [
        (p, s)
        for p in points
        for s in (range(settings.seeds) if p.stage == "sweep" else range(1))
        if not _finished(results, p, s, ladder, settings)
    ]
    if not pending:
        reached = (
            "has finished"
            if settings.up_to is None
            else f"has finished or reached --up-to {settings.up_to:,}"
        )
        log(f"every run of {list(settings.claims)} {reached}; nothing to train")
        return results
    model = model if model is not None else load_model("default", device=settings.device)
    if data is None and settings.rows is not None:
        data = read_rows(settings.rows)
    data = data if data is not None else load_token_data(model, None, ctx_len=settings.ctx_len)
    sweep = _Sweep.start(settings, out, results, ladder, model, data, pending, log)
    sweep.train_e2e_groups(pending)
    sweep.train_pending(pending)
    refresh(sweep.path, results)
    return results


@dataclass
class _Sweep:
    """One process's part of a sweep: the results it shares with other processes, the rows
    and the original model's side of the evaluation it trains and measures with."""

    settings: SweepSettings
    out: Path
    results: dict[str, Any]
    ladder: list[int]
    """The budgets this process trains (`--up-to` may stop it below the cap)."""
    model: Any
    train_data: TokenData
    original: Any
    """The unchanged model's side of every rung's evaluation (`original_side`)."""
    cache: Path | None
    """The local runs' activation cache, or None."""
    plan: list[SweepPoint]
    """Every point of every claim at the layer: a run's twin may be another claim's."""
    log: Any

    @property
    def path(self) -> Path:
        return self.out / RESULTS_FILE

    @classmethod
    def start(
        cls,
        settings: SweepSettings,
        out: Path,
        results: dict[str, Any],
        ladder: list[int],
        model: Any,
        data: TokenData,
        pending: list[tuple[SweepPoint, int]],
        log: Any,
    ) -> _Sweep:
        """Record the rows in the results (before any run, so that other processes can check
        theirs), write or open the activation cache the pending local runs need, and measure
        the original model on the evaluation rows."""
        from replacement.hooks import layer_hooks
        from training.dictionary_factory import dictionary_hooks

        path = out / RESULTS_FILE
        train_data, rows, reserved = split_rows(data, settings.eval_tokens)
        digest = rows_digest(train_data.train, rows)
        record_rows(results["setup"], digest, str(path), "--out")
        results["setup"]["eval_rows"] = {"heldout": int(data.val.shape[0]), "reserved": reserved}
        # distinct training tokens (the ones a loss counts): a budget above them repeats rows
        results["setup"]["train_tokens"] = int(token_mask(train_data.train, data.special_ids).sum())
        save_entry(path, results, ("setup",))
        local = [
            (p, s)
            for p, s in pending
            if p.fields.get("objective", "local") == "local" and p.stage != "baseline"
        ]
        # the transcoder pair always, so that every claim's local runs at this layer share one
        # cache
        pair = layer_hooks(settings.layer)
        local_hooks = sorted(
            {pair.mlp_in, pair.mlp_out}
            | {
                h
                for p, s in local
                for h in dictionary_hooks(
                    _config(p, s, settings.start_tokens, 1e-3, settings, out), settings.layer
                )
            }
        )
        # e2e runs read the model, not the cache: a process given only those writes none
        cache = (
            None
            if settings.activation_cache == "none" or not local
            else shared_cache(
                out / "activations" / f"layer{settings.layer}",
                settings.activation_cache,
                local_hooks,
                model,
                train_data,
                log,
            )
        )
        hooks = sorted(
            {block_hook(m, "hook_resid_post") for m in range(int(model.cfg.n_layers))}
            | {block_hook(settings.layer, s) for s in ("hook_mlp_out", "hook_resid_pre")}
        )
        original = original_side(model, rows, hooks, data.special_ids, settings.n_chunks)
        plan = claim_points(CLAIMS, settings.layer)
        return cls(settings, out, results, ladder, model, train_data, original, cache, plan, log)

    def ladder_of(self, point: SweepPoint, seed: int, lr: float) -> Ladder:
        """The ladder of (point, seed) at `lr`, recorded in the results file after each rung."""
        entry = point_record(self.results, point)["seeds"].setdefault(
            str(seed), {"rungs": [], "converged": False}
        )
        where = ("runs", point.name, "seeds", str(seed))
        return Ladder(
            entry,
            lambda tokens, f: _config(point, seed, tokens, lr, self.settings, f, self.cache),
            self.out / "runs" / point.name / f"seed{seed}",
            lambda: save_entry(self.path, self.results, where),
            f"{point.name} seed {seed}",
        )

    def train(self, ladders: list[Ladder], tune: bool = False) -> None:
        """Train `ladders` together, rung by rung (a tuning run: its one budget)."""
        train_ladders(
            ladders,
            [self.settings.tune_tokens] if tune else self.ladder,
            self.settings.layer,
            self.model,
            self.train_data,
            self.original,
            self.log,
            tolerance=self.settings.tolerance,
            floor=self.settings.floor,
            converge=not tune,
        )

    def finished(self, point: SweepPoint, seed: int) -> bool:
        return _finished(self.results, point, seed, self.ladder, self.settings)

    def twin(self, point: SweepPoint, seed: int, lr: float) -> SweepPoint | None:
        return _twin(self.results, self.plan, point, seed, lr, self.settings)

    def train_e2e_groups(self, pending: list[tuple[SweepPoint, int]]) -> None:
        """The e2e ladders of one seed, trained together (they share the original model's
        pass); those another process holds are left to it."""
        for group in _e2e_groups(pending, self.settings.together):
            with contextlib.ExitStack() as stack:
                mine = [
                    (point, seed)
                    for point, seed in group
                    if stack.enter_context(claimed(self.out / "runs" / point.name / f"seed{seed}"))
                ]
                refresh(self.path, self.results)
                due = [
                    (p, s)
                    for p, s in mine
                    if not self.finished(p, s) and self.twin(p, s, float(p.fields["lr"])) is None
                ]
                if len(due) > 1:
                    self.log(f"training {len(due)} e2e ladders of seed {due[0][1]} together")
                    self.train([self.ladder_of(p, s, float(p.fields["lr"])) for p, s in due])

    def train_pending(self, pending: list[tuple[SweepPoint, int]]) -> None:
        """Every pending run one by one: baselines fitted, tuned lrs awaited, a run that is
        another point's twin trained once and recorded under both."""
        while pending:
            held, waiting = [], []
            for point, seed in pending:
                with claimed(self.out / "runs" / point.name / f"seed{seed}") as mine:
                    if not mine:
                        held.append((point, seed))
                        continue
                    refresh(self.path, self.results)
                    if self.finished(point, seed):
                        continue
                    if point.stage == "baseline":
                        fit_baseline(
                            point,
                            self.settings,
                            self.model,
                            self.train_data,
                            self.original,
                            self.results,
                            self.path,
                            self.log,
                        )
                        continue
                    lr = point.fields["lr"]
                    if lr == "tuned":
                        lr = tuned_lr(self.results, point.claim, point.arm)
                        if lr is None:
                            waiting.append((point, seed))
                            continue
                    if not self._train_one(point, seed, float(lr)):
                        held.append((point, seed))
            tuning_elsewhere = any(p.stage == "tune" for p, _ in held)
            if waiting and not tuning_elsewhere:
                names = sorted({p.name for p, _ in waiting})
                raise SparseCircuitsError(f"{names}: their lr-tuning runs gave no finite loss")
            if held:
                self.log(f"{len(held)} runs are being trained by another process; left to it")
            if not (waiting and tuning_elsewhere):
                break
            self.log(f"{len(waiting)} runs wait for lr-tuning runs another process is training")
            time.sleep(WAIT_SECONDS)
            pending = waiting + [pw for pw in held if pw[0].stage == "tune"]

    def _train_one(self, point: SweepPoint, seed: int, lr: float) -> bool:
        """Train (point, seed), or take its twin's ladder; False when another process holds
        the twin."""
        twin = self.twin(point, seed, lr)
        if twin is None:
            self.train([self.ladder_of(point, seed, lr)], point.stage == "tune")
            return True
        # the same run under another point's name: trained once, in the first point's folder,
        # and recorded under both
        with claimed(self.out / "runs" / twin.name / f"seed{seed}") as free:
            if not free:
                return False
            refresh(self.path, self.results)
            if not self.finished(twin, seed):
                self.train([self.ladder_of(twin, seed, lr)], twin.stage == "tune")
        _take_twin(self.results, self.path, point, twin, seed, self.log)
        return True


def _e2e_groups(
    pending: list[tuple[SweepPoint, int]], size: int
) -> list[list[tuple[SweepPoint, int]]]:
    """The pending e2e and e2e+ds sweep ladders with a fixed lr, by seed, in groups of at most
    `size` (none when `size` is 1)."""
    if size < 2:
        return []
    by_seed: dict[int, list[tuple[SweepPoint, int]]] = {}
    for point, seed in pending:
        if (
            point.stage == "sweep"
            and point.fields.get("objective", "local") != "local"
            and point.fields.get("lr") != "tuned"
        ):
            by_seed.setdefault(seed, []).append((point, seed))
    return [
        items[i : i + size]
        for _, items in sorted(by_seed.items())
        for i in range(0, len(items), size)
    ]


def _finished(
    results: dict[str, Any], point: SweepPoint, seed: int, ladder: list[int], s: SweepSettings
) -> bool:
    entry = results["runs"].get(point.name, {}).get("seeds", {}).get(str(seed))
    if not entry:
        return False
    if entry["converged"]:
        return True
    budgets = [s.tune_tokens] if point.stage == "tune" else ladder
    return all(any(r["tokens"] == t for r in entry["rungs"]) for t in budgets)
