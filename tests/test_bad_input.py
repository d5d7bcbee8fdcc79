"""User errors give clear exceptions naming the file or hook and what was expected."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from replacement.dictionary import Dictionary
from replacement.errors import DictionaryFileError, HookError, ShapeError, SparseCircuitsError
from replacement.formats.detect import load_dictionary
from replacement.formats.native import save_dictionary
from replacement.loss import spliced_loss
from replacement.splice import splice

TOKENS = torch.randint(1, 300, (1, 8), generator=torch.Generator().manual_seed(3))


def test_width_mismatch(tiny_gpt2):
    d = Dictionary(16, 32, 8, "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out")
    with pytest.raises(ShapeError, match=r"d_in=16.*blocks.0.ln2.hook_normalized.*d_model=32"):
        with splice(tiny_gpt2, [d]):
            pass
    d = Dictionary(32, 20, 8, "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out")
    with pytest.raises(ShapeError, match="d_out=20"):
        spliced_loss(tiny_gpt2, [d], TOKENS, verbose=False)


def test_missing_hook(tiny_gpt2):
    d = Dictionary(32, 32, 8, "blocks.7.hook_resid_pre")
    with pytest.raises(HookError, match=r"blocks.7.hook_resid_pre.*2 layers"):
        with splice(tiny_gpt2, [d]):
            pass


def test_dictionary_for_another_model(tiny_gpt2):
    d = Dictionary(32, 32, 8, "blocks.0.hook_resid_pre", model_name="gpt2-small")
    name = tiny_gpt2.cfg.model_name
    # a name alone proves nothing (widths and hooks are checked): a warning, not an error
    with pytest.warns(UserWarning, match=rf"gpt2-small.*{name}"):
        with splice(tiny_gpt2, [d]):
            pass
    with splice(tiny_gpt2, [d], check_model=False):
        tiny_gpt2(TOKENS)


def _saved(tmp_path):
    d = Dictionary(4, 4, 6, "blocks.0.hook_resid_pre")
    save_dictionary(d, tmp_path / "d")
    return tmp_path / "d.safetensors", tmp_path / "d.json"


def test_nan_weights_in_files(tmp_path):
    tensors_path, _ = _saved(tmp_path)
    bad = {
        "W_enc": torch.full((4, 6), float("nan")),
        "b_enc": torch.zeros(6),
        "W_dec": torch.zeros(6, 4),
        "b_dec": torch.zeros(4),
    }
    save_file(bad, str(tensors_path))
    with pytest.raises(SparseCircuitsError, match="W_enc.*NaN"):
        load_dictionary(tmp_path / "d")
    folder = tmp_path / "sae"
    folder.mkdir()
    bad["b_dec"] = torch.tensor([0.0, float("inf"), 0.0, 0.0])
    bad["W_enc"] = torch.zeros(4, 6)
    save_file(bad, str(folder / "sae_weights.safetensors"))
    cfg = {
        "architecture": "standard",
        "d_in": 4,
        "d_sae": 6,
        "hook_name": "blocks.0.hook_resid_pre",
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(DictionaryFileError, match=r"sae_weights.safetensors.*b_dec.*NaN/inf"):
        load_dictionary(folder)


def test_missing_key_missing_file_corrupt_file(tmp_path):
    folder = tmp_path / "h.0"
    folder.mkdir()
    save_file(
        {"encoder.weight": torch.zeros(6, 4), "W_dec": torch.zeros(6, 4), "b_dec": torch.zeros(4)},
        str(folder / "sae.safetensors"),
    )
    (folder / "cfg.json").write_text(json.dumps({"k": 2, "num_latents": 6, "d_in": 4}))
    with pytest.raises(DictionaryFileError, match=r"sae.safetensors.*'encoder.bias'.*\[6\]"):
        load_dictionary(folder)
    with pytest.raises(DictionaryFileError, match="does not exist"):
        load_dictionary(tmp_path / "nothing_here")
    tensors_path, _ = _saved(tmp_path)
    tensors_path.write_bytes(b"\x00\x01 definitely not safetensors")
    with pytest.raises(DictionaryFileError, match=r"d.safetensors.*not a valid safetensors"):
        load_dictionary(tmp_path / "d")
    tensors_path.unlink()
    with pytest.raises(DictionaryFileError, match=r"d.safetensors.*does not exist"):
        load_dictionary(tmp_path / "d.json")
    (tmp_path / "cfg_only").mkdir()
    (tmp_path / "cfg_only" / "cfg.json").write_text("{not json")
    with pytest.raises(DictionaryFileError, match="no dictionary in a known layout"):
        load_dictionary(tmp_path / "cfg_only")


def test_dtype_and_device_are_converted(tiny_gpt2, tmp_path):
    d = Dictionary(32, 32, 8, "blocks.0.hook_resid_pre", dtype=torch.float64)
    save_dictionary(d, tmp_path / "x")
    loaded = load_dictionary(tmp_path / "x", model=tiny_gpt2, dtype=torch.bfloat16)
    assert loaded.W_enc.dtype == torch.bfloat16
    base = tiny_gpt2(TOKENS)
    with splice(tiny_gpt2, [loaded], error_term=True):
        torch.testing.assert_close(tiny_gpt2(TOKENS), base, atol=1e-5, rtol=0)
    with pytest.raises(HookError):
        load_dictionary(tmp_path / "x", model=tiny_gpt2, hooks="blocks.9.hook_resid_pre")


def test_too_long_tokens(tiny_gpt2):
    d = Dictionary(32, 32, 8, "blocks.0.hook_resid_pre")
    with pytest.raises(ShapeError, match="n_ctx"):
        spliced_loss(tiny_gpt2, [d], torch.zeros(1, 65, dtype=torch.long), verbose=False)
