"""The `sparse-circuits` console script: each package registers its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys

from replacement.errors import SparseCircuitsError

# Modules with a `register(subparsers)` function; a missing one is skipped so that the
# command keeps working while packages grow.
_COMMAND_MODULES = (
    "replacement.cli",
    "replacement.evaluate_cli",
    "replacement.atlas_cli",
    "training.cli",
    "training.default_model.__main__",
    "circuits.cli",
    "circuits.global_cli",
    "analysis.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="sparse-circuits",
        description="Train sparse dictionaries, splice them into a model, and trace circuits.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (SparseCircuitsError, FileNotFoundError) as exc:
        print(f"sparse-circuits {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
