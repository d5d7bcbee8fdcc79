"""Feature atlas: the streaming pass against a dense brute force, bands, labels, files, pages."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser

import pytest
import torch
from safetensors.torch import save_file

from circuits.attribution.attribute import attribute
from circuits.graph.export import validate
from circuits.views.html_page import write_html
from replacement.atlas import AtlasSettings, FeatureAtlas, build_atlas, feature_label
from replacement.atlas.build import stream_features
from replacement.atlas.card import token_display
from replacement.formats.native import save_dictionary
from replacement.hooks import hook_layer
from sparse_circuits_cli import main
from tests.attribution_helpers import random_transcoders
from tests.test_html_page import dump_dom, needs_chromium

N_ROWS, N_POS = 30, 20
SETTINGS = AtlasSettings(
    n_top=5,
    n_samples=12,
    window_before=3,
    window_after=2,
    per_band=2,
    batch_rows=7,
    n_logit_tokens=4,
    n_neighbours=3,
)


@pytest.fixture(scope="module")
def corpus(tiny_gpt2):
    gen = torch.Generator().manual_seed(11)
    rows = torch.randint(1, tiny_gpt2.cfg.d_vocab, (N_ROWS, N_POS), generator=gen)
    rows[:, 0] = tiny_gpt2.tokenizer.bos_token_id
    return rows


@pytest.fixture(scope="module")
def dictionaries(tiny_gpt2):
    return random_transcoders(tiny_gpt2, "topk", n_features=24, seed=5, k=5)


@pytest.fixture(scope="module")
def dense(tiny_gpt2, dictionaries, corpus):
    """Dense activations [rows, pos, F] of each dictionary, BOS zeroed: the brute force."""
    seen = {}
    hooks = [
        (d.in_hook, lambda act, hook, d=d: seen.__setitem__(d.out_hook, d.encode(act)))
        for d in dictionaries
    ]
    with torch.no_grad(), tiny_gpt2.hooks(fwd_hooks=hooks):
        tiny_gpt2(corpus)
    out = {}
    for d in dictionaries:
        acts = seen[d.out_hook].clone()
        acts[:, 0] = 0
        out[hook_layer(d.out_hook)] = acts
    return out


@pytest.fixture(scope="module")
def streams(tiny_gpt2, dictionaries, corpus):
    by_layer = {hook_layer(d.out_hook): d for d in dictionaries}
    return stream_features(tiny_gpt2, by_layer, corpus, SETTINGS, SETTINGS.batch_rows, False)


@pytest.fixture(scope="module")
def atlas(tiny_gpt2, dictionaries, corpus):
    return build_atlas(tiny_gpt2, dictionaries, corpus, SETTINGS, verbose=False)


def _window(acts_f, row, pos):
    """Brute-force window of one feature's dense activations [rows, pos] around (row, pos)."""
    out = torch.zeros(SETTINGS.window)
    for k, q in enumerate(range(pos - SETTINGS.window_before, pos + SETTINGS.window_after + 1)):
        if 1 <= q < acts_f.shape[1]:
            out[k] = acts_f[row, q]
    return out


def test_top_contexts_equal_the_dense_brute_force(streams, dense):
    for layer, acts in dense.items():
        top = streams[layer].top
        row_max, arg = acts.max(dim=1)  # [rows, F]; first position of the maximum
        for f in range(acts.shape[-1]):
            values, rows = row_max[:, f].sort(descending=True)
            alive = values > 0
            n = min(SETTINGS.n_top, int(alive.sum()))
            torch.testing.assert_close(top.value[:n, f], values[:n])
            assert top.row[:n, f].tolist() == rows[:n].tolist()
            assert top.pos[:n, f].tolist() == arg[rows[:n], f].tolist()
            assert (top.row[n:, f] == -1).all() and (top.value[n:, f] == 0).all()
            for j in range(n):
                expected = _window(acts[..., f], int(rows[j]), int(arg[rows[j], f]))
                torch.testing.assert_close(top.window[j, f], expected)


def test_frequency_mean_max_are_those_of_the_dense_activations(atlas, streams, dense):
    for layer, acts in dense.items():
        body = acts[:, 1:]  # BOS left out
        fired = body > 0
        frequency = fired.float().mean(dim=(0, 1))
        t = atlas.layers[layer].tensors
        torch.testing.assert_close(t["frequency"].float(), frequency, atol=1e-6, rtol=0)
        assert 0 < frequency.min() and frequency.max() < 1  # a real mix of firing rates
        mean = body.sum(dim=(0, 1)) / fired.sum(dim=(0, 1))
        torch.testing.assert_close(t["mean"].float(), mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(t["max"], body.amax(dim=(0, 1)))
        assert streams[layer].n_tokens == N_ROWS * (N_POS - 1)


def test_sample_and_quantile_examples_fall_in_their_bands(atlas, streams, dense):
    for layer, acts in dense.items():
        sample = streams[layer].sample
        got = sample.row >= 0
        # every sampled token is a firing token with its true activation and window
        for j, f in got.nonzero().tolist():
            row, pos = int(sample.row[j, f]), int(sample.pos[j, f])
            assert acts[row, pos, f] > 0
            assert float(sample.value[j, f]) == pytest.approx(float(acts[row, pos, f]))
            torch.testing.assert_close(sample.window[j, f], _window(acts[..., f], row, pos))
        # features firing more often than the sample size fill every slot
        fired = (acts > 0).sum(dim=(0, 1))
        assert got[:, fired >= SETTINGS.n_samples].all()

        t = atlas.layers[layer].tensors
        edges, values, rows = t["band_edges"], t["band_value"], t["band_row"]
        assert (edges[:, 1:] >= edges[:, :-1]).all()
        torch.testing.assert_close(edges[:, -1], t["max"])
        filled = 0
        for f in range(values.shape[0]):
            for b in range(values.shape[1]):
                for j in range(values.shape[2]):
                    if rows[f, b, j] >= 0:
                        assert edges[f, b] < values[f, b, j] <= edges[f, b + 1]
                        filled += 1
        assert filled > values.shape[0] * values.shape[1]  # most bands hold examples


def test_labels_are_deterministic(tiny_gpt2, dictionaries, corpus, atlas):
    again = build_atlas(tiny_gpt2, dictionaries, corpus, SETTINGS, verbose=False)
    for layer in atlas.layers:
        assert again.layers[layer].labels == atlas.layers[layer].labels
        assert all(label and label != "dead" for label in atlas.layers[layer].labels)
    vocab = ["<bos>", " return", "self", "if", "elif", "\n        "]
    assert feature_label([1, 1, 2], [3.0, 2.0, 1.0], [2], vocab) == "'return' -> self"
    assert feature_label([3, 4, 1], [1.0, 1.0, 0.5], [], vocab) == "'if'/'elif'"
    assert feature_label([5], [1.0], [5], vocab) == "'\\n+8sp' -> \\n+8sp"
    assert feature_label([], [], [2], vocab) == "dead"


def test_atlas_files_round_trip(atlas, dictionaries, tiny_gpt2, tmp_path):
    loaded = FeatureAtlas.load(atlas.save(tmp_path / "atlas"))
    other = random_transcoders(tiny_gpt2, "topk", n_features=24, seed=6, k=5)
    assert loaded.matches(dictionaries) and not loaded.matches(other)
    for layer in atlas.layers:
        for f in (0, 7):
            a, b = atlas.record(layer, f), loaded.record(layer, f)
            assert a["label"] == b["label"]
            assert [n[0] for n in a["neighbours"]] == [n[0] for n in b["neighbours"]]
            assert [c["tokens"] for c in a["top"]] == [c["tokens"] for c in b["top"]]
            assert [c["acts"] for c in a["top"]] == [c["acts"] for c in b["top"]]
            for x, y in zip(a["top"], b["top"], strict=True):
                assert x["value"] == pytest.approx(y["value"], rel=1e-3)
    (tmp_path / "atlas" / "atlas.safetensors").write_bytes(b"broken")
    with pytest.raises(Exception, match="corrupt"):
        FeatureAtlas.load(tmp_path / "atlas")


class _Contexts(HTMLParser):
    """Token texts and shading of each context line (`.sc-ctx`) of a card."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[list[tuple[str, str]]] = []
        self._tok: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if "sc-ctx" in classes:
            self.lines.append([])
        if "sc-tok" in classes:
            self._tok = attrs.get("style") or ""

    def handle_data(self, data):
        if self._tok is not None:
            self.lines[-1].append((data, self._tok))

    def handle_endtag(self, tag):
        self._tok = None


def test_card_shows_contexts_with_shading(atlas):
    record = atlas.record(1, 3)
    card = atlas[1, 3]._repr_html_()
    assert html.escape(record["label"]) in card
    parser = _Contexts()
    parser.feed(card)
    contexts = record["top"] + [c for band in record["bands"] for c in band]
    assert len(parser.lines) == len(contexts) > SETTINGS.n_top
    for line, ctx in zip(parser.lines, contexts, strict=True):
        assert [text for text, _ in line] == [token_display(atlas.vocab[t]) for t in ctx["tokens"]]
        # shaded exactly where the feature is active; the top context's centre at full strength
        assert [bool(style) for _, style in line] == [a > 0 for a in ctx["acts"]]
    assert "0.850" in parser.lines[0][record["top"][0]["centre"]][1]


# ---- where features are shown: graph labels, JSON export, pages ------------------------------
@pytest.fixture(scope="module")
def labelled(tiny_gpt2, dictionaries, atlas):
    graph = attribute(tiny_gpt2, dictionaries, "def f(x):\n    return x", verbose=False)
    return graph.prune(0.9, 0.98).with_atlas(atlas)


def test_graph_nodes_and_json_carry_the_labels(labelled, atlas):
    features = labelled.find("feature")
    assert features
    document = labelled.to_json(slug="atlas")  # validated against the schema
    validate(document)
    for i in features:
        layer, feature = int(labelled.node_layer[i]), int(labelled.node_feature[i])
        label = atlas.label(layer, feature)
        assert labelled.node_label[i] == f"{label} (L{layer} F{feature} @{labelled.node_pos[i]})"
        assert document["nodes"][i]["clerp"] == label


@needs_chromium
def test_clicking_a_feature_shows_its_card(labelled, atlas, tmp_path):
    i = labelled.find("feature")[0]
    layer, feature = int(labelled.node_layer[i]), int(labelled.node_feature[i])
    page = write_html(labelled, tmp_path / "g.html", atlas=atlas)
    data = _embedded(page.read_text(), "graph-data")
    assert set(data["cards"]) == {f"{lay}/{f}" for lay, _, f in labelled.feature_ids()}
    before = dump_dom(page, "", tmp_path)
    assert not [a for _, a in before.elements if "sc-card" in a.get("class", "")]
    dom = dump_dom(page, f"click={i}", tmp_path)
    cards = [a for _, a in dom.elements if "sc-card" in a.get("class", "").split()]
    assert [(c["data-layer"], c["data-feature"]) for c in cards] == [(str(layer), str(feature))]
    record = atlas.record(layer, feature)
    lines = [a for _, a in dom.elements if "sc-ctx" in a.get("class", "").split()]
    assert len(lines) == len(record["top"]) + sum(map(len, record["bands"]))


@needs_chromium
def test_features_command_writes_atlas_and_browsable_pages(
    tiny_gpt2_dir, tiny_gpt2, dictionaries, corpus, atlas, tmp_path
):
    folder = tmp_path / "dicts"
    for layer, d in enumerate(dictionaries):
        save_dictionary(d, folder / f"layer_{layer}")
    save_file({"tokens": corpus}, str(tmp_path / "tokens.safetensors"))
    out = tmp_path / "atlas_out"
    argv = ["features", "--dictionaries", str(folder), "--out", str(out), "--top", "5"]
    argv += ["--model", str(tiny_gpt2_dir), "--corpus", str(tmp_path / "tokens.safetensors")]
    assert main(argv + ["--quiet"]) == 0
    built = FeatureAtlas.load(out)
    assert built.layers[1].labels == FeatureAtlas.load(out).layers[1].labels
    assert built.settings["n_tokens"] == corpus.numel()
    feature = 4
    dom = dump_dom(out / "layer_1.html", f"f={feature}", tmp_path, graph=False)
    cards = [a for _, a in dom.elements if "sc-card" in a.get("class", "").split()]
    assert [(c["data-layer"], c["data-feature"]) for c in cards] == [("1", str(feature))]
    record = built.record(1, feature)
    lines = [a for _, a in dom.elements if "sc-ctx" in a.get("class", "").split()]
    assert len(lines) == len(record["top"]) + sum(map(len, record["bands"])) > 0
    rows = [a for t, a in dom.elements if t == "tr" and "data-feature" in a]
    assert len(rows) == built.layers[1].n_features
    assert "layer_0.html" in (out / "index.html").read_text()


def _embedded(page: str, element_id: str) -> dict:
    found = re.search(
        rf'<script type="application/json" id="{element_id}">(.*?)</script>', page, re.S
    )
    return json.loads(found.group(1))


def test_zoo_ships_matching_atlases_within_the_budget():
    from replacement.atlas.lookup import find_atlas
    from replacement.formats.detect import load_dictionaries
    from replacement.zoo import list_atlases, list_dictionary_sets, list_models

    shipped = {entry.name: entry for entry in list_atlases()}
    assert {"skip_transcoder", "skip_transcoder_e2e"} <= set(shipped)
    for name, entry in shipped.items():
        assert entry.card["n_tokens"] > 200_000 and entry.card["corpus"]
        atlas = find_atlas(load_dictionaries(name))  # what `trace` uses with no extra step
        assert atlas is not None and sum(label != "dead" for label in atlas.layers[1].labels) > 900
    entries = list_models() + list_dictionary_sets() + list(shipped.values())
    assert sum(e.size_bytes for e in entries) <= 40_000_000


def test_corpus_from_a_text_folder_and_bad_sources(tiny_gpt2, tmp_path):
    from replacement.atlas.corpus import corpus_rows
    from replacement.errors import SparseCircuitsError

    folder = tmp_path / "texts"
    folder.mkdir()
    texts = ["def add(a, b):\n    return a + b\n" * 3, "class Stack:\n    pass\n" * 4]
    for k, text in enumerate(texts):
        (folder / f"{k}.py").write_text(text)
    (folder / ".hidden").write_text("never read")
    rows, name = corpus_rows(tiny_gpt2, folder, ctx_len=8)
    bos = tiny_gpt2.tokenizer.bos_token_id
    ids = [tiny_gpt2.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    stream = ids[0] + [bos] + ids[1]
    assert name == str(folder) and (rows[:, 0] == bos).all()
    assert rows[:, 1:].flatten().tolist() == stream[: rows.shape[0] * 7]
    with pytest.raises(SparseCircuitsError, match="does not exist"):
        corpus_rows(tiny_gpt2, tmp_path / "missing")
    with pytest.raises(SparseCircuitsError, match="1-D or 2-D"):
        corpus_rows(tiny_gpt2, torch.zeros(2, 2, 2, dtype=torch.long))


def test_trace_labels_with_a_given_atlas_and_refuses_a_foreign_one(
    tiny_gpt2, dictionaries, atlas, tmp_path
):
    from circuits.trace_cli import format_report, trace
    from replacement.errors import SparseCircuitsError

    folder = atlas.save(tmp_path / "atlas")
    result = trace(
        "x = 1\ny =",
        tiny_gpt2,
        dictionaries,
        tmp_path / "out",
        atlas=folder,
        max_n_logits=3,
        verbose=False,
    )
    document = json.loads(result.files["json"].read_text())
    labelled = [n for n in document["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert labelled and all(n["clerp"] in atlas.layers[int(n["layer"])].labels for n in labelled)
    assert "features labelled from the dictionaries' atlas" in format_report(result)
    assert '"cards":{"' in result.files["html"].read_text()
    other = random_transcoders(tiny_gpt2, "topk", n_features=24, seed=6, k=5)
    with pytest.raises(SparseCircuitsError, match="fingerprints differ"):
        trace("x = 1", tiny_gpt2, other, tmp_path / "out2", atlas=folder, verbose=False)
