"""`sparse-circuits claims`: the seed papers' claims, swept until every run converges.

    sparse-circuits claims --out runs/claims [--claims braun,gated,skip] [--points GLOB,..]
        [--seeds 2]
        [--start-tokens 1e6] [--cap-tokens 6.4e7] [--eval-tokens 1e6] [--report-only]
        [--merge OTHER/claims_sweep.json] [--export FILE] [--rows ROWS.npz] [--together 20]
        [--up-to 1.6e7]

Trains every point of every claim for each seed on a doubling ladder of budgets until the
held-out CE increase changes by less than --tolerance (or --floor nats) over the last doubling
(or --cap-tokens), then writes DIR/claims.md, the Pareto and convergence plots,
claims_verdicts.json and claims_readings.json (the Braun TopK comparison at the e2e ladders'
common budget while they still train, and e2e+ds against e2e at equal budget: readings, not
verdicts). It is resumable: rerun the same command and finished rungs are skipped (a finished
sweep trains nothing). Start the same command in several shells to share the work: each run is
trained by one of them, all results land in DIR/claims_sweep.json. Local runs read an
activation cache of the layer that the first of them writes to DIR/activations (about 8.6 GB in
float32 for the default model). e2e ladders of one seed train together (--together), sharing
the original model's pass. Cost on one CPU thread: e2e ~4k tokens/s alone, ~1.6x that per run
for 4 together, so one e2e rung of 1e7 tokens takes ~25-40 min; the whole default sweep is
sized for an accelerator or for many sessions of resume.
"""

from __future__ import annotations

import argparse
from typing import Any


def _tokens(text: str) -> int:
    value = float(text)
    if not value > 0 or value != int(value):
        raise argparse.ArgumentTypeError(
            f"expected a positive whole number of tokens, got {text!r}"
        )
    return int(value)


def run(args: argparse.Namespace) -> int:
    """Sweep (unless --report-only) and write the report."""
    import json
    from pathlib import Path

    from analysis.claims_report import write_claims_report
    from replacement.errors import SparseCircuitsError
    from replacement.validation import check_device, check_output_dir, check_output_file
    from training.allocator import keep_freed_memory
    from training.claims_results import RESULTS_FILE
    from training.claims_settings import SweepSettings
    from training.claims_sweep import run_claims

    keep_freed_memory()

    check_output_dir(args.out, "--out")
    if args.export:
        check_output_file(args.export, "--export")
    check_device(args.device)
    settings = SweepSettings(
        out=args.out,
        claims=tuple(c for c in args.claims.split(",") if c),
        points=tuple(c for c in (args.points or "").split(",") if c),
        layer=args.layer,
        seeds=args.seeds,
        start_tokens=args.start_tokens,
        cap_tokens=args.cap_tokens,
        tolerance=args.tolerance,
        floor=args.floor,
        tune_tokens=args.tune_tokens,
        eval_tokens=args.eval_tokens,
        n_chunks=args.n_chunks,
        n_features=args.n_features,
        activation_cache=args.activation_cache,
        device=args.device,
        together=args.together,
        up_to=args.up_to,
        rows=args.rows,
    ).validate()
    if args.merge:
        from training.claims_results import merge_results

        taken, kept = merge_results(args.out, args.merge)
        print(f"merged {args.merge}: {taken} runs taken, {kept} kept from {args.out}")
    if args.report_only or args.merge:
        path = Path(args.out) / RESULTS_FILE
        if not path.is_file():
            raise SparseCircuitsError(f"no {RESULTS_FILE} in {args.out!r} yet to report on")
        results = json.loads(path.read_text())
    else:
        results = run_claims(settings, log=(lambda m: None) if args.quiet else print)
    paths = write_claims_report(results, args.out)
    print(f"wrote {paths['report']}")
    if args.export:
        from analysis.claims import shipped_form
        from replacement.atomic import write_json

        write_json(Path(args.export), shipped_form(results))
        print(f"wrote {args.export} (each ladder's last rung with its per-chunk sums)")
    return 0


def register(subparsers: Any) -> None:
    """Add the `claims` subcommand."""
    from training.claims_plan import CLAIMS

    p = subparsers.add_parser(
        "claims",
        help="sweep the seed papers' claims until converged; verdicts with intervals",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="folder of the runs, the results and the report")
    p.add_argument(
        "--claims",
        default=",".join(CLAIMS),
        help=f"comma-separated claims (default: {','.join(CLAIMS)})",
    )
    p.add_argument(
        "--points",
        default=None,
        help="comma-separated glob patterns on point names (e.g. 'braun/e2e*'): train only "
        "those (and the lr-tuning runs they need); another machine takes the rest "
        "(default: every point of --claims)",
    )
    p.add_argument(
        "--layer", type=int, default=1, help="block trained, each dictionary alone (default: 1)"
    )
    p.add_argument("--seeds", type=int, default=2, help="seeds per point (default: 2)")
    p.add_argument(
        "--start-tokens",
        type=_tokens,
        default=1_000_000,
        help="first budget of every ladder, in tokens (default: 1000000)",
    )
    p.add_argument(
        "--cap-tokens",
        type=_tokens,
        default=64_000_000,
        help="largest budget a run may train for, in tokens (default: 64000000); a resumed "
        "sweep's cap may be raised to a doubling of the recorded one, never lowered",
    )
    p.add_argument(
        "--up-to",
        type=_tokens,
        default=None,
        metavar="TOKENS",
        help="train no rung above this budget in this run, the ladders left open (a later run "
        "without it goes on): every ladder reaches one budget before any goes further, so a "
        "reading at a common budget comes first (default: up to --cap-tokens)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="converged below this relative change per doubling (default: 0.02)",
    )
    p.add_argument(
        "--floor",
        type=float,
        default=5e-4,
        help="... or below this absolute change in nats, for CE increases near zero "
        "(default: 0.0005)",
    )
    p.add_argument(
        "--tune-tokens",
        type=_tokens,
        default=1_000_000,
        help="budget of each lr-tuning run, in tokens (default: 1000000)",
    )
    p.add_argument(
        "--eval-tokens",
        type=_tokens,
        default=1_000_000,
        help="held-out evaluation tokens, at least (default: 1000000)",
    )
    p.add_argument(
        "--n-chunks",
        type=int,
        default=64,
        help="chunks of the evaluation rows for the bootstrap (default: 64)",
    )
    p.add_argument("--n-features", type=int, default=1024, help="dictionary width (default: 1024)")
    p.add_argument(
        "--activation-cache",
        default="float32",
        help="dtype of the local runs' activation cache, written once in DIR/activations, or "
        "none to run the model on every step (default: float32, the model's own values)",
    )
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument(
        "--together",
        type=int,
        default=20,
        metavar="N",
        help="e2e ladders of one seed this process trains together, rung by rung, sharing "
        "the original model's pass of each step (results equal training each alone); 1 "
        "trains each alone (default: 20)",
    )
    p.add_argument(
        "--rows",
        metavar="FILE",
        default=None,
        help="token rows (python -m training.token_rows) to train and evaluate on instead of "
        "the default corpus, which another Python reads differently; the sweep records which "
        "rows it ran on and refuses others (default: the default corpus)",
    )
    p.add_argument("--report-only", action="store_true", help="write the report from DIR's results")
    p.add_argument(
        "--export",
        metavar="FILE",
        default=None,
        help="also write the results as shipped (analysis/claims_sweep.json): per-chunk sums "
        "on each ladder's last rung only (default: none)",
    )
    p.add_argument(
        "--merge",
        metavar="FILE",
        default=None,
        help="take the runs of another claims_sweep.json of the same sweep (run elsewhere, "
        "e.g. on an accelerator) into DIR's, then write the report; trains nothing (default: "
        "none)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)
