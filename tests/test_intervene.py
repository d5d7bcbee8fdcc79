"""Interventions agree with attribution (constrained) and with the clean run (free)."""

from __future__ import annotations

import pytest
import torch

from circuits.attribution.attribute import attribute
from circuits.attribution.intervene import Intervention, intervene
from replacement.errors import SparseCircuitsError
from tests.attribution_helpers import random_transcoders

PROMPT = "for i in range(10):\n    print"


@pytest.fixture(scope="module")
def setup(tiny_gpt2):
    dicts = random_transcoders(tiny_gpt2, "relu", skip=True)
    graph = attribute(tiny_gpt2, dicts, PROMPT, verbose=False, batch_size=16)
    return tiny_gpt2, dicts, graph


def test_constrained_logit_change_matches_adjacency(setup):
    model, dicts, graph = setup
    logit_rows = graph.find("logit")
    tok = int(graph.node_feature[logit_rows[0]])
    feats = graph.find("feature")
    # the layer-0 feature with the largest direct edge to the top logit
    cands = [i for i in feats if graph.node_layer[i] == 0]
    s = max(cands, key=lambda i: abs(float(graph.adjacency[logit_rows[0], i])))
    layer, pos, f = int(graph.node_layer[s]), int(graph.node_pos[s]), int(graph.node_feature[s])
    result = intervene(model, dicts, graph.tokens, [Intervention(layer, pos, f, scale=3.0)])
    change = result.logits[-1] - result.clean_logits[-1]
    demeaned = change[tok] - change.mean()
    # scaling by 3 adds 2 * a_s W_dec[s]: the demeaned logit moves by 2 * A[logit, s]
    expected = 2.0 * graph.adjacency[logit_rows[0], s]
    assert abs(expected) > 1e-3
    torch.testing.assert_close(demeaned, expected, rtol=1e-3, atol=1e-5)
    # constrained: other features keep their clean activations
    clean = dicts[1].encode(model.run_with_cache(graph.tokens.unsqueeze(0))[1][dicts[1].in_hook][0])
    torch.testing.assert_close(result.activations[1], clean)


def test_free_running_without_change_is_the_clean_run(setup):
    model, dicts, graph = setup
    result = intervene(model, dicts, PROMPT, [Intervention(0, 2, 0, scale=1.0)], constrained=False)
    torch.testing.assert_close(result.logits, result.clean_logits, atol=1e-5, rtol=1e-5)
    off = intervene(model, dicts, PROMPT, [Intervention(0, 2, 0, value=50.0)], constrained=False)
    assert (off.logits - off.clean_logits).abs().max() > 1e-3
    assert off.activations[0][2, 0] == 50.0


def test_bad_interventions(setup):
    model, dicts, _ = setup
    with pytest.raises(SparseCircuitsError, match="no dictionary at layer 5"):
        intervene(model, dicts, PROMPT, [Intervention(5, 1, 0, value=1.0)])
    with pytest.raises(SparseCircuitsError, match="out of range"):
        intervene(model, dicts, PROMPT, [Intervention(0, 1, 10_000, value=1.0)])
