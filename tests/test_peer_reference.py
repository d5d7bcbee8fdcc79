"""Dictionaries written by the peers' own code, loaded the plain way, give the peers' numbers.

`tests/peer_reference/` holds a tiny GPT-2-style model folder, SAEs trained by SAELens 6.54,
skip transcoders in circuit-tracer 0.5's layout, and what those tools measured themselves
(SAELens' `run_evals` metrics, circuit-tracer's attribution graph); `make_reference.py` there
regenerates them in the peers' environments. Here the two-line load

    model = load_model(folder)
    dictionaries = load_dictionaries(path, model=model)

must reproduce them to 1e-4 relative, with no option: the model's processing, the hooks' TL4
meaning (circuit-tracer's `ln2.hook_normalized` is the LayerNorm output) and the model name
recorded by the peer (`tiny-gpt2`, not the folder as typed) are all handled by the loaders.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from circuits.attribution.attribute import attribute
from replacement import load_dictionaries, load_model, spliced_loss
from replacement.processing import ProcessingError

REF = Path(__file__).parent / "peer_reference"
MODEL_DIR = REF / "tiny-gpt2"
SAELENS = json.loads((REF / "saelens.json").read_text())


@pytest.fixture(scope="module")
def plain_model():
    return load_model(MODEL_DIR)


@pytest.fixture(scope="module")
def folded_model():
    return load_model(MODEL_DIR, processing="folded")


def _relative(ours: float, theirs: float) -> float:
    return abs(ours - theirs) / max(abs(theirs), 1e-6)


@pytest.mark.parametrize("name", sorted(SAELENS))
def test_saelens_metrics_from_the_plain_load(plain_model, name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dictionaries = load_dictionaries(REF / "saelens" / name, model=plain_model)
        tokens = load_file(str(REF / "tokens.safetensors"))["tokens"]
        report = spliced_loss(
            plain_model, dictionaries, tokens, verbose=False, batch_size=16, conventions="saelens"
        )
    assert not [w for w in caught if "records model" in str(w.message)]
    assert dictionaries[0].metadata["processing"] == "none"
    ours = report.rows[0].saelens
    theirs = SAELENS[name]["metrics"]
    compared = [k for k in theirs if k in ours]
    assert len(compared) >= 15
    worst = max(compared, key=lambda k: _relative(ours[k], theirs[k]))
    assert _relative(ours[worst], theirs[worst]) < 1e-4, (worst, ours[worst], theirs[worst])
    row = report.rows[0]  # the common fields are SAELens' figures too
    assert row.explained_variance == pytest.approx(theirs["explained_variance"], rel=1e-4)
    assert row.recovered_zero == pytest.approx(theirs["ce_loss_score"], rel=1e-4)


def test_saelens_resid_sae_refused_on_a_centred_model_with_the_call_to_make(folded_model):
    with pytest.raises(ProcessingError, match=r"load_model\(source, processing='none'\)"):
        load_dictionaries(REF / "saelens" / "resid_pre_1", model=folded_model)
    # the one-call path picks the processing the dictionaries were trained under
    sae = load_dictionaries(REF / "saelens" / "resid_pre_1")
    assert load_model(MODEL_DIR, for_dictionaries=sae).sc_processing == "none"


def _node_keys(graph) -> dict[tuple, int]:
    keys = {}
    for i, kind in enumerate(graph.node_kind):
        layer, pos = int(graph.node_layer[i]), int(graph.node_pos[i])
        feat = int(graph.node_feature[i])
        key = {
            "feature": ("f", layer, pos, feat),
            "error": ("e", layer, pos),
            "token": ("t", pos),
            "logit": ("l", feat),
        }[kind]
        keys[key] = i
    return keys


@pytest.mark.parametrize("processing", ["plain", "folded"])
def test_circuit_tracer_edges(plain_model, folded_model, processing):
    model = plain_model if processing == "plain" else folded_model
    transcoders = load_dictionaries(REF / "circuit_tracer", model=model)
    ref = load_file(str(REF / "circuit_tracer_graph.safetensors"))
    graph = attribute(
        model,
        transcoders,
        ref["input_tokens"],
        max_n_logits=5,
        desired_logit_prob=0.95,
        verbose=False,
    )
    assert graph.node_feature[graph.find("logit")].tolist() == ref["logit_tokens"].tolist()
    n_pos, n_layers = ref["input_tokens"].numel(), model.cfg.n_layers
    active = ref["active_features"][ref["selected_features"]]
    theirs = [("f", *map(int, row)) for row in active]
    theirs += [("e", layer, pos) for layer in range(n_layers) for pos in range(n_pos)]
    theirs += [("t", pos) for pos in range(n_pos)]
    theirs += [("l", int(t)) for t in ref["logit_tokens"]]
    ours = _node_keys(graph)
    # the same feature nodes with the same activations
    assert sorted(k for k in ours if k[0] == "f") == sorted(k for k in theirs if k[0] == "f")
    acts = torch.tensor([float(graph.node_activation[ours[k]]) for k in theirs[: len(active)]])
    torch.testing.assert_close(
        acts, ref["activation_values"][ref["selected_features"]], rtol=1e-4, atol=1e-5
    )
    # circuit-tracer's position-0 error nodes (ours has none) carry no edge
    shared = [j for j, k in enumerate(theirs) if k in ours]
    dropped = [j for j, k in enumerate(theirs) if k not in ours]
    assert all(theirs[j][0] == "e" and theirs[j][2] == 0 for j in dropped)
    assert float(ref["adjacency"][:, dropped].abs().max()) == 0.0
    a_theirs = ref["adjacency"][shared][:, shared].double()
    index = torch.tensor([ours[theirs[j]] for j in shared])
    a_ours = graph.adjacency[index][:, index].double()
    row_max = a_theirs.abs().amax(1, keepdim=True).clamp_min(1e-12)
    assert float(((a_ours - a_theirs).abs() / row_max).max()) < 1e-4


def test_evaluate_cli_token_file_and_saelens_conventions(tmp_path, capsys):
    from sparse_circuits_cli import main

    out = tmp_path / "report.json"
    base = ["evaluate", "--model", str(MODEL_DIR), "--quiet"]
    base += ["--dictionaries", str(REF / "saelens" / "resid_pre_1")]
    code = main(
        [
            *base,
            "--token-file",
            str(REF / "tokens.safetensors"),
            "--conventions",
            "saelens",
            "--batch-size",
            "16",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    row = json.loads(out.read_text())["rows"][0]
    theirs = SAELENS["resid_pre_1"]["metrics"]
    for key in ("explained_variance", "ce_loss_score", "kl_div_score", "l0", "l2_ratio"):
        assert row["saelens"][key] == pytest.approx(theirs[key], rel=1e-4)
    bad = tmp_path / "tokens.npy"
    bad.write_bytes(b"not numpy")
    code = main([*base, "--token-file", str(bad)])
    assert code == 1 and "token file" in capsys.readouterr().err


@pytest.mark.parametrize("processing", ["plain", "folded"])
def test_sparsify_transcoder_reads_and_writes_what_sparsify_does(
    plain_model, folded_model, processing
):
    from replacement import splice

    model = plain_model if processing == "plain" else folded_model
    (tc,) = load_dictionaries(REF / "sparsify", model=model)
    ref = load_file(str(REF / "sparsify_reference.safetensors"))
    tokens = load_file(str(REF / "tokens.safetensors"))["tokens"]
    with splice(model, [tc], record=True) as state, torch.no_grad():
        model(tokens)
    acts = state.acts[tc.out_hook][:, 1:].reshape(-1, tc.n_features)
    theirs = torch.zeros_like(acts).scatter(-1, ref["latent_indices"], ref["latent_acts"])
    torch.testing.assert_close(acts, theirs, rtol=1e-4, atol=1e-5)
    recon = state.recons[tc.out_hook][:, 1:].reshape(-1, tc.d_out)
    sae_out = ref["sae_out"]
    if processing == "folded":  # the centred model's MLP output is centred, and so is ours
        sae_out = sae_out - sae_out.mean(-1, keepdim=True)
    torch.testing.assert_close(recon, sae_out, rtol=1e-4, atol=1e-5)
    if processing == "plain":
        report = spliced_loss(model, [tc], tokens, verbose=False, ablations=())
        fvu = json.loads((REF / "sparsify.json").read_text())["fvu"]
        assert report.rows[0].fvu == pytest.approx(fvu, rel=1e-4)


def test_token_files_of_each_format_read_the_same_ids(tmp_path):
    import numpy as np

    from replacement.errors import SparseCircuitsError
    from replacement.evaluate_cli import read_token_file

    tokens = load_file(str(REF / "tokens.safetensors"))["tokens"]
    torch.save(tokens.int(), tmp_path / "t.pt")
    np.save(tmp_path / "t.npy", tokens.numpy())
    for name in ("t.pt", "t.npy"):
        assert torch.equal(read_token_file(tmp_path / name), tokens)
    assert torch.equal(read_token_file(REF / "tokens.safetensors"), tokens)
    torch.save(tokens.float(), tmp_path / "f.pt")
    with pytest.raises(SparseCircuitsError, match="integer ids"):
        read_token_file(tmp_path / "f.pt")
