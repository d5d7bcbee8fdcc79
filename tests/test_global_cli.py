"""`sparse-circuits global` writes a valid graph for the default model."""

from __future__ import annotations

import json

import networkx as nx

from circuits.graph.export import validate
from replacement.formats.native import save_dictionary
from sparse_circuits_cli import main
from tests.attribution_helpers import random_transcoders


def test_global_command_writes_graph(tmp_path, default_model):
    folder = tmp_path / "dicts"
    for layer, d in enumerate(random_transcoders(default_model, "topk", n_features=64, k=8)):
        d.model_name = "sparse-circuits-default"
        save_dictionary(d, folder / f"layer_{layer}")
    out = tmp_path / "out"
    code = main(
        [
            "global",
            "--layer-from",
            "0",
            "--layer-to",
            "2",
            "--top-k",
            "3",
            "--dictionaries",
            str(folder),
            "--data-weighted",
            "--tokens",
            "256",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    doc = json.loads((out / "global_L0_L2.json").read_text())
    validate(doc)
    layers = {n["layer"] for n in doc["nodes"]}
    assert layers <= {"0", "2"} and len(doc["links"]) > 0
    g = nx.read_graphml(out / "global_L0_L2.graphml")
    # every upstream feature keeps at most top-k partners
    assert max(dict(g.out_degree()).values()) <= 3
