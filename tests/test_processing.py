"""Model processing: hooks of an unprocessed model equal Hugging Face's, dictionaries trained under
one processing are converted exactly to the other (or refused with the call to make), and
attribution, interventions, virtual weights and the spliced loss are exact under both, on a
LayerNorm GPT-2 and an RMSNorm Llama whose norm weights and biases are not the identity.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from circuits.attribution.attribute import attribute
from circuits.invariant.virtual_weights import virtual_weights
from replacement import Dictionary, load_model, spliced_loss
from replacement.formats.detect import _fit_to_model
from replacement.processing import ProcessingError, choose_processing
from replacement.splice import same_model_name, splice
from tests.attribution_helpers import frozen_effects
from tests.test_attribution_exact import _source, _targets
from tests.tiny_models import make_gemma2, make_gpt2, make_llama

PROMPT = "def add(a, b):\n    return"


def _random_norms(hf: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Norm weights away from 1 and biases away from 0, so that folding them matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "ln" in name or "norm" in name:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return hf


@pytest.fixture(scope="module", params=["gpt2", "llama", "gemma2"])
def hf64(request, tiny_tokenizer):
    make = {"gpt2": make_gpt2, "llama": make_llama, "gemma2": make_gemma2}[request.param]
    return _random_norms(make(len(tiny_tokenizer), seed=2).double())


@pytest.fixture(scope="module")
def both(hf64, tiny_tokenizer):
    """The same weights loaded unprocessed and folded (each from its own copy)."""
    return {
        p: load_model(
            copy.deepcopy(hf64), tokenizer=tiny_tokenizer, dtype=torch.float64, processing=p
        )
        for p in ("none", "folded")
    }


def norm_output_transcoders(model, seed=0, n_features=40):
    """Skip transcoders reading the LayerNorm output `ln2.hook_out`, trained "unprocessed"."""
    gen = torch.Generator().manual_seed(seed)
    d = model.cfg.d_model
    out = []
    for layer in range(model.cfg.n_layers):
        tc = Dictionary(
            d,
            d,
            n_features,
            f"blocks.{layer}.ln2.hook_out",
            f"blocks.{layer}.hook_mlp_out",
            "relu",
            skip=True,
            metadata={"processing": "none"},
            dtype=torch.float64,
        )
        with torch.no_grad():
            tc.W_enc.copy_(torch.randn(d, n_features, generator=gen) / d**0.5)
            tc.b_enc.copy_(torch.rand(n_features, generator=gen) * 0.3)
            tc.W_dec.copy_(torch.randn(n_features, d, generator=gen) * 0.1)
            tc.b_dec.copy_(torch.randn(d, generator=gen) * 0.05)
            tc.W_skip.copy_(torch.randn(d, d, generator=gen) * 0.2 / d**0.5)
        out.append(tc.eval())
    return out


def fitted(model, dicts):
    return [_fit_to_model(copy.deepcopy(d), model, None) for d in dicts]


def test_unprocessed_hooks_equal_hugging_face(hf64, both):
    model = both["none"]
    ids = torch.tensor([[0, 5, 17, 42, 99, 7]])
    seen = {}
    body = hf64.transformer if hasattr(hf64, "transformer") else hf64.model
    layers = body.h if hasattr(body, "h") else body.layers
    handles = [
        layers[1].mlp.register_forward_hook(lambda m, i, o: seen.update(mlp_in=i[0], mlp_out=o)),
        layers[1].register_forward_pre_hook(lambda m, i: seen.update(resid=i[0])),
    ]
    try:
        with torch.no_grad():
            hf64(ids)
            _, cache = model.run_with_cache(ids)
    finally:
        for h in handles:
            h.remove()
    # (Llama's RMSNorm computes in float32 even in a float64 model)
    # Gemma's MLP output passes a norm before it is written: hook_mlp_out is after it
    post_norm = hasattr(layers[1], "post_feedforward_layernorm")
    for hook, key in (
        ("blocks.1.hook_resid_pre", "resid"),
        ("blocks.1.ln2.hook_out", "mlp_in"),
        ("blocks.1.mlp.hook_out" if post_norm else "blocks.1.hook_mlp_out", "mlp_out"),
    ):
        torch.testing.assert_close(cache[hook], seen[key], rtol=1e-5, atol=1e-6)
    assert model.sc_processing == "none" and both["folded"].sc_processing == "folded"


def test_norm_output_reader_converted_exactly_to_a_folded_model(both):
    dicts = norm_output_transcoders(both["none"])
    folded = fitted(both["folded"], dicts)
    assert folded[1].in_hook == "blocks.1.ln2.hook_normalized"
    assert folded[1].metadata["processing"] == "folded"
    ids = torch.tensor([[0, 5, 17, 42, 99, 7, 3, 11]])
    acts = {}
    for p, ds in (("none", dicts), ("folded", folded)):
        with splice(both[p], ds, record=True) as state, torch.no_grad():
            logits = both[p](ids)
        acts[p] = (logits, [state.acts[d.out_hook] for d in ds])
    torch.testing.assert_close(acts["none"][0], acts["folded"][0], rtol=1e-6, atol=1e-6)
    for a, b in zip(acts["none"][1], acts["folded"][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    loss = {
        p: spliced_loss(both[p], ds, ids, verbose=False)
        for p, ds in (("none", dicts), ("folded", folded))
    }
    assert loss["none"].rows[0].l0 == loss["folded"].rows[0].l0
    for key in ("ce_spliced", "kl", "recovered_zero"):
        # log-probabilities are taken in float32; the recovered share divides their rounding
        # by the ablation's CE gap (0.04 nats on the tiny Gemma-2)
        gap = abs(loss["none"].all.ce_zero_ablated - loss["none"].ce_original)
        tol = 1e-6 / min(gap, 1.0) if key == "recovered_zero" else 1e-6
        assert getattr(loss["none"].all, key) == pytest.approx(
            getattr(loss["folded"].all, key), rel=1e-5, abs=tol
        )


def _check_columns(model, dicts, graph):
    rows, targets = _targets(graph, model)
    feats, errors, tokens = graph.find("feature"), graph.find("error"), graph.find("token")
    sources = [feats[0], feats[-1], errors[len(errors) // 2], tokens[2]]
    effects = frozen_effects(
        model, dicts, graph.tokens, [_source(graph, s) for s in sources], 0.7, targets
    )
    predicted = graph.adjacency[rows][:, sources].T.double()
    scale = effects.abs().max()
    assert scale > 1e-3
    assert (effects - predicted).abs().max() <= 1e-4 * scale


def test_attribution_exact_and_equal_under_both_processings(both):
    dicts = norm_output_transcoders(both["none"])
    graphs = {}
    for p in ("none", "folded"):
        ds = fitted(both[p], dicts)
        graphs[p] = attribute(both[p], ds, PROMPT, batch_size=32, verbose=False)
        _check_columns(both[p], ds, graphs[p])
    a, b = graphs["none"], graphs["folded"]
    assert a.node_kind == b.node_kind and torch.equal(a.node_feature, b.node_feature)
    scale = a.adjacency.abs().max()
    assert (a.adjacency - b.adjacency).abs().max() <= 1e-6 * scale
    # the logit rows carry ln_f's weight: the unprocessed model's unembedding does not fold it
    logits = a.find("logit")
    assert a.adjacency[logits].abs().max() > 1e-3


def test_virtual_weights_equal_under_both_processings(both):
    dicts = norm_output_transcoders(both["none"])
    vw = {
        p: virtual_weights(fitted(both[p], dicts), both[p], 0, 1, include_attention=True).total
        for p in ("none", "folded")
    }
    assert vw["none"].abs().max() > 1e-3
    torch.testing.assert_close(vw["none"], vw["folded"], rtol=1e-6, atol=1e-8)


def _resid_sae(processing):
    return Dictionary(32, 32, 16, "blocks.1.hook_resid_pre", metadata={"processing": processing})


def test_refusals_name_the_call_to_make(both, tiny_gpt2_dir):
    uncentred_sae = _resid_sae("none")
    if both["none"].cfg.normalization_type.startswith("LN"):
        with pytest.raises(ProcessingError, match=r"load_model\(source, processing='none'\)"):
            _fit_to_model(copy.deepcopy(uncentred_sae), both["folded"], None)
        with pytest.raises(ProcessingError, match="load_dictionaries"):
            with splice(both["folded"], [uncentred_sae]):
                pass
    # the one-call path picks the processing the dictionaries need
    assert choose_processing([uncentred_sae, *norm_output_transcoders(both["none"])]) == "none"
    assert choose_processing([_resid_sae("folded")]) == "folded"
    model = load_model(tiny_gpt2_dir, for_dictionaries=[uncentred_sae])
    assert model.sc_processing == "none"
    assert load_model(tiny_gpt2_dir, for_dictionaries=[_resid_sae("folded")]).sc_processing == (
        "folded"
    )


def test_model_name_mismatch_warns(tiny_gpt2):
    assert same_model_name("data/tiny-gpt2", "tiny-gpt2")
    assert same_model_name("gpt2-small", "openai-community/gpt2")
    assert not same_model_name("gpt2", "pythia-70m")
    d = Dictionary(32, 32, 8, "blocks.0.hook_resid_pre", model_name="another-model")
    with pytest.warns(UserWarning, match="another-model"):
        with splice(tiny_gpt2, [d]):
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with splice(tiny_gpt2, [d], check_model=False):
            pass


def test_trace_and_global_refuse_width_mismatch_clearly(tiny_gpt2):
    from circuits.invariant.virtual_weights import virtual_weights as vw
    from replacement.errors import ShapeError

    wide = [
        Dictionary(48, 32, 8, f"blocks.{i}.ln2.hook_normalized", f"blocks.{i}.hook_mlp_out")
        for i in range(2)
    ]
    with pytest.raises(ShapeError, match=r"d_in=48.*d_model=32"):
        attribute(tiny_gpt2, wide, PROMPT, verbose=False)
    with pytest.raises(ShapeError, match=r"d_in=48.*d_model=32"):
        vw(wide, tiny_gpt2, 0, 1)


def test_native_files_record_processing_and_legacy_files_are_folded(tiny_gpt2, tmp_path):
    import json

    from replacement import load_dictionaries
    from replacement.formats.native import save_dictionary
    from training.config import TrainConfig
    from training.dictionary_factory import build_dictionary

    trained = build_dictionary(tiny_gpt2, TrainConfig(n_features=8, k=4), 0)
    assert trained.metadata["processing"] == tiny_gpt2.sc_processing == "none"
    path = save_dictionary(trained, tmp_path / "new" / "layer_0")
    assert load_dictionaries(path.parent, model=tiny_gpt2)[0].metadata["processing"] == "none"
    # a file from before processing was recorded was trained on a folded, centred model
    cfg = json.loads(path.read_text())
    del cfg["metadata"]["processing"]
    path.write_text(json.dumps(cfg))
    assert load_dictionaries(path.parent)[0].metadata["processing"] == "folded"
    with pytest.raises(ProcessingError, match=r"processing='folded'"):
        load_dictionaries(path.parent, model=tiny_gpt2)


@pytest.mark.parametrize("processing", ["none", "folded"])
def test_constrained_intervention_moves_the_logit_by_the_edge(both, processing):
    from circuits.attribution.intervene import Intervention, intervene

    model = both[processing]
    dicts = fitted(model, norm_output_transcoders(both["none"]))
    graph = attribute(model, dicts, PROMPT, batch_size=32, verbose=False)
    top = graph.find("logit")[0]
    tok = int(graph.node_feature[top])
    layer0 = [i for i in graph.find("feature") if graph.node_layer[i] == 0]
    s = max(layer0, key=lambda i: abs(float(graph.adjacency[top, i])))
    iv = Intervention(0, int(graph.node_pos[s]), int(graph.node_feature[s]), scale=3.0)
    result = intervene(model, dicts, graph.tokens, [iv])
    logits, clean = result.logits[-1], result.clean_logits[-1]
    cap = getattr(model.cfg, "output_logits_soft_cap", 0.0) or 0.0
    if cap > 0:  # Gemma-2: edges are for the logits before cap * tanh(logit / cap)
        logits, clean = (cap * torch.atanh(x.double() / cap) for x in (logits, clean))
    change = logits - clean
    expected = 2.0 * graph.adjacency[top, s]  # scaling by 3 adds 2 a_s W_dec[s]
    assert abs(float(expected)) > 1e-3
    assert float(change[tok] - change.mean()) == pytest.approx(float(expected), rel=1e-5)


def test_gated_norm_output_reader_converted_exactly(both):
    from replacement.dictionary import GatedDictionary

    gen = torch.Generator().manual_seed(3)
    gated = GatedDictionary(
        32,
        32,
        24,
        "blocks.1.ln2.hook_out",
        "blocks.1.hook_mlp_out",
        metadata={"processing": "none"},
        dtype=torch.float64,
    )
    with torch.no_grad():
        for p in gated.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    (converted,) = fitted(both["folded"], [gated])
    ids = torch.tensor([[0, 5, 17, 42, 99, 7]])
    x_none = both["none"].run_with_cache(ids)[1]["blocks.1.ln2.hook_out"]
    x_folded = both["folded"].run_with_cache(ids)[1]["blocks.1.ln2.hook_normalized"]
    expected = gated.encode(x_none)
    assert (expected > 0).any()
    torch.testing.assert_close(converted.encode(x_folded), expected, rtol=1e-6, atol=1e-6)
