"""The `sparse-circuits` console script: `SUBCOMMANDS` lists every subcommand and the module,
beside its package, that defines it."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from replacement.errors import SparseCircuitsError

# The subcommand table: every subcommand, in the order `--help` lists them, and the module beside
# its package that defines it. Each module has a `register(subparsers)` that adds that subcommand
# (its flags and the function that runs it); a module imports torch only when its command runs.
SUBCOMMANDS = {
    "info": "replacement.info_cli",
    "evaluate": "replacement.evaluate_cli",
    "features": "replacement.features_cli",
    "train": "training.train_cli",
    "cache": "training.cache_cli",
    "train-default-model": "training.default_model.__main__",
    "trace": "circuits.trace_cli",
    "global": "circuits.global_cli",
    "compare": "analysis.compare_cli",
    "interpret": "analysis.interpretability.cli",
    "claims": "analysis.claims_cli",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand of `SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="sparse-circuits",
        description="Train sparse dictionaries, splice them into a model, and trace circuits.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        before = set(subparsers.choices)
        importlib.import_module(module).register(subparsers)
        added = set(subparsers.choices) - before
        if added != {name}:  # a developer's slip: the table and the modules disagree
            raise RuntimeError(f"{module}.register added {sorted(added)}; the table says {name!r}")
    return parser


def _os_error_line(exc: OSError) -> str:
    """One line for an OS error: what failed, on which file, and what to do."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device{where}; free some space or write elsewhere (--out)"
    if exc.errno == errno.EFBIG:
        return (
            f"file too large for the file system or the process's file-size limit{where}; "
            "write elsewhere (--out) or raise the limit (ulimit -f)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied{where}; choose a writable path"
    return f"{exc.strerror or exc}{where}"


def main(argv: list[str] | None = None) -> int:
    """Entry point: every expected failure becomes one line on stderr and a non-zero exit.

    Exit codes: 0 success, 1 an error (bad input, bad file, OS error), 2 bad command-line
    arguments (argparse), 130 interrupted (Ctrl-C). Set SPARSE_CIRCUITS_TRACEBACK=1 to see
    the traceback of an unexpected error.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    prefix = f"sparse-circuits {args.command}"
    hint = getattr(args, "on_interrupt", None)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"\n{prefix}: interrupted", file=sys.stderr)
        if hint:
            print(f"{prefix}: {hint(args, argv)}", file=sys.stderr)
        return 130
    except SparseCircuitsError as exc:
        if hint and getattr(exc, "checkpoint", None):  # stopped by Ctrl-C at a step boundary
            print(f"\n{prefix}: {exc}\n{prefix}: {hint(args, argv)}", file=sys.stderr)
            return 130
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{prefix}: error: {_os_error_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, the traceback on request
        if type(exc).__name__ == "SafetensorError" and "I/O error" in str(exc):
            # safetensors reports a failed write (a full disk, a file-size limit) as its own
            # error type, not as OSError
            print(
                f"{prefix}: error: writing a tensor file failed ({exc}); free some space, raise "
                "the file-size limit or write elsewhere (--out)",
                file=sys.stderr,
            )
            return 1
        if os.environ.get("SPARSE_CIRCUITS_TRACEBACK"):
            raise
        print(
            f"{prefix}: unexpected error {type(exc).__name__}: {exc} (a bug; please report it, "
            "with the traceback from SPARSE_CIRCUITS_TRACEBACK=1)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
