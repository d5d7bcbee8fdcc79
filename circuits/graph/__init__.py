"""The attribution graph object and what is computed from it alone.

attribution_graph.py holds `AttributionGraph` (node table, adjacency, save/load); prune.py the
influence and pruning, scores.py the replacement and completeness scores, export.py the
circuit-tracer JSON (schema/), networkx and GraphML, sparse_rows.py the sparse adjacency rows.
None of these modules imports `AttributionGraph` at run time: its methods delegate to them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from replacement.lazy import lazy_package

_HOMES = {
    "AttributionGraph": "circuits.graph.attribution_graph",
    "GraphScores": "circuits.graph.scores",
}

if TYPE_CHECKING:
    from circuits.graph.attribution_graph import AttributionGraph
    from circuits.graph.scores import GraphScores

lazy_package(__name__, _HOMES)

__all__ = ["AttributionGraph", "GraphScores"]
