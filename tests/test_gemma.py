"""Gemma-2 (norms before and after attention and MLP, `1 + weight`, soft-capping) reads and
attributes correctly.

- what TransformerLens 4 hooks hold on Gemma-2, checked against the Hugging Face modules;
- peer dictionaries: TL2's `ln2.hook_normalized` (circuit-tracer's GemmaScope transcoders) is
  the RMSNorm's normalized input before its weight, TL4's `ln2.hook_normalized`, on unfolded and
  folded models; sparsify's `layers.l.mlp` / `self_attn` outputs are `mlp.hook_out` /
  `attn.hook_out`, before the norms after them; a dictionary loaded without the model is
  refused with the call to make, never silently misread;
- a transcoder writing before the post-MLP norm splices exactly and its edges equal
  interventions (the frozen post-norm is linear).
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from circuits.attribution.attribute import attribute
from replacement import load_model, spliced_loss
from replacement.formats.detect import load_dictionaries, load_model_and_dictionaries
from replacement.processing import ProcessingError
from replacement.splice import splice
from tests.attribution_helpers import random_transcoders
from tests.test_attribution_exact import PROMPT, check_columns
from tests.test_spliced_loss import _identity
from tests.tiny_models import make_gemma2

D, F = 32, 24


def _hf_activations(folder, tokens):
    """Inputs and outputs of layer 1's Hugging Face modules, and the logits."""
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    seen = {}
    layer = hf.model.layers[1]
    names = ["pre_feedforward_layernorm", "post_feedforward_layernorm", "mlp"]
    names += ["post_attention_layernorm", "self_attn"]

    def keep(name):
        def hook(module, args, kwargs, out):
            seen[name + ".in"] = (args[0] if args else kwargs["hidden_states"]).detach()
            seen[name] = (out[0] if isinstance(out, tuple) else out).detach()

        return hook

    for name in names:
        getattr(layer, name).register_forward_hook(keep(name), with_kwargs=True)
    layer.register_forward_hook(keep("layer"), with_kwargs=True)
    hf.model.embed_tokens.register_forward_hook(keep("embed"), with_kwargs=True)
    with torch.no_grad():
        seen["logits"] = hf(tokens).logits
    return hf, seen


def test_tl4_hooks_on_gemma2_equal_hugging_face(tiny_gemma2_dir, tiny_gemma2):
    tokens = torch.tensor([[0, 5, 17, 42, 9, 100, 3, 77, 8, 250, 11]])
    hf, seen = _hf_activations(tiny_gemma2_dir, tokens)
    with torch.no_grad():
        logits, cache = tiny_gemma2.run_with_cache(tokens)
    x = seen["pre_feedforward_layernorm.in"]
    norm = hf.model.layers[1].pre_feedforward_layernorm
    normalized = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)
    pairs = {
        "hook_embed": seen["embed"],  # scaled by sqrt(d_model), as Hugging Face does
        "blocks.1.ln2.hook_normalized": normalized,  # before (1 + weight)
        "blocks.1.ln2.hook_out": seen["pre_feedforward_layernorm"],  # the MLP's input
        "blocks.1.mlp.hook_out": seen["mlp"],  # the MLP's own output
        "blocks.1.hook_mlp_out": seen["post_feedforward_layernorm"],  # after the post-norm
        "blocks.1.attn.hook_out": seen["self_attn"],
        "blocks.1.hook_attn_out": seen["post_attention_layernorm"],
        "blocks.1.hook_resid_post": seen["layer"],
        "logits": seen["logits"],
    }
    for name, expected in pairs.items():
        got = logits if name == "logits" else cache[name]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=name)
    # the weight is 1 + stored weight, and it matters here (a test that could fail)
    w = 1.0 + norm.weight
    assert (w - 1).abs().max() > 0.1
    torch.testing.assert_close(normalized * w, seen["pre_feedforward_layernorm"])
    # logits are soft-capped: cap * tanh(ln_final.hook_out @ W_U / cap)
    raw = cache["ln_final.hook_out"] @ tiny_gemma2.W_U
    torch.testing.assert_close(logits, 30.0 * torch.tanh(raw / 30.0), rtol=1e-5, atol=1e-5)


def _circuit_tracer_set(folder, n_layers=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True)
    config = {
        "model_kind": "transcoder_set",
        "feature_input_hook": "ln2.hook_normalized",  # as GemmaScope's config.yaml
        "feature_output_hook": "hook_mlp_out",
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    for layer in range(n_layers):
        tensors = {
            "W_enc": torch.randn(F, D, generator=gen) / D**0.5,
            "W_dec": torch.randn(F, D, generator=gen) * 0.1,
            "b_enc": torch.rand(F, generator=gen) * 0.2,
            "b_dec": torch.zeros(D),
            "activation_function.threshold": torch.full((F,), 0.05),
        }
        save_file(tensors, str(folder / f"layer_{layer}.safetensors"))
    return folder


def test_circuit_tracer_gemma_transcoders_read_the_normalized_input(
    tmp_path, tiny_gemma2_dir, tiny_gemma2, tiny_gpt2, tiny_gpt2_dir
):
    folder = _circuit_tracer_set(tmp_path / "gemmascope")
    fitted = load_dictionaries(folder, model=tiny_gemma2)
    assert [d.in_hook for d in fitted] == [f"blocks.{i}.ln2.hook_normalized" for i in range(2)]
    assert [d.out_hook for d in fitted] == [f"blocks.{i}.hook_mlp_out" for i in range(2)]
    # a LayerNorm model keeps the earlier translation (TL2's hook after the weight and bias)
    gpt2 = load_dictionaries(folder, model=tiny_gpt2)
    assert [d.in_hook for d in gpt2] == [f"blocks.{i}.ln2.hook_out" for i in range(2)]
    # ... and a folded one reads hook_normalized with ln2's weight folded in, which is no
    # Gemma-style name to refuse
    gpt2_folded = load_model(tiny_gpt2_dir, processing="folded")
    on_gpt2_folded = load_dictionaries(folder, model=gpt2_folded)
    assert on_gpt2_folded[0].in_hook == "blocks.0.ln2.hook_normalized"
    with splice(gpt2_folded, on_gpt2_folded):
        gpt2_folded(torch.tensor([[0, 5, 17]]))
    # loaded without the model, the names are provisional: splicing refuses, naming the fix
    bare = load_dictionaries(folder)
    with pytest.raises(ProcessingError, match=r"load_dictionaries\(path, model=model\)"):
        with splice(tiny_gemma2, bare):
            pass
    with pytest.raises(ProcessingError, match="ln2.hook_normalized"):
        attribute(tiny_gemma2, bare, PROMPT, verbose=False)
    # fitted to a LayerNorm model and then used on Gemma: refused the same way
    with pytest.raises(ProcessingError, match="model with other norms"):
        with splice(tiny_gemma2, gpt2):
            pass
    with pytest.raises(ProcessingError, match="model with other norms"):
        with splice(tiny_gpt2, fitted):
            pass
    # the one-call path picks the unprocessed model and renames the hooks
    model, found = load_model_and_dictionaries(tiny_gemma2_dir, folder)
    assert model.sc_processing == "none"
    assert found[1].in_hook == "blocks.1.ln2.hook_normalized"
    # a folded model (pre-norm weights folded away) reads the same normalized input
    folded = load_model(tiny_gemma2_dir, processing="folded")
    on_folded = load_dictionaries(folder, model=folded)
    assert on_folded[1].in_hook == "blocks.1.ln2.hook_normalized"
    tokens = torch.tensor([[0, 5, 17, 42, 9, 100, 3]])
    acts = []
    for m, dicts in ((tiny_gemma2, fitted), (folded, on_folded)):
        with splice(m, dicts, record=True) as state:
            m(tokens)
        acts.append(state.acts["blocks.1.hook_mlp_out"])
    assert (acts[0] > 0).any()
    torch.testing.assert_close(acts[0], acts[1], rtol=1e-5, atol=1e-6)


def test_saelens_gemma_transcoder_reads_the_normalized_input(tmp_path, tiny_gemma2, tiny_gpt2):
    """SAELens runs TL2 too: an unprocessed run's `ln2.hook_normalized` on an RMSNorm model."""
    gen = torch.Generator().manual_seed(2)
    tensors = {
        "W_enc": torch.randn(D, F, generator=gen),
        "W_dec": torch.randn(F, D, generator=gen),
        "b_enc": torch.zeros(F),
        "b_dec": torch.zeros(D),
        "threshold": torch.full((F,), 0.1),
    }
    for kwargs, name in (({}, "none"), (None, "folded")):
        folder = tmp_path / name
        folder.mkdir()
        save_file(tensors, str(folder / "sae_weights.safetensors"))
        meta = {
            "hook_name": "blocks.0.ln2.hook_normalized",
            "hook_name_out": "blocks.0.hook_mlp_out",
        }
        if kwargs is not None:
            meta["model_from_pretrained_kwargs"] = kwargs
        cfg = {"architecture": "jumprelu_transcoder", "d_in": D, "d_sae": F, "metadata": meta}
        (folder / "cfg.json").write_text(json.dumps(cfg))
        tc = load_dictionaries(folder, model=tiny_gemma2)[0]
        assert tc.in_hook == "blocks.0.ln2.hook_normalized", name
    assert (
        load_dictionaries(tmp_path / "none", model=tiny_gpt2)[0].in_hook == "blocks.0.ln2.hook_out"
    )


def _sparsify(folder, transcode):
    gen = torch.Generator().manual_seed(1)
    folder.mkdir(parents=True)
    tensors = {
        "encoder.weight": torch.randn(F, D, generator=gen),
        "encoder.bias": torch.zeros(F),
        "W_dec": torch.randn(F, D, generator=gen) * 0.1,
        "b_dec": torch.zeros(D),
    }
    save_file(tensors, str(folder / "sae.safetensors"))
    cfg = {"k": 4, "num_latents": F, "transcode": transcode, "d_in": D}
    (folder / "cfg.json").write_text(json.dumps(cfg))


def test_sparsify_module_outputs_on_gemma(tmp_path, tiny_gemma2, tiny_gpt2):
    _sparsify(tmp_path / "run" / "layers.1.mlp", transcode=True)
    _sparsify(tmp_path / "attn" / "layers.0.self_attn", transcode=False)
    mlp = load_dictionaries(tmp_path / "run", model=tiny_gemma2)[0]
    assert (mlp.in_hook, mlp.out_hook) == ("blocks.1.ln2.hook_out", "blocks.1.mlp.hook_out")
    attn = load_dictionaries(tmp_path / "attn", model=tiny_gemma2)[0]
    assert attn.in_hook == attn.out_hook == "blocks.0.attn.hook_out"
    on_gpt2 = load_dictionaries(tmp_path / "run", model=tiny_gpt2)[0]
    assert on_gpt2.out_hook == "blocks.1.hook_mlp_out"


@pytest.fixture(scope="module")
def gemma64(tiny_tokenizer):
    return load_model(
        make_gemma2(len(tiny_tokenizer), seed=5).double(),
        tokenizer=tiny_tokenizer,
        dtype=torch.float64,
    )


def test_writing_before_the_post_norm_is_exact(gemma64):
    """Transcoders writing `mlp.hook_out` (sparsify's meaning on Gemma): the post-MLP norm sits
    between them and the residual stream. The error term restores the logits, and every edge
    equals an intervention (autograd path, the frozen post-norm scale is linear)."""
    dicts = random_transcoders(gemma64, "relu", skip=True, seed=1)
    for layer, tc in enumerate(dicts):
        tc.out_hook = f"blocks.{layer}.mlp.hook_out"
    tokens = torch.tensor([[0, 5, 17, 42, 9, 100, 3]])
    clean = gemma64(tokens)
    with splice(gemma64, dicts, error_term=True):
        torch.testing.assert_close(gemma64(tokens), clean)
    with splice(gemma64, dicts, error_term=False):
        assert (gemma64(tokens) - clean).abs().max() > 1e-3
    graph = attribute(gemma64, dicts, PROMPT, verbose=False, max_feature_nodes=64)
    assert graph.metadata["method"] == "autograd"
    feats, errors = graph.find("feature"), graph.find("error")
    layer0 = [i for i in feats if graph.node_layer[i] == 0]
    sources = [layer0[0], layer0[-1], errors[1], graph.find("token")[3]]
    check_columns(gemma64, dicts, graph, sources)


def test_exact_dictionaries_at_gemma_sites_lose_nothing(gemma64):
    """Identity SAEs at the raw MLP output, the post-norm output and the attention output:
    the spliced model is the model (spliced loss and KL zero; float64, so that rounding in the
    identity's shift does not count)."""
    tokens = torch.tensor([[0, 5, 17, 42, 9, 100, 3, 77], [0, 8, 250, 11, 3, 4, 5, 6]])
    hooks = ["blocks.0.mlp.hook_out", "blocks.1.hook_mlp_out", "blocks.1.hook_attn_out"]
    saes = [_identity(h).double() for h in hooks]
    report = spliced_loss(gemma64, saes, tokens, verbose=False)
    assert len(report.rows) == 4  # one per dictionary and "all"
    for row in report.rows:
        assert abs(row.ce_increase) < 1e-9 and abs(row.kl) < 1e-9
        assert row.name == "all" or abs(row.fvu) < 1e-9
