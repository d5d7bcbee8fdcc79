"""`sparse-circuits trace` end to end on a tiny model folder and a saved dictionary folder."""

from __future__ import annotations

import io
import json
import re

import pytest
import torch

from circuits.attribution.attribute import attribute
from circuits.graph.attribution_graph import AttributionGraph
from circuits.graph.export import validate
from circuits.trace_cli import prompt_slug, unescape_prompt
from replacement.formats.detect import load_dictionaries
from replacement.formats.native import save_dictionary
from sparse_circuits_cli import main
from tests.attribution_helpers import random_transcoders

PROMPT = "def f(x):\n    return x"


@pytest.fixture(scope="module")
def dictionary_folder(tmp_path_factory, tiny_gpt2):
    folder = tmp_path_factory.mktemp("dicts")
    for layer, d in enumerate(random_transcoders(tiny_gpt2, "relu", n_features=24, seed=3)):
        save_dictionary(d, folder / f"layer_{layer}")
    return folder


def _page_data(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="graph-data">(.*?)</script>', page, re.S)
    assert found, "the page embeds its graph as JSON"
    return json.loads(found.group(1))


def test_trace_writes_the_graph_json_png_and_page(
    tmp_path, tiny_gpt2_dir, tiny_gpt2, dictionary_folder, capsys
):
    out = tmp_path / "out"
    argv = ["trace", PROMPT.replace("\n", "\\n"), "--model", str(tiny_gpt2_dir)]
    argv += ["--dictionaries", str(dictionary_folder), "--out", str(out), "--slug", "tiny"]
    argv += ["--max-feature-nodes", "30", "--max-n-logits", "3", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out

    # the full graph reloads and is the graph a direct call computes (escapes were decoded)
    graph = AttributionGraph.load(out / "graph")
    assert (out / "graph.safetensors").is_file()
    dictionaries = load_dictionaries(dictionary_folder, model=tiny_gpt2)
    direct = attribute(
        tiny_gpt2, dictionaries, PROMPT, max_feature_nodes=30, max_n_logits=3, verbose=False
    )
    assert graph.prompt == PROMPT == direct.prompt
    assert graph.node_label == direct.node_label
    torch.testing.assert_close(graph.adjacency, direct.adjacency)
    pruned = direct.prune(node_threshold=0.8, edge_threshold=0.98)
    assert pruned.n_nodes < direct.n_nodes

    # the pruned graph in the circuit-tracer schema
    doc = json.loads((out / "tiny.json").read_text())
    validate(doc)
    assert doc["metadata"]["slug"] == "tiny" and doc["metadata"]["prompt"] == PROMPT
    assert [n["clerp"] for n in doc["nodes"]] == pruned.node_label
    assert len(doc["links"]) == int((pruned.adjacency != 0).sum())

    # a PNG of a sensible size
    png = (out / "graph.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    height, width = imread(io.BytesIO(png)).shape[:2]
    assert height > 200 and width > 300

    # the page embeds the pruned graph and references nothing outside itself
    page = (out / "graph.html").read_text()
    data = _page_data(page)
    assert [n["label"] for n in data["nodes"]] == pruned.node_label
    # (the SVG namespace is a name, not something fetched)
    assert re.search(r"https?://", page.replace("http://www.w3.org/2000/svg", "")) is None

    # the report: top logit, most influential feature, both graphs' scores
    logits = direct.mask("logit").nonzero().flatten().tolist()
    top_logit = max(logits, key=lambda i: float(direct.node_activation[i]))
    assert direct.node_label[top_logit] in printed
    assert direct.node_label[direct.top_features(1)[0][0]] in printed
    for scores in (direct.scores(), pruned.scores()):
        assert f"{scores.replacement:.4f}" in printed
        assert f"{scores.completeness:.4f}" in printed
    assert "wrote" in printed and str(out / "tiny.json") in printed


def test_trace_reports_a_missing_dictionary_folder(tmp_path, tiny_gpt2_dir, capsys):
    missing = tmp_path / "no_such_dictionaries"
    argv = ["trace", "x = 1", "--model", str(tiny_gpt2_dir), "--dictionaries", str(missing)]
    assert main(argv + ["--out", str(tmp_path / "out"), "--quiet"]) == 1
    assert "no_such_dictionaries" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_prompt_escapes_and_slug():
    assert unescape_prompt(r"a\nb\tc\\n") == "a\nb\tc\\n"
    assert prompt_slug("def fib(n):\n    return") == "def-fib-n-return"
    assert prompt_slug("!!!") == "trace" and prompt_slug("Graph") == "trace"
