"""Influence and pruning (circuit-tracer's method, restated in REFERENCE.md).

    A_hat      = |A| with each row normalised to sum 1 (rows = targets)
    influence  = w (A_hat + A_hat^2 + ...)        w = logit probabilities on logit nodes

The graph is acyclic, so the series is finite; it is summed exactly by repeated
multiplication until it vanishes (one term per step of the longest path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuits.graph.sparse_rows import coo, sparse_normalize_rows, sparse_vector_product
from replacement.errors import SparseCircuitsError

if TYPE_CHECKING:
    from circuits.graph.attribution_graph import AttributionGraph


def normalize_rows(adjacency: Float[Tensor, "n n"]) -> Float[Tensor, "n n"]:
    """|A| with each row scaled to sum 1 (rows of zeros stay zero); sparse stays sparse."""
    if adjacency.is_sparse:
        return sparse_normalize_rows(adjacency)
    a = adjacency.abs()
    return a / a.sum(dim=1, keepdim=True).clamp_min(1e-30)


def influence_series(
    a_hat: Float[Tensor, "n n"], weights: Float[Tensor, " n"]
) -> Float[Tensor, " n"]:
    """w (A_hat + A_hat^2 + ...) for an acyclic A_hat, summed exactly (in float64).

    A_hat of an acyclic graph is nilpotent and its structural zeros stay exactly zero, so
    the terms vanish after at most (longest path) steps; a term still non-zero after n steps
    means the graph has a cycle. A sparse A_hat is summed over its stored entries.
    """
    if a_hat.is_sparse:
        sparse = a_hat.coalesce().double()

        def step(v: Tensor) -> Tensor:
            return sparse_vector_product(v, sparse)
    else:
        dense = a_hat.double()

        def step(v: Tensor) -> Tensor:
            return v @ dense

    term = step(weights.double())
    total = term.clone()
    for _ in range(a_hat.shape[0]):
        if not term.abs().max() > 0:
            return total.to(weights.dtype)
        term = step(term)
        total += term
    if term.abs().max() > 0:
        raise SparseCircuitsError(
            "the adjacency has a cycle: influence needs an acyclic graph (rows = targets, "
            "columns = sources, every edge from an earlier layer or position)"
        )
    return total.to(weights.dtype)


def node_influence(
    adjacency: Float[Tensor, "n n"], weights: Float[Tensor, " n"]
) -> Float[Tensor, " n"]:
    """Each node's influence on the weighted logits."""
    return influence_series(normalize_rows(adjacency), weights)


def cumulative_share(scores: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
    """For each entry, the share of the total reached when entries are added largest first
    (ties in index order)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    cumulative = scores[order].double().cumsum(0) / scores.double().sum().clamp_min(1e-300)
    out = torch.empty(scores.shape, dtype=torch.float64)
    out[order] = cumulative
    return out.to(scores.dtype)


def cover_threshold(scores: Float[Tensor, " n"], fraction: float) -> float:
    """The smallest score among the largest entries whose sum first reaches `fraction` of the
    total (circuit-tracer's `find_threshold`): keeping `scores >= it` covers the fraction."""
    ranked = torch.sort(scores.flatten().double(), descending=True).values
    total = ranked.sum()
    if not total > 0:
        return float("inf")
    cumulative = ranked.cumsum(0) / total
    index = int(torch.searchsorted(cumulative, torch.tensor([fraction], dtype=torch.float64)))
    return float(ranked[min(index, len(ranked) - 1)])


def prune_graph(
    graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> AttributionGraph:
    """Keep the nodes and edges that carry most of the influence on the logits.

    circuit-tracer's `prune_graph`:
    1. Nodes: keep the nodes of largest influence whose sum first reaches `node_threshold` of
       the total influence of all nodes; tokens and logits are always kept.
    2. Edges, on the node-pruned graph: score A_hat'[t, s] * (influence'[t] + w[t]) and keep
       the largest edges whose sum first reaches `edge_threshold` of the total score.
    3. Drop feature and error nodes without a kept outgoing edge, and feature nodes without
       a kept incoming edge, together with their edges; repeat until stable.
    The result's `node_influence` holds each node's cumulative-influence share in the
    unpruned graph (0 < share <= 1, smaller = more influential; as in the JSON export), and
    its metadata records the thresholds.
    """
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 < value <= 1.0:
            raise SparseCircuitsError(f"{name} must be in (0, 1], got {value}")
    if graph.adjacency.is_sparse:
        return _prune_sparse(graph, node_threshold, edge_threshold)
    weights = graph.logit_weights
    always = graph.mask("token") | graph.mask("logit")
    is_feature = graph.mask("feature")
    infl = node_influence(graph.adjacency, weights)
    keep: Bool[Tensor, " n"] = always | (infl >= cover_threshold(infl, node_threshold))

    adjacency = graph.adjacency * keep[:, None] * keep[None, :]
    a_hat = normalize_rows(adjacency)
    edge_scores = a_hat * (influence_series(a_hat, weights) + weights)[:, None]
    edges = (edge_scores >= cover_threshold(edge_scores, edge_threshold)) & (adjacency != 0)
    while True:
        edges &= keep[:, None] & keep[None, :]
        has_out = edges.any(dim=0)  # some kept node reads it
        has_in = edges.any(dim=1)  # it reads some kept node
        new_keep = keep & (always | (has_out & (has_in | ~is_feature)))
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    adjacency = torch.where(edges, graph.adjacency, 0.0)[keep][:, keep]
    return _pruned(graph, keep, adjacency, infl, node_threshold, edge_threshold)


def _pruned(
    graph: AttributionGraph,
    keep: Bool[Tensor, " n"],
    adjacency: Float[Tensor, "m m"],
    infl: Float[Tensor, " n"],
    node_threshold: float,
    edge_threshold: float,
) -> AttributionGraph:
    """The kept nodes with the kept edges, their influence shares and the thresholds."""
    pruned = graph.subgraph(keep)
    pruned.adjacency = adjacency
    pruned.node_influence = cumulative_share(infl)[keep]
    pruned.metadata = {
        **graph.metadata,
        "node_threshold": node_threshold,
        "edge_threshold": edge_threshold,
        "n_nodes_before_pruning": graph.n_nodes,
    }
    return pruned


def _prune_sparse(
    graph: AttributionGraph, node_threshold: float, edge_threshold: float
) -> AttributionGraph:
    """`prune_graph` of a graph with a sparse adjacency: the same steps over the stored
    entries (an entry not stored is a zero). The pruned graph's adjacency is dense."""
    weights = graph.logit_weights
    always = graph.mask("token") | graph.mask("logit")
    is_feature = graph.mask("feature")
    adjacency = graph.adjacency.coalesce()
    (row, col), value = adjacency.indices(), adjacency.values()
    infl = node_influence(adjacency, weights)
    keep: Bool[Tensor, " n"] = always | (infl >= cover_threshold(infl, node_threshold))

    inside = keep[row] & keep[col]
    masked = coo(adjacency.indices(), value * inside, adjacency.shape, coalesced=True)
    a_hat = normalize_rows(masked)
    scale = influence_series(a_hat, weights) + weights
    score = a_hat.values() * scale[row]
    # the dense scores also hold zeros, which never move the threshold above a stored score
    edges = (score >= cover_threshold(score, edge_threshold)) & (value * inside != 0)
    n = graph.n_nodes
    while True:
        edges &= keep[row] & keep[col]
        has_out = torch.zeros(n, dtype=torch.bool).index_fill_(0, col[edges], True)
        has_in = torch.zeros(n, dtype=torch.bool).index_fill_(0, row[edges], True)
        new_keep = keep & (always | (has_out & (has_in | ~is_feature)))
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    node = torch.full((n,), -1, dtype=torch.long)
    node[keep] = torch.arange(int(keep.sum()))
    dense = torch.zeros(int(keep.sum()), int(keep.sum()), dtype=value.dtype)
    dense[node[row[edges]], node[col[edges]]] = value[edges]
    return _pruned(graph, keep, dense, infl, node_threshold, edge_threshold)
