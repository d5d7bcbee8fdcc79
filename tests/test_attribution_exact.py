"""Attribution edges equal the measured effect of interventions in the frozen model.

For every dictionary kind (ReLU, TopK, JumpReLU; with and without W_skip) on a LayerNorm+GELU
GPT-2, an RMSNorm+gated-MLP Llama, a Gemma-2 (norms before and after attention and MLP,
soft-capped attention scores and logits, a sliding window) and a Gemma-3 (plus query and key
norms): adding delta to a feature's, an error node's or a token
embedding's output changes every downstream feature pre-activation and logit direction by
delta * A[t, s] (1e-4 relative).
"""

from __future__ import annotations

import pytest
import torch

from circuits.attribution.attribute import attribute
from replacement import load_model
from tests.attribution_helpers import frozen_effect, frozen_effects, random_transcoders
from tests.tiny_models import make_gemma2, make_gemma3, make_gpt2, make_llama

PROMPT = "def add(a, b):\n    return"
KINDS = [("relu", {}), ("topk", {"k": 6}), ("jumprelu", {})]


@pytest.fixture(scope="module", params=["gpt2", "llama", "gemma2", "gemma3"])
def model64(request, tiny_tokenizer):
    make = {"gpt2": make_gpt2, "llama": make_llama, "gemma2": make_gemma2, "gemma3": make_gemma3}
    make = make[request.param]
    return load_model(
        make(len(tiny_tokenizer), seed=1).double(), tokenizer=tiny_tokenizer, dtype=torch.float64
    )


def _targets(graph, model):
    W_U = model.W_U
    demeaned = W_U - W_U.mean(dim=1, keepdim=True)
    feats, logits = graph.find("feature"), graph.find("logit")
    targets = [
        ("feature", int(graph.node_layer[i]), int(graph.node_pos[i]), int(graph.node_feature[i]))
        for i in feats
    ]
    targets += [("logit", demeaned[:, int(graph.node_feature[i])]) for i in logits]
    return feats + logits, targets


def _source(graph, i):
    kind, layer, pos = graph.node_kind[i], int(graph.node_layer[i]), int(graph.node_pos[i])
    if kind == "feature":
        return ("feature", layer, pos, int(graph.node_feature[i]))
    return ("error", layer, pos) if kind == "error" else ("token", pos)


def check_columns(model, dicts, graph, sources):
    rows, targets = _targets(graph, model)
    effects = frozen_effects(
        model, dicts, graph.tokens, [_source(graph, s) for s in sources], 0.7, targets
    )
    predicted = graph.adjacency[rows][:, sources].T.double()
    scale = effects.abs().max()
    assert scale > 1e-3, "the chosen sources have no measurable effect; the test is vacuous"
    assert (effects - predicted).abs().max() <= 1e-4 * scale


@pytest.mark.parametrize("skip", [True, False], ids=["skip", "noskip"])
@pytest.mark.parametrize("kind,params", KINDS, ids=[k for k, _ in KINDS])
def test_edges_equal_interventions(model64, kind, params, skip):
    dicts = random_transcoders(model64, kind, skip=skip, **params)
    # a feature budget keeps the test fast; every row computed is checked in full
    graph = attribute(model64, dicts, PROMPT, batch_size=32, verbose=False, max_feature_nodes=128)
    feats, errors, tokens = graph.find("feature"), graph.find("error"), graph.find("token")
    layer0 = [i for i in feats if graph.node_layer[i] == 0]
    assert len(layer0) > 5
    sources = [
        layer0[0],
        layer0[len(layer0) // 2],
        layer0[-1],
        errors[0],
        errors[len(errors) // 3],
        tokens[1],
        tokens[len(tokens) // 2],
    ]
    check_columns(model64, dicts, graph, sources)


def test_feature_budget_keeps_most_influential(model64):
    dicts = random_transcoders(model64, "relu", skip=True)
    full = attribute(model64, dicts, PROMPT, batch_size=16, verbose=False)
    budget = 40
    small = attribute(
        model64, dicts, PROMPT, batch_size=16, verbose=False, max_feature_nodes=budget
    )
    assert small.node_kind.count("feature") == budget
    # rows of kept features equal the full graph's rows over the shared columns
    full_index = {
        (int(full.node_layer[i]), int(full.node_pos[i]), int(full.node_feature[i])): i
        for i in full.find("feature")
    }
    kept = [full_index[key] for key in small.feature_ids()]
    infl = full.influence()
    feats = torch.tensor(full.find("feature"))
    top = set(feats[infl[feats].argsort(descending=True)[:10]].tolist())
    # the ten most influential features of the full graph are all in the budgeted one
    assert top <= set(kept)
    logits_full, logits_small = full.find("logit"), small.find("logit")
    cols_small = small.find("feature")
    torch.testing.assert_close(
        small.adjacency[logits_small][:, cols_small], full.adjacency[logits_full][:, kept]
    )


def test_logit_selection_and_custom_targets(model64):
    dicts = random_transcoders(model64, "topk", skip=True, k=6)
    graph = attribute(
        model64, dicts, PROMPT, verbose=False, max_n_logits=3, desired_logit_prob=0.999
    )
    probs = graph.node_activation[graph.mask("logit")]
    assert len(probs) == 3 and torch.all(probs[:-1] >= probs[1:])
    pair = attribute(model64, dicts, PROMPT, verbose=False, target_direction=(5, 7))
    single = attribute(model64, dicts, PROMPT, verbose=False, target_tokens=[5, 7])
    rows = single.find("logit")
    # logit(5) - logit(7) is the difference of the two demeaned rows
    n_src = pair.n_nodes - 1
    torch.testing.assert_close(
        pair.adjacency[pair.find("logit")[0], :n_src],
        (single.adjacency[rows[0]] - single.adjacency[rows[1]])[:n_src],
        atol=1e-5,
        rtol=1e-4,
    )


def test_prompt_longer_than_context(tiny_gpt2):
    dicts = random_transcoders(tiny_gpt2, "relu")
    from replacement.errors import SparseCircuitsError

    with pytest.raises(SparseCircuitsError, match="n_ctx=64"):
        attribute(tiny_gpt2, dicts, torch.zeros(65, dtype=torch.long), verbose=False)


def test_default_model_edges_equal_interventions(default_model):
    dicts = random_transcoders(default_model, "topk", skip=True, n_features=256, k=8)
    graph = attribute(
        default_model,
        dicts,
        "import os\nimport sys\n\ndef main",
        verbose=False,
        max_feature_nodes=64,
        batch_size=32,
    )
    feats, errors, tokens = graph.find("feature"), graph.find("error"), graph.find("token")
    sources = [feats[0], feats[10], feats[-1], errors[3], tokens[2], tokens[-1]]
    # float32 model: a looser but still tight tolerance
    rows, targets = _targets(graph, default_model)
    for s in sources:
        eff = frozen_effect(default_model, dicts, graph.tokens, _source(graph, s), 1.0, targets)
        pred = graph.adjacency[rows, s].double()
        assert (eff - pred).abs().max() <= 2e-3 * max(eff.abs().max(), 1e-2)


def test_sae_edges_are_local_linear_estimates(model64):
    """SAEs at the MLP output: the target's own MLP is differentiated through, so an edge is
    the derivative of the effect (checked with a small finite difference)."""
    from replacement.dictionary import Dictionary

    gen = torch.Generator().manual_seed(3)
    d_model = model64.cfg.d_model
    saes = []
    for layer in range(model64.cfg.n_layers):
        sae = Dictionary(d_model, d_model, 48, f"blocks.{layer}.hook_mlp_out", dtype=torch.float64)
        with torch.no_grad():
            sae.W_enc.copy_(torch.randn(d_model, 48, generator=gen, dtype=torch.float64))
            sae.W_dec.copy_(sae.W_enc.T / sae.W_enc.norm(dim=0)[:, None])
            sae.b_enc.fill_(0.3)
        saes.append(sae.eval())
    graph = attribute(model64, saes, PROMPT, batch_size=16, verbose=False)
    rows, targets = _targets(graph, model64)
    feats = [i for i in graph.find("feature") if graph.node_layer[i] == 0]
    for s in (feats[0], graph.find("token")[2]):
        eff = frozen_effect(model64, saes, graph.tokens, _source(graph, s), 1e-6, targets)
        pred = graph.adjacency[rows, s].double()
        assert eff.abs().max() > 1e-3
        assert (eff - pred).abs().max() <= 1e-3 * eff.abs().max()


def test_offload_and_wide_dictionary_paths_agree(tiny_gpt2, monkeypatch):
    """Rows kept on the device, and decoder dot products gathered per active feature (the
    path for wide dictionaries), give the same graph; token ids without BOS get it."""
    from circuits import sources

    dicts = random_transcoders(tiny_gpt2, "topk", skip=True, k=6)
    ref = attribute(tiny_gpt2, dicts, PROMPT, batch_size=16, verbose=False)
    monkeypatch.setattr(sources, "DENSE_DOT_LIMIT", 0)
    other = attribute(
        tiny_gpt2, dicts, ref.tokens[1:], batch_size=16, verbose=False, offload_rows_to_cpu=False
    )
    assert torch.equal(other.tokens, ref.tokens)
    assert other.node_label == ref.node_label
    torch.testing.assert_close(other.adjacency, ref.adjacency, rtol=1e-5, atol=1e-6)
    assert other.adjacency.device.type == "cpu"


def test_bad_arguments(tiny_gpt2):
    from replacement.errors import SparseCircuitsError

    dicts = random_transcoders(tiny_gpt2, "relu")
    with pytest.raises(SparseCircuitsError, match="two dictionaries write to"):
        attribute(tiny_gpt2, [dicts[0], dicts[0]], PROMPT, verbose=False)
    with pytest.raises(SparseCircuitsError, match=r"expected \(32,\)"):
        attribute(tiny_gpt2, dicts, PROMPT, verbose=False, target_direction=torch.ones(5))
    with pytest.raises(SparseCircuitsError, match="exactly one"):
        attribute(tiny_gpt2, dicts, PROMPT, verbose=False, target_tokens=["def add"])
