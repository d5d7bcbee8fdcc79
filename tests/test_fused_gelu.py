"""The fused tanh-GELU swap changes speed, not results: same function, same hooks, same logits."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM
from transformers.activations import NewGELUActivation

from replacement import load_model
from replacement.fused_gelu import FusedTanhGELU, fuse_tanh_gelu
from tests.tiny_models import make_gpt2, save_hf


def test_fused_gelu_is_the_same_function_in_float64():
    x = torch.linspace(-12, 12, 20001, dtype=torch.float64)
    assert torch.allclose(FusedTanhGELU()(x), NewGELUActivation()(x), rtol=0, atol=1e-12)


def test_load_model_swaps_every_gelu_new_and_keeps_logits_and_hooks(tmp_path, tiny_tokenizer):
    hf = make_gpt2(len(tiny_tokenizer), activation_function="gelu_new")
    folder = save_hf(hf, tiny_tokenizer, tmp_path / "gpt2")
    reference = AutoModelForCausalLM.from_pretrained(folder).eval()  # unswapped
    assert any(type(m) is NewGELUActivation for m in reference.modules())
    model = load_model(folder, processing="none")
    assert not any(type(m) is NewGELUActivation for m in model.modules())
    assert sum(type(m) is FusedTanhGELU for m in model.modules()) == hf.config.n_layer
    tokens = torch.tensor([[0, 5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        want = reference(tokens).logits
        logits, cache = model.run_with_cache(tokens)
    assert torch.allclose(logits, want, atol=1e-5)
    # mlp.hook_post still fires and holds GELU(pre) computed the unfused way
    pre, post = cache["blocks.0.mlp.hook_pre"], cache["blocks.0.mlp.hook_post"]
    assert torch.allclose(post, NewGELUActivation()(pre.double()).float(), atol=1e-6)


def test_fuse_counts_and_leaves_other_activations_alone():
    net = torch.nn.Sequential(NewGELUActivation(), torch.nn.GELU(), torch.nn.SiLU())
    assert fuse_tanh_gelu(net) == 1
    assert [type(m) for m in net] == [FusedTanhGELU, torch.nn.GELU, torch.nn.SiLU]
    assert fuse_tanh_gelu(net) == 0
