"""Sparse, thresholded adjacency (`attribute(..., sparse=True, row_top_k=..., row_min_abs=...)`).

- with no threshold the sparse graph equals the dense one (every feature, and a budget), and
  so do its pruned graph, influence and scores;
- with a top-k or |a| threshold every kept entry equals the dense entry, every row keeps
  exactly the entries the rule names, and pruning equals pruning the dense graph with the
  dropped entries set to zero;
- it survives save/load and the JSON export; bad thresholds are refused.
"""

from __future__ import annotations

import pytest
import torch

from circuits.attribution.attribute import attribute
from circuits.graph.attribution_graph import AttributionGraph
from replacement.errors import SparseCircuitsError
from tests.attribution_helpers import random_transcoders
from tests.test_attribution_exact import PROMPT


@pytest.fixture(scope="module")
def setup(tiny_gpt2):
    return tiny_gpt2, random_transcoders(tiny_gpt2, "relu", skip=True, seed=3)


def run(setup, **kw) -> AttributionGraph:
    model, dicts = setup
    return attribute(model, dicts, PROMPT, verbose=False, batch_size=16, **kw)


def close(a, b, rel=1e-6) -> bool:
    return bool((a - b).abs().max() <= rel * b.abs().max())


def assert_same_pruned(a: AttributionGraph, b: AttributionGraph) -> None:
    assert a.node_label == b.node_label
    assert not a.adjacency.is_sparse
    assert torch.equal(a.adjacency != 0, b.adjacency != 0)
    assert close(a.adjacency, b.adjacency)
    assert close(a.node_influence, b.node_influence)


@pytest.mark.parametrize("budget", [None, 40])
def test_sparse_without_threshold_equals_dense(setup, budget):
    dense = run(setup, max_feature_nodes=budget)
    sparse = run(setup, max_feature_nodes=budget, sparse=True)
    assert sparse.adjacency.is_sparse and sparse.node_label == dense.node_label
    assert sparse.n_edges == dense.n_edges > 100
    assert close(sparse.adjacency.to_dense(), dense.adjacency)
    assert close(sparse.influence(), dense.influence())
    assert sparse.scores() == pytest.approx(dense.scores(), rel=1e-6)
    assert_same_pruned(sparse.prune(0.8, 0.98), dense.prune(0.8, 0.98))


@pytest.mark.parametrize("rule", [{"row_top_k": 12}, {"row_min_abs": 0.05}])
def test_thresholded_rows_keep_dense_entries(setup, rule):
    dense = run(setup)
    sparse = run(setup, **rule)
    kept = sparse.adjacency.to_dense()
    stored = kept != 0
    assert stored.any() and sparse.n_edges < dense.n_edges
    # every kept entry is the dense entry, and each row keeps exactly what the rule names
    assert close(kept[stored], dense.adjacency[stored])
    magnitude = dense.adjacency.abs()
    if "row_top_k" in rule:
        k = rule["row_top_k"]
        assert int(stored.sum(1).max()) == k
        for row in (magnitude != 0).any(1).nonzero().flatten().tolist():
            n = min(k, int((magnitude[row] != 0).sum()))
            assert int(stored[row].sum()) == n
            assert magnitude[row][stored[row]].min() >= magnitude[row].topk(n).values[-1]
    else:
        assert torch.equal(stored, magnitude >= rule["row_min_abs"])
    # pruning sees the dropped entries as zeros: it equals pruning the zeroed dense graph
    zeroed = dense.subgraph(torch.ones(dense.n_nodes, dtype=torch.bool))
    zeroed.adjacency = torch.where(stored, dense.adjacency, 0.0)
    assert_same_pruned(sparse.prune(0.8, 0.98), zeroed.prune(0.8, 0.98))


def test_sparse_graph_files_and_export(setup, tmp_path):
    sparse = run(setup, row_top_k=8)
    back = AttributionGraph.load(sparse.save(tmp_path / "g"))
    assert back.adjacency.is_sparse
    assert torch.equal(back.adjacency.to_dense(), sparse.adjacency.to_dense())
    dense = sparse.subgraph(torch.ones(sparse.n_nodes, dtype=torch.bool))
    dense.adjacency = sparse.adjacency.to_dense()
    assert sparse.to_json()["links"] == dense.to_json()["links"]


@pytest.mark.parametrize("kw", [{"row_top_k": 0}, {"row_min_abs": -1.0}])
def test_bad_thresholds_are_refused(setup, kw):
    with pytest.raises(SparseCircuitsError, match="row_"):
        run(setup, **kw)
