"""Command line: ``python -m training.default_model --seed 0 --out DIR [--device cuda]``.

``--stage all`` (the default) runs everything on one machine. The stages can also run
apart: ``prepare`` (needs the corpus interpreter), ``train`` (needs only torch and
transformers plus the data folder), ``finish`` (evaluation and model card).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

DESCRIPTION = "Retrain the embedded default model on this interpreter's stdlib."


def _positive(kind: type) -> Callable[[str], float]:
    """argparse type: a number of `kind` > 0 (local: this package needs only torch and
    transformers, so it does not import replacement.validation)."""

    def parse(text: str):
        try:
            value = kind(float(text)) if kind is int else kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


positive_int, positive_float = _positive(int), _positive(float)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the command's arguments to `p` (shared by `python -m` and the console script)."""
    p.add_argument(
        "--out", type=Path, required=True, default=argparse.SUPPRESS, help="model folder to write"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and data order")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    # defaults (None) come from TrainConfig, read only when the command runs: importing it
    # imports torch and transformers, which `sparse-circuits --help` should not wait for
    p.add_argument(
        "--tokens",
        type=positive_int,
        default=None,
        help="number of training tokens (default: config)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="number of sequences per optimiser step (default: config)",
    )
    p.add_argument(
        "--lr", type=positive_float, default=None, help="peak learning rate (default: config)"
    )
    p.add_argument(
        "--vocab-size", type=positive_int, default=4096, help="number of tokenizer entries"
    )
    p.add_argument(
        "--stage", choices=["all", "prepare", "train", "finish"], default="all", help="what to run"
    )
    p.add_argument(
        "--data", type=Path, default=None, help="token data folder (needed unless --stage all)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `python -m training.default_model`."""
    parser = argparse.ArgumentParser(
        prog="python -m training.default_model", description=DESCRIPTION
    )
    return add_arguments(parser)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `sparse-circuits train-default-model`."""
    parser = subparsers.add_parser(
        "train-default-model",
        help=DESCRIPTION,
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=lambda args: run(args) or 0)


def main(argv: list[str] | None = None) -> None:
    """Run the requested stage(s)."""
    run(build_parser().parse_args(argv))


def _fail(message: str) -> None:
    """One error line: the `sparse-circuits` error class when the package is installed."""
    try:
        from replacement.errors import SparseCircuitsError
    except ImportError:  # run standalone (torch and transformers only)
        raise SystemExit(f"error: {message}") from None
    raise SparseCircuitsError(message)


def _check_inputs(args: argparse.Namespace) -> None:
    """Paths, seed and device, before any stage starts."""
    import torch

    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        _fail(f"--out {str(out)!r} is an existing file; expected a folder")
    if args.data is not None and not Path(args.data).expanduser().is_dir():
        what = "is a file" if Path(args.data).exists() else "does not exist"
        _fail(f"--data {str(args.data)!r} {what}; expected the data folder of --stage prepare")
    if args.seed < 0:
        _fail(f"--seed must be 0 or more, got {args.seed}")
    try:
        kind = torch.device(args.device).type
    except (RuntimeError, TypeError):
        _fail(f"--device {args.device!r} is not a torch device; expected cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        _fail(f"--device {args.device!r}: no cuda device on this machine; use --device cpu")


def run(args: argparse.Namespace) -> None:
    """Run the stage(s) that parsed arguments ask for."""
    from training.default_model.train import TrainConfig

    _check_inputs(args)
    verbose = not args.quiet
    for name in ("tokens", "batch_size", "lr"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(TrainConfig, name))
    overrides = {"batch_size": args.batch_size, "lr": args.lr}
    from training.default_model import pipeline

    if args.stage == "all":
        pipeline.train_default_model(
            args.out,
            seed=args.seed,
            device=args.device,
            tokens=args.tokens,
            vocab_size=args.vocab_size,
            data_dir=args.data,
            verbose=verbose,
            **overrides,
        )
        return
    if args.data is None:
        _fail(f"--stage {args.stage} needs --data DIR")
    if args.stage == "prepare":
        pipeline.prepare(args.out, args.data, vocab_size=args.vocab_size, verbose=verbose)
    elif args.stage == "train":
        pipeline.train(
            args.out,
            args.data,
            seed=args.seed,
            tokens=args.tokens,
            device=args.device,
            verbose=verbose,
            **overrides,
        )
    else:
        pipeline.finish(args.out, args.data, verbose=verbose)


if __name__ == "__main__":
    main()
