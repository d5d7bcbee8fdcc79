"""The linear attribution path (circuits.attribution.linear_rows) equals the autograd reference, and
cross-layer transcoders attribute exactly.

- every transcoder kind (ReLU, TopK, JumpReLU, gated; with and without W_skip; reading
  `ln2.hook_normalized`, `ln2.hook_out` or `hook_resid_mid`) on a LayerNorm GPT-2, an
  RMSNorm Llama with grouped-query attention, a Gemma-2 (norms with `1 + weight` before and
  after attention and MLP) and a Gemma-3 (plus query/key norms, frozen inside the patterns):
  the same graph to 1e-5 relative, unfolded and folded;
- norm weights that are not 1 (an unfolded model) are part of the map;
- SAEs fall back to the autograd path (their edges differentiate through MLPs);
- a cross-layer transcoder written in circuit-tracer's layout: every edge equals the effect
  of an intervention in the frozen model, on both paths.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import save_file

from circuits.attribution.attribute import attribute
from circuits.attribution.crosslayer_slices import expand_crosslayer
from replacement import load_model
from replacement.dictionary import Dictionary, GatedDictionary
from replacement.errors import SparseCircuitsError
from replacement.formats.detect import load_dictionary
from tests.attribution_helpers import random_transcoders
from tests.test_attribution_exact import PROMPT, check_columns
from tests.tiny_models import make_gemma2, make_gemma3, make_gpt2, make_llama

KINDS = [("relu", {}, True), ("topk", {"k": 6}, False), ("jumprelu", {}, True)]


@pytest.fixture(scope="module", params=["gpt2", "llama", "gemma2", "gemma3"])
def model64(request, tiny_tokenizer):
    make = {"gpt2": make_gpt2, "llama": make_llama, "gemma2": make_gemma2, "gemma3": make_gemma3}
    make = make[request.param]
    return load_model(
        make(len(tiny_tokenizer), seed=1).double(), tokenizer=tiny_tokenizer, dtype=torch.float64
    )


def assert_same_graph(model, dicts, **kw):
    fast = attribute(model, dicts, PROMPT, verbose=False, batch_size=24, **kw)
    ref = attribute(model, dicts, PROMPT, verbose=False, batch_size=24, method="autograd", **kw)
    assert fast.metadata["method"] == "linear" and ref.metadata["method"] == "autograd"
    assert fast.node_label == ref.node_label
    scale = ref.adjacency.abs().max()
    assert scale > 1e-2
    assert (fast.adjacency - ref.adjacency).abs().max() <= 1e-5 * scale
    return fast


@pytest.mark.parametrize("kind,params,skip", KINDS, ids=[k for k, _, _ in KINDS])
def test_linear_equals_autograd(model64, kind, params, skip):
    dicts = random_transcoders(model64, kind, skip=skip, **params)
    assert_same_graph(model64, dicts)


def test_patterns_stored_as_causal_bands_give_the_same_rows(model64, monkeypatch):
    """Bands of 3 keys (the prompt spans several, the last one partial) equal autograd."""
    import circuits.attribution.linear_rows as linear_rows

    monkeypatch.setattr(linear_rows, "PATTERN_BLOCK", 3)
    assert len(model64.to_tokens(PROMPT)[0]) % 3 != 0
    assert_same_graph(model64, random_transcoders(model64, "relu", skip=True, seed=2))


def test_gated_transcoders_and_other_reads(model64):
    """Gated activations, and transcoders reading ln2.hook_out or hook_resid_mid."""
    base = random_transcoders(model64, "relu", skip=True, seed=4)
    d = model64.cfg.d_model
    mixed = []
    for layer, tc in enumerate(base):
        if layer == 0:
            gated = GatedDictionary(
                d, d, tc.n_features, tc.in_hook, tc.out_hook, skip=True, dtype=torch.float64
            )
            gated.load_state_dict(tc.state_dict(), strict=False)
            mixed.append(gated.eval())
        else:
            tc.in_hook = f"blocks.{layer}.hook_resid_mid"
            mixed.append(tc)
    assert_same_graph(model64, mixed)
    for tc in base:
        tc.in_hook = tc.in_hook.replace("hook_resid_mid", "ln2.hook_out")
    base[0].in_hook = "blocks.0.ln2.hook_out"
    assert_same_graph(model64, base, max_feature_nodes=40)


def test_norm_weights_are_part_of_the_map(tiny_tokenizer):
    """Norm weights away from 1 (as in a model loaded without folding) change the edges; the
    linear path follows them."""
    model = load_model(
        make_gpt2(len(tiny_tokenizer), seed=2).double(),
        tokenizer=tiny_tokenizer,
        dtype=torch.float64,
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in model.blocks:
            for norm in (block.ln1, block.ln2):
                norm.w.copy_(1 + 0.5 * torch.randn(norm.w.shape, generator=gen, dtype=norm.w.dtype))
    dicts = random_transcoders(model, "relu", skip=True)
    for tc in dicts:  # a read after ln2's weight
        tc.in_hook = tc.in_hook.replace("hook_normalized", "hook_out")
    assert_same_graph(model, dicts, max_feature_nodes=60)


def test_folded_gemma_norms(tiny_tokenizer):
    """On a folded Gemma-2 the pre-norms' stored weight is 0 (an effective weight of 1 + 0) and
    the post-norms keep theirs: the linear path reads effective weights, as the model runs."""
    model = load_model(
        make_gemma2(len(tiny_tokenizer), seed=3).double(),
        tokenizer=tiny_tokenizer,
        dtype=torch.float64,
        processing="folded",
    )
    dicts = random_transcoders(model, "relu", skip=True, seed=2)
    dicts[1].in_hook = "blocks.1.ln2.hook_out"
    graph = assert_same_graph(model, dicts, max_feature_nodes=60)
    feats = [i for i in graph.find("feature") if graph.node_layer[i] == 0]
    check_columns(model, dicts, graph, [feats[0], feats[-1], graph.find("token")[2]])


def test_saes_fall_back_to_autograd(tiny_gpt2):
    d = tiny_gpt2.cfg.d_model
    saes = [Dictionary(d, d, 16, f"blocks.{i}.hook_mlp_out") for i in range(2)]
    graph = attribute(tiny_gpt2, saes, PROMPT, verbose=False)
    assert graph.metadata["method"] == "autograd"
    with pytest.raises(SparseCircuitsError, match="does not replace an MLP"):
        attribute(tiny_gpt2, saes, PROMPT, verbose=False, method="linear")
    half = random_transcoders(tiny_gpt2, "relu")[:1]  # layer 1's MLP stays live
    with pytest.raises(SparseCircuitsError, match=r"layers \[1\] have no transcoder"):
        attribute(tiny_gpt2, half, PROMPT, verbose=False, method="linear")
    with pytest.raises(SparseCircuitsError, match="expected 'auto'"):
        attribute(tiny_gpt2, half, PROMPT, verbose=False, method="fast")


def _write_circuit_tracer_clt(folder, n_layers, n_features, d, seed=0):
    """A cross-layer transcoder in circuit-tracer's file layout, about a fifth of features on."""
    g = torch.Generator().manual_seed(seed)
    for i in range(n_layers):
        enc = {
            f"W_enc_{i}": torch.randn(n_features, d, generator=g, dtype=torch.float64) / d**0.5,
            f"b_enc_{i}": torch.rand(n_features, generator=g, dtype=torch.float64) * 0.3,
            f"b_dec_{i}": torch.randn(d, generator=g, dtype=torch.float64) * 0.01,
            f"threshold_{i}": torch.full((n_features,), 0.05, dtype=torch.float64),
            f"W_skip_{i}": torch.randn(d, d, generator=g, dtype=torch.float64) * 0.2 / d**0.5,
        }
        dec = {f"W_dec_{i}": torch.randn(n_features, n_layers - i, d, generator=g) * 0.1}
        save_file(enc, str(folder / f"W_enc_{i}.safetensors"))
        save_file({k: v.double() for k, v in dec.items()}, str(folder / f"W_dec_{i}.safetensors"))
    cfg = {
        "model_kind": "cross_layer_transcoder",
        "feature_input_hook": "ln2.hook_normalized",
        "feature_output_hook": "hook_mlp_out",
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))


def _model_and_clt(make, folder, tokenizer):
    """A 3-layer float64 model and a CLT for it, written and read in circuit-tracer's layout."""
    model = load_model(
        make(len(tokenizer), seed=3, n_layers=3).double(), tokenizer=tokenizer, dtype=torch.float64
    )
    _write_circuit_tracer_clt(folder, 3, 40, model.cfg.d_model)
    # with the model: TL2's ln2.hook_normalized means another TL4 hook on LayerNorm and RMSNorm
    return model, load_dictionary(folder, model=model).eval()


def test_crosslayer_transcoder_edges_are_exact(tmp_path, tiny_tokenizer):
    """A 3-layer CLT from circuit-tracer's layout: features of layer 0 write to layers 0-2;
    every edge equals the measured effect of an intervention, on both paths."""
    model, clt = _model_and_clt(make_llama, tmp_path, tiny_tokenizer)
    graph = assert_same_graph(model, [clt])
    feats, errors, tokens = graph.find("feature"), graph.find("error"), graph.find("token")
    layer0 = [i for i in feats if graph.node_layer[i] == 0]
    layer1 = [i for i in feats if graph.node_layer[i] == 1]
    assert len(layer0) > 3 and len(layer1) > 3
    sources = [layer0[0], layer0[-1], layer1[0], errors[0], errors[-1], tokens[2]]
    check_columns(model, expand_crosslayer([clt]), graph, sources)
    # the later decoders matter: without them the edges of layer-0 features change
    cut = expand_crosslayer([clt])
    for piece in cut:
        piece.later_decoders = []
    cut_graph = attribute(model, cut, PROMPT, verbose=False)
    assert cut_graph.node_label == graph.node_label
    moved = cut_graph.adjacency[:, layer0] - graph.adjacency[:, layer0]
    assert moved.abs().max() > 1e-3 * graph.adjacency.abs().max()
    # interventions: switching a layer-0 feature off moves each logit by minus its edge
    from circuits.attribution.intervene import Intervention, intervene

    for s in (layer0[0], layer0[-1]):
        off = Intervention(0, int(graph.node_pos[s]), int(graph.node_feature[s]), value=0.0)
        result = intervene(model, clt, graph.tokens, [off])
        change = result.logits[-1] - result.clean_logits[-1]
        for row in graph.find("logit"):  # a logit node reads the demeaned logit
            moved = change[int(graph.node_feature[row])] - change.mean()
            torch.testing.assert_close(
                moved, -graph.adjacency[row, s].double(), rtol=1e-4, atol=1e-6
            )
    free = intervene(model, [clt], graph.tokens, [], constrained=False)
    torch.testing.assert_close(free.logits, free.clean_logits)


def test_crosslayer_virtual_weights_and_global_graph(tmp_path, tiny_tokenizer):
    """Virtual weights from a CLT's layer 0 to layer 2 sum its writes into layers 0 and 1,
    each through the paths from where it writes (checked against per-layer dictionaries
    carrying one decoder each); the global graph keeps the largest of them."""
    from circuits.invariant.global_graph import global_graph
    from circuits.invariant.virtual_weights import virtual_weights

    model, clt = _model_and_clt(make_gpt2, tmp_path, tiny_tokenizer)
    opts = {"include_attention": True}
    total = virtual_weights([clt], model, 0, 2, **opts).total
    expected = 0
    for m in (0, 1):  # layer 0's decoder into layer m, as the only decoder of a per-layer set
        slices = expand_crosslayer([clt])
        one = Dictionary(
            32, 32, 40, slices[m].in_hook, slices[m].out_hook, skip=True, dtype=torch.float64
        )
        with torch.no_grad():
            one.W_dec.copy_(clt.W_dec[0][m])
            one.W_skip.copy_(clt.W_skip[m])
        slices[m] = one
        expected = expected + virtual_weights(slices, model, m, 2, **opts).total
    torch.testing.assert_close(total, expected)
    own_only = virtual_weights(
        expand_crosslayer([clt])[:1]
        + [
            Dictionary(
                32,
                32,
                4,
                "blocks.1.ln2.hook_normalized",
                "blocks.1.hook_mlp_out",
                dtype=torch.float64,
            ),
            expand_crosslayer([clt])[2],
        ],
        model,
        0,
        2,
        **opts,
    ).total
    assert (total - own_only).abs().max() > 1e-3 * total.abs().max()
    graph = global_graph([clt], model, 0, 2, top_k=3, max_sources=None, **opts)
    rows, cols = graph.find("feature"), graph.find("feature")
    assert graph.adjacency.abs().max() > 0
    top = total.abs().max()
    torch.testing.assert_close(graph.adjacency[rows][:, cols].abs().max(), top.float())
