"""`sparse-circuits compare --out DIR`: which dictionary sets give faithful circuits.

    sparse-circuits compare --out compare_out                     # six zoo sets, default tasks
    sparse-circuits compare --sets sae_local,skip_transcoder --tasks close_bracket --out DIR
    sparse-circuits compare --task-file my_task.yaml --sets PATH_A,PATH_B --model gpt2 --out DIR

Writes DIR/report.md, DIR/faithfulness.png, DIR/ce_vs_l0.png, DIR/cpr.png and
DIR/results.json (every number, the claims sweep included).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from replacement.errors import SparseCircuitsError


def findings(comparison: Any) -> str:
    """One paragraph naming the most faithful set at fixed circuit sizes."""
    from analysis.compare import FAITHFUL_LEVEL, REPORT_SIZES

    rows = {s.name: comparison.set_row(s.name) for s in comparison.sets}
    unit = comparison.settings.get("level", "nodes")
    parts = []
    for size in REPORT_SIZES:
        key = f"faithfulness_at_{size}"
        ranked = sorted((r[key], n) for n, r in rows.items() if r[key] is not None)[::-1]
        if ranked:
            parts.append(
                f"at {size} {unit} the most faithful circuits come from `{ranked[0][1]}` "
                f"({ranked[0][0]:.2f}; least: `{ranked[-1][1]}` {ranked[-1][0]:.2f})"
            )
    needed = sorted(
        (r["nodes_needed"], n) for n, r in rows.items() if r["nodes_needed"] is not None
    )
    if needed:
        parts.append(
            f"`{needed[0][1]}` needs the fewest {unit} for faithfulness {FAITHFUL_LEVEL} "
            f"({needed[0][0]:.0f} on average), `{needed[-1][1]}` the most ({needed[-1][0]:.0f})"
        )
    return "Averaged over the tasks, " + "; ".join(parts) + "."


def run_compare(args: argparse.Namespace) -> dict[str, Path]:
    """Load model, sets and tasks, compare, and write the report."""
    import torch

    from analysis.claims import claims, load_sweep
    from analysis.code_tasks import code_tasks, default_tasks
    from analysis.compare import compare
    from analysis.report import write_report
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
        files = write_report(
            comparison, args.out, claims(sweep) if sweep else [], sweep, findings(comparison)
        )
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
        verbose=not args.quiet,
    )
    sweep = load_sweep(args.sweep) if args.model == "default" else None
    files = write_report(
        comparison, args.out, claims(sweep) if sweep else [], sweep, findings(comparison)
    )
    print(findings(comparison))
    print(
        f"wrote {', '.join(str(p) for p in files.values())} in {time.perf_counter() - start:.0f} s"
    )
    return files


def register(subparsers: Any) -> None:
    """Add the `compare` subcommand."""
    from analysis.compare import LEVELS
    from analysis.nodes import ABLATIONS
    from analysis.ranking import METHODS

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
    p.add_argument("--method", choices=METHODS, default="attribution_patching")
    p.add_argument("--ablation", choices=ABLATIONS, default="mean")
    p.add_argument(
        "--circuit",
        choices=LEVELS,
        default="nodes",
        help="circuits as node sets, or as edge sets (node -> later site or logits; "
        "ranked by edge attribution patching; sizes count edges)",
    )
    p.add_argument(
        "--aggregate-positions", action="store_true", help="one node per feature over all positions"
    )
    p.add_argument(
        "--graph-prompts", type=int, default=2, help="prompts per task traced for graph scores"
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
