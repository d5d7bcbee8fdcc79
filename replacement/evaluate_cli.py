"""`sparse-circuits evaluate`: spliced-model loss of dictionaries on text or held-out tokens."""

from __future__ import annotations

import argparse
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from replacement.atomic import write_json
from replacement.errors import SparseCircuitsError
from replacement.validation import (
    HelpFormatter,
    check_device,
    check_output_file,
    int_at_least,
    positive_int,
    read_text_file,
)

if TYPE_CHECKING:  # torch loads only when the command runs
    import torch
    from jaxtyping import Int


def heldout_text(n_tokens: int, model: Any) -> str:
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


def read_token_file(path: str | Path) -> Int[torch.Tensor, "rows pos"]:
    """Token ids [sequences, positions] from a .safetensors (one tensor, or `tokens`), .pt or .npy.

    A 1-D file is one sequence. `run_evaluate` adds BOS to rows that lack it.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise SparseCircuitsError(f"token file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            if "tokens" in tensors:
                tokens = tensors["tokens"]
            elif len(tensors) == 1:
                tokens = next(iter(tensors.values()))
            else:
                raise SparseCircuitsError(
                    f"{str(path)!r} holds {sorted(tensors)}; expected one tensor or 'tokens'"
                )
        elif suffix == ".pt":
            tokens = torch.load(str(path), map_location="cpu", weights_only=True)
        elif suffix == ".npy":
            import numpy as np

            tokens = torch.from_numpy(np.load(str(path), allow_pickle=False))
        else:
            raise SparseCircuitsError(
                f"token file {str(path)!r}: expected .safetensors, .pt or .npy"
            )
    except SparseCircuitsError:
        raise
    except Exception as exc:  # each format raises its own types for corrupt files
        raise SparseCircuitsError(f"token file {str(path)!r} cannot be read: {exc}") from exc
    if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.dim() > 2:
        raise SparseCircuitsError(
            f"token file {str(path)!r} should hold integer ids [sequences, positions]"
        )
    return tokens.long().reshape(-1, tokens.shape[-1])


def recorded_ctx_len(dictionaries: Sequence[Any], n_ctx: int) -> int | None:
    """The context length the dictionaries were trained at (None: not recorded, use n_ctx).

    Loss grows with the position, so the default evaluates at the training length: the zoo
    was trained at 128 on a 256-context model, and its reported CE increase is at 128.
    """
    lengths = {
        int(d.metadata["training"]["ctx_len"])
        for d in dictionaries
        if isinstance(d.metadata.get("training"), dict) and d.metadata["training"].get("ctx_len")
    }
    if not lengths:
        return None
    ctx_len = min(min(lengths), n_ctx)
    print(f"ctx_len {ctx_len}: the dictionaries' training context (set another with --ctx-len)")
    return ctx_len


def run_evaluate(args: argparse.Namespace) -> int:
    """Load the model and dictionaries, compute the spliced loss, print and save the report."""
    from replacement.eval_tokens import prepare_tokens
    from replacement.formats.detect import describe, load_model_and_dictionaries
    from replacement.loss import spliced_loss

    # inputs, device, dictionaries and the output path are checked before the model loads
    text = read_text_file(args.text, "--text") if args.text else None
    if args.out:
        check_output_file(args.out, "--out")
    check_device(args.device)
    describe(args.dictionaries)  # raises if the location does not exist
    file_tokens = read_token_file(args.token_file) if args.token_file else None
    # the model gets the processing its dictionaries were trained under
    model, dictionaries = load_model_and_dictionaries(
        args.model, args.dictionaries, device=args.device, processing=args.processing
    )
    if args.ctx_len is None and not args.token_file:
        args.ctx_len = recorded_ctx_len(dictionaries, int(model.cfg.n_ctx))
    if args.token_file:
        from replacement.atlas.corpus import with_bos

        tokens = file_tokens
        bos = model.tokenizer.bos_token_id
        # per the model's convention, one line saying so (SAELens' conventions take them as is)
        if bos is not None and args.conventions == "sparse-circuits":
            tokens = with_bos(tokens, int(bos), f"--token-file {args.token_file!r}")
    elif text is not None:
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
        check_model=not args.no_model_check,
        conventions=args.conventions,
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
    source.add_argument(
        "--text", help="a text file to evaluate on, instead of --tokens (default: none)"
    )
    source.add_argument(
        "--token-file",
        help="token ids [sequences, positions] with BOS first (.safetensors, .pt or .npy) to "
        "evaluate exactly these tokens, instead of --tokens (default: none)",
    )
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
        help="sequence length in tokens, BOS included (at most the model's n_ctx; default: the "
        "context the dictionaries were trained at, else n_ctx)",
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
    parser.add_argument(
        "--conventions",
        choices=["sparse-circuits", "saelens"],
        default="sparse-circuits",
        help="metric conventions; 'saelens' reproduces SAELens' run_evals (names included)",
    )
    parser.add_argument(
        "--processing",
        choices=["auto", "none", "folded", "fold_ln", "centred"],
        default="auto",
        help="model weight processing; 'auto' (default) uses what the dictionaries were "
        "trained under",
    )
    parser.add_argument(
        "--no-model-check",
        action="store_true",
        help="do not warn when a dictionary records another model name",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--out", help="write the report as JSON to this file (default: printed only)"
    )
    parser.set_defaults(func=run_evaluate)
