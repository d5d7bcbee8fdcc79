"""A self-contained interactive HTML page of an attribution graph, or of two side by side.

The page needs no network: the graphs are embedded as JSON, and the script and style sheets
(`circuits/views/static/graph_page.{js,css}`, `graph_svg.css`, the atlas's feature card) are inlined.
What it does (layout, hover cards, pins, supernodes, live re-pruning, search, the state in the
URL fragment, exports, the `window.sparseCircuitsPage` API for plugins) is described in
docs/graph-page.md and at the top of graph_page.js.

URL fragment, for links and tests: `node=0.5&edge=0.9&q=return&view=pinned&pins=<id>,<id>&
groups=<name>:<id>+<id>&sel=<id>` (ids are circuit-tracer node ids; `.1` suffixes address the
second graph of a comparison); `threshold=` is `node=`, `click=<i>` / `hover=<i>` click or hover
node i of the first graph.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxtyping import Float
from torch import Tensor

from circuits.graph.export import graph_metadata, node_ids, node_records
from circuits.views.draw import top_edges
from circuits.views.feature_labels import atlas_label, feature_cards
from replacement.atlas.card import static_text
from replacement.atlas.pages import script_json
from replacement.atomic import atomic_path
from replacement.errors import SparseCircuitsError

if TYPE_CHECKING:
    from circuits.graph.attribution_graph import AttributionGraph
    from replacement.atlas import FeatureAtlas

ALWAYS_SHOWN = ("token", "logit")
"""Node kinds the threshold slider never hides."""


def influence_shares(graph: AttributionGraph) -> Float[Tensor, " n"]:
    """Each node's cumulative-influence share, the quantity the page's slider thresholds.

    A pruned graph carries it already (`node_influence`); otherwise it is computed as pruning
    does (`circuits.graph.prune.cumulative_share` of the influence on the logits). Smaller is more
    influential; tokens and logits are shown whatever their share.
    """
    if graph.node_influence is not None:
        return graph.node_influence.double()
    from circuits.graph.prune import cumulative_share

    return cumulative_share(graph.influence()).double()


def visible(
    graph: AttributionGraph,
    node_threshold: float = 1.0,
    edge_threshold: float = 1.0,
    max_edges: int = 5000,
) -> tuple[list[int], list[tuple[int, int]]]:
    """The nodes and (source, target) edges the page shows at its two slider values.

    The page's rule, which its script applies live: feature and error nodes whose cumulative
    influence share is above `node_threshold` are hidden (tokens and logits never are); of the
    embedded edges between shown nodes, the strongest are kept until their |weight| reaches
    `edge_threshold` of the total; below 1, feature and error nodes left without an edge are
    dropped too.
    """
    shares = influence_shares(graph).tolist()
    shown = [
        kind in ALWAYS_SHOWN or shares[i] <= node_threshold
        for i, kind in enumerate(graph.node_kind)
    ]
    src, tgt, weight = top_edges(graph.adjacency, max_edges)
    edges = list(zip(src.tolist(), tgt.tolist(), weight.tolist(), strict=True))
    order = [k for k, (s, t, _) in enumerate(edges) if shown[s] and shown[t]]
    order.sort(key=lambda k: (-abs(edges[k][2]), k))
    total = 0.0
    for k in order:
        total += abs(edges[k][2])
    kept, cumulative = [], 0.0
    for k in order:
        if edge_threshold < 1 and not cumulative < edge_threshold * total:
            break
        kept.append(k)
        cumulative += abs(edges[k][2])
    if edge_threshold < 1:
        touched = {edges[k][0] for k in kept} | {edges[k][1] for k in kept}
        shown = [
            s and (kind in ALWAYS_SHOWN or i in touched)
            for i, (s, kind) in enumerate(zip(shown, graph.node_kind, strict=True))
        ]
    nodes = [i for i, s in enumerate(shown) if s]
    return nodes, [(edges[k][0], edges[k][1]) for k in kept]


def visible_nodes(graph: AttributionGraph, threshold: float) -> list[int]:
    """Indices of the nodes the page shows at a node threshold (edge slider at 1)."""
    return visible(graph, threshold)[0]


def short_label(graph: AttributionGraph, i: int) -> str:
    """What the page writes beside node i: a feature's atlas label (else F<index>), "error", a
    token's text, a logit's token and probability."""
    kind = graph.node_kind[i]
    if kind == "feature":
        return atlas_label(graph, i) or f"F{int(graph.node_feature[i])}"
    if kind == "error":
        return "error"
    if kind == "token":
        pos = int(graph.node_pos[i])
        return graph.token_strs[pos] if pos < len(graph.token_strs) else graph.node_label[i]
    return graph.node_label[i].removeprefix("logit ")


def page_data(
    graph: AttributionGraph,
    max_edges: int = 5000,
    atlas: FeatureAtlas | None = None,
    *,
    name: str = "",
    scores: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The JSON of one graph on the page: nodes (with their circuit-tracer records, for the
    export), the `max_edges` strongest edges, scores to show, and the atlas cards of the
    graph's features (keyed "layer/feature") with the tokens they use."""
    shares = influence_shares(graph).tolist()
    ids = node_ids(graph)
    records = node_records(graph)
    nodes = [
        {
            "id": ids[i],
            "kind": graph.node_kind[i],
            "layer": int(graph.node_layer[i]),
            "pos": int(graph.node_pos[i]),
            "feature": int(graph.node_feature[i]),
            "activation": float(graph.node_activation[i]),
            "label": graph.node_label[i],
            "short": short_label(graph, i),
            "influence": float(shares[i]),
            "ct": records[i],
        }
        for i in range(graph.n_nodes)
    ]
    src, tgt, weight = top_edges(graph.adjacency, max_edges)
    edges = [
        [s, t, float(w)]
        for s, t, w in zip(src.tolist(), tgt.tolist(), weight.tolist(), strict=True)
    ]
    threshold = graph.metadata.get("node_threshold")
    return {
        "name": name or ", ".join(graph.dictionary_names[:1]) or "graph",
        "prompt": graph.prompt,
        "token_strs": list(graph.token_strs),
        "n_layers": graph.n_layers,
        "model_name": graph.model_name,
        "dictionary_names": list(graph.dictionary_names),
        "node_threshold": threshold,
        "n_edges_total": graph.n_edges,
        "scores": scores,
        "ct_metadata": graph_metadata(
            graph, "subgraph", threshold if threshold is not None else 1.0
        ),
        "nodes": nodes,
        "edges": edges,
        "qk": graph.metadata.get("qk"),  # shown by qk_panel.js (`trace --qk`)
        **(feature_cards(graph, atlas) if atlas is not None else {"cards": {}, "vocab": {}}),
    }


def _static(name: str) -> str:
    return resources.files("circuits.views").joinpath("static", name).read_text(encoding="utf-8")


def _one_line(text: str) -> str:
    """A heading of one line: newlines and tabs shown as symbols, long text cut."""
    text = text.replace("\n", "⏎").replace("\t", "→")
    return text if len(text) <= 120 else text[:119] + "…"


def render_page(
    graphs: Sequence[dict[str, Any]],
    title: str,
    plugins: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> str:
    """The page's HTML text for one or two `page_data` dicts (two: side by side, aligned).

    Args:
        graphs: the graphs' data.
        title: page title.
        plugins: JavaScript sources inlined after the page's script (they use
            `window.sparseCircuitsPage`; see docs/graph-page.md).
        extra: more data for plugins, embedded as the page data's "extra".
    """
    if not 1 <= len(graphs) <= 2:
        raise SparseCircuitsError(f"a page shows one or two graphs; got {len(graphs)}")
    data = {"graphs": list(graphs), "extra": extra or {}}
    panes = "\n".join(
        '  <section class="graph-pane"><div class="pane-head"></div>'
        '<div class="graph-area"><svg class="graph"></svg></div></section>'
        for _ in graphs
    )
    scripts = "\n".join(["", *plugins])
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
{_static("graph_page.css")}
{static_text("feature_card.css")}
</style>
<style id="graph-style">
{_static("graph_svg.css")}
</style>
</head>
<body>
<header>
  <h1 title="{html.escape(title)}">{html.escape(_one_line(title))}</h1>
  <span id="summary"></span>
  <label title="hide feature and error nodes whose cumulative influence share is above this">nodes
    <input type="range" id="node-threshold" min="0" max="1" step="any" value="1">
    <output id="node-threshold-value">1.00</output></label>
  <label title="keep the strongest edges up to this share of the total |weight|">edges
    <input type="range" id="edge-threshold" min="0" max="1" step="any" value="1">
    <output id="edge-threshold-value">1.00</output></label>
  <span class="count"><span id="node-count">0</span> nodes, <span id="edge-count">0</span> edges</span>
  <label>search <input type="search" id="search" placeholder="label or token"></label>
  <span id="match-count"></span>
  <label><input type="checkbox" id="view-pinned"> pinned only</label>
  <button id="fit" title="zoom to fit (wheel: zoom, drag: pan)">fit</button>
  <button id="export-json" title="the pinned (else shown) subgraph, circuit-tracer schema">JSON</button>
  <button id="export-svg">SVG</button>
  <button id="export-png">PNG</button>
</header>
<main>
<div id="panes">
{panes}
</div>
<aside id="panel">
  <h2>node</h2>
  <div id="details"></div>
  <h2>pinned</h2>
  <div id="pins"></div>
  <div id="pin-tools" hidden><input id="group-name" placeholder="supernode name">
    <button id="group">group checked</button><button id="clear-pins">clear</button></div>
  <div id="plugin-panel"></div>
</aside>
</main>
<script type="application/json" id="graph-data">{script_json(data)}</script>
<script>
{static_text("feature_card.js")}
{_static("graph_page.js")}
{_static("qk_panel.js")}
{scripts}
</script>
</body>
</html>
"""


def render_html(
    graph: AttributionGraph,
    title: str | None = None,
    max_edges: int = 5000,
    atlas: FeatureAtlas | None = None,
    scores: dict[str, float] | None = None,
    plugins: Sequence[str] = (),
) -> str:
    """The page's HTML text of one graph (see `write_html`)."""
    title = title or f"Attribution graph: {graph.prompt}"
    data = page_data(graph, max_edges, atlas, scores=scores)
    return render_page([data], title, plugins)


def write_html(
    graph: AttributionGraph,
    path: str | Path,
    title: str | None = None,
    max_edges: int = 5000,
    atlas: FeatureAtlas | None = None,
    scores: dict[str, float] | None = None,
) -> Path:
    """Write the interactive page of `graph` to `path` (atomically) and return the path.

    Args:
        graph: the graph (usually pruned; an unpruned one gets its influence shares computed).
        path: the .html file to write.
        title: page title (default: the prompt).
        max_edges: the strongest edges embedded; neighbours shown on click are among them.
        atlas: a `FeatureAtlas` of the graph's dictionaries: clicking a feature shows its card
            (only the graph's features are embedded).
        scores: figures shown above the graph, e.g. {"replacement": 0.8, "completeness": 0.9}.
    """
    return _write(Path(path), render_html(graph, title, max_edges, atlas, scores))


def write_compare_html(
    sides: Sequence[tuple[str, AttributionGraph, FeatureAtlas | None, dict[str, float] | None]],
    path: str | Path,
    title: str | None = None,
    max_edges: int = 5000,
) -> Path:
    """Write a page of two graphs of the same prompt side by side (atomically).

    Both share one column per position and one row per layer, so that a node sits at the same
    place in both; each carries its name and scores. `sides`: (name, graph, atlas or None,
    scores or None) for each of the two.
    """
    if len(sides) != 2:
        raise SparseCircuitsError(f"a comparison page shows two graphs; got {len(sides)}")
    (_, first, _, _), (_, second, _, _) = sides
    if first.token_strs != second.token_strs:
        raise SparseCircuitsError(
            "the two graphs trace different prompts; a comparison page aligns the same prompt "
            f"({first.prompt!r} vs {second.prompt!r})"
        )
    data = [
        page_data(graph, max_edges, atlas, name=name, scores=scores)
        for name, graph, atlas, scores in sides
    ]
    title = title or f"{sides[0][0]} vs {sides[1][0]}: {first.prompt}"
    return _write(Path(path), render_page(data, title))


def _write(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
