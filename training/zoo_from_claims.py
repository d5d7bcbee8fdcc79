"""The zoo's ladders that a claims sweep has already trained (`build_zoo --claims-runs DIR`).

At the claims layer, three of the zoo's sets are runs the claims sweep makes anyway, seed 0:
`sae_local` is Braun's local TopK SAE at k = 16, `transcoder` and `skip_transcoder` are Paulo's
k = 16 pair, and `sae_e2e` / `sae_e2e_ds` Braun's e2e ones. A (set, layer) is taken from the
sweep only when the two runs are the same run (equal `training.config.run_identity` of the
first rung) under the same ladder and evaluation (start budget, held-out rows, chunks,
convergence rule, cache dtype, the model's own corpus), and only as far as the zoo's ladder
goes: its rungs up to the zoo's cap, ending where the zoo's rule would have ended.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from training.config import TrainConfig, run_identity
from training.convergence import DEFAULT_FLOOR, DEFAULT_TOLERANCE, has_converged


def _sweep_settings(setup: dict[str, Any], out: Path) -> Any:
    from training.claims_results import recorded_setup
    from training.claims_settings import SweepSettings

    names = {f.name for f in fields(SweepSettings)}
    known = {k: v for k, v in recorded_setup(setup).items() if k in names}
    return SweepSettings(out=str(out), **known)


def same_evaluation(
    setup: dict[str, Any], args: Any, eval_rows: dict[str, int], digest: str
) -> bool:
    """Whether the sweep's ladders are trained, evaluated and ended as the zoo's (`args`; its
    held-out and reserved row counts `eval_rows`, its rows' `training.token_rows.rows_digest`)
    would be. Sweeps that recorded no digest are checked on the row counts."""
    from training.claims_results import recorded_setup

    recorded = recorded_setup(setup)
    return (
        args.data is None  # the zoo trained on other rows than the model's own corpus
        and setup.get("eval_rows") == eval_rows  # another corpus, or another split of it
        and setup.get("rows_sha256", digest) == digest
        and recorded.get("start_tokens") == args.start_tokens
        and recorded.get("eval_tokens") == args.eval_tokens
        and recorded.get("n_chunks") == args.n_chunks
        and recorded.get("activation_cache") == args.activation_cache
        and recorded.get("tolerance") == DEFAULT_TOLERANCE
        and recorded.get("floor") == DEFAULT_FLOOR
    )


def twin_point(results: dict[str, Any], out: Path, zoo_config: TrainConfig) -> str | None:
    """The claims point whose seed-0 run is `zoo_config`'s run (its first rung), or None."""
    from training.claims_plan import CLAIMS, claim_points
    from training.claims_sweep import run_key, tuned_lr

    settings = _sweep_settings(results["setup"], out)
    wanted = run_identity(zoo_config)
    for point in claim_points(CLAIMS, settings.layer):
        if point.stage != "sweep":
            continue
        lr = point.fields["lr"]
        if lr == "tuned":
            lr = tuned_lr(results, point.claim, point.arm)
        if lr is not None and run_key(point, 0, float(lr), settings) == wanted:
            return point.name
    return None


def taken_ladder(
    claims_entry: dict[str, Any], budgets: list[int], folder: Path
) -> dict[str, Any] | None:
    """The zoo's ladder entry from the sweep's seed-0 entry: its rungs at the zoo's budgets, in
    order, up to where the zoo's rule ends it; None while the sweep has not got that far."""
    by_tokens = {r["tokens"]: r for r in claims_entry["rungs"]}
    rungs: list[dict[str, Any]] = []
    converged = False
    for tokens in budgets:
        if tokens not in by_tokens:
            return None
        rungs.append(copy.deepcopy(by_tokens[tokens]))
        curve = [(r["tokens"], r["figures"]["ce_increase"]) for r in rungs]
        converged = has_converged(curve, DEFAULT_TOLERANCE, DEFAULT_FLOOR)
        if converged:
            break
    return {"rungs": rungs, "converged": converged, "same_run_as": str(folder)}


@dataclass(frozen=True)
class SweepTwin:
    """What a claims sweep holds of one zoo ladder: the sweep run that is the same run, and
    the zoo's ladder taken from it where the sweep has trained (and kept) far enough."""

    name: str
    """The sweep's point whose seed-0 run is the zoo's run."""
    ladder: dict[str, Any] | None
    """The zoo's ladder entry taken from it; None while the sweep has not trained as far as
    the zoo's ladder goes, or when it lacks the final rung's weights (`short` says which)."""
    short: bool
    """The sweep has not trained this run as far as the zoo's ladder goes: it is to be
    trained there, not again here."""


def sweep_twin(
    claims_out: Path,
    zoo_config: TrainConfig,
    budgets: list[int],
    args: Any,
    eval_rows: dict[str, int],
    digest: str,
) -> SweepTwin | None:
    """The claims sweep in `claims_out`'s run of the zoo ladder whose first rung is
    `zoo_config`, or None when the sweep has no such run or evaluates otherwise."""
    from training.claims_results import RESULTS_FILE
    from training.sweep_locks import read_results

    results = read_results(claims_out / RESULTS_FILE)
    if results is None or not same_evaluation(results["setup"], args, eval_rows, digest):
        return None
    name = twin_point(results, claims_out, zoo_config)
    if name is None:
        return None
    entry = results["runs"].get(name, {}).get("seeds", {}).get("0") or {"rungs": []}
    taken = taken_ladder(entry, budgets, claims_out / "runs" / name / "seed0")
    if taken is None:
        return SweepTwin(name, None, short=True)
    taken["trained_as"] = f"claims sweep {name} seed 0"
    last = Path(taken["same_run_as"]) / f"t{taken['rungs'][-1]['tokens']}"
    # a sweep merged from a shipped file (or a lost machine's) has the figures, not the weights
    return SweepTwin(name, taken if (last / "card.json").is_file() else None, short=False)
