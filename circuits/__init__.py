"""Circuits: prompt attribution graphs, pruning, interventions, exports and drawing.

Sub-packages: `attribution/` (prompt -> graph, interventions), `graph/` (the graph object,
pruning, scores, exports), `views/` (drawing, HTML page, atlas labels), `invariant/` (virtual
weights and global graphs). Import the public names from here; module paths may move.

The public names load on first use (`replacement.lazy`), so the command line starts without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from replacement.lazy import lazy_package

_HOMES = {
    "attribute": "circuits.attribution.attribute",
    "AttributionGraph": "circuits.graph.attribution_graph",
    "GraphScores": "circuits.graph.scores",
    "Intervention": "circuits.attribution.intervene",
    "InterventionResult": "circuits.attribution.intervene",
    "intervene": "circuits.attribution.intervene",
    "prune_graph": "circuits.graph.prune",
    "prune": "circuits.graph.prune",
    "graph_scores": "circuits.graph.scores",
    "label_features": "circuits.views.feature_labels",
    "draw_graph": "circuits.views.draw",
    "write_html": "circuits.views.html_page",
    "virtual_weights": "circuits.invariant.virtual_weights",
    "topk_graph": "circuits.invariant.topk_graph",
    "global_graph": "circuits.invariant.global_graph",
}

if TYPE_CHECKING:
    from circuits.attribution.attribute import attribute
    from circuits.attribution.intervene import Intervention, InterventionResult, intervene
    from circuits.graph.attribution_graph import AttributionGraph
    from circuits.graph.prune import prune_graph
    from circuits.graph.scores import GraphScores, graph_scores
    from circuits.invariant.global_graph import global_graph
    from circuits.invariant.topk_graph import topk_graph
    from circuits.invariant.virtual_weights import virtual_weights
    from circuits.views.draw import draw_graph
    from circuits.views.feature_labels import label_features
    from circuits.views.html_page import write_html

    prune = prune_graph

# `prune(graph, node_threshold=0.8, edge_threshold=0.98)` is `prune_graph`
lazy_package(__name__, _HOMES, aliases={"prune": "prune_graph"})

__all__ = [
    "AttributionGraph",
    "GraphScores",
    "Intervention",
    "InterventionResult",
    "attribute",
    "draw_graph",
    "global_graph",
    "graph_scores",
    "intervene",
    "label_features",
    "prune",
    "prune_graph",
    "topk_graph",
    "virtual_weights",
    "write_html",
]
