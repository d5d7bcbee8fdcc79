"""Loaders of other tools' layouts against independent computations from the raw tensors."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import save_file

from replacement.dictionary import Dictionary
from replacement.errors import DictionaryFileError
from replacement.formats import native
from replacement.formats.detect import load_dictionaries, load_dictionary
from replacement.formats.native import load_native, save_dictionary

D, F = 8, 24


_GEN = torch.Generator().manual_seed(0)


def _t(*shape):
    return torch.randn(*shape, generator=_GEN) * 0.5


def _write_saelens(folder, arch, tensors, **cfg):
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    base = {"architecture": arch, "d_in": D, "d_sae": F, "apply_b_dec_to_input": True}
    base["metadata"] = {"hook_name": "blocks.0.hook_resid_pre", "model_name": "m"}
    (folder / "cfg.json").write_text(json.dumps(base | cfg))
    return folder


X = torch.randn(30, D, generator=torch.Generator().manual_seed(99))


def test_saelens_standard(tmp_path):
    W_enc, b_enc, W_dec, b_dec = _t(D, F), _t(F), _t(F, D), _t(D)
    path = _write_saelens(
        tmp_path / "s", "standard", dict(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec)
    )
    d = load_dictionary(path)
    expected = torch.relu((X - b_dec) @ W_enc + b_enc) @ W_dec + b_dec
    torch.testing.assert_close(d(X), expected)
    assert (d.in_hook, d.out_hook, d.model_name) == ("blocks.0.hook_resid_pre",) * 2 + ("m",)


def test_saelens_gated_jumprelu_topk(tmp_path):
    W, b_gate, b_mag, r_mag, W_dec, b_dec = _t(D, F), _t(F), _t(F), _t(F), _t(F, D), _t(D)
    g = load_dictionary(
        _write_saelens(
            tmp_path / "g",
            "gated",
            dict(W_enc=W, b_gate=b_gate, b_mag=b_mag, r_mag=r_mag, W_dec=W_dec, b_dec=b_dec),
        )
    )
    xc = X - b_dec
    acts = ((xc @ W + b_gate) > 0) * torch.relu(xc @ (W * r_mag.exp()) + b_mag)
    torch.testing.assert_close(g(X), acts @ W_dec + b_dec)

    threshold = _t(F).abs()
    threshold[0] = 0.0  # a zero threshold must load (log(0) is -inf)
    j = load_dictionary(
        _write_saelens(
            tmp_path / "j",
            "jumprelu",
            dict(W_enc=W, b_enc=b_gate, W_dec=W_dec, b_dec=b_dec, threshold=threshold),
            apply_b_dec_to_input=False,
        )
    )
    pre = X @ W + b_gate
    torch.testing.assert_close(j(X), (pre * (pre > threshold)) @ W_dec + b_dec)

    k = load_dictionary(
        _write_saelens(
            tmp_path / "k", "topk", dict(W_enc=W, b_enc=b_gate, W_dec=W_dec, b_dec=b_dec), k=3
        )
    )
    pre = (X - b_dec) @ W + b_gate
    top = pre.topk(3, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    torch.testing.assert_close(k(X), acts @ W_dec + b_dec)


def test_saelens_skip_transcoder_and_normalisation(tmp_path):
    W_enc, b_enc, W_dec, b_dec, W_skip = _t(D, F), _t(F), _t(F, 6), _t(6), _t(6, D)
    path = _write_saelens(
        tmp_path / "t",
        "skip_transcoder",
        dict(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec, W_skip=W_skip),
        d_out=6,
        apply_b_dec_to_input=False,
        hook_name_out="blocks.0.hook_mlp_out",
    )
    d = load_dictionary(path)
    expected = torch.relu(X @ W_enc + b_enc) @ W_dec + b_dec + X @ W_skip.T
    torch.testing.assert_close(d(X), expected)
    assert d.kind == "skip_transcoder" and d.out_hook == "blocks.0.hook_mlp_out"
    over = load_dictionary(path, hooks=("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"))
    assert over.in_hook == "blocks.1.ln2.hook_normalized"
    bad = _write_saelens(
        tmp_path / "n",
        "standard",
        dict(W_enc=W_enc, b_enc=b_enc, W_dec=_t(F, D), b_dec=_t(D)),
        normalize_activations="expected_average_only_in",
    )
    with pytest.raises(DictionaryFileError, match="normalize_activations"):
        load_dictionary(bad)


def _write_sparsify(folder, k, transcode, skip, d_out=D):
    folder.mkdir(parents=True)
    t = {
        "encoder.weight": _t(F, D),
        "encoder.bias": _t(F),
        "W_dec": _t(F, d_out),
        "b_dec": _t(d_out),
    }
    if skip:
        t["W_skip"] = _t(d_out, D)
    save_file(t, str(folder / "sae.safetensors"))
    cfg = dict(
        k=k, num_latents=F, expansion_factor=3, transcode=transcode, skip_connection=skip, d_in=D
    )
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return t


def _sparsify_expected(t, k, transcode):
    x = X if transcode else X - t["b_dec"]
    pre = torch.relu(x @ t["encoder.weight"].T + t["encoder.bias"])
    top = pre.topk(k, dim=-1)
    y = torch.zeros_like(pre).scatter(-1, top.indices, top.values) @ t["W_dec"] + t["b_dec"]
    return y + X @ t["W_skip"].T if "W_skip" in t else y


def test_sparsify_layouts_and_hook_mapping(tmp_path):
    root = tmp_path / "run"
    t_mlp = _write_sparsify(root / "layers.3.mlp", 4, True, True)
    t_res = _write_sparsify(root / "h.1", 5, False, False)
    mlp = load_dictionary(root / "layers.3.mlp")
    torch.testing.assert_close(mlp(X), _sparsify_expected(t_mlp, 4, True))
    assert (mlp.in_hook, mlp.out_hook) == ("blocks.3.ln2.hook_out", "blocks.3.hook_mlp_out")
    both = load_dictionaries(root)
    assert [d.out_hook for d in both] == ["blocks.1.hook_resid_post", "blocks.3.hook_mlp_out"]
    torch.testing.assert_close(both[0](X), _sparsify_expected(t_res, 5, False))
    over = load_dictionaries(root, hooks={"h.1": "blocks.1.hook_resid_pre"})
    assert over[0].in_hook == over[0].out_hook == "blocks.1.hook_resid_pre"


def _write_ct_set(folder, activation=None, k=None, n_layers=2, threshold=True, skip=True):
    folder.mkdir(parents=True)
    cfg = {
        "model_kind": "transcoder_set",
        "feature_input_hook": "ln2.hook_normalized",
        "feature_output_hook": "hook_mlp_out",
    }
    if activation:
        cfg |= {"activation": activation, "k": k}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    layers = []
    for i in range(n_layers):
        t = {"W_enc": _t(F, D), "W_dec": _t(F, D), "b_enc": _t(F), "b_dec": _t(D)}
        if threshold:
            t["activation_function.threshold"] = _t(F).abs()
        if skip:
            t["W_skip"] = _t(D, D)
        save_file(t, str(folder / f"layer_{i}.safetensors"))
        layers.append(t)
    return layers


def test_circuit_tracer_transcoder_set(tmp_path):
    layers = _write_ct_set(tmp_path / "ct")
    loaded = load_dictionaries(tmp_path / "ct")
    assert [d.in_hook for d in loaded] == [f"blocks.{i}.ln2.hook_out" for i in range(2)]
    for d, t in zip(loaded, layers, strict=True):
        pre = X @ t["W_enc"].T + t["b_enc"]
        acts = pre * (pre > t["activation_function.threshold"])
        expected = acts @ t["W_dec"] + t["b_dec"] + X @ t["W_skip"].T
        torch.testing.assert_close(d(X), expected)
    topk = _write_ct_set(tmp_path / "tk", "topk", 3, n_layers=1, threshold=False, skip=False)[0]
    d = load_dictionary(tmp_path / "tk")
    pre = X @ topk["W_enc"].T + topk["b_enc"]
    top = pre.topk(3, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    torch.testing.assert_close(d(X), acts @ topk["W_dec"] + topk["b_dec"])
    with pytest.raises(DictionaryFileError, match="holds 2 dictionaries"):
        load_dictionary(tmp_path / "ct")


def _native(seed=0, layer=0):
    torch.manual_seed(seed)
    d = Dictionary(
        D,
        D,
        F,
        f"blocks.{layer}.ln2.hook_normalized",
        f"blocks.{layer}.hook_mlp_out",
        "jumprelu",
        skip=True,
        model_name="m",
    )
    with torch.no_grad():
        for p in d.parameters():
            p.normal_()
    return d


def test_native_round_trip_and_folder(tmp_path):
    d = _native()
    save_dictionary(d, tmp_path / "set" / "layer_0")
    save_dictionary(_native(1, 1), tmp_path / "set" / "layer_1")
    again = load_dictionary(tmp_path / "set" / "layer_0.json", dtype=torch.float64)
    assert again.W_enc.dtype == torch.float64 and again.config()["kind"] == "skip_transcoder"
    torch.testing.assert_close(again(X.double()), d(X).double(), rtol=1e-4, atol=1e-5)
    assert torch.equal(load_native(tmp_path / "set" / "layer_0").W_dec, d.W_dec)
    both = load_dictionaries(tmp_path / "set")
    assert [x.out_hook for x in both] == ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]


def test_zoo_set_name(tmp_path, monkeypatch):
    from replacement import zoo

    save_dictionary(_native(), tmp_path / "dicts" / "myset" / "layer_0")
    monkeypatch.setattr(zoo, "DICTIONARY_DIR", tmp_path / "dicts")
    (d,) = load_dictionaries("myset")
    assert d.out_hook == "blocks.0.hook_mlp_out"
    with pytest.raises(DictionaryFileError, match="shipped"):
        load_dictionaries("nosuchset")


def test_failing_save_leaves_old_file_intact(tmp_path, monkeypatch):
    d = _native()
    save_dictionary(d, tmp_path / "x")
    before = (tmp_path / "x.safetensors").read_bytes()

    def broken(tensors, path, metadata=None):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(native, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_dictionary(_native(5), tmp_path / "x")
    assert (tmp_path / "x.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.safetensors"]
    torch.testing.assert_close(load_native(tmp_path / "x")(X), d(X))
