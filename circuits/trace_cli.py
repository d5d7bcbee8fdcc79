"""`sparse-circuits trace "prompt"`: the main job, from a prompt to a graph you can look at.

Loads a model (default: the embedded one) and its dictionaries (default: the shipped skip
transcoders), computes the prompt's attribution graph, prunes it, and writes into `--out`:

    graph.safetensors + graph.json   the full graph (`AttributionGraph.save`; reload with `load`)
    <slug>.json                      the pruned graph, circuit-tracer / Neuronpedia schema
    graph.png                        a drawing of the pruned graph
    graph.html                       an interactive, self-contained page of the pruned graph

and prints the top logits, the most influential features and the replacement and completeness
scores. In the prompt, `\\n`, `\\t` and `\\\\` stand for a newline, a tab and a backslash (so that
a shell argument can hold code), unless `--raw` is given.

Feature nodes are labelled from the dictionaries' feature atlas (the zoo ships one per set;
`--atlas DIR` names another), and clicking one in the page shows its card.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from replacement.errors import SparseCircuitsError
from replacement.validation import (
    HelpFormatter,
    fraction,
    nonnegative_int,
    positive_int,
)

if TYPE_CHECKING:  # torch loads only when a trace runs, so that `--help` starts fast
    from circuits.graph.attribution_graph import AttributionGraph
    from circuits.graph.scores import GraphScores

_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


class TraceResult(NamedTuple):
    """What `trace` computed and wrote."""

    graph: AttributionGraph
    """The full attribution graph."""
    pruned: AttributionGraph
    """The pruned graph (what the JSON, PNG and HTML show)."""
    scores: GraphScores
    """Replacement and completeness scores of the full graph."""
    pruned_scores: GraphScores
    """The same scores of the pruned graph."""
    files: dict[str, Path]
    """Written files by role: graph, graph_tensors, json, png, html."""
    seconds: dict[str, float]
    """Wall time of each step: load, attribute, prune, write, total."""


def unescape_prompt(text: str) -> str:
    """Replace the escapes `\\n`, `\\t` and `\\\\` by a newline, a tab and a backslash."""
    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)


def prompt_slug(prompt: str, limit: int = 40) -> str:
    """A file-name-safe slug of the prompt (never "graph", the full graph's name)."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:limit].strip("-")
    return slug if slug and slug != "graph" else "trace"


def trace(
    prompt: str,
    model: Any = "default",
    dictionaries: Any = None,
    out: str | Path = "trace_out",
    *,
    slug: str | None = None,
    max_feature_nodes: int | None = None,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    batch_size: int = 64,
    verbose: bool = True,
    atlas: Any = None,
) -> TraceResult:
    """Attribute `prompt`, prune, and write the full graph, JSON, PNG and HTML into `out`.

    Args:
        prompt: the text (BOS is prepended).
        model: a loaded model, or a source for `replacement.load_model` ("default", a folder,
            a Hugging Face name).
        dictionaries: loaded dictionaries, or a set name / path for `load_dictionaries`
            (default: `replacement.zoo.DEFAULT_DICTIONARY_SET`).
        out: output folder (created).
        slug: name of the pruned JSON and its `metadata.slug` (default: from the prompt).
        max_feature_nodes, max_n_logits, desired_logit_prob, batch_size, verbose: passed to
            `circuits.attribution.attribute.attribute`.
        node_threshold, edge_threshold: passed to `AttributionGraph.prune`.
        atlas: feature atlas for node labels and cards: None uses the zoo's atlas of a zoo set
            (when it matches the weights), a folder or `FeatureAtlas` that one, False none.
    """
    from circuits.attribution.attribute import attribute
    from circuits.views.draw import graph_png
    from replacement.atomic import atomic_path
    from replacement.formats.detect import describe, load_dictionaries, load_model_and_dictionaries
    from replacement.model import load_model
    from replacement.validation import check_output_dir, remove_stale_outputs
    from replacement.zoo import DEFAULT_DICTIONARY_SET

    slug = slug or prompt_slug(prompt)
    if slug == "graph":
        raise SparseCircuitsError('the slug "graph" is the full graph\'s file name; pick another')
    if not re.fullmatch(r"[\w][\w.-]*", slug):
        raise SparseCircuitsError(
            f"--slug {slug!r} is not a file name; use letters, digits, '.', '-' and '_'"
        )
    out = check_output_dir(out, "--out")  # before the model loads, not after the work
    if isinstance(dictionaries, str | Path):
        describe(dictionaries)  # a missing location fails now, not after the model loads
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    if isinstance(model, str | Path) and (
        dictionaries is None or isinstance(dictionaries, str | Path)
    ):
        # one call: the model gets the processing its dictionaries were trained under
        model, dictionaries = load_model_and_dictionaries(
            model, dictionaries or DEFAULT_DICTIONARY_SET
        )
    if isinstance(model, str | Path):
        model = load_model(model)
    if dictionaries is None or isinstance(dictionaries, str | Path):
        dictionaries = load_dictionaries(dictionaries or DEFAULT_DICTIONARY_SET, model=model)
    seconds["load"] = time.perf_counter() - start

    tick = time.perf_counter()
    graph = attribute(
        model,
        dictionaries,
        prompt,
        max_n_logits=max_n_logits,
        desired_logit_prob=desired_logit_prob,
        max_feature_nodes=max_feature_nodes,
        batch_size=batch_size,
        verbose=verbose,
    )
    seconds["attribute"] = time.perf_counter() - tick
    atlas = _resolve_atlas(atlas, dictionaries)
    if atlas is not None:
        graph = graph.with_atlas(atlas)

    tick = time.perf_counter()
    pruned = graph.prune(node_threshold=node_threshold, edge_threshold=edge_threshold)
    scores, pruned_scores = graph.scores(), pruned.scores()
    seconds["prune"] = time.perf_counter() - tick

    tick = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"graph": graph.save(out / "graph"), "graph_tensors": out / "graph.safetensors"}
    files["json"] = out / f"{slug}.json"
    pruned.to_json(slug=slug, path=files["json"])
    files["png"] = out / "graph.png"
    with atomic_path(files["png"]) as tmp:
        tmp.write_bytes(graph_png(pruned))
    files["html"] = pruned.to_html(out / "graph.html", atlas=atlas)
    # an earlier trace into this folder (another prompt) leaves no stale JSON behind
    remove_stale_outputs(out, files.values(), earlier=_earlier_trace_file)
    seconds["write"] = time.perf_counter() - tick
    seconds["total"] = time.perf_counter() - start
    return TraceResult(graph, pruned, scores, pruned_scores, files, seconds)


def _earlier_trace_file(path: Path) -> bool:
    """Files an earlier `trace` wrote: the full graph, drawings, and pruned graph JSON."""
    if path.name in ("graph.json", "graph.safetensors", "graph.png", "graph.html"):
        return True
    if path.suffix != ".json":
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"metadata", "nodes", "links", "qParams"} <= set(data)


def _resolve_atlas(atlas: Any, dictionaries: Any) -> Any:
    """The atlas to label with (see `trace`), or None."""
    from replacement.atlas import FeatureAtlas
    from replacement.atlas.lookup import find_atlas

    if atlas is False:
        return None
    if atlas is None:
        return find_atlas(dictionaries)
    atlas = atlas if isinstance(atlas, FeatureAtlas) else FeatureAtlas.load(atlas)
    if not atlas.matches(dictionaries):
        raise SparseCircuitsError(
            "the atlas does not describe these dictionaries (its fingerprints differ); build "
            "one with `sparse-circuits features --dictionaries ... --out DIR`"
        )
    return atlas


def format_report(result: TraceResult, n_features: int = 10) -> str:
    """The printed summary: top logits, most influential features, scores, files, timings."""
    graph, pruned = result.graph, result.pruned
    counts = {k: graph.node_kind.count(k) for k in ("feature", "error", "token", "logit")}
    n_active = graph.metadata.get("n_active_features", counts["feature"])
    lines = [
        f"prompt {graph.prompt!r}: {len(graph.token_strs)} tokens (BOS included), "
        f"model {graph.model_name!r}, {len(graph.dictionary_names)} dictionaries",
        f"graph: {graph.n_nodes} nodes ({counts['feature']} of {n_active} active features, "
        f"{counts['error']} error, {counts['token']} token, {counts['logit']} logit), "
        f"{graph.n_edges} edges; pruned: {pruned.n_nodes} nodes, {pruned.n_edges} edges",
        "",
        "top logits:",
    ]
    logits = graph.mask("logit").nonzero().flatten().tolist()
    for rank, i in enumerate(sorted(logits, key=lambda i: -float(graph.node_activation[i])), 1):
        lines.append(f"  {rank:2d}. p={float(graph.node_activation[i]):.4f}  {graph.node_label[i]}")
    lines += ["", "most influential features (influence on the logits, full graph):"]
    lines.append(
        f"  {'rank':>4}  {'layer':>5}  {'pos':>4}  {'feature':>7}  {'influence':>9}  label"
    )
    for rank, (i, infl) in enumerate(graph.top_features(n_features), 1):
        lines.append(
            f"  {rank:4d}  {int(graph.node_layer[i]):5d}  {int(graph.node_pos[i]):4d}  "
            f"{int(graph.node_feature[i]):7d}  {infl:9.4f}  {graph.node_label[i]}"
        )
    n_labelled = len(graph.metadata.get("feature_labels", {}))
    if n_labelled:
        lines.append(f"  ({n_labelled} features labelled from the dictionaries' atlas)")
    full, part = result.scores, result.pruned_scores
    lines += [
        "",
        f"replacement score  {full.replacement:.4f} (full graph)  {part.replacement:.4f} (pruned)",
        f"completeness score {full.completeness:.4f} (full graph)  {part.completeness:.4f} (pruned)",
        "",
    ]
    lines += [f"wrote {path}" for path in result.files.values()]
    s = result.seconds
    lines.append(
        f"took {s['total']:.1f} s (load {s['load']:.1f}, attribute {s['attribute']:.1f}, "
        f"prune and scores {s['prune']:.1f}, write {s['write']:.1f})"
    )
    return "\n".join(lines)


def run_trace(args: argparse.Namespace) -> int:
    """Run `trace` with the command's arguments and print the report."""
    prompt = args.prompt if args.raw else unescape_prompt(args.prompt)
    result = trace(
        prompt,
        model=args.model,
        dictionaries=args.dictionaries,
        out=args.out,
        slug=args.slug,
        max_feature_nodes=args.max_feature_nodes or None,
        max_n_logits=args.max_n_logits,
        desired_logit_prob=args.desired_logit_prob,
        node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold,
        batch_size=args.batch_size,
        verbose=not args.quiet,
        atlas=False if args.no_atlas else args.atlas,
    )
    print(format_report(result, n_features=args.top_features))
    sys.stdout.flush()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `trace` subcommand."""
    p = subparsers.add_parser(
        "trace",
        help="attribution graph of a prompt: prune, export JSON, draw PNG and HTML",
        description="Trace a prompt through the model's dictionaries (the local replacement "
        "model): attribution graph, pruning, scores, and the files to look at it. In PROMPT, "
        "\\n, \\t and \\\\ stand for a newline, a tab and a backslash (unless --raw).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("prompt", help="the prompt (BOS is prepended)")
    p.add_argument("--model", default="default", help="'default', a model folder or HF name")
    p.add_argument(
        "--dictionaries",
        default=None,
        help="dictionary set name or path (default: the shipped skip transcoders)",
    )
    p.add_argument(
        "--out",
        default="trace_out",
        help="output folder (files of an earlier trace there are replaced)",
    )
    p.add_argument("--slug", default=None, help="name of the pruned JSON (default: from prompt)")
    p.add_argument(
        "--max-feature-nodes",
        type=nonnegative_int,
        default=1000,
        help="maximum number of feature nodes, most influential first (0: every active one; "
        "the limit bounds the time on long prompts)",
    )
    p.add_argument(
        "--max-n-logits",
        type=positive_int,
        default=10,
        help="number of most probable logits traced",
    )
    p.add_argument(
        "--desired-logit-prob",
        type=fraction,
        default=0.95,
        help="stop adding logits at this cumulative probability",
    )
    p.add_argument(
        "--node-threshold", type=fraction, default=0.8, help="pruning: share of influence kept"
    )
    p.add_argument(
        "--edge-threshold", type=fraction, default=0.98, help="pruning: share of edge score kept"
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="number of target rows per pass (default: chosen from the prompt length and memory)",
    )
    p.add_argument(
        "--top-features",
        type=nonnegative_int,
        default=10,
        help="number of features listed in the report",
    )
    p.add_argument("--raw", action="store_true", help="take the prompt literally (no escapes)")
    p.add_argument(
        "--atlas", default=None, help="feature atlas folder (default: the zoo set's own atlas)"
    )
    p.add_argument("--no-atlas", action="store_true", help="leave features unlabelled")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_trace)
