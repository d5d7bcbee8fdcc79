"""`sparse-circuits global`: a global feature graph between two dictionaries.

`--layer-from` / `--layer-to` name a dictionary by layer (transcoder sets) or by hook name
(e.g. `blocks.1.hook_resid_post` for a residual SAE). Writes `<out>/global_L{a}_L{b}.json` (circuit-tracer schema), `.graphml`, the graph's own
`.safetensors`/`.json` pair (`AttributionGraph.save`, as `graph.*`) and, when drawing is
available, a PNG.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from replacement.errors import SparseCircuitsError
from replacement.validation import (
    HelpFormatter,
    check_output_dir,
    nonnegative_int,
    positive_int,
    remove_stale_outputs,
)

if TYPE_CHECKING:  # torch loads only when the command runs, so that `--help` starts fast
    import torch


def _site_key(text: str) -> int | str:
    """A layer number or a hook name."""
    return int(text) if text.lstrip("-").isdigit() else text


def _token_set(model, n_tokens: int, seq_len: int) -> torch.Tensor:
    """[n, 1 + seq_len] rows of BOS + held-out text of the default model's training domain."""
    import sysconfig

    import torch

    from replacement.model import to_tokens

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    bos = int(to_tokens(model, "x")[0, 0])
    ids: list[int] = []
    for name in ("bisect.py", "heapq.py", "textwrap.py", "string.py", "fnmatch.py"):
        if (stdlib / name).is_file() and len(ids) < n_tokens:
            ids += model.tokenizer((stdlib / name).read_text())["input_ids"]
    if n_tokens < seq_len:
        raise SparseCircuitsError(
            f"--tokens {n_tokens} is less than one sequence of {seq_len} tokens; "
            f"use --tokens {seq_len} or more"
        )
    n_rows = min(len(ids), n_tokens) // seq_len
    if n_rows == 0:
        raise SparseCircuitsError(
            f"could gather only {len(ids)} tokens of held-out text, less than one sequence of "
            f"{seq_len}"
        )
    return torch.tensor([[bos] + ids[k * seq_len : (k + 1) * seq_len] for k in range(n_rows)])


def _earlier_global_file(path: Path) -> bool:
    """Files an earlier `global` wrote: the graph pair and global_L*_L* exports."""
    return path.name in ("graph.json", "graph.safetensors") or bool(
        re.fullmatch(r"global_L.+_L.+\.(json|graphml|png)", path.name)
    )


def run_global(args: argparse.Namespace) -> int:
    """Build and write the graph."""
    from circuits.invariant.global_graph import global_graph
    from replacement.formats.detect import describe, load_model_and_dictionaries
    from replacement.zoo import DEFAULT_DICTIONARY_SET

    out = check_output_dir(args.out, "--out")  # before the model loads, not after the work
    if args.dictionaries:
        describe(args.dictionaries)  # a missing location fails now
    # the model gets the processing its dictionaries were trained under
    model, dictionaries = load_model_and_dictionaries(
        args.model, args.dictionaries or DEFAULT_DICTIONARY_SET
    )
    seq_len = min(64, model.cfg.n_ctx - 1)
    need_tokens = args.data_weighted or args.norm == "mean"
    tokens = _token_set(model, args.tokens, seq_len) if need_tokens else None
    graph = global_graph(
        dictionaries,
        model,
        args.layer_from,
        args.layer_to,
        args.top_k,
        data_weighted=args.data_weighted,
        tokens=tokens,
        norm=args.norm,
        include_attention=args.include_attention,
        cut_at_saes=args.cut_at_saes,
        max_sources=args.max_sources or None,
        verbose=True,
    )
    from replacement.atlas.lookup import find_atlas

    atlas = find_atlas(dictionaries)  # a zoo set's atlas labels its features
    if atlas is not None:
        graph = graph.with_atlas(atlas)
    layers = graph.metadata["layer_from"], graph.metadata["layer_to"]
    stem = out / f"global_L{layers[0]}_L{layers[1]}"
    graph.to_json(slug=stem.name, path=stem.with_suffix(".json"))
    graph.to_graphml(stem.with_suffix(".graphml"))
    graph.save(out / "graph")
    written = [stem.with_suffix(".json"), stem.with_suffix(".graphml"), out / "graph.json"]
    try:
        from circuits.views.draw import graph_png
    except ModuleNotFoundError as exc:  # drawing is optional until circuits.views.draw exists
        if exc.name != "circuits.views.draw":
            raise
        graph_png = None
    if graph_png is not None:
        from replacement.atomic import atomic_path

        with atomic_path(stem.with_suffix(".png")) as tmp:
            tmp.write_bytes(graph_png(graph))
        written.append(stem.with_suffix(".png"))
    # an earlier run into this folder (other layers) leaves no stale files behind
    remove_stale_outputs(out, [*written, out / "graph.safetensors"], earlier=_earlier_global_file)
    print(f"{graph!r}")
    for path in written:
        print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `global` subcommand."""
    p = subparsers.add_parser(
        "global",
        help="input-invariant feature graph between two dictionaries (layers)",
        description="Top-k virtual-weight (or data-weighted) connections between two "
        "dictionaries: transcoder layers, or residual SAEs named by hook.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--layer-from", type=_site_key, required=True, help="upstream layer (or hook name)"
    )
    p.add_argument(
        "--layer-to", type=_site_key, required=True, help="downstream layer (or hook name)"
    )
    p.add_argument(
        "--top-k", type=positive_int, default=5, help="number of partners kept per upstream feature"
    )
    p.add_argument("--model", default="default", help="model name, folder or HF name")
    p.add_argument(
        "--dictionaries",
        default=None,
        help="dictionary set name or path (default: the shipped skip transcoders)",
    )
    p.add_argument(
        "--data-weighted",
        action="store_true",
        help="weight by co-activation over a token set: E[a_i v_ij 1[a_j > 0]]",
    )
    p.add_argument(
        "--tokens",
        type=positive_int,
        default=4096,
        help="number of held-out tokens for --data-weighted and --norm mean (at least one "
        "sequence of min(64, n_ctx - 1))",
    )
    p.add_argument(
        "--norm", choices=("ignore", "mean"), default="mean", help="norm-scale treatment"
    )
    p.add_argument("--include-attention", action="store_true", help="add single-head OV paths")
    p.add_argument(
        "--cut-at-saes",
        action="store_true",
        help="residual SAEs in between block the paths (as in prompt graphs)",
    )
    p.add_argument(
        "--max-sources",
        type=nonnegative_int,
        default=256,
        help="number of upstream features kept (0 keeps all)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run_global)
