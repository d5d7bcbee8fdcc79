"""`sparse-circuits evaluate`: spliced-model loss of dictionaries on text or held-out tokens."""

from __future__ import annotations

import argparse
import sysconfig
from pathlib import Path

from replacement.atomic import write_json
from replacement.errors import SparseCircuitsError
from replacement.model import DEFAULT_MODEL_DIR
from replacement.validation import (
    HelpFormatter,
    check_device,
    check_output_file,
    int_at_least,
    positive_int,
    read_text_file,
)


def heldout_text(n_tokens: int, model) -> str:
    """Concatenated standard-library files held out from the default model's training.

    Returns enough text for about `n_tokens` tokens (more is trimmed by the caller).
    """
    listing = DEFAULT_MODEL_DIR / "heldout_files.txt"
    if not listing.is_file():
        raise SparseCircuitsError(f"the held-out file list {str(listing)!r} is missing")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, count = [], 0
    for line in listing.read_text().splitlines():
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        path = stdlib / name
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        parts.append(text)
        count += len(model.tokenizer(text, add_special_tokens=False)["input_ids"])
        if count >= n_tokens:
            break
    if not parts:
        raise SparseCircuitsError(f"none of the held-out files listed in {str(listing)!r} exist")
    return "\n".join(parts)


def run_evaluate(args: argparse.Namespace) -> int:
    """Load the model and dictionaries, compute the spliced loss, print and save the report."""
    from replacement.formats.detect import describe, load_dictionaries
    from replacement.loss import prepare_tokens, spliced_loss
    from replacement.model import load_model

    # inputs, device, dictionaries and the output path are checked before the model loads
    text = read_text_file(args.text, "--text") if args.text else None
    if args.out:
        check_output_file(args.out, "--out")
    check_device(args.device)
    describe(args.dictionaries)  # raises if the location does not exist
    model = load_model(args.model, device=args.device)
    dictionaries = load_dictionaries(args.dictionaries, model=model)
    if text is not None:
        tokens, _ = prepare_tokens(model, text, args.ctx_len)
    else:
        tokens, lengths = prepare_tokens(model, heldout_text(args.tokens, model), args.ctx_len)
        # keep whole sequences until about N tokens
        keep = max(1, int((lengths.cumsum(0) <= args.tokens).sum()))
        tokens = tokens[:keep]
    report = spliced_loss(
        model,
        dictionaries,
        tokens,
        batch_size=args.batch_size,
        ctx_len=args.ctx_len,
        verbose=not args.quiet,
        per_layer=not args.no_per_layer,
        keep_bos=not args.splice_bos,
    )
    print(report)
    if args.out:
        write_json(args.out, report.to_dict())
        print(f"wrote {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `evaluate` subcommand."""
    parser = subparsers.add_parser(
        "evaluate",
        help="spliced-model loss (CE increase, KL, loss recovered, FVU, L0)",
        description="Splice dictionaries into the model and report, per layer and all at once, "
        "the CE increase, KL, fraction of loss recovered, FVU, L0 and dead features.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--model", default="default", help="model: 'default', folder or HF name")
    parser.add_argument(
        "--dictionaries", required=True, help="dictionary file/folder or a shipped set name"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--text", help="a text file to evaluate on (instead of --tokens)")
    source.add_argument(
        "--tokens",
        type=positive_int,
        default=20000,
        help="number of tokens of held-out stdlib text (whole sequences, at least one)",
    )
    parser.add_argument(
        "--ctx-len",
        type=int_at_least(3),
        default=None,
        help="sequence length in tokens, BOS included (at most the model's n_ctx; default n_ctx)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, help="number of sequences per forward pass"
    )
    parser.add_argument(
        "--device", default=None, help="torch device, e.g. cpu or cuda (default cpu)"
    )
    parser.add_argument("--no-per-layer", action="store_true", help="only splice all together")
    parser.add_argument(
        "--splice-bos",
        action="store_true",
        help="also splice and ablate position 0 (BOS), which by default keeps its own activation",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--out", help="write the report as JSON to this file")
    parser.set_defaults(func=run_evaluate)
