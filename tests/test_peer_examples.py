"""The two peer-dictionary example scripts run on tiny files of the same layout.

`examples/gpt2_saelens.py` on the GPT-2-style folder and SAELens SAEs of `tests/peer_reference`;
`examples/llama_circuit_tracer.py` on a tiny Llama and a tiny Gemma-2 with transcoders written in
circuit-tracer's layout (TL2 hook names). Both print a clear message, and exit with 2, when weights are missing.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
REF = Path(__file__).parent / "peer_reference"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpt2_saelens_example(tmp_path, capsys):
    main = _script("gpt2_saelens").main
    args = ["--model", str(REF / "tiny-gpt2"), "--saes", str(REF / "saelens")]
    args += ["--tokens", str(REF / "tokens.safetensors"), "--prompt", "def add(a, b):"]
    args += ["--max-feature-nodes", "24"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    expected = json.loads((REF / "saelens.json").read_text())["resid_pre_1"]["metrics"]
    assert "model processing 'none'" in printed
    assert f"explained_variance {expected['explained_variance']:.4f}" in printed
    document = json.loads((tmp_path / "gpt2_saelens.json").read_text())
    assert document["nodes"] and document["links"]
    assert main(["--model", str(tmp_path / "nowhere"), "--saes", str(REF / "saelens")]) == 2
    assert "GPT-2 small not found" in capsys.readouterr().err


def _circuit_tracer_set(folder: Path, d: int, n_layers: int, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True)
    config = {
        "model_kind": "transcoder_set",
        "feature_input_hook": "ln2.hook_normalized",
        "feature_output_hook": "hook_mlp_out",
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    for layer in range(n_layers):
        tensors = {
            "W_enc": torch.randn(64, d, generator=gen) / d**0.5,
            "W_dec": torch.randn(64, d, generator=gen) * 0.1,
            "b_enc": torch.rand(64, generator=gen) * 0.2,
            "b_dec": torch.zeros(d),
            "W_skip": torch.randn(d, d, generator=gen) * 0.05,
        }
        save_file(tensors, str(folder / f"layer_{layer}.safetensors"))


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_llama_circuit_tracer_example(arch, request, tmp_path, capsys):
    """GemmaScope-style hooks on Llama and Gemma-2 (whose MLP output passes a norm first)."""
    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    main = _script("llama_circuit_tracer").main
    _circuit_tracer_set(tmp_path / "tcs", d=32, n_layers=2)
    args = ["--model", str(model_dir), "--transcoders", str(tmp_path / "tcs")]
    args += ["--max-feature-nodes", "24"]
    assert main([*args, "--prompt", "def add(a, b):", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "model processing 'none'" in printed
    # TL2's RMSNorm hooks hook_normalized before its weight (LayerNorm's after): on Llama the
    # TL2 name keeps its TL4 meaning
    assert "blocks.0.ln2.hook_normalized -> blocks.0.hook_mlp_out" in printed
    document = json.loads((tmp_path / "out" / "llama_circuit_tracer.json").read_text())
    assert document["nodes"] and document["links"]
    missing = ["--model", str(model_dir), "--transcoders", str(tmp_path / "none")]
    assert main(missing) == 2
    assert "circuit-tracer transcoder folder" in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _quiet_hf(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
