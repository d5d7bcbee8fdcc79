"""Replacement and completeness scores of an attribution graph (REFERENCE.md, "Pruning and
graph scores"; circuit-tracer's `compute_graph_scores`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from circuits.graph.prune import influence_series, normalize_rows

if TYPE_CHECKING:
    from circuits.graph.attribution_graph import AttributionGraph


class GraphScores(NamedTuple):
    """How much of the graph's influence on the logits is explained without error nodes."""

    replacement: float
    """Influence from tokens / (influence from tokens + influence from error nodes)."""
    completeness: float
    """Influence-weighted share of node inputs that do not come from error nodes."""


def graph_scores(graph: AttributionGraph) -> GraphScores:
    """Replacement and completeness scores of a graph.

    replacement  = influence(tokens) / (influence(tokens) + influence(errors))
    completeness = sum_i (1 - error share of i's inputs)(infl_i + w_i) / sum_i (infl_i + w_i)
    """
    weights = graph.logit_weights
    a_hat = normalize_rows(graph.adjacency)
    infl = influence_series(a_hat, weights)
    tokens, errors = graph.mask("token"), graph.mask("error")
    token_infl, error_infl = infl[tokens].sum(), infl[errors].sum()
    replacement = float(token_infl / (token_infl + error_infl).clamp_min(1e-30))
    if a_hat.is_sparse:
        (row, col), value = a_hat.indices(), a_hat.values()
        from_error = errors[col]
        error_share = torch.zeros(len(weights), dtype=value.dtype)
        error_share.index_add_(0, row[from_error], value[from_error])
        non_error = 1.0 - error_share.to(weights.dtype)
    else:
        non_error = 1.0 - a_hat[:, errors].sum(dim=1)
    output = infl + weights
    completeness = float((non_error * output).sum() / output.sum().clamp_min(1e-30))
    return GraphScores(replacement=replacement, completeness=completeness)
