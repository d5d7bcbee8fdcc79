"""Exports of attribution graphs: circuit-tracer/Neuronpedia JSON, networkx and GraphML."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuits.views.feature_labels import atlas_label
from replacement.atomic import atomic_path, write_json

if TYPE_CHECKING:
    # networkx loads only for the networkx/GraphML exports (not for `trace`)
    import networkx as nx

    from circuits.graph.attribution_graph import AttributionGraph

FEATURE_TYPES = {
    "feature": "cross layer transcoder",
    "error": "mlp reconstruction error",
    "token": "embedding",
    "logit": "logit",
}


def cantor_pair(layer: int, feature: int) -> int:
    """(l + f)(l + f + 1)/2 + f: the `feature` field of a feature node."""
    return (layer + feature) * (layer + feature + 1) // 2 + feature


def node_ids(graph: AttributionGraph) -> list[str]:
    """The circuit-tracer node_id of every node."""
    ids = []
    for i, kind in enumerate(graph.node_kind):
        layer, pos, feat = (
            int(graph.node_layer[i]),
            int(graph.node_pos[i]),
            int(graph.node_feature[i]),
        )
        if kind == "feature":
            ids.append(f"{layer}_{feat}_{pos}")
        elif kind == "error":
            ids.append(f"{layer}_-1_{pos}")
        elif kind == "token":
            ids.append(f"E_{feat}_{pos}")
        else:
            ids.append(f"{graph.n_layers + 1}_{feat}_{pos}")
    return ids


def _node_record(graph: AttributionGraph, i: int, node_id: str, n_pos: int) -> dict[str, Any]:
    kind = graph.node_kind[i]
    layer, pos, feat = int(graph.node_layer[i]), int(graph.node_pos[i]), int(graph.node_feature[i])
    feature = {"feature": cantor_pair(layer, feat), "error": -1, "token": pos}.get(kind, feat)
    layer_str = {"token": "E", "logit": str(graph.n_layers + 1)}.get(kind, str(layer))
    activation = float(graph.node_activation[i])
    influence = None if graph.node_influence is None else float(graph.node_influence[i])
    return {
        "node_id": node_id,
        "feature": feature,
        "layer": layer_str,
        "ctx_idx": pos,
        "feature_type": FEATURE_TYPES[kind],
        "token_prob": activation if kind == "logit" else 0.0,
        "is_target_logit": kind == "logit",
        "run_idx": 0,
        "reverse_ctx_idx": n_pos - 1 - pos,
        "jsNodeId": node_id,
        "clerp": atlas_label(graph, i) or graph.node_label[i],
        "influence": influence,
        "activation": activation if kind == "feature" else None,
    }


def schema() -> dict[str, Any]:
    """The JSON Schema every export is validated against."""
    path = resources.files("circuits.graph") / "schema" / "attribution_graph.schema.json"
    return json.loads(path.read_text())


def validate(document: dict[str, Any]) -> None:
    """Validate an export against the schema (when `jsonschema` is installed)."""
    try:
        import jsonschema
    except ImportError:  # the dev extra has it; users without it skip validation
        return
    jsonschema.validate(document, schema())


def graph_to_json(
    graph: AttributionGraph,
    slug: str = "graph",
    path: str | Path | None = None,
    node_threshold: float | None = None,
) -> dict[str, Any]:
    """The graph in the circuit-tracer / Neuronpedia schema (schema_version 1).

    Links are the non-zero adjacency entries, source -> target. Written atomically to `path`
    when given.
    """
    ids = node_ids(graph)
    n_pos = len(graph.token_strs)
    nodes = [_node_record(graph, i, ids[i], n_pos) for i in range(graph.n_nodes)]
    targets, sources, weights = graph.edges()
    weights = weights.tolist()
    links = [
        {"source": ids[s], "target": ids[t], "weight": w}
        for t, s, w in zip(targets.tolist(), sources.tolist(), weights, strict=True)
    ]
    threshold = (
        node_threshold if node_threshold is not None else graph.metadata.get("node_threshold", 1.0)
    )
    document = {
        "metadata": {
            "slug": slug,
            "scan": graph.model_name,
            "prompt_tokens": list(graph.token_strs),
            "prompt": graph.prompt,
            "node_threshold": float(threshold),
            "schema_version": 1,
            "transcoder_list": list(graph.dictionary_names),
        },
        "qParams": {
            "pinnedIds": [],
            "supernodes": [],
            "linkType": "both",
            "clickedId": "",
            "sg_pos": "",
        },
        "nodes": nodes,
        "links": links,
    }
    validate(document)
    if path is not None:
        write_json(path, document)
    return document


def graph_to_networkx(graph: AttributionGraph) -> nx.DiGraph:
    """A DiGraph with node attributes kind/layer/pos/feature/activation/label/influence and
    edges source -> target carrying `weight`."""
    import networkx as nx

    g = nx.DiGraph(prompt=graph.prompt, model_name=graph.model_name)
    ids = node_ids(graph)
    for i, node_id in enumerate(ids):
        g.add_node(
            node_id,
            kind=graph.node_kind[i],
            layer=int(graph.node_layer[i]),
            pos=int(graph.node_pos[i]),
            feature=int(graph.node_feature[i]),
            activation=float(graph.node_activation[i]),
            label=graph.node_label[i],
            influence=0.0 if graph.node_influence is None else float(graph.node_influence[i]),
        )
    targets, sources, weights = graph.edges()
    for t, s, w in zip(targets.tolist(), sources.tolist(), weights.tolist(), strict=True):
        g.add_edge(ids[s], ids[t], weight=float(w))
    return g


def graph_to_graphml(graph: AttributionGraph, path: str | Path) -> Path:
    """Write the networkx form as GraphML, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        import networkx as nx

        nx.write_graphml(graph_to_networkx(graph), tmp)
    return path
