"""A self-contained interactive HTML page of an attribution graph.

The page needs no network: the graph is embedded as JSON, and the script and style sheet
(`circuits/views/static/graph_page.{js,css}`) are inlined. It draws an inline SVG with the layout of
`circuits.views.draw.graph_layout`; hovering shows a node's label and activation, clicking
highlights its inputs and outputs, and a slider hides the feature and error nodes whose
cumulative-influence share is above the threshold (tokens and logits always show).

URL fragments, for links and headless tests: `#threshold=0.5` sets the slider (firing its
input event), `#click=12` clicks node 12 (showing its feature card when an atlas was given) and `#hover=12` moves the mouse over it (real
MouseEvents on its SVG element); they combine as `#threshold=0.5&click=12`.
"""

from __future__ import annotations

import html
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxtyping import Float
from torch import Tensor

from circuits.views.draw import graph_layout, top_edges
from circuits.views.feature_labels import feature_cards
from replacement.atlas.card import static_text
from replacement.atlas.pages import script_json
from replacement.atomic import atomic_path

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


def visible_nodes(graph: AttributionGraph, threshold: float) -> list[int]:
    """Indices of the nodes the page shows at a slider threshold (same rule as the script)."""
    shares = influence_shares(graph).tolist()
    return [
        i
        for i, kind in enumerate(graph.node_kind)
        if kind in ALWAYS_SHOWN or shares[i] <= threshold
    ]


def page_data(
    graph: AttributionGraph, max_edges: int = 5000, atlas: FeatureAtlas | None = None
) -> dict[str, Any]:
    """The JSON the page embeds: nodes with layout and influence, the strongest edges, and the
    atlas cards of the graph's features (keyed "layer/feature") with the tokens they use."""
    layout = graph_layout(graph)
    shares = influence_shares(graph).tolist()
    nodes = [
        {
            "kind": graph.node_kind[i],
            "layer": int(graph.node_layer[i]),
            "pos": int(graph.node_pos[i]),
            "feature": int(graph.node_feature[i]),
            "activation": float(graph.node_activation[i]),
            "label": graph.node_label[i],
            "influence": float(shares[i]),
            "x": float(layout.x[i]),
            "row": int(layout.y[i]),
            "spacing": float(layout.spacing[i]),
        }
        for i in range(graph.n_nodes)
    ]
    src, tgt, weight = top_edges(graph.adjacency, max_edges)
    edges = [
        [s, t, float(w)]
        for s, t, w in zip(src.tolist(), tgt.tolist(), weight.tolist(), strict=True)
    ]
    n_pos = len(layout.column_center)
    return {
        "prompt": graph.prompt,
        "token_strs": list(graph.token_strs) + [""] * (n_pos - len(graph.token_strs)),
        "column_center": layout.column_center.tolist(),
        "width": layout.width,
        "n_layers": graph.n_layers,
        "model_name": graph.model_name,
        "dictionary_names": list(graph.dictionary_names),
        "node_threshold": graph.metadata.get("node_threshold"),
        "n_edges_total": graph.n_edges,
        "nodes": nodes,
        "edges": edges,
        **(feature_cards(graph, atlas) if atlas is not None else {"cards": {}, "vocab": {}}),
    }


def _static(name: str) -> str:
    return resources.files("circuits.views").joinpath("static", name).read_text(encoding="utf-8")


def render_html(
    graph: AttributionGraph,
    title: str | None = None,
    max_edges: int = 5000,
    atlas: FeatureAtlas | None = None,
) -> str:
    """The page's HTML text (see `write_html`)."""
    title = title or f"Attribution graph: {graph.prompt}"
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
</head>
<body>
<header>
  <h1>{html.escape(title)}</h1>
  <div id="summary"></div>
  <label id="threshold-control">node threshold
    <input type="range" id="threshold" min="0" max="1" step="any" value="1">
    <output id="threshold-value">1.00</output>
  </label>
  <span class="count"><span id="node-count">0</span> nodes shown</span>
</header>
<main>
  <div id="graph-area"><svg id="graph"></svg></div>
  <aside id="details"><p class="hint">Click a node to see its inputs and outputs.</p></aside>
</main>
<div id="tooltip" hidden></div>
<script type="application/json" id="graph-data">{script_json(page_data(graph, max_edges, atlas))}</script>
<script>
{static_text("feature_card.js")}
{_static("graph_page.js")}
</script>
</body>
</html>
"""


def write_html(
    graph: AttributionGraph,
    path: str | Path,
    title: str | None = None,
    max_edges: int = 5000,
    atlas: FeatureAtlas | None = None,
) -> Path:
    """Write the interactive page of `graph` to `path` (atomically) and return the path.

    Args:
        graph: the graph (usually pruned; an unpruned one gets its influence shares computed).
        path: the .html file to write.
        title: page title (default: the prompt).
        max_edges: the strongest edges embedded; neighbours shown on click are among them.
        atlas: a `FeatureAtlas` of the graph's dictionaries: clicking a feature shows its card
            (only the graph's features are embedded).
    """
    path = Path(path)
    text = render_html(graph, title=title, max_edges=max_edges, atlas=atlas)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
