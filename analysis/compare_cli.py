"""`sparse-circuits compare --out DIR`: which dictionary sets give faithful circuits.

    sparse-circuits compare --out compare_out                     # six zoo sets, default tasks
    sparse-circuits compare --sets sae_local,skip_transcoder --tasks close_bracket --out DIR
    sparse-circuits compare --task-file my_task.yaml --sets PATH_A,PATH_B --model gpt2 --out DIR

Writes DIR/report.md, DIR/faithfulness.png, DIR/ce_vs_l0.png and DIR/results.json (every
per-pair metric, the summary with its intervals, the claims sweep). Node currencies, baselines
(random dictionaries, neurons, MLP outputs), attention heads as nodes and a discovery /
held-out split of the pairs are on by default; see `analysis.units` and `analysis.summary`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from replacement.errors import SparseCircuitsError


def _names(text: str, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise SparseCircuitsError(f"no {what} given; expected a comma-separated list")
    return names


def run_compare(args: argparse.Namespace) -> dict[str, Path]:
    """Load model, sets and tasks, compare, and write the report."""
    import torch

    from analysis.claims import claims, load_sweep
    from analysis.code_tasks import code_tasks, default_tasks
    from analysis.compare import compare
    from analysis.report import findings, write_report
    from analysis.summary import summarize
    from analysis.tasks import load_task
    from replacement import load_dictionaries, load_model
    from replacement.zoo import list_dictionary_sets

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.results:  # only write the report again (say, with a newer claims sweep)
        import json

        from analysis.compare import Comparison

        comparison = Comparison.from_dict(json.loads(Path(args.results).read_text()))
        sweep = load_sweep(args.sweep)
        summary = summarize(comparison, b=args.bootstrap)
        files = write_report(
            comparison, args.out, claims(sweep) if sweep else [], sweep,
            findings(comparison, summary), summary,
        )  # fmt: skip
        print(f"wrote {', '.join(str(p) for p in files.values())}")
        return files
    model = load_model(args.model)
    names = [s for s in (args.sets or "").split(",") if s] or [
        e.name for e in list_dictionary_sets()
    ]
    if not names:
        raise SparseCircuitsError("no dictionary sets given and none shipped; pass --sets")
    sets = {Path(n).name if "/" in n else n: load_dictionaries(n) for n in names}
    if args.task_file:
        tasks = [load_task(p) for p in args.task_file]
    else:
        tasks = default_tasks(model, n=args.pairs)
        if args.tasks:
            wanted = args.tasks.split(",")
            every = {t.name: t for t in code_tasks(model.tokenizer, n=args.pairs)}
            unknown = [w for w in wanted if w not in every]
            if unknown:
                raise SparseCircuitsError(
                    f"unknown tasks {unknown}; built-in tasks: {sorted(every)}"
                )
            tasks = [every[w] for w in wanted]
    loss_tokens = None
    if args.loss_rows > 0 and args.model == "default":
        from training.data import load_token_data

        loss_tokens = load_token_data(model, None, ctx_len=128).val[: args.loss_rows]
    comparison = compare(
        model,
        sets,
        tasks,
        loss_tokens=loss_tokens,
        method=args.method,
        ablation=args.ablation,
        per_position=not args.aggregate_positions,
        graph_prompts=args.graph_prompts,
        level=args.circuit,
        currencies=_names(args.currency, "currency"),
        baselines=[] if args.baselines == "none" else _names(args.baselines, "baseline"),
        heads=not args.no_heads,
        heldout=args.heldout,
        compare_rankings=args.compare_rankings,
        ig_steps=args.ig_steps,
        seed=args.seed,
        verbose=not args.quiet,
    )
    sweep = load_sweep(args.sweep) if args.model == "default" else None
    summary = summarize(comparison, b=args.bootstrap)
    text = findings(comparison, summary)
    files = write_report(comparison, args.out, claims(sweep) if sweep else [], sweep, text, summary)
    print(text)
    print(
        f"wrote {', '.join(str(p) for p in files.values())} in {time.perf_counter() - start:.0f} s"
    )
    return files


def register(subparsers: Any) -> None:
    """Add the `compare` subcommand."""
    from analysis.circuit_eval import ABLATIONS, RANKINGS
    from analysis.compare import BASELINES, DEFAULT_RANKING, LEVELS
    from analysis.intervals import BOOTSTRAP
    from analysis.units import CURRENCIES

    p = subparsers.add_parser(
        "compare",
        help="faithfulness of circuits from several dictionary sets (report, plots, JSON)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default="default", help="model name or folder (default: embedded)")
    p.add_argument(
        "--sets", default=None, help="comma-separated zoo sets or folders (default: every zoo set)"
    )
    p.add_argument(
        "--tasks",
        default=None,
        help="comma-separated built-in code tasks (default: those the model gets >= 80%% right)",
    )
    p.add_argument(
        "--task-file", action="append", default=None, help="JSON/YAML task file (repeatable)"
    )
    p.add_argument("--pairs", type=int, default=64, help="prompt pairs per built-in task")
    p.add_argument(
        "--method",
        choices=RANKINGS,
        default=DEFAULT_RANKING,
        help="the ranking the report's figures use",
    )
    p.add_argument("--ablation", choices=ABLATIONS, default="mean")
    p.add_argument(
        "--currency",
        default=",".join(CURRENCIES),
        help=f"comma-separated node currencies, some of {', '.join(CURRENCIES)} (default: all)",
    )
    p.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help=f"comma-separated baselines, some of {', '.join(BASELINES)}, or none",
    )
    p.add_argument(
        "--no-heads",
        action="store_true",
        help="leave attention live instead of making heads nodes (MLP-only circuits)",
    )
    p.add_argument(
        "--heldout",
        type=float,
        default=0.5,
        help="share of each task's pairs held out from ranking",
    )
    p.add_argument(
        "--compare-rankings",
        type=int,
        default=1,
        help="tasks (the shortest ones) also ranked by the other method, for the rankings table",
    )
    p.add_argument("--ig-steps", type=int, default=4, help="path points of integrated gradients")
    p.add_argument("--bootstrap", type=int, default=BOOTSTRAP, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits and random dictionaries")
    p.add_argument(
        "--circuit",
        choices=LEVELS,
        default="nodes",
        help="node circuits (edge circuits: analysis.edges from Python)",
    )
    p.add_argument(
        "--aggregate-positions", action="store_true", help="one node per feature over all positions"
    )
    p.add_argument(
        "--graph-prompts", type=int, default=1, help="prompts per task traced for graph scores"
    )
    p.add_argument(
        "--loss-rows", type=int, default=32, help="held-out rows of 128 tokens for the loss columns"
    )
    p.add_argument("--sweep", default=None, help="claims sweep JSON (default: the shipped one)")
    p.add_argument(
        "--results",
        default=None,
        help="write the report from this results.json instead of computing",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=lambda args: run_compare(args) and 0)
