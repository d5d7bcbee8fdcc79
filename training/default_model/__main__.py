"""Command line: ``python -m training.default_model --seed 0 --out DIR [--device cuda]``.

``--stage all`` (the default) runs everything on one machine. The stages can also run
apart: ``prepare`` (needs the corpus interpreter), ``train`` (needs only torch and
transformers plus the data folder), ``finish`` (evaluation and model card).
"""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = "Retrain the embedded default model on this interpreter's stdlib."


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the command's arguments to `p` (shared by `python -m` and the console script)."""
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    # defaults (None) come from TrainConfig, read only when the command runs: importing it
    # imports torch and transformers, which `sparse-circuits --help` should not wait for
    p.add_argument("--tokens", type=int, default=None, help="training tokens (default: config)")
    p.add_argument("--batch-size", type=int, default=None, help="(default: config)")
    p.add_argument("--lr", type=float, default=None, help="(default: config)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument(
        "--stage", choices=["all", "prepare", "train", "finish"], default="all", help="what to run"
    )
    p.add_argument(
        "--data", type=Path, default=None, help="token data folder (needed unless --stage all)"
    )
    p.add_argument("--quiet", action="store_true")
    return p


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `python -m training.default_model`."""
    parser = argparse.ArgumentParser(
        prog="python -m training.default_model", description=DESCRIPTION
    )
    return add_arguments(parser)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `sparse-circuits train-default-model`."""
    parser = subparsers.add_parser("train-default-model", help=DESCRIPTION, description=DESCRIPTION)
    add_arguments(parser)
    parser.set_defaults(func=lambda args: run(args) or 0)


def main(argv: list[str] | None = None) -> None:
    """Run the requested stage(s)."""
    run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> None:
    """Run the stage(s) that parsed arguments ask for."""
    from training.default_model.train import TrainConfig

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
        raise SystemExit(f"--stage {args.stage} needs --data DIR")
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
