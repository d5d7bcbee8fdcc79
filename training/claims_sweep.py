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
by one process, and every process's results land in the one results file.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch

from replacement.errors import SparseCircuitsError
from replacement.hook_table import block_hook
from training.claims_eval import original_side
from training.claims_plan import CLAIMS, SweepPoint, claim_points
from training.config import TrainConfig, run_identity
from training.convergence import (
    DEFAULT_FLOOR,
    DEFAULT_TOLERANCE,
    budget_ladder,
    merged_cap,
    raised_cap,
)
from training.data import TokenData, token_mask
from training.ladder import Ladder, kept_on_merge, train_ladders
from training.sweep_locks import (
    claimed,
    read_results,
    save_entry,
    shared_cache,
    update_results,
)
from training.token_rows import check_rows, read_rows, record_rows, rows_digest, take_rows

RESULTS_FILE = "claims_sweep.json"
FORMAT_VERSION = 2
CACHE_CHOICES = ("float32", "float16", "bfloat16", "none")
WAIT_SECONDS = 30
"""How often a process with nothing else to do looks whether the lr-tuning runs another process
holds have finished."""


@dataclass
class SweepSettings:
    """What defines a claims sweep; a resumed sweep must match the recorded one."""

    out: str = "runs/claims"
    """Folder of the runs and of claims_sweep.json."""
    claims: tuple[str, ...] = CLAIMS
    """Which claims to sweep."""
    points: tuple[str, ...] = ()
    """Glob patterns on point names (`braun/e2e*`): this process trains only the matching
    points (and the lr-tuning runs they need); empty for all. Splits a sweep across machines."""
    layer: int = 1
    """Block whose dictionaries are trained (each alone)."""
    seeds: int = 2
    """Seeds per point (>= 2 gives a spread)."""
    start_tokens: int = 1_000_000
    """First rung of every ladder (training tokens); no run of the pilot or the first sweep had
    settled below 1M, and each rung costs a full held-out evaluation (about 90 s on 2 cores)."""
    cap_tokens: int = 64_000_000
    """Largest budget a run may train for (its last rung). It may be raised on resume (to a
    doubling of the recorded cap): 32M until local TopK at k >= 16 was found unsettled there."""
    tolerance: float = DEFAULT_TOLERANCE
    """Converged when CE increase changed by less than this (relative) over the last doubling."""
    floor: float = DEFAULT_FLOOR
    """... or by less than this many nats (absolute), for runs whose CE increase is near zero."""
    tune_tokens: int = 1_000_000
    """Budget of the lr-tuning runs (gated claim)."""
    eval_tokens: int = 1_000_000
    """Held-out evaluation tokens (at least)."""
    n_chunks: int = 64
    """Chunks of the evaluation rows: the bootstrap's units."""
    n_features: int = 1024
    """Dictionary width."""
    batch_tokens: int = 4096
    """Tokens per optimiser step."""
    ctx_len: int = 128
    """Row length of training and evaluation."""
    activation_cache: str = "float32"
    """dtype of the local runs' activation cache, or "none" to run the model on every step."""
    device: str = "cpu"
    """Where to train."""
    together: int = 20
    """e2e and e2e+ds ladders of one seed trained together by this process, rung by rung,
    sharing the original model's pass of each step (the results equal training each alone;
    about 1.6x the tokens/s per run for 4 together on one CPU thread); 1 trains each alone."""
    up_to: int | None = None
    """Largest budget this process trains, or None for --cap-tokens: the ladders stay open (no
    ladder ends here unless it converged), so a later run without it goes on. Brings every
    ladder to one budget before any goes further, for a reading at a common budget soonest."""
    rows: str | None = None
    """Token rows file (`training.token_rows`) to train and evaluate on instead of reading the
    default corpus: a machine with another Python reads another standard library, so a sweep
    split across machines carries this machine's rows."""

    def validate(self) -> SweepSettings:
        """Raise `SparseCircuitsError` naming the first bad setting; returns self."""
        unknown = sorted(set(self.claims) - set(CLAIMS))
        if unknown or not self.claims:
            raise SparseCircuitsError(
                f"--claims: unknown {unknown}; expected some of {list(CLAIMS)}"
            )
        for name, low in (
            ("layer", 0),
            ("seeds", 1),
            ("start_tokens", self.batch_tokens),
            ("eval_tokens", self.ctx_len),
            ("n_chunks", 2),
            ("n_features", 1),
            ("tune_tokens", self.batch_tokens),
            ("together", 1),
        ):
            if getattr(self, name) < low:
                raise SparseCircuitsError(
                    f"--{name.replace('_', '-')} must be >= {low}; got {getattr(self, name)}"
                )
        if self.cap_tokens < self.start_tokens:
            raise SparseCircuitsError(
                f"--cap-tokens {self.cap_tokens} is below --start-tokens {self.start_tokens}"
            )
        if self.up_to is not None and self.up_to < self.start_tokens:
            raise SparseCircuitsError(
                f"--up-to {self.up_to} is below --start-tokens {self.start_tokens}: it would "
                "train nothing"
            )
        if not 0 < self.tolerance < 1:
            raise SparseCircuitsError(f"--tolerance must be in (0, 1); got {self.tolerance}")
        if not 0 <= self.floor < 1:
            raise SparseCircuitsError(f"--floor must be in [0, 1) nats; got {self.floor}")
        selected_points(claim_points(self.claims, self.layer), self.points)
        if self.rows is not None:
            check_rows(self.rows)
        if self.activation_cache not in CACHE_CHOICES:
            raise SparseCircuitsError(
                f"--activation-cache {self.activation_cache!r} is unknown; expected one of "
                f"{list(CACHE_CHOICES)}"
            )
        return self

    def recorded(self) -> dict[str, Any]:
        """The settings that make results comparable (the folder, the device and which points
        this process takes are not)."""
        out = asdict(self)
        out["claims"] = list(self.claims)
        for name in ("out", "device", "claims", "points", "rows", "together", "up_to"):
            out.pop(name)
        return out


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
    _point_record(results, point)["seeds"][str(seed)] = entry
    save_entry(path, results, ("runs", point.name, "seeds", str(seed)))
    log(f"{point.name} seed {seed}: the same run as {twin.name}; its ladder taken, none trained")


def _point_record(results: dict[str, Any], point: SweepPoint) -> dict[str, Any]:
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


def _check_setup(path: Path, results: dict[str, Any], settings: SweepSettings) -> None:
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
    _check_setup(path, results, settings)
    results["setup"]["cap_tokens"] = raised_cap(
        results["setup"], settings.start_tokens, settings.cap_tokens, str(path)
    )
    return results


def selected_points(points: list[SweepPoint], patterns: tuple[str, ...]) -> list[SweepPoint]:
    """The points whose names match one of the glob `patterns` (all when there are none), plus
    the lr-tuning points of the selected points' claims and arms, which they need.

    Raises `SparseCircuitsError` naming a pattern that matches no point.
    """
    if not patterns:
        return points
    for pattern in patterns:
        if not any(fnmatchcase(p.name, pattern) for p in points):
            raise SparseCircuitsError(
                f"--points {pattern!r} matches no point of this sweep; its points are "
                f"{[p.name for p in points]}"
            )
    chosen = [p for p in points if any(fnmatchcase(p.name, pat) for pat in patterns)]
    tuned = {(p.claim, p.arm) for p in chosen if p.fields.get("lr") == "tuned"}
    return [p for p in points if p in chosen or (p.stage == "tune" and (p.claim, p.arm) in tuned)]


def _refresh(path: Path, results: dict[str, Any]) -> None:
    """Take in every run other processes recorded (the file is the reference)."""
    current = read_results(path)
    if current is not None:
        results["runs"] = current["runs"]


def run_claims(
    settings: SweepSettings, log: Any = print, model: Any = None, data: TokenData | None = None
) -> dict[str, Any]:
    """Train and evaluate every unfinished rung of every point; returns the results.

    `model` and `data` default to the embedded model and its corpus (loaded only when some
    rung is left to train). Runs another process holds (the same command in another shell)
    are left to it.
    """
    from replacement.hooks import layer_hooks
    from replacement.model import load_model
    from training.data import load_token_data
    from training.dictionary_factory import dictionary_hooks

    settings.validate()
    out = Path(settings.out).resolve()
    results = load_results(out, settings)
    path = out / RESULTS_FILE
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
    train_data, rows, reserved = split_rows(data, settings.eval_tokens)
    digest = rows_digest(train_data.train, rows)
    record_rows(results["setup"], digest, str(path), "--out")
    results["setup"]["eval_rows"] = {"heldout": int(data.val.shape[0]), "reserved": reserved}
    # distinct training tokens (the ones a loss counts): a budget above them repeats rows
    results["setup"]["train_tokens"] = int(token_mask(train_data.train, data.special_ids).sum())
    save_entry(path, results, ("setup",))  # recorded before any run, so others can check
    local = [
        (p, s)
        for p, s in pending
        if p.fields.get("objective", "local") == "local" and p.stage != "baseline"
    ]
    # the transcoder pair always, so that every claim's local runs at this layer share one cache
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

    def ladder_of(point: SweepPoint, seed: int, lr: float) -> Ladder:
        entry = _point_record(results, point)["seeds"].setdefault(
            str(seed), {"rungs": [], "converged": False}
        )

        return Ladder(
            entry,
            lambda tokens, f: _config(point, seed, tokens, lr, settings, f, cache),
            out / "runs" / point.name / f"seed{seed}",
            lambda: save_entry(path, results, ("runs", point.name, "seeds", str(seed))),
            f"{point.name} seed {seed}",
        )

    def train(ladders: list[Ladder], tune: bool = False) -> None:
        train_ladders(
            ladders,
            [settings.tune_tokens] if tune else ladder,
            settings.layer,
            model,
            train_data,
            original,
            log,
            tolerance=settings.tolerance,
            floor=settings.floor,
            converge=not tune,
        )

    # e2e ladders of one seed train together (they share the original model's pass)
    for group in _e2e_groups(pending, settings.together):
        with contextlib.ExitStack() as stack:
            mine = [
                (point, seed)
                for point, seed in group
                if stack.enter_context(claimed(out / "runs" / point.name / f"seed{seed}"))
            ]
            _refresh(path, results)
            due = [
                (p, s)
                for p, s in mine
                if not _finished(results, p, s, ladder, settings)
                and _twin(results, plan, p, s, float(p.fields["lr"]), settings) is None
            ]
            if len(due) > 1:
                log(f"training {len(due)} e2e ladders of seed {due[0][1]} together")
                train([ladder_of(p, s, float(p.fields["lr"])) for p, s in due])

    while pending:
        held, waiting = [], []
        for point, seed in pending:
            folder = out / "runs" / point.name / f"seed{seed}"
            with claimed(folder) as mine:
                if not mine:
                    held.append((point, seed))
                    continue
                _refresh(path, results)
                if _finished(results, point, seed, ladder, settings):
                    continue
                if point.stage == "baseline":
                    _fit_baseline(point, settings, model, train_data, original, results, path, log)
                    continue
                lr = point.fields["lr"]
                if lr == "tuned":
                    lr = tuned_lr(results, point.claim, point.arm)
                    if lr is None:
                        waiting.append((point, seed))
                        continue
                twin = _twin(results, plan, point, seed, float(lr), settings)
                if twin is None:
                    train([ladder_of(point, seed, float(lr))], point.stage == "tune")
                    continue
                # the same run under another point's name: trained once, in the first point's
                # folder, and recorded under both
                with claimed(out / "runs" / twin.name / f"seed{seed}") as free:
                    if not free:
                        held.append((point, seed))
                        continue
                    _refresh(path, results)
                    if not _finished(results, twin, seed, ladder, settings):
                        train([ladder_of(twin, seed, float(lr))], twin.stage == "tune")
                _take_twin(results, path, point, twin, seed, log)
        tuning_elsewhere = any(p.stage == "tune" for p, _ in held)
        if waiting and not tuning_elsewhere:
            names = sorted({p.name for p, _ in waiting})
            raise SparseCircuitsError(f"{names}: their lr-tuning runs gave no finite loss")
        if held:
            log(f"{len(held)} runs are being trained by another process; left to it")
        if not (waiting and tuning_elsewhere):
            break
        log(f"{len(waiting)} runs wait for lr-tuning runs another process is training")
        time.sleep(WAIT_SECONDS)
        pending = waiting + [pw for pw in held if pw[0].stage == "tune"]
    _refresh(path, results)
    return results


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


def _fit_baseline(
    point: SweepPoint,
    settings: SweepSettings,
    model: Any,
    data: TokenData,
    original: Any,
    results: dict[str, Any],
    path: Path,
    log: Any,
) -> None:
    """Fit the point's closed-form baseline (the skip claim's affine map, the SAE claims' mean)
    on the first `start_tokens` training tokens and record it as a one-rung, converged entry (a
    closed-form fit has nothing left to converge)."""
    from replacement.hooks import layer_hooks
    from training.claims_eval import evaluate_dictionary
    from training.closed_form_baselines import fit_linear_transcoder, fit_mean_sae
    from training.config import TrainConfig
    from training.ladder import machine, rung_record

    start = time.perf_counter()
    if point.arm == "linear":
        pair = layer_hooks(settings.layer)
        fitted_dict, seen = fit_linear_transcoder(
            model, data.train, data.special_ids, pair.mlp_in, pair.mlp_out, settings.start_tokens
        )
        how = "least squares"
    elif point.arm == "mean":
        site = block_hook(settings.layer, TrainConfig.site)  # where the claims' SAEs sit
        fitted_dict, seen = fit_mean_sae(
            model, data.train, data.special_ids, site, settings.start_tokens
        )
        how = "the mean"
    else:
        raise ValueError(f"{point.name}: no closed-form baseline named {point.arm!r}")
    fitted = time.perf_counter() - start
    start = time.perf_counter()
    measured = evaluate_dictionary(model, fitted_dict.eval(), original)
    entry = _point_record(results, point)["seeds"].setdefault("0", {})
    eval_seconds = time.perf_counter() - start
    entry["rungs"] = [  # no steps, lr or training loss: a closed-form fit
        rung_record(machine(settings.device), seen, 0, 0.0, fitted, eval_seconds, None, measured)
    ]
    entry["converged"] = True
    save_entry(path, results, ("runs", point.name, "seeds", "0"))
    f = entry["rungs"][-1]["figures"]
    log(
        f"{point.name}: {how} of {seen:,} tokens in {fitted:.0f} s, "
        f"CE increase {f['ce_increase']:.4f}, FVU {f['fvu']:.3f}"
    )


def merge_results(out: str | Path, other: str | Path) -> tuple[int, int]:
    """Take into `out`'s results every run of the sweep results file `other` (the same sweep
    run elsewhere, e.g. its e2e runs on an accelerator); returns (entries taken, kept).

    A (point, seed) is taken when `out` lacks it or holds fewer rungs of an unfinished ladder;
    an entry `out` already has at least as far is kept. Both files must record the same
    settings (checked before anything is written).
    """
    import json

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
