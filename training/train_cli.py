"""`sparse-circuits train`: train dictionaries from flags and/or a YAML/JSON config file.

    sparse-circuits train --model default --kind skip_transcoder --activation topk \
        --layers 0,1,2,3 --objective e2e --n-features 1024 --k 16 --tokens 2e6 --out DIR

Flags given on the command line override the values of `--config FILE`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

from replacement.output_folder import add_overwrite_flag
from training.config import (
    ACTIVATIONS,
    DECAYS,
    KINDS,
    OBJECTIVES,
    TrainConfig,
    field_docs,
    parse_layers,
)

# flag name -> (config field, type); None type means a store_true switch
_FLAGS: dict[str, tuple[str, Any]] = {
    "model": ("model", str),
    "data": ("data", str),
    "activations": ("activations", str),
    "kind": ("kind", str),
    "activation": ("activation", str),
    "layers": ("layers", parse_layers),
    "site": ("site", str),
    "n-features": ("n_features", int),
    "k": ("k", int),
    "objective": ("objective", str),
    "l1-coefficient": ("l1_coefficient", float),
    "l0-coefficient": ("l0_coefficient", float),
    "kl-coefficient": ("kl_coefficient", float),
    "downstream-coefficient": ("downstream_coefficient", float),
    "aux-k-coefficient": ("aux_k_coefficient", float),
    "lr": ("lr", float),
    "warmup-steps": ("warmup_steps", int),
    "decay": ("decay", str),
    "batch-tokens": ("batch_tokens", lambda v: int(float(v))),
    "tokens": ("total_tokens", lambda v: int(float(v))),
    "ctx-len": ("ctx_len", int),
    "buffer-tokens": ("buffer_tokens", lambda v: int(float(v))),
    "dead-after-tokens": ("dead_after_tokens", lambda v: int(float(v))),
    "seed": ("seed", int),
    "checkpoint-every": ("checkpoint_every", int),
    "stop-after-steps": ("stop_after_steps", int),
    "val-tokens": ("val_tokens", lambda v: int(float(v))),
    "out": ("out_dir", str),
    "device": ("device", str),
    "grad-clip": ("grad_clip", float),
}
_CHOICES = {"kind": KINDS, "activation": ACTIVATIONS, "objective": OBJECTIVES, "decay": DECAYS}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config file's values (if any), overridden by every flag that was given."""
    values: dict[str, Any] = {}
    if args.config:
        values = TrainConfig.from_file(args.config).to_dict()
    for flag, (field_name, _) in _FLAGS.items():
        value = getattr(args, flag.replace("-", "_"))
        if value is not None:
            values[field_name] = value
    if args.quiet:
        values["verbose"] = False
    if args.no_resume:
        values["resume"] = False
    known = {f.name for f in fields(TrainConfig)}
    config = TrainConfig.from_dict({k: v for k, v in values.items() if k in known})
    # a warm-up the user asked for that outlasts the run never reaches the set lr
    if args.warmup_steps is not None and config.warmup_steps > config.total_steps:
        from training.config import ConfigError

        raise ConfigError(
            f"--warmup-steps (warmup_steps) {config.warmup_steps} is longer than the run's "
            f"{config.total_steps} steps (--tokens / --batch-tokens); use at most "
            f"{config.total_steps}"
        )
    return config


def sweep_configs(base: TrainConfig, path: str) -> list[TrainConfig]:
    """One config per entry of a YAML/JSON list of field overrides (each with its out_dir)."""
    from training.config import ConfigError, read_config_file

    entries = read_config_file(path)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"sweep file {path!r} should hold a list of mappings of config fields")
    return [TrainConfig.from_dict({**base.to_dict(), **entry}) for entry in entries]


def run_train(args: argparse.Namespace) -> int:
    """Train and print where the dictionaries went."""
    from replacement.validation import check_device, check_output_dir, check_text_source
    from training.progress import progress

    progress(not args.quiet, "train: starting")
    from training.allocator import keep_freed_memory
    from training.together import train_many
    from training.trainer import Trainer

    keep_freed_memory()

    config = config_from_args(args)
    check_device(config.device)
    if config.data is not None:
        check_text_source(config.data, "--data")
    if args.sweep:
        configs = sweep_configs(config, args.sweep)
        for entry in configs:
            check_output_dir(entry.out_dir, "--out (sweep entry)")
        with _own_folders([c.out_dir for c in configs], args.overwrite, "--out (sweep entry)"):
            train_many(configs)
        shared = (
            f"in one pass over {config.activations}"
            if config.objective == "local"
            else "together, one original-model pass per step"
        )
        print(f"trained {len(configs)} runs {shared}")
        return 0
    check_output_dir(config.out_dir, "--out")
    if config.activations is not None and args.ctx_len is not None:
        from training.activation_cache import ActivationCache
        from training.config import ConfigError

        cached = int(ActivationCache(config.activations).manifest["ctx_len"])
        if cached != config.ctx_len:
            raise ConfigError(
                f"--ctx-len {config.ctx_len} differs from the ctx_len {cached} that "
                f"--activations {config.activations!r} was written with; omit --ctx-len"
            )
    with _own_folders([config.out_dir], args.overwrite, "--out"):  # before the model loads
        trainer = Trainer(config)
        trainer.train()
    if trainer.step < config.total_steps:
        print(f"stopped after step {trainer.step}; checkpoint in {config.out_dir}")
    else:
        from training.run_card import final_line

        print(f"trained {len(config.layers)} dictionaries -> {config.out_dir}")
        print(final_line(trainer.card, trainer.out_dir / "card.json"))
    return 0


@contextlib.contextmanager
def _own_folders(folders: list[str], overwrite: bool, option: str) -> Iterator[None]:
    """Hold the run folders (ours or refused, one writer each) for the whole run.

    Only the main process of a data-parallel run holds them (the others write nothing).
    """
    from replacement.output_folder import OutputFolder
    from training.run_files import earlier_output

    with contextlib.ExitStack() as stack:
        if int(os.environ.get("RANK", "0")) == 0:
            for folder in folders:
                stack.enter_context(
                    OutputFolder(
                        folder,
                        command="train",
                        overwrite=overwrite,
                        option=option,
                        legacy=earlier_output,
                    )
                )
        yield


def resume_hint(args: argparse.Namespace, argv: list[str]) -> str:
    """The command that continues an interrupted run (the same one, without --no-resume)."""
    import shlex
    from pathlib import Path

    from training.run_files import CHECKPOINT_FILE

    out = args.out or (TrainConfig.from_file(args.config).out_dir if args.config else None)
    checkpoint = Path(out or TrainConfig.out_dir) / CHECKPOINT_FILE
    again = [a for a in argv if a != "--no-resume"]
    saved = f"progress is saved in {checkpoint}" if checkpoint.is_file() else "no checkpoint yet"
    return f"{saved}; resume with: sparse-circuits {shlex.join(again)}"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="train sparse dictionaries (SAEs, transcoders)",
        description="Train one dictionary per layer. Flags override the values of --config; "
        "rerunning the same command resumes from the checkpoint in --out (Ctrl-C saves one).",
    )
    parser.add_argument(
        "--config",
        help="YAML or JSON file of TrainConfig fields; flags override it (default: none)",
    )
    docs = field_docs()
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    defaults["layers"] = "0"
    for flag, (field_name, typ) in _FLAGS.items():
        default = defaults.get(field_name)
        shown = "automatic" if default is None else default
        parser.add_argument(
            f"--{flag}",
            type=typ,
            default=None,
            choices=_CHOICES.get(flag),
            help=f"{docs.get(field_name, '')} [{field_name}; default: {shown}]".replace("%", "%%"),
        )
    parser.add_argument(
        "--sweep",
        help="YAML or JSON list of field overrides: one run each, trained together: local "
        "runs in one pass over --activations, e2e runs (same seed) on one original-model pass "
        "per step (default: one run)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_overwrite_flag(parser)
    parser.add_argument(
        "--no-resume", action="store_true", help="start over, ignoring a checkpoint in --out"
    )
    parser.set_defaults(func=run_train, on_interrupt=resume_hint)
