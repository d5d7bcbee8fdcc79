"""`trace --qk`: head loadings and QK pairs in the graph files, the JSON export, the page (its
QK panel run in headless Chromium) and the Jupyter view."""

from __future__ import annotations

import json

import pytest
import torch

from circuits.attention.views import qk_view
from circuits.graph import AttributionGraph
from circuits.graph.export import validate
from replacement.formats.native import save_dictionary
from sparse_circuits_cli import main
from tests.attribution_helpers import random_transcoders
from tests.test_html_page import CHROMIUM, dump_dom
from tests.test_trace_cli import _page_data

PROMPT = "def f(x):\n    return f(x)"


@pytest.fixture(scope="module")
def traced(tmp_path_factory, tiny_gpt2_dir, tiny_gpt2):
    folder = tmp_path_factory.mktemp("qk")
    for layer, d in enumerate(random_transcoders(tiny_gpt2, "relu", n_features=24, seed=3)):
        save_dictionary(d, folder / "dicts" / f"layer_{layer}")
    out = folder / "out"
    argv = ["trace", PROMPT.replace("\n", "\\n"), "--model", str(tiny_gpt2_dir), "--qk"]
    argv += ["--dictionaries", str(folder / "dicts"), "--out", str(out), "--slug", "qk"]
    argv += ["--max-feature-nodes", "30", "--max-n-logits", "3", "--quiet"]
    assert main(argv) == 0
    return out


def test_trace_qk_stores_loadings_and_pairs(traced, tiny_gpt2):
    graph = AttributionGraph.load(traced / "graph")
    qk = graph.metadata["qk"]
    assert qk["edges"] and qk["heads"]
    n_layers, n_heads = qk["n_layers"], qk["n_heads"]
    assert n_layers * n_heads <= 8  # every head is stored: the split can be checked whole
    for e in qk["edges"]:
        assert e["source"].split("_")[-1] != e["target"].split("_")[-1]  # crosses positions
        per_layer = [0.0] * n_layers
        for layer, _, value in e["heads"]:
            per_layer[layer] += value
        for layer in range(n_layers):
            assert (
                abs(e["bypass"][layer] + per_layer[layer] - e["weight"])
                < 1e-5 * max(abs(e["weight"]), 1e-6) + 1e-6
            )
    # each head's score is the model's own, and its pairs come largest first
    tokens = graph.tokens.unsqueeze(0)
    _, cache = tiny_gpt2.run_with_cache(tokens)
    for h in qk["heads"]:
        score = cache[f"blocks.{h['layer']}.attn.hook_attn_scores"][
            0, h["head"], h["query"], h["key"]
        ]
        assert abs(h["score"] - float(score)) < 1e-5 * max(1.0, abs(float(score)))
        values = [abs(p[2]) for p in h["pairs"]]
        assert values == sorted(values, reverse=True) and 1 <= len(values) <= 10

    doc = json.loads((traced / "qk.json").read_text())
    validate(doc)  # the schema still holds with the extra field
    assert doc["qk"] == json.loads((traced / "graph.json").read_text())["metadata"]["qk"]
    data = _page_data((traced / "graph.html").read_text())
    assert data["qk"]["edges"] == qk["edges"]
    view = qk_view(graph)
    assert qk["edges"][0]["source"] in view.data and "query side" in view.data


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium on PATH")
def test_qk_panel_shows_heads_of_an_edge(traced, tmp_path):
    graph = AttributionGraph.load(traced / "graph")
    dom = dump_dom(traced / "graph.html", "qk-edge=0", tmp_path)
    rows = [a for tag, a in dom.elements if tag == "tr" and "data-head" in a]
    first = graph.metadata["qk"]["edges"][0]
    assert rows, "the panel lists the heads of edge 0 with their QK pairs"
    assert len(rows) <= len(first["heads"])
    assert "qk-panel" in dom.text_by_id or any(a.get("id") == "qk-panel" for _, a in dom.elements)


def test_qk_view_of_one_attribution(tiny_gpt2):
    from circuits.attention import AttentionAttribution

    att = AttentionAttribution(tiny_gpt2, random_transcoders(tiny_gpt2, "relu"), PROMPT)
    a = att.qk(1, 0, 6, 2)
    view = qk_view(a)
    assert f"{a.total:+.4f}" in view.data
    assert torch.isclose(
        a.pairs().sum(), torch.tensor(a.total, dtype=a.pairs().dtype), rtol=1e-4, atol=1e-6
    )


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium on PATH")
def test_clicking_a_node_lists_its_edges(traced, tmp_path):
    data = _page_data((traced / "graph.html").read_text())
    qk = data["qk"]
    source = qk["edges"][0]["source"]
    node = next(
        i
        for i, n in enumerate(data["nodes"])
        if n["kind"] == "token" and source == f"E_{n['feature']}_{n['pos']}"
    )
    dom = dump_dom(traced / "graph.html", f"click={node}", tmp_path)
    listed = [int(a["data-edge"]) for tag, a in dom.elements if tag == "tr" and "data-edge" in a]
    expected = [i for i, e in enumerate(qk["edges"]) if source in (e["source"], e["target"])]
    assert listed == expected and 0 < len(expected) < len(qk["edges"])
