"""Circuits: prompt attribution graphs, pruning, interventions, exports and drawing.

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
}

if TYPE_CHECKING:
    from circuits.attribution.attribute import attribute
    from circuits.attribution.intervene import Intervention, InterventionResult, intervene
    from circuits.graph.attribution_graph import AttributionGraph
    from circuits.graph.prune import prune_graph
    from circuits.graph.scores import GraphScores, graph_scores

    prune = prune_graph

# `prune(graph, node_threshold=0.8, edge_threshold=0.98)` is `prune_graph`
lazy_package(__name__, _HOMES, aliases={"prune": "prune_graph"})

__all__ = [
    "AttributionGraph",
    "GraphScores",
    "Intervention",
    "InterventionResult",
    "attribute",
    "graph_scores",
    "intervene",
    "prune",
    "prune_graph",
]
