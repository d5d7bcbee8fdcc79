"""`sparse-circuits cache`: run the model once and store activations for many training runs.

    sparse-circuits cache --model default --layers 0-3 --tokens 2e6 --dtype float16 \
        --shards 4 --out acts/
    sparse-circuits train --activations acts/ --layers 0-3 --kind skip_transcoder ...

By default each layer's transcoder pair (MLP input and output) is stored; `--sites` picks
other hooks inside `blocks.{l}.` (e.g. `hook_resid_pre`), `--hooks` full hook names.
"""

from __future__ import annotations

import argparse
from typing import Any

from replacement.errors import SparseCircuitsError
from replacement.hook_table import block_hook
from replacement.output_folder import add_overwrite_flag
from replacement.validation import int_at_least, positive_int
from training.config import parse_layers


def cache_hooks(layers: list[int], sites: str | None, hooks: str | None) -> list[str]:
    """Hook names to cache: explicit `hooks`, else `sites` of each layer, else MLP in/out."""
    from replacement.hooks import layer_hooks

    if hooks:
        return [h.strip() for h in hooks.split(",") if h.strip()]
    if sites:
        names = [s.strip() for s in sites.split(",") if s.strip()]
        return [block_hook(layer, site) for layer in layers for site in names]
    return [h for layer in layers for h in (layer_hooks(layer).mlp_in, layer_hooks(layer).mlp_out)]


def run_cache(args: argparse.Namespace) -> int:
    """Write the cache and print where it went."""
    from replacement.output_folder import OutputFolder
    from replacement.validation import check_device, check_output_dir, check_text_source
    from training.progress import progress

    verbose = not args.quiet
    progress(verbose, "cache: starting")
    # the flags alone decide these: checked before the model loads
    check_output_dir(args.out, "--out")
    check_device(args.device)
    if args.data is not None:
        check_text_source(args.data, "--data")
    # the folder is checked and locked before the model loads
    with OutputFolder(args.out, command="cache", overwrite=args.overwrite) as out:
        return _write_cache(args, out, verbose)


def _write_cache(args: argparse.Namespace, out: Any, verbose: bool) -> int:
    from replacement.hooks import check_hook
    from replacement.model import load_model
    from training.activation_cache import write_activation_cache
    from training.data import load_token_data
    from training.progress import progress

    progress(verbose, f"loading model {args.model!r}")
    model = load_model(args.model, device=args.device)
    layers = args.layers if args.layers is not None else list(range(model.cfg.n_layers))
    bad = [layer for layer in layers if not 0 <= layer < model.cfg.n_layers]
    if bad:
        raise SparseCircuitsError(
            f"--layers {bad} do not exist; the model has {model.cfg.n_layers} blocks"
        )
    hooks = cache_hooks(layers, args.sites, args.hooks)
    for hook in hooks:  # before the data is tokenized
        check_hook(model, hook)
    data = load_token_data(model, args.data, args.ctx_len, log=lambda m: progress(verbose, m))
    folder = write_activation_cache(
        model,
        data,
        hooks,
        out,
        dtype=args.dtype,
        n_shards=args.shards,
        max_tokens=args.tokens,
        verbose=verbose,
    )
    print(f"cached {len(hooks)} hooks -> {folder}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `cache` subcommand."""
    p = subparsers.add_parser("cache", help="store model activations once for training runs")
    p.add_argument(
        "--model",
        default="default",
        help="model: 'default' (the embedded model), a folder or HF name (default: %(default)s)",
    )
    p.add_argument("--data", default=None, help="text file or folder (default: the stdlib corpus)")
    p.add_argument(
        "--layers",
        type=parse_layers,
        default=None,
        help="block indices, e.g. 0-3 or 0,2 (default: every layer)",
    )
    p.add_argument(
        "--sites",
        default=None,
        help="hooks inside blocks.{l}., comma-separated, e.g. hook_resid_pre (default: each layer's MLP input and output)",
    )
    p.add_argument(
        "--hooks",
        default=None,
        help="full hook names, comma-separated; replaces --layers/--sites (default: none)",
    )
    p.add_argument(
        "--tokens",
        type=positive_int,
        default=None,
        help="number of tokens stored per hook, e.g. 2e6 (default: the whole corpus). Cost: "
        "2 bytes x the hook's width per token per hook at float16 (the default model's d_model 128: "
        "256 B; GPT-2's 768: 1.5 KB), 4 at float32",
    )
    p.add_argument(
        "--ctx-len",
        type=int_at_least(3),
        default=128,
        help="sequence length in tokens, BOS included (default: %(default)s)",
    )
    p.add_argument(
        "--dtype",
        default="float16",
        choices=("float16", "bfloat16", "float32"),
        help="storage type of the activations (default: %(default)s)",
    )
    p.add_argument(
        "--shards",
        type=positive_int,
        default=4,
        help="number of shard files (at least the ranks of a parallel training run) (default: %(default)s)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="torch device, e.g. cpu or cuda (default: the model's, cpu for the embedded model)",
    )
    p.add_argument("--out", required=True, help="cache folder (required)")
    add_overwrite_flag(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_cache)
