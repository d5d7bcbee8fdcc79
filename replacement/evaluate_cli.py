"""`sparse-circuits evaluate`: spliced-model loss of dictionaries on text or held-out tokens."""

from __future__ import annotations

import argparse
import sysconfig
from pathlib import Path

from replacement.atomic import write_json
from replacement.errors import SparseCircuitsError


def heldout_text(n_tokens: int, model) -> str:
    """Concatenated standard-library files held out from the default model's training.

    Returns enough text for about `n_tokens` tokens (more is trimmed by the caller).
    """
    from replacement.model import DEFAULT_MODEL_DIR  # torch: only when the command runs

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
    from replacement.formats.detect import load_dictionaries
    from replacement.loss import prepare_tokens, spliced_loss
    from replacement.model import load_model

    model = load_model(args.model, device=args.device)
    dictionaries = load_dictionaries(args.dictionaries, model=model)
    if args.text:
        path = Path(args.text)
        if not path.is_file():
            raise SparseCircuitsError(f"text file {str(path)!r} does not exist")
        data = path.read_text(errors="replace")
        tokens, _ = prepare_tokens(model, data, args.ctx_len)
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
        "evaluate", help="spliced-model loss (CE increase, KL, loss recovered, FVU, L0)"
    )
    parser.add_argument("--model", default="default", help="model: 'default', folder or HF name")
    parser.add_argument(
        "--dictionaries", required=True, help="dictionary file/folder or a shipped set name"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--text", help="a text file to evaluate on")
    source.add_argument(
        "--tokens", type=int, default=20000, help="tokens of held-out stdlib text (default)"
    )
    parser.add_argument("--ctx-len", type=int, default=None, help="sequence length (<= n_ctx)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-per-layer", action="store_true", help="only splice all together")
    parser.add_argument(
        "--splice-bos",
        action="store_true",
        help="also splice and ablate position 0 (BOS), which by default keeps its own activation",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--out", help="write the report as JSON here")
    parser.set_defaults(func=run_evaluate)
