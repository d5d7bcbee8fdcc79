"""Saving, loading and exporting attribution graphs."""

from __future__ import annotations

import json

import networkx as nx
import pytest
import torch

from circuits.graph.attribution_graph import AttributionGraph
from circuits.graph.export import cantor_pair, schema, validate
from replacement.errors import SparseCircuitsError
from tests.test_graph_ops import hand_graph


def test_save_load_round_trip(tmp_path):
    graph = hand_graph().prune(0.5, 1.0)
    path = graph.save(tmp_path / "g")
    back = AttributionGraph.load(path)
    for name in (
        "tokens",
        "node_layer",
        "node_pos",
        "node_feature",
        "node_activation",
        "adjacency",
        "node_influence",
    ):
        assert torch.equal(getattr(back, name), getattr(graph, name)), name
    assert back.node_kind == graph.node_kind and back.node_label == graph.node_label
    assert back.metadata["node_threshold"] == 0.5


def test_load_errors(tmp_path):
    with pytest.raises(SparseCircuitsError, match="does not exist"):
        AttributionGraph.load(tmp_path / "missing")
    hand_graph().save(tmp_path / "g")
    (tmp_path / "g.safetensors").write_bytes(b"garbage")
    with pytest.raises(SparseCircuitsError, match="not valid safetensors"):
        AttributionGraph.load(tmp_path / "g")


def test_a_save_interrupted_between_its_two_files_is_refused_on_load(tmp_path, monkeypatch):
    import circuits.graph.attribution_graph as graph_module

    old, new = hand_graph(), hand_graph().prune(0.5, 1.0)
    old.save(tmp_path / "g")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(graph_module, "write_json", disk_full)
    with pytest.raises(OSError):
        new.save(tmp_path / "g")  # the tensors were replaced, the JSON was not
    monkeypatch.undo()
    with pytest.raises(SparseCircuitsError, match="different saves"):
        AttributionGraph.load(tmp_path / "g")
    new.save(tmp_path / "g")  # saving again mends the pair
    assert torch.equal(AttributionGraph.load(tmp_path / "g").adjacency, new.adjacency)


def test_json_export_follows_the_schema(tmp_path):
    graph = hand_graph().prune(0.7, 1.0)
    doc = graph.to_json(slug="hand", path=tmp_path / "hand.json")
    assert json.loads((tmp_path / "hand.json").read_text()) == doc
    ids = {n["node_id"]: n for n in doc["nodes"]}
    assert ids["0_7_1"]["feature"] == cantor_pair(0, 7) == 35
    assert ids["0_7_1"]["feature_type"] == "cross layer transcoder"
    assert ids["E_5_1"]["layer"] == "E" and ids["E_5_1"]["feature"] == 1
    assert ids["3_11_2"]["is_target_logit"] and ids["3_11_2"]["token_prob"] == 1.0
    assert {"source": "1_9_2", "target": "3_11_2", "weight": 2.0} in doc["links"]
    assert doc["metadata"]["node_threshold"] == 0.7 and doc["metadata"]["schema_version"] == 1
    # the schema rejects a document that breaks it
    broken = dict(doc, nodes=[dict(doc["nodes"][0], layer=3)])
    import jsonschema

    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    assert schema()["required"] == ["metadata", "qParams", "nodes", "links"]


def test_error_node_ids_do_not_collide():
    graph = hand_graph()
    doc = graph.to_json()
    ids = [n["node_id"] for n in doc["nodes"]]
    assert len(set(ids)) == len(ids)
    assert "0_-1_2" in ids


def test_networkx_and_graphml(tmp_path):
    graph = hand_graph()
    g = graph.to_networkx()
    assert g.number_of_nodes() == 6 and g.number_of_edges() == 6
    assert g.edges["1_9_2", "3_11_2"]["weight"] == 2.0
    assert g.nodes["0_7_1"]["kind"] == "feature" and g.nodes["0_7_1"]["activation"] == 1.5
    path = graph.to_graphml(tmp_path / "g.graphml")
    back = nx.read_graphml(path)
    assert back.number_of_edges() == 6
    assert back.edges["0_7_1", "1_9_2"]["weight"] == 3.0


def test_logit_probs_and_png():
    graph = hand_graph()
    assert graph.logit_probs.tolist() == [1.0]
    assert graph.feature_ids() == [(0, 1, 7), (1, 2, 9)]
    png = graph._repr_png_()
    assert png.startswith(b"\x89PNG")
