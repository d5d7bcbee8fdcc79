"""Feature meaning on graph nodes: labels and cards from a `FeatureAtlas`.

`label_features` gives every feature node of a graph its atlas label (node_label becomes
"'return' -> self (L2 F148 @8)") and records the bare labels in `metadata["feature_labels"]`
under "layer/feature", which the JSON export uses as `clerp` and the drawing as annotations.
`feature_cards` collects the card data of a graph's features for its HTML page.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from circuits.graph.attribution_graph import AttributionGraph
    from replacement.atlas import FeatureAtlas

LABELS_KEY = "feature_labels"


def feature_key(layer: int, feature: int) -> str:
    """Key of a feature in `metadata["feature_labels"]` and in the page's cards."""
    return f"{layer}/{feature}"


def label_features(graph: AttributionGraph, atlas: FeatureAtlas) -> AttributionGraph:
    """A copy of `graph` whose feature nodes carry their atlas labels (see the module doc).

    Features the atlas does not cover (another layer or width) keep their old label.
    """
    labels = list(graph.node_label)
    found: dict[str, str] = {}
    for i in graph.find("feature"):
        layer, pos = int(graph.node_layer[i]), int(graph.node_pos[i])
        feature = int(graph.node_feature[i])
        if (layer, feature) not in atlas:
            continue
        label = atlas.label(layer, feature)
        found[feature_key(layer, feature)] = label
        where = f" @{pos}" if len(graph.token_strs) > 1 else ""  # a global graph has no positions
        labels[i] = f"{label} (L{layer} F{feature}{where})"
    metadata = {**graph.metadata, LABELS_KEY: found}
    return replace(graph, node_label=labels, metadata=metadata)


def atlas_label(graph: AttributionGraph, i: int) -> str | None:
    """The bare atlas label of node i, if the graph was labelled and i is a feature."""
    if graph.node_kind[i] != "feature":
        return None
    key = feature_key(int(graph.node_layer[i]), int(graph.node_feature[i]))
    return graph.metadata.get(LABELS_KEY, {}).get(key)


def feature_cards(graph: AttributionGraph, atlas: FeatureAtlas) -> dict[str, Any]:
    """Card records of the graph's features and the vocabulary they use, for the HTML page."""
    cards: dict[str, Any] = {}
    for layer, _, feature in graph.feature_ids():
        key = feature_key(layer, feature)
        if key not in cards and (layer, feature) in atlas:
            cards[key] = atlas.record(layer, feature)
    used: set[int] = set()
    for record in cards.values():
        for context in record["top"] + [c for band in record["bands"] for c in band]:
            used.update(context["tokens"])
        for name in ("promoted", "suppressed", "inputs"):
            used.update(t for t, _ in record[name] or [])
    vocab = {str(t): atlas.vocab[t] for t in sorted(used)}
    return {"cards": cards, "vocab": vocab}
