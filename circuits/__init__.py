"""Circuits: prompt attribution graphs, pruning, interventions, exports and drawing."""

from circuits.attribute import attribute
from circuits.graph import AttributionGraph, GraphScores
from circuits.intervene import Intervention, InterventionResult, intervene
from circuits.prune import prune_graph
from circuits.scores import graph_scores

prune = prune_graph
"""`prune(graph, node_threshold=0.8, edge_threshold=0.98)`: same as `graph.prune(...)`."""

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
