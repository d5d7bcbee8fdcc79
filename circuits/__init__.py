"""Circuits: prompt attribution graphs, pruning, interventions, exports and drawing.

The public names load on first use (`replacement.lazy`), so the command line starts without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from replacement.lazy import lazy_package

_HOMES = {
    "attribute": "circuits.attribute",
    "AttributionGraph": "circuits.graph",
    "GraphScores": "circuits.graph",
    "Intervention": "circuits.intervene",
    "InterventionResult": "circuits.intervene",
    "intervene": "circuits.intervene",
    "prune_graph": "circuits.prune",
    "prune": "circuits.prune",
    "graph_scores": "circuits.scores",
}

if TYPE_CHECKING:
    from circuits.attribute import attribute
    from circuits.graph import AttributionGraph, GraphScores
    from circuits.intervene import Intervention, InterventionResult, intervene
    from circuits.prune import prune_graph
    from circuits.scores import graph_scores

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
