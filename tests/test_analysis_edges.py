"""Edge-level circuits: edge attribution patching and edge ablation (analysis.edges)."""

from __future__ import annotations

import pytest
import torch

from analysis.edges import edge_attribution_patching, edge_circuit_metric, edge_faithfulness_curve
from analysis.faithfulness import _mean_metric
from analysis.nodes import reference_values, site_values
from analysis.ranking import attribution_patching
from analysis.tasks import prompt_metric
from tests.attribution_helpers import random_transcoders
from tests.test_analysis_faithfulness import random_batch


@pytest.fixture(scope="module")
def edge_setup(tiny_gpt2):
    dicts = random_transcoders(tiny_gpt2, "relu", skip=True, n_features=48)
    batch = random_batch(tiny_gpt2.cfg.d_vocab)
    return tiny_gpt2, dicts, batch, edge_attribution_patching(tiny_gpt2, dicts, batch)


@pytest.mark.parametrize("ablation", ["mean", "counterfactual"])
def test_full_edge_set_is_faithful_and_empty_set_is_not(edge_setup, ablation):
    model, dicts, batch, _ = edge_setup
    scores = edge_attribution_patching(model, dicts, batch, ablation=ablation)
    n = scores.n_edges
    curve = edge_faithfulness_curve(model, dicts, batch, scores, sizes=[0, 7, n], ablation=ablation)
    assert curve.n_nodes == n == 2 * scores.layout.site_sizes()[0] + scores.layout.site_sizes()[1]
    assert curve.faithfulness[0] == pytest.approx(0.0, abs=1e-9)
    assert curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-4)
    assert curve.completeness[-1] == pytest.approx(0.0, abs=1e-4)
    # no edge kept is the model with every node ablated: the node-level empty circuit
    reference = reference_values(model, dicts, batch, ablation, True)
    layout = scores.layout
    node_empty = _mean_metric(
        model, dicts, batch, layout.masks(torch.zeros(layout.n_nodes, dtype=torch.bool)),
        reference, 256,
    )  # fmt: skip
    assert curve.metric_empty == pytest.approx(node_empty, rel=1e-5, abs=1e-5)
    with torch.no_grad():
        assert curve.metric_full == pytest.approx(prompt_metric(model, batch).mean().item())


def test_edge_scores_sum_to_the_node_scores(edge_setup):
    # chain rule over the first site a path meets: sum over targets of edge effects = node effect
    model, dicts, batch, edges = edge_setup
    nodes = attribution_patching(model, dicts, batch)
    assert not torch.equal(edges.scores[0], torch.zeros_like(edges.scores[0]))
    assert torch.allclose(edges.scores.sum(0), nodes.scores, rtol=1e-4, atol=1e-6)
    # nodes of the last site have edges only into the logits
    last = edges.layout.site_sizes()[0]
    assert (edges.scores[0, last:] == 0).all() and not edges.valid[0, last:].any()


def test_dropping_a_zero_effect_edge_changes_nothing(edge_setup):
    model, dicts, batch, edges = edge_setup
    layout = edges.layout
    reference = reference_values(model, dicts, batch, "mean", True)
    clean = site_values(model, dicts, batch.clean)
    acts = clean[layout.hooks[0]].acts
    dead = (acts == 0).all(0)[1:]  # a first-site feature off on every prompt at one position
    assert dead.any()
    pos, feature = (int(i) for i in dead.nonzero()[0])
    node = pos * layout.n_features[0] + feature
    assert layout.describe(node) == (layout.layers[0], pos + 1, feature)
    assert (edges.scores[:, node] == 0).all()
    keep = edges.valid.clone()
    full = edge_circuit_metric(model, dicts, batch, layout, keep, reference)
    keep[1, node] = False  # the edge into the logits
    assert torch.equal(edge_circuit_metric(model, dicts, batch, layout, keep, reference), full)
    # an edge that carries something does change the metric
    live = int(edges.scores[1, : layout.site_sizes()[0]].abs().argmax())
    keep[1, live] = False
    assert not torch.allclose(
        edge_circuit_metric(model, dicts, batch, layout, keep, reference), full
    )


def test_every_edge_out_of_a_node_set_is_that_node_circuit(edge_setup):
    # keeping all edges out of nodes S (and no other edge) is the node circuit S
    model, dicts, batch, edges = edge_setup
    layout = edges.layout
    reference = reference_values(model, dicts, batch, "mean", True)
    chosen = torch.zeros(layout.n_nodes, dtype=torch.bool)
    chosen[attribution_patching(model, dicts, batch).order()[:9]] = True
    keep = edges.valid & chosen[None]
    edge_metric = edge_circuit_metric(model, dicts, batch, layout, keep, reference).mean()
    node_metric = _mean_metric(model, dicts, batch, layout.masks(chosen), reference, 256)
    assert float(edge_metric) == pytest.approx(node_metric, rel=1e-5, abs=1e-5)
