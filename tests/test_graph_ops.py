"""Influence, pruning and scores on a small hand-built graph with hand-computed values."""

from __future__ import annotations

import pytest
import torch

from circuits.graph.attribution_graph import AttributionGraph
from replacement.errors import SparseCircuitsError

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
    # influence ranked (ties in node order): f1 .5, t0 .5, f0 .375, e0 .25, t1 .25, L 0 of
    # 1.875; cumulative shares .267, .533, .733, .867, 1, 1
    shares = torch.tensor([0.375 + 0.5 + 0.5, 0.5, 1.625, 1.0, 1.875, 1.875]) / 1.875
    pruned = graph.prune(node_threshold=0.5, edge_threshold=1.0)
    # f1 and t0 reach .533 >= .5: f0 and e0 go; tokens and the logit stay
    assert pruned.node_label == ["f1", "t0", "t1", "L"]
    torch.testing.assert_close(pruned.node_influence, shares[[F1, T0, T1, L]])
    assert pruned.adjacency[3, 0] == 2.0 and pruned.adjacency[0, 1] == -1.0
    pruned = graph.prune(node_threshold=0.7, edge_threshold=1.0)
    assert pruned.node_label == ["f0", "f1", "t0", "t1", "L"]
    torch.testing.assert_close(pruned.node_influence, shares[[F0, F1, T0, T1, L]])
    assert pruned.adjacency[4, 1] == 2.0 and pruned.adjacency[1, 0] == 3.0


def test_edge_pruning_drops_weak_edges_and_dangling_nodes():
    # edge scores A_hat[t, s] (influence[t] + w[t]): L<-f1 .5, f1<-f0 .375, f0<-t0 .375,
    # L<-e0 .25, L<-t1 .25, f1<-t0 .125 (total 1.875; cumulative .267 .467 .667 .8 .933 1)
    graph = hand_graph()
    pruned = graph.prune(node_threshold=1.0, edge_threshold=0.9)
    idx = {label: i for i, label in enumerate(pruned.node_label)}
    a = pruned.adjacency
    assert a[idx["f1"], idx["t0"]] == 0  # the weakest edge is the only one gone
    assert int((a != 0).sum()) == 5 and a[idx["L"], idx["e0"]] == 1.0

    # at .6 only the three strongest edges stay: the error node loses its only reader
    pruned = graph.prune(node_threshold=1.0, edge_threshold=0.6)
    assert pruned.node_label == ["f0", "f1", "t0", "t1", "L"]
    idx = {label: i for i, label in enumerate(pruned.node_label)}
    kept = {(t, s) for t, s in (pruned.adjacency != 0).nonzero().tolist()}
    assert kept == {(idx["L"], idx["f1"]), (idx["f1"], idx["f0"]), (idx["f0"], idx["t0"])}

    # a feature of little influence loses its edges (scores ~.005 of 1.5) and is dropped
    graph = hand_graph()
    graph.adjacency[F1, F0] = 0.01
    pruned = graph.prune(node_threshold=1.0, edge_threshold=0.98)
    assert "f0" not in pruned.node_label and "f1" in pruned.node_label
    idx = {label: i for i, label in enumerate(pruned.node_label)}
    assert pruned.adjacency[idx["f1"], idx["t0"]] == -1.0

    # a feature whose only reader is gone is dropped, and so is the feature feeding it
    graph = hand_graph()
    graph.adjacency[L, F1] = 0.0
    pruned = graph.prune(node_threshold=1.0, edge_threshold=1.0)
    assert "f1" not in pruned.node_label and "f0" not in pruned.node_label


def test_influence_rejects_a_cycle():
    graph = hand_graph()
    graph.adjacency[F0, F1] = 1.0  # f0 <-> f1
    with pytest.raises(SparseCircuitsError, match="cycle"):
        graph.influence()


def test_bad_thresholds():
    with pytest.raises(ValueError, match="node_threshold"):
        hand_graph().prune(node_threshold=0.0)
