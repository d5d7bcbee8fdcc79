"""Cross-layer transcoders: splicing (exact with error term, hand computation without), formats."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import save_file

from replacement.crosslayer import CrossLayerTranscoder, load_crosslayer, save_crosslayer
from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError
from replacement.formats.detect import load_dictionary
from replacement.splice import splice

TOKENS = torch.randint(1, 300, (2, 10), generator=torch.Generator().manual_seed(1))


def _clt(skip=False, activation="relu", seed=0):
    torch.manual_seed(seed)
    clt = CrossLayerTranscoder(2, 32, [40, 24], activation, skip=skip)
    with torch.no_grad():
        for p in clt.parameters():
            p.normal_(0, 0.2)
    return clt


def _hand(model, clt_tensors, skip):
    """Splice by hand with raw tensors: layer l's mlp_out = sum_{s<=l} relu(x_s W_s + b_s) D[s][l-s]."""
    W_enc, b_enc, W_dec, b_dec, W_skip = clt_tensors
    acts, xs = {}, {}

    def read(layer):
        def fn(act, hook):
            xs[layer] = act
            acts[layer] = torch.relu(act @ W_enc[layer] + b_enc[layer])
            return act

        return fn

    def write(layer):
        def fn(act, hook):
            out = b_dec[layer] + sum(acts[s] @ W_dec[s][layer - s] for s in range(layer + 1))
            return out + (xs[layer] @ W_skip[layer] if skip else 0)

        return fn

    hooks = []
    for layer in range(2):
        hooks += [
            (f"blocks.{layer}.ln2.hook_normalized", read(layer)),
            (f"blocks.{layer}.hook_mlp_out", write(layer)),
        ]
    return model.run_with_hooks(TOKENS, fwd_hooks=hooks)


def _raw(clt):
    W_dec = [[w.detach() for w in row] for row in clt.W_dec]
    skip = clt.W_skip.detach() if clt.W_skip is not None else None
    return (
        [w.detach() for w in clt.W_enc],
        [b.detach() for b in clt.b_enc],
        W_dec,
        clt.b_dec.detach(),
        skip,
    )


@pytest.mark.parametrize("skip", [False, True])
def test_splice_clt(tiny_model, skip):
    clt = _clt(skip)
    base = tiny_model(TOKENS)
    with splice(tiny_model, [clt], error_term=True):
        torch.testing.assert_close(tiny_model(TOKENS), base, atol=1e-5, rtol=0)
    with splice(tiny_model, clt, record=True, keep_bos=False) as state:
        out = tiny_model(TOKENS)
    torch.testing.assert_close(out, _hand(tiny_model, _raw(clt), skip), atol=1e-5, rtol=1e-5)
    with splice(tiny_model, clt, record=True) as kept:
        tiny_model(TOKENS)
    for hook, recon in kept.recons.items():  # BOS keeps the model's own output
        assert torch.equal(recon[:, 0], kept.targets[hook][:, 0])
    assert (out - base).abs().max() > 1e-3
    assert state.acts["blocks.1.hook_mlp_out"].shape == (*TOKENS.shape, 24)
    torch.testing.assert_close(tiny_model(TOKENS), base)  # hooks gone


def test_clt_with_other_dictionaries_and_overlap(tiny_gpt2):
    clt = _clt()
    sae = Dictionary(32, 32, 16, "blocks.0.hook_resid_pre")
    base = tiny_gpt2(TOKENS)
    with splice(tiny_gpt2, [sae, clt], error_term=True):
        torch.testing.assert_close(tiny_gpt2(TOKENS), base, atol=1e-5, rtol=0)
    clash = Dictionary(32, 32, 16, "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")
    with pytest.raises(SparseCircuitsError, match="blocks.1.hook_mlp_out"):
        with splice(tiny_gpt2, [clash, clt]):
            pass


def test_clt_trained_under_another_processing_is_refused_by_splice(tiny_gpt2):
    """A CLT that records the unprocessed model's activations must not silently splice into
    the folded one (as a per-layer dictionary would not)."""
    from replacement.processing import ProcessingError, model_processing

    clt = _clt()
    have = model_processing(tiny_gpt2)
    clt.metadata["processing"] = have
    with splice(tiny_gpt2, clt):
        tiny_gpt2(TOKENS)
    clt.metadata["processing"] = "none" if have != "none" else "folded"
    with pytest.raises(ProcessingError, match="processing"):
        with splice(tiny_gpt2, clt):
            pass


def test_native_round_trip(tmp_path):
    clt = _clt(skip=True, activation="jumprelu")
    save_crosslayer(clt, tmp_path / "clt")
    again = load_dictionary(tmp_path / "clt.json")
    assert isinstance(again, CrossLayerTranscoder)
    xs = [torch.randn(5, 32) for _ in range(2)]
    for a, b in zip(again(xs), clt(xs), strict=True):
        torch.testing.assert_close(a, b)
    assert load_crosslayer(tmp_path / "clt").n_features == [40, 24]


def test_circuit_tracer_clt_layout(tmp_path):
    n_layers, F, d = 3, 12, 32
    g = torch.Generator().manual_seed(0)
    raw = []
    for i in range(n_layers):
        enc = {
            f"W_enc_{i}": torch.randn(F, d, generator=g),
            f"b_enc_{i}": torch.randn(F, generator=g),
            f"b_dec_{i}": torch.randn(d, generator=g),
            f"threshold_{i}": torch.rand(F, generator=g),
            f"W_skip_{i}": torch.randn(d, d, generator=g),
        }
        dec = {f"W_dec_{i}": torch.randn(F, n_layers - i, d, generator=g)}
        save_file(enc, str(tmp_path / f"W_enc_{i}.safetensors"))
        save_file(dec, str(tmp_path / f"W_dec_{i}.safetensors"))
        raw.append(enc | dec)
    cfg = {
        "model_kind": "cross_layer_transcoder",
        "feature_input_hook": "hook_resid_mid",
        "feature_output_hook": "hook_mlp_out",
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    clt = load_dictionary(tmp_path)
    assert (
        clt.in_hook(2) == "blocks.2.hook_resid_mid" and clt.out_hook(0) == "blocks.0.hook_mlp_out"
    )
    xs = [torch.randn(4, d, generator=g) for _ in range(n_layers)]
    acts = []
    for i in range(n_layers):
        pre = xs[i] @ raw[i][f"W_enc_{i}"].T + raw[i][f"b_enc_{i}"]
        acts.append(pre * (pre > raw[i][f"threshold_{i}"]))
    got = clt(xs)
    for target in range(n_layers):
        expected = raw[target][f"b_dec_{target}"] + xs[target] @ raw[target][f"W_skip_{target}"]
        for src in range(target + 1):
            expected = expected + acts[src] @ raw[src][f"W_dec_{src}"][:, target - src]
        torch.testing.assert_close(got[target], expected, atol=1e-4, rtol=1e-5)
