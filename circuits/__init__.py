"""Circuits: prompt attribution graphs, pruning, interventions, exports and drawing."""

from circuits.attribute import attribute
from circuits.graph import AttributionGraph, GraphScores

__all__ = ["AttributionGraph", "GraphScores", "attribute"]
