"""`sparse-circuits interpret --dictionaries SET... --out DIR`: offline interpretability scores.

    sparse-circuits interpret --dictionaries transcoder sae_local --out interp_out
    sparse-circuits interpret --dictionaries transcoder --atlas-out replacement/zoo/atlases --out DIR
    sparse-circuits interpret --dictionaries PATH --model gpt2 --fit-corpus A/ --score-corpus B/ \\
        --labeller mymodule:my_labeller --out DIR

Writes DIR/interpretability.md (tables with intervals), two plots and DIR/results.json (every
unit's explanation and scores). With --atlas-out, each set's per-feature scores also go to
ATLAS_OUT/<set>/interpretability.json, which the set's atlas shows on its cards.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path
from typing import Any

from replacement.errors import SparseCircuitsError
from replacement.validation import int_at_least, nonnegative_int, positive_int


def _labeller(spec: str | None):
    from analysis.interpretability.concepts import callable_labeller, python_syntax

    if not spec:
        return python_syntax
    module, _, name = spec.partition(":")
    if not name:
        raise SparseCircuitsError(
            f"--labeller {spec!r}: expected MODULE:FUNCTION, a function token strings -> "
            "{concept: per-token bools}"
        )
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise SparseCircuitsError(f"--labeller {spec!r} cannot be imported: {exc}") from exc
    return callable_labeller(fn)


def run_interpret(args: argparse.Namespace) -> dict[str, Path]:
    """Load, score, write."""
    import torch

    from analysis.interpretability.atlas_scores import write_atlas_scores
    from analysis.interpretability.corpus import default_splits, labels_from_file, text_split
    from analysis.interpretability.explainer import ExplainerSettings
    from analysis.interpretability.report import write_interpretability
    from analysis.interpretability.run import InterpretSettings, interpret, settings_dict
    from replacement import load_dictionaries, load_model
    from replacement.atomic import write_json
    from replacement.formats.detect import describe
    from replacement.validation import check_output_dir, check_text_source

    # every input the flags name is checked before the model loads
    check_output_dir(args.out, "--out")
    if args.atlas_out:
        check_output_dir(args.atlas_out, "--atlas-out")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    labeller = _labeller(args.labeller)
    for flag, value in (("--fit-labels", args.fit_labels), ("--score-labels", args.score_labels)):
        if value and not Path(value).is_file():
            raise SparseCircuitsError(f"{flag} {value!r} does not exist; expected a .npz file")
    if bool(args.fit_corpus) != bool(args.score_corpus):
        raise SparseCircuitsError("give both --fit-corpus and --score-corpus, or neither")
    for flag, value in (("--fit-corpus", args.fit_corpus), ("--score-corpus", args.score_corpus)):
        if value:
            check_text_source(value, flag)
    for name in args.dictionaries:
        describe(name)  # a missing location fails now
    if args.model != "default" and not args.fit_corpus:
        raise SparseCircuitsError(
            "a model other than the default needs --fit-corpus and --score-corpus (text files "
            "or folders; disjoint)"
        )
    model = load_model(args.model)
    sets = {
        Path(n).name if "/" in n else n: load_dictionaries(n, model=model)
        for n in args.dictionaries
    }
    if args.fit_corpus:
        fit = text_split("fit", args.fit_corpus, model, args.ctx, labeller, args.fit_tokens)
        score = text_split("score", args.score_corpus, model, args.ctx, labeller, args.score_tokens)
    else:
        fit, score = default_splits(model, args.fit_tokens, args.score_tokens, args.ctx, labeller)
    if args.fit_labels:
        fit = labels_from_file(args.fit_labels, fit)
    if args.score_labels:
        score = labels_from_file(args.score_labels, score)
    settings = InterpretSettings(
        explainer=ExplainerSettings(max_atoms=args.max_atoms), seed=args.seed
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save_progress(result) -> None:  # one file per source: a run cut short keeps its work
        write_json(out / "sources" / f"{result.name.replace(':', '_')}.json", result.to_dict())

    results = interpret(
        model,
        sets,
        fit,
        score,
        settings,
        controls=not args.no_controls,
        neurons=not args.no_neurons,
        verbose=not args.quiet,
        on_result=save_progress,
    )
    info = {
        "fit": f"{fit.n_tokens:,} tokens of {fit.description}",
        "score": f"{score.n_tokens:,} tokens of {score.description}",
        "max_atoms": args.max_atoms,
        "seconds": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
        "settings": settings_dict(settings),
    }
    files = write_interpretability(results, out, info)
    write_json(
        out / "results.json",
        {"info": info, "results": {n: r.to_dict() for n, r in results.items()}},
    )
    files["results"] = out / "results.json"
    if args.atlas_out:
        for name, dictionaries in sets.items():
            files[f"atlas:{name}"] = write_atlas_scores(
                results[name], dictionaries, Path(args.atlas_out) / name, info
            )
    print(f"wrote {', '.join(str(p) for p in files.values())} in {info['seconds']:.0f} s")
    return files


def register(subparsers: Any) -> None:
    """Add the `interpret` subcommand."""
    p = subparsers.add_parser(
        "interpret",
        help="offline interpretability scores of dictionary features against random and neuron controls",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dictionaries", nargs="+", required=True, help="zoo set names or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default="default", help="model name or folder (default: embedded)")
    p.add_argument(
        "--fit-corpus",
        default=None,
        help="text the explainer is fitted on (default: other stdlib files)",
    )
    p.add_argument(
        "--score-corpus",
        default=None,
        help="disjoint text the scores come from (default: the held-out files)",
    )
    p.add_argument(
        "--fit-tokens",
        type=positive_int,
        default=200_000,
        help="tokens of the fit split (default: %(default)s)",
    )
    p.add_argument(
        "--score-tokens",
        type=positive_int,
        default=None,
        help="cap on the score split's tokens (default: the whole split)",
    )
    p.add_argument(
        "--ctx",
        type=int_at_least(3),
        default=128,
        help="row length in tokens (default: %(default)s)",
    )
    p.add_argument(
        "--labeller", default=None, help="MODULE:FUNCTION concept labeller (default: Python syntax)"
    )
    p.add_argument(
        "--fit-labels",
        default=None,
        help=".npz per-token concept labels, fit split (default: none)",
    )
    p.add_argument(
        "--score-labels",
        default=None,
        help=".npz per-token concept labels, score split (default: none)",
    )
    p.add_argument(
        "--max-atoms",
        type=positive_int,
        default=3,
        help="atoms per explanation, the specificity budget (default: %(default)s)",
    )
    p.add_argument("--no-controls", action="store_true", help="skip the random controls")
    p.add_argument("--no-neurons", action="store_true", help="skip the MLP-neuron control")
    p.add_argument(
        "--atlas-out",
        default=None,
        help="write per-feature scores for the atlases here (default: none)",
    )
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed (default: %(default)s)")
    p.add_argument(
        "--threads",
        type=nonnegative_int,
        default=0,
        help="torch threads (0: torch's default) (default: %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=lambda args: run_interpret(args) and 0)
