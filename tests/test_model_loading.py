"""load_model on tiny random GPT-2 and Llama folders, in-memory models, and bad input."""

from __future__ import annotations

import pytest
import torch

from replacement import check_hook, layer_hooks, load_model, to_tokens
from replacement.errors import HookError, ModelLoadError
from tests.tiny_models import make_gpt2, make_llama

IDS = torch.tensor([[0, 5, 17, 42, 99, 7, 3]])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_folder_logits_equal_hugging_face(arch, tiny_tokenizer, request):
    folder = request.getfixturevalue(f"tiny_{arch}_dir")
    bridge = request.getfixturevalue(f"tiny_{arch}")
    make = make_gpt2 if arch == "gpt2" else make_llama
    hf = make(len(tiny_tokenizer))
    with torch.no_grad():
        expected = hf(IDS).logits
        got = bridge(IDS)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert folder.is_dir()


def test_in_memory_model_with_tokenizer(tiny_tokenizer):
    hf = make_llama(len(tiny_tokenizer), seed=3)
    bridge = load_model(hf, tokenizer=tiny_tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(bridge(IDS), hf(IDS).logits, atol=1e-4, rtol=1e-4)


def test_in_memory_model_needs_tokenizer(tiny_tokenizer):
    with pytest.raises(ModelLoadError, match="tokenizer"):
        load_model(make_gpt2(len(tiny_tokenizer)))


def test_bos_prepended_exactly_once(tiny_gpt2):
    tokens = to_tokens(tiny_gpt2, "def add(a, b):")
    bos = tiny_gpt2.tokenizer.bos_token_id
    assert tokens[0, 0].item() == bos
    assert (tokens[0, 1:] != bos).all()
    plain = to_tokens(tiny_gpt2, "def add(a, b):", prepend_bos=False)
    assert torch.equal(plain[0], tokens[0, 1:])


def test_layer_hooks_exist_and_have_expected_shapes(tiny_model):
    for layer in range(tiny_model.cfg.n_layers):
        hooks = layer_hooks(layer)
        for name in hooks:
            assert check_hook(tiny_model, name) == name
    _, cache = tiny_model.run_with_cache(IDS)
    d = tiny_model.cfg.d_model
    hooks = layer_hooks(1)
    assert cache[hooks.resid_pre].shape == (1, 7, d)
    assert cache[hooks.mlp_in].shape == (1, 7, d)
    assert cache[hooks.mlp_out].shape == (1, 7, d)
    assert cache[hooks.attn_pattern].shape == (1, tiny_model.cfg.n_heads, 7, 7)
    assert cache[hooks.mlp_scale].shape == (1, 7, 1)
    # the residual stream adds up: resid_post = resid_mid + mlp_out
    torch.testing.assert_close(
        cache[hooks.resid_post], cache[hooks.resid_mid] + cache[hooks.mlp_out]
    )


def test_unknown_hook_lists_valid_names(tiny_gpt2):
    with pytest.raises(HookError) as info:
        check_hook(tiny_gpt2, "blocks.0.hook_mlp_output")
    message = str(info.value)
    assert "blocks.0.hook_mlp_out" in message
    assert "blocks.{l}.hook_resid_pre" in message
    with pytest.raises(HookError, match="2 layers"):
        check_hook(tiny_gpt2, "blocks.7.hook_mlp_out")


def test_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(tmp_path)


def test_corrupt_safetensors(tmp_path, tiny_gpt2_dir):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_gpt2_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00not a safetensors file")
    with pytest.raises(ModelLoadError, match="not a valid safetensors"):
        load_model(broken)
