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
from replacement.output_folder import add_overwrite_flag
from replacement.validation import nonnegative_int, positive_int


def _names(text: str, what: str, allowed: tuple[str, ...]) -> list[str]:
    """A comma-separated flag value as names, each one of `allowed` (checked before any work)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise SparseCircuitsError(f"no {what} given; expected a comma-separated list")
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise SparseCircuitsError(f"unknown {what} {unknown}; expected some of {list(allowed)}")
    return names


def _read_json(path: str, option: str) -> Any:
    """The JSON content of a file a flag names, or an error naming the flag."""
    import json

    file = Path(path)
    if not file.is_file():
        what = "is a folder" if file.is_dir() else "does not exist"
        raise SparseCircuitsError(f"{option} {path!r} {what}; expected a JSON file")
    try:
        return json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SparseCircuitsError(f"{option} {path!r} is not valid JSON: {exc}") from exc


def run_compare(args: argparse.Namespace) -> dict[str, Path]:
    """Load model, sets and tasks, compare, and write the report."""
    from replacement.output_folder import OutputFolder

    # checked, refused if not ours, and locked before any work; held to the end
    with OutputFolder(args.out, command="compare", overwrite=args.overwrite) as folder:
        return _run_compare(args, folder)


def _write_report(folder: Any, *args: Any) -> dict[str, Path]:
    """Write the report into a staging folder and swap it in whole; the final paths."""
    from analysis.report import write_report

    files = write_report(args[0], folder.stage(), *args[1:])
    folder.commit()
    return {key: folder.path / path.name for key, path in files.items()}


def _run_compare(args: argparse.Namespace, folder: Any) -> dict[str, Path]:
    import torch

    from analysis.choices import BASELINES, CURRENCIES
    from analysis.claims import claims, load_sweep
    from analysis.code_tasks import code_tasks, default_tasks
    from analysis.compare import compare
    from analysis.report import findings
    from analysis.summary import summarize
    from analysis.tasks import load_task
    from replacement import load_dictionaries, load_model
    from replacement.formats.detect import describe
    from replacement.validation import check_output_dir
    from replacement.zoo import list_dictionary_sets

    # every input the flags name is checked before the model loads
    check_output_dir(args.out, "--out")
    currencies = _names(args.currency, "--currency", CURRENCIES)
    baselines = [] if args.baselines == "none" else _names(args.baselines, "--baselines", BASELINES)
    if args.interpretability not in (None, "run"):
        found = _read_json(args.interpretability, "--interpretability")
        if not (isinstance(found, dict) and isinstance(found.get("results"), dict)):
            raise SparseCircuitsError(
                f"--interpretability {args.interpretability!r} is not the results.json of "
                "`sparse-circuits interpret`; expected 'run' or such a file"
            )
    if not 0 < args.heldout < 1:
        raise SparseCircuitsError(f"--heldout must be a share in (0, 1); got {args.heldout}")
    if args.sweep is not None:
        sweep = _read_json(args.sweep, "--sweep")
        if not (
            isinstance(sweep, dict)
            and all(isinstance(sweep.get(k), dict) for k in ("runs", "setup"))
        ):
            raise SparseCircuitsError(
                f"--sweep {args.sweep!r} is not a claims sweep; expected a JSON mapping with "
                "'runs' and 'setup' (as analysis/claims_sweep.json)"
            )
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.results:  # only write the report again (say, with a newer claims sweep)
        from analysis.compare import Comparison

        data = _read_json(args.results, "--results")
        try:
            comparison = Comparison.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SparseCircuitsError(
                f"--results {args.results!r} is not a results.json of `compare` ({exc!r})"
            ) from exc
        sweep = load_sweep(args.sweep)
        summary = summarize(comparison, b=args.bootstrap)
        files = _write_report(
            folder, comparison, claims(sweep) if sweep else [], sweep,
            findings(comparison, summary), summary,
        )  # fmt: skip
        print(f"wrote {', '.join(str(p) for p in files.values())}")
        return files
    names = [s for s in (args.sets or "").split(",") if s] or [
        e.name for e in list_dictionary_sets()
    ]
    if not names:
        raise SparseCircuitsError("no dictionary sets given and none shipped; pass --sets")
    for name in names:
        describe(name)  # a missing location fails now
    tasks = [load_task(p) for p in args.task_file] if args.task_file else None
    if args.tasks:
        from analysis.code_tasks import TASK_NAMES

        if tasks:
            raise SparseCircuitsError("give --tasks or --task-file, not both")
        unknown = [w for w in args.tasks.split(",") if w not in TASK_NAMES]
        if unknown:
            raise SparseCircuitsError(
                f"--tasks {unknown} are unknown; built-in tasks: {sorted(TASK_NAMES)}"
            )
    model = load_model(args.model)
    sets = {Path(n).name if "/" in n else n: load_dictionaries(n) for n in names}
    if not tasks:
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
        currencies=currencies,
        baselines=baselines,
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
    files = _write_report(folder, comparison, claims(sweep) if sweep else [], sweep, text, summary)
    if args.interpretability:  # the interpretability section (analysis.interpretability)
        from analysis.interpretability.report import add_to_compare_report

        files.update(add_to_compare_report(model, sets, args.out, args.interpretability))
    print(text)
    print(
        f"wrote {', '.join(str(p) for p in files.values())} in {time.perf_counter() - start:.0f} s"
    )
    return files


def register(subparsers: Any) -> None:
    """Add the `compare` subcommand."""
    from analysis.choices import (
        ABLATIONS,
        BASELINES,
        BOOTSTRAP,
        CURRENCIES,
        DEFAULT_RANKING,
        LEVELS,
        RANKINGS,
    )

    p = subparsers.add_parser(
        "compare",
        help="faithfulness of circuits from several dictionary sets (report, plots, JSON)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder (required)")
    p.add_argument(
        "--model",
        default="default",
        help="model: 'default' (the embedded model), a folder or HF name (default: %(default)s)",
    )
    add_overwrite_flag(p)
    p.add_argument(
        "--sets", default=None, help="comma-separated zoo sets or folders (default: every zoo set)"
    )
    p.add_argument(
        "--tasks",
        default=None,
        help="comma-separated built-in code tasks (default: those the model gets >= 80%% right)",
    )
    p.add_argument(
        "--task-file",
        action="append",
        default=None,
        help="JSON/YAML task file (repeatable; default: none, the built-in tasks)",
    )
    p.add_argument(
        "--pairs",
        type=positive_int,
        default=64,
        help="number of prompt pairs per built-in task (default: %(default)s)",
    )
    p.add_argument(
        "--method",
        choices=RANKINGS,
        default=DEFAULT_RANKING,
        help="how nodes are ranked for the report's figures: attribution_patching (gradient x "
        "(clean - ablated value), one forward and backward pass), integrated_gradients (the "
        "gradient averaged along the path from the ablated to the clean values, one source at a "
        "time: a batched pass per source) or joint_integrated_gradients (every node moves from "
        "ablated to clean together: one batched pass); the others also run on "
        "--compare-rankings tasks (default: %(default)s)",
    )
    p.add_argument(
        "--ablation",
        choices=ABLATIONS,
        default="mean",
        help="what a node outside the circuit takes: its mean over the task's discovery pairs, "
        "zero, or its value on the counterfactual prompt of the pair (default: %(default)s)",
    )
    p.add_argument(
        "--currency",
        default=",".join(CURRENCIES),
        help="comma-separated node currencies, some of "
        + ", ".join(CURRENCIES)
        + " (default: all three)",
    )
    p.add_argument(
        "--baselines",
        default=",".join(BASELINES),
        help="comma-separated baselines, some of "
        + ", ".join(BASELINES)
        + ", or none (default: all three)",
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
        help="share of each task's pairs held out from ranking (default: %(default)s)",
    )
    p.add_argument(
        "--compare-rankings",
        type=nonnegative_int,
        default=1,
        help="number of tasks (the shortest) also ranked by the other rankings, for the "
        "rankings table (default: %(default)s)",
    )
    p.add_argument(
        "--ig-steps",
        type=positive_int,
        default=4,
        help="path points of integrated gradients (default: %(default)s)",
    )
    p.add_argument(
        "--bootstrap",
        type=positive_int,
        default=BOOTSTRAP,
        help="bootstrap resamples of the intervals (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=nonnegative_int,
        default=0,
        help="seed of the splits and random dictionaries (default: %(default)s)",
    )
    p.add_argument(
        "--circuit",
        choices=LEVELS,
        default="nodes",
        help="node circuits; edge circuits are computed by analysis.edges from Python "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--aggregate-positions", action="store_true", help="one node per feature over all positions"
    )
    p.add_argument(
        "--graph-prompts",
        type=nonnegative_int,
        default=1,
        help="held-out prompts per task traced for the graph scores, of each set and of its "
        "random control (default: %(default)s)",
    )
    p.add_argument(
        "--loss-rows",
        type=nonnegative_int,
        default=32,
        help="number of held-out rows of 128 tokens for the loss columns (default: %(default)s)",
    )
    p.add_argument("--sweep", default=None, help="claims sweep JSON (default: the shipped one)")
    p.add_argument(
        "--results",
        default=None,
        help="write the report from this results.json instead of computing (default: compute)",
    )
    p.add_argument(
        "--threads",
        type=nonnegative_int,
        default=0,
        help="number of torch threads (0: torch's default) (default: %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--interpretability",
        default=None,
        help="add the interpretability section: 'run' (score the sets) or an interpret "
        "results.json (default: none)",
    )
    p.set_defaults(func=lambda args: run_compare(args) and 0)
