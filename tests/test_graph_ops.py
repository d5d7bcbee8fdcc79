"""Influence, pruning and scores on a small hand-built graph with hand-computed values."""

from __future__ import annotations

import pytest
import torch

from circuits.graph import AttributionGraph

# nodes: f0, f1 (features), e0 (error), t0, t1 (tokens), L (logit, p = 1)
KIND = ["feature", "feature", "error", "token", "token", "logit"]
F0, F1, E0, T0, T1, L = range(6)


def hand_graph() -> AttributionGraph:
    a = torch.zeros(6, 6)
    a[L, F1], a[L, E0], a[L, T1] = 2.0, 1.0, -1.0
    a[F1, F0], a[F1, T0] = 3.0, -1.0
    a[F0, T0] = 1.0
    return AttributionGraph(
        prompt="a b",
        tokens=torch.tensor([0, 5, 6]),
        token_strs=["<bos>", "a", " b"],
        node_kind=list(KIND),
        node_layer=torch.tensor([0, 1, 0, -1, -1, 2]),
        node_pos=torch.tensor([1, 2, 2, 1, 2, 2]),
        node_feature=torch.tensor([7, 9, -1, 5, 6, 11]),
        node_activation=torch.tensor([1.5, 0.5, 0.3, 0.0, 0.0, 1.0]),
        node_label=["f0", "f1", "e0", "t0", "t1", "L"],
        adjacency=a,
        n_layers=2,
        model_name="hand",
    )


def test_influence_by_hand():
    infl = hand_graph().influence()
    # w A = {f1: .5, e0: .25, t1: .25}; then .5 * row f1 = {f0: .375, t0: .125}; then f0 -> t0
    expected = torch.tensor([0.375, 0.5, 0.25, 0.5, 0.25, 0.0])
    torch.testing.assert_close(infl, expected)


def test_scores_by_hand():
    scores = hand_graph().scores()
    assert scores.replacement == pytest.approx(0.75)
    assert scores.completeness == pytest.approx(2.625 / 2.875)


def test_prune_keeps_the_cover_and_tokens_and_logits():
    graph = hand_graph()
    assert graph.prune(1.0, 1.0).n_nodes == 6
    pruned = graph.prune(node_threshold=0.5, edge_threshold=1.0)
    # f1 (share .44) and f0 (the node crossing .5) are kept; the error node is not
    assert pruned.node_label == ["f0", "f1", "t0", "t1", "L"]
    # shares as exported: f1 .444, f0 .778
    torch.testing.assert_close(pruned.node_influence[:2], torch.tensor([0.375 + 0.5, 0.5]) / 1.125)
    assert pruned.adjacency[4, 1] == 2.0 and pruned.adjacency[1, 0] == 3.0


def test_edge_pruning_drops_weak_edges_and_dangling_nodes():
    graph = hand_graph()
    graph.adjacency[F1, T0] = -1e-3  # a weak edge
    graph.adjacency[F0, T1] = 1e-4  # f0's weakest input
    pruned = graph.prune(node_threshold=1.0, edge_threshold=0.9)
    idx = {label: i for i, label in enumerate(pruned.node_label)}
    a = pruned.adjacency
    assert a[idx["f1"], idx["t0"]] == 0 and a[idx["f0"], idx["t1"]] == 0  # weak edges gone
    assert a[idx["L"], idx["f1"]] == 2.0 and a[idx["f1"], idx["f0"]] == 3.0
    assert a[idx["f0"], idx["t0"]] == 1.0

    # a feature whose only reader is pruned away is dropped as dangling
    graph = hand_graph()
    graph.adjacency[L, F1] = 0.0
    pruned = graph.prune(node_threshold=1.0, edge_threshold=1.0)
    assert "f1" not in pruned.node_label and "f0" not in pruned.node_label


def test_bad_thresholds():
    with pytest.raises(ValueError, match="node_threshold"):
        hand_graph().prune(node_threshold=0.0)
