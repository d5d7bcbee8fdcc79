"""Data-weighted (expected) attribution: the sparse computation against a dense one, its ranking
of connections against averaged prompt attribution on the default model, and the global
graph as an `AttributionGraph` with its exports."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest
import torch

from circuits.invariant.global_graph import data_weighted_weights, global_graph
from circuits.invariant.topk_graph import topk_graph
from circuits.invariant.virtual_weights import virtual_weights
from replacement import to_tokens
from replacement.errors import SparseCircuitsError
from replacement.zoo import DEFAULT_DICTIONARY_SET, list_dictionary_sets
from tests.attribution_helpers import random_transcoders


def _stdlib_tokens(model, n_rows: int, length: int) -> torch.Tensor:
    """[n_rows, 1 + length] rows of BOS + bisect.py (held-in Python text)."""
    text = (Path(sysconfig.get_paths()["stdlib"]) / "bisect.py").read_text()
    ids = model.tokenizer(text)["input_ids"]
    bos = int(to_tokens(model, "x")[0, 0])
    return torch.tensor([[bos] + ids[k * length : (k + 1) * length] for k in range(n_rows)])


def _default_dictionaries(model):
    """The zoo's default skip transcoders when shipped, else random skip transcoders."""
    if any(entry.name == DEFAULT_DICTIONARY_SET for entry in list_dictionary_sets()):
        from replacement.formats.detect import load_dictionaries

        return load_dictionaries(DEFAULT_DICTIONARY_SET, model=model)
    return random_transcoders(model, n_features=64, seed=7)


def test_data_weighted_equals_dense_formula(tiny_gpt2, tiny_tokenizer):
    model = tiny_gpt2
    dicts = random_transcoders(model, n_features=24, seed=11)
    texts = ["def add(a, b): return a", "class Stack: pass   ", "for i in range(10): x"]
    tokens = torch.tensor([[0] + tiny_tokenizer(t)["input_ids"][:8] for t in texts])
    dw = data_weighted_weights(dicts, model, tokens, 0, 1, norm="ignore", batch_size=2)
    _, cache = model.run_with_cache(tokens)
    a = dicts[0].encode(cache[dicts[0].in_hook][:, 1:]).reshape(-1, 24).double()
    b = dicts[1].encode(cache[dicts[1].in_hook][:, 1:]).reshape(-1, 24).double()
    co = a.T @ (b > 0).double() / a.shape[0]  # E_t[a_i(t) 1[a_j(t) > 0]]
    v = virtual_weights(dicts, model, 0, 1).total.double()
    assert dw.n_tokens == a.shape[0] == 24
    assert len(dw.src) == int((co > 0).sum()) > 0
    torch.testing.assert_close(dw.to_dense().double(), v * co, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(dw.mean_from.double(), a.mean(0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(dw.mean_to.double(), b.mean(0), rtol=1e-5, atol=1e-7)


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks with ties given their average rank (trained dictionaries co-fire sparsely, so many
    values are exactly 0; ordinal ranks of ties would follow the index order and fake a signal)."""
    ordinal = torch.empty(x.numel(), dtype=torch.double)
    ordinal[x.argsort()] = torch.arange(x.numel(), dtype=torch.double)
    _, inverse = torch.unique(x, return_inverse=True)
    sums = torch.zeros(int(inverse.max()) + 1, dtype=torch.double).index_add_(0, inverse, ordinal)
    return (sums / torch.bincount(inverse).double())[inverse]


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = torch.stack([_ranks(a), _ranks(b)])
    if (ranks.std(dim=1) == 0).any():
        return 0.0  # a constant side carries no ranking
    return float(torch.corrcoef(ranks)[0, 1])


def test_data_weighted_agrees_with_averaged_attribution(default_model):
    """E_t[a_i v_ij 1[a_j > 0]] ranks the strongest connections L0 -> L1 like the average over
    prompts of the same-position attribution edges (measured with random skip transcoders:
    Spearman 0.95 over the top 100 pairs; with feature indices permuted about 0.0)."""
    from circuits.attribution.attribute import attribute

    model = default_model
    dicts = _default_dictionaries(model)
    f0, f1 = dicts[0].n_features, dicts[1].n_features
    length, n_prompts = 16, 8
    tokens = _stdlib_tokens(model, n_prompts, length)
    avg = torch.zeros(f0, f1)
    for row in tokens:
        graph = attribute(model, dicts, row, batch_size=64, verbose=False)
        feats = torch.tensor(graph.find("feature"))
        layer, pos = graph.node_layer[feats], graph.node_pos[feats]
        for p in range(1, length + 1):
            src, dst = feats[(layer == 0) & (pos == p)], feats[(layer == 1) & (pos == p)]
            rows, cols = graph.node_feature[src], graph.node_feature[dst]
            avg[rows[:, None], cols[None, :]] += graph.adjacency[dst][:, src].T
    avg /= n_prompts * length
    dw = data_weighted_weights(dicts, model, tokens, 0, 1, norm="mean")
    assert dw.n_tokens == n_prompts * length
    dense = dw.to_dense()
    top = avg.abs().flatten().argsort(descending=True)[:100]
    gen = torch.Generator().manual_seed(0)
    shuffled = dense[torch.randperm(f0, generator=gen)][:, torch.randperm(f1, generator=gen)]
    rho = _spearman(avg.flatten()[top], dense.flatten()[top])
    rho_shuffled = _spearman(avg.flatten()[top], shuffled.flatten()[top])
    print(f"Spearman over the top 100: {rho:.3f}; feature indices permuted: {rho_shuffled:.3f}")
    assert rho > 0.8
    assert abs(rho_shuffled) < 0.3

    # the global graph holds the same weights as a real AttributionGraph
    graph = global_graph(dicts, model, 0, 1, 3, data_weighted=True, tokens=tokens, norm="mean")
    i, j = divmod(int(dense.abs().argmax()), f1)
    s, t = graph.find("feature", 0, 0, i), graph.find("feature", 1, 0, j)
    assert graph.adjacency[t[0], s[0]].item() == pytest.approx(dense[i, j].item(), rel=1e-5)
    assert graph.to_networkx().number_of_edges() == int((graph.adjacency != 0).sum())
    assert len(graph.to_json()["links"]) <= min(f0, 256) * 3


def test_virtual_global_graph_matches_topk(tiny_gpt2, tmp_path):
    model = tiny_gpt2
    dicts = random_transcoders(model, n_features=20, seed=12)
    graph = global_graph(dicts, model, 0, 1, 2, max_sources=None, block_size=8)
    top = topk_graph(dicts, model, 2, 8, verbose=False).pair(0, 1).to_dense()
    up = graph.node_layer == 0
    for t in (~up).nonzero().flatten().tolist():
        for s in up.nonzero().flatten().tolist():
            f_s, f_t = int(graph.node_feature[s]), int(graph.node_feature[t])
            assert graph.adjacency[t, s].item() == pytest.approx(top[f_s, f_t].item(), rel=1e-5)
    assert int((graph.adjacency != 0).sum()) == int((top != 0).sum()) == 20 * 2
    assert graph.node_label[0] == f"L0 F{int(graph.node_feature[0])}"
    graph.to_graphml(tmp_path / "g.graphml")
    assert (tmp_path / "g.graphml").stat().st_size > 0
    with pytest.raises(SparseCircuitsError, match="needs `tokens`"):
        global_graph(dicts, model, 0, 1, 2, data_weighted=True)
