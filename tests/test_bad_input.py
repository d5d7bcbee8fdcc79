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


# ---- API input validation (issue 25): the CLI's error classes, before any work -------------
def _transcoders(model, seed: int = 0) -> list[Dictionary]:
    torch.manual_seed(seed)
    out = []
    for layer in range(model.cfg.n_layers):
        d = Dictionary(
            32, 32, 8, f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
        )
        with torch.no_grad():
            for p in d.parameters():
                p.normal_(0, 0.3)
        out.append(d)
    return out


def test_prompt_tensor_is_one_prompt_of_ids(tiny_gpt2):
    from circuits import attribute

    dicts = _transcoders(tiny_gpt2)
    ids = TOKENS[0, :6]
    for bad, what in (
        (torch.cat([TOKENS, TOKENS])[:, :6], r"\(2, 6\)"),  # two prompts, once flattened
        (torch.zeros(1, 2, 6, dtype=torch.long), r"\(1, 2, 6\)"),
        (ids.float(), "float32"),
    ):
        with pytest.raises(ShapeError, match=rf"\[n\] or \[1, n\].*{what}"):
            attribute(tiny_gpt2, dicts, bad, verbose=False)
    with pytest.raises(SparseCircuitsError, match="vocabulary has 300"):
        attribute(tiny_gpt2, dicts, torch.tensor([0, 5, 300]), verbose=False)
    one = attribute(tiny_gpt2, dicts, ids, verbose=False)
    row = attribute(tiny_gpt2, dicts, ids[None], verbose=False)
    assert torch.equal(one.tokens, row.tokens) and torch.equal(one.adjacency, row.adjacency)


def test_non_finite_weights_are_refused_at_splice(tiny_gpt2):
    from circuits import attribute
    from replacement.errors import NonFiniteError

    dicts = _transcoders(tiny_gpt2)
    with torch.no_grad():
        dicts[1].W_dec[3, 4] = float("nan")
    with pytest.raises(NonFiniteError, match=r"blocks.1.hook_mlp_out.*W_dec has 1 NaN/inf"):
        with splice(tiny_gpt2, dicts):
            pass
    with pytest.raises(NonFiniteError, match="W_dec"):
        attribute(tiny_gpt2, dicts, TOKENS[0, :6], verbose=False)
    with pytest.raises(NonFiniteError, match="W_dec"):
        spliced_loss(tiny_gpt2, dicts, TOKENS, verbose=False)
    with torch.no_grad():  # mended in place: checked again, accepted
        dicts[1].W_dec[3, 4] = 0.0
    with splice(tiny_gpt2, dicts):
        assert torch.isfinite(tiny_gpt2(TOKENS)).all()


def _edited_graph(tmp_path, edit_json=None, edit_tensors=None):
    from safetensors.torch import load_file

    from circuits import AttributionGraph
    from tests.test_graph_ops import hand_graph

    stem = tmp_path / "g"
    hand_graph().prune(0.5, 1.0).save(stem)
    meta = json.loads(stem.with_suffix(".json").read_text())
    if edit_json:
        edit_json(meta)
        stem.with_suffix(".json").write_text(json.dumps(meta))
    if edit_tensors:
        tensors = load_file(str(stem.with_suffix(".safetensors")))
        edit_tensors(tensors)
        save_file(tensors, str(stem.with_suffix(".safetensors")), {"pair_id": meta["pair_id"]})
    return AttributionGraph.load(stem)


def test_graph_load_checks_kinds_sizes_and_values(tmp_path):
    from replacement.errors import NonFiniteError

    def kind(meta):
        meta["node_kind"][0] = "neuron"

    def order(meta):
        meta["node_kind"][0], meta["node_kind"][-1] = meta["node_kind"][-1], meta["node_kind"][0]

    def label(meta):
        meta["node_label"].pop()

    def layer(t):
        t["node_layer"] = t["node_layer"][:-1].contiguous()

    def adjacency(t):
        t["adjacency"] = t["adjacency"][:-1].contiguous()

    def nan(t):
        t["adjacency"][0, 0] = float("nan")

    def position(t):
        t["node_pos"][0] = 99

    with pytest.raises(SparseCircuitsError, match=r"node kinds \['neuron'\]"):
        _edited_graph(tmp_path, kind)
    with pytest.raises(SparseCircuitsError, match="not in the order"):
        _edited_graph(tmp_path, order)
    with pytest.raises(ShapeError, match="node_label should list"):
        _edited_graph(tmp_path, label)
    with pytest.raises(ShapeError, match=r"node_layer has shape \(\d+,\)"):
        _edited_graph(tmp_path, edit_tensors=layer)
    with pytest.raises(ShapeError, match="adjacency has shape"):
        _edited_graph(tmp_path, edit_tensors=adjacency)
    with pytest.raises(NonFiniteError, match="adjacency holds NaN"):
        _edited_graph(tmp_path, edit_tensors=nan)
    with pytest.raises(ShapeError, match="node positions outside"):
        _edited_graph(tmp_path, edit_tensors=position)
    (tmp_path / "g.json").write_text('{"nodes": []}')  # another tool's graph JSON
    with pytest.raises(SparseCircuitsError, match="not a graph file"):
        from circuits import AttributionGraph

        AttributionGraph.load(tmp_path / "g")
    assert _edited_graph(tmp_path).n_nodes > 0  # the untouched save loads


def test_task_answers_are_text_not_ids(tmp_path):
    from analysis.tasks import TaskError, load_task, task_from_dicts

    pair = {"clean": "x = 1", "corrupt": "x = 2", "answer": " a", "wrong": " b"}
    for bad in (True, 1, None, [" a", 2]):
        with pytest.raises(TaskError, match=r"pair 0: answer .* answers are text"):
            task_from_dicts("t", [{**pair, "answer": bad}])
    path = tmp_path / "task.yaml"
    path.write_text("- {clean: 'is it', corrupt: 'is not', answer: true, wrong: false}\n")
    with pytest.raises(TaskError, match="answer True is bool.*quote numbers and true/false"):
        load_task(path)
    path.write_text("- {clean: 'is it', corrupt: 'is not', answer: ' true', wrong: ' false'}\n")
    assert load_task(path).answer == [" true"]


def test_a_bridge_load_model_did_not_make_has_unknown_processing(tiny_gpt2, monkeypatch):
    from replacement.processing import ProcessingError, model_processing

    d = Dictionary(32, 32, 8, "blocks.0.hook_resid_pre", metadata={"processing": "none"})
    assert model_processing(tiny_gpt2) == "none"
    monkeypatch.delattr(tiny_gpt2, "sc_processing")  # as if built by the user
    assert model_processing(tiny_gpt2) == "unknown"
    with pytest.raises(ProcessingError, match=r"not made by replacement.load_model.*sc_processing"):
        with splice(tiny_gpt2, [d]):
            pass
    tiny_gpt2.sc_processing = "none"  # stated by the user: accepted
    with splice(tiny_gpt2, [d]):
        tiny_gpt2(TOKENS)
