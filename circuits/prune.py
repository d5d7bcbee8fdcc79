"""Influence, pruning and graph scores (circuit-tracer's method, restated in REFERENCE.md).

    A_hat      = |A| with each row normalised to sum 1 (rows = targets)
    influence  = w (A_hat + A_hat^2 + ...)        w = logit probabilities on logit nodes

The graph is acyclic, so the series is finite; it is summed by repeated multiplication until
it vanishes (at most one term per node on the longest path).
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuits.graph import AttributionGraph, GraphScores


def normalize_rows(adjacency: Float[Tensor, "n n"]) -> Float[Tensor, "n n"]:
    """|A| with each row scaled to sum 1 (rows of zeros stay zero)."""
    a = adjacency.abs()
    return a / a.sum(dim=1, keepdim=True).clamp_min(1e-30)


def influence_series(
    a_hat: Float[Tensor, "n n"], weights: Float[Tensor, " n"], max_terms: int | None = None
) -> Float[Tensor, " n"]:
    """w (A_hat + A_hat^2 + ...) for an acyclic (nilpotent) A_hat."""
    a_hat = a_hat.double()
    term = weights.double() @ a_hat
    total = term.clone()
    for _ in range(max_terms or a_hat.shape[0]):
        if not term.abs().max() > 0:
            break
        term = term @ a_hat
        total += term
    return total.to(weights.dtype)


def node_influence(
    adjacency: Float[Tensor, "n n"], weights: Float[Tensor, " n"]
) -> Float[Tensor, " n"]:
    """Each node's influence on the weighted logits."""
    return influence_series(normalize_rows(adjacency), weights)


def _cumulative_share(scores: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
    """For each entry, the share of the total reached when entries are added largest first."""
    order = scores.argsort(descending=True)
    cumulative = scores[order].cumsum(0) / scores.sum().clamp_min(1e-30)
    out = torch.empty_like(scores)
    out[order] = cumulative
    return out


def prune_graph(
    graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> AttributionGraph:
    """Keep the nodes and edges that carry most of the influence on the logits.

    1. Nodes: the smallest set of feature and error nodes whose influence adds up to
       `node_threshold` of the total (tokens and logits are always kept).
    2. Edges: score A_hat'[t, s] * (influence'[t] + w[t]) on the node-pruned graph and keep
       the largest edges covering `edge_threshold` of the total score.
    3. Drop feature/error nodes left without inputs or outputs; repeat 2-3 until stable.
    The result's `node_influence` holds each node's cumulative-influence share (as in the
    JSON export), and its metadata records the thresholds.
    """
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 < value <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {value}")
    weights = graph.logit_weights
    always = graph.mask("token") | graph.mask("logit")
    is_feature = graph.mask("feature")
    infl = node_influence(graph.adjacency, weights)
    share = _cumulative_share(torch.where(always, 0.0, infl))
    keep: Bool[Tensor, " n"] = always | (share <= node_threshold)
    # also keep the node that crosses the threshold, so the kept set covers it
    crossing = torch.where(always | keep, 2.0, share).argmin()
    if not always.all() and share[crossing] <= 1.0:
        keep[crossing] = True
    adjacency = graph.adjacency.clone()
    while True:
        adjacency = adjacency * keep[:, None] * keep[None, :]
        a_hat = normalize_rows(adjacency)
        infl_kept = influence_series(a_hat, weights)
        edge_scores = a_hat * (infl_kept + weights)[:, None]
        edge_share = _cumulative_share(edge_scores.flatten()).reshape(edge_scores.shape)
        edge_keep = (edge_share <= edge_threshold) & (adjacency != 0)
        adjacency = adjacency * edge_keep
        has_out = (adjacency != 0).any(dim=0)  # some kept node reads it
        has_in = (adjacency != 0).any(dim=1)  # it reads some kept node
        # error nodes are pure sources; features need both an input and an output
        new_keep = keep & (always | (has_out & (has_in | ~is_feature)))
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    pruned = graph.subgraph(keep)
    pruned.adjacency = adjacency[keep][:, keep]
    pruned.node_influence = share[keep]
    pruned.metadata = {
        **graph.metadata,
        "node_threshold": node_threshold,
        "edge_threshold": edge_threshold,
        "n_nodes_before_pruning": graph.n_nodes,
    }
    return pruned


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
    non_error = 1.0 - a_hat[:, errors].sum(dim=1)
    output = infl + weights
    completeness = float((non_error * output).sum() / output.sum().clamp_min(1e-30))
    return GraphScores(replacement=replacement, completeness=completeness)
