"""Graph nodes as the sources and targets of a recomputation on the same prompt.

`collect_sources` orders a prompt's sources as features (dictionary, position, feature),
errors (dictionary, positions 1..P-1) and tokens; a graph keeps a subset of the features and
every error and token node. `NodeMap` takes graph node indices to source indices and to the
targets the row engines read (feature encoder columns, logit directions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuits.attribution.sources import PromptSources
from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError
from replacement.hooks import hook_layer


@dataclass
class NodeMap:
    """Graph node -> source index, and the targets of target nodes."""

    graph: Any
    """The `AttributionGraph`."""
    sources: PromptSources
    """The prompt's sources, recomputed."""
    dictionaries: list[Dictionary]
    """Dictionaries in the graph's order (one per out_hook)."""

    def __post_init__(self) -> None:
        layers = [hook_layer(d.out_hook) for d in self.dictionaries]
        if len(set(layers)) != len(layers):
            raise SparseCircuitsError(
                "graph nodes name only a layer, but several dictionaries share one; "
                "head loadings need one dictionary per layer"
            )
        self.dict_of_layer = {layer: k for k, layer in enumerate(layers)}
        src = self.sources
        self.feature_index = {
            (int(k), int(p), int(f)): i
            for i, (k, p, f) in enumerate(
                zip(
                    src.feat_dict.tolist(),
                    src.feat_pos.tolist(),
                    src.feat_index.tolist(),
                    strict=True,
                )
            )
        }
        self.n_pos = int(src.embed.shape[0])

    def _dict(self, layer: int) -> int:
        if layer not in self.dict_of_layer:
            raise SparseCircuitsError(f"no dictionary writes at layer {layer} of the graph")
        return self.dict_of_layer[layer]

    def source_index(self, node: int) -> int:
        """Index of graph node `node` among the prompt's sources (features, errors, tokens)."""
        g, src = self.graph, self.sources
        kind, layer, pos = g.node_kind[node], int(g.node_layer[node]), int(g.node_pos[node])
        if kind == "feature":
            key = (self._dict(layer), pos, int(g.node_feature[node]))
            if key not in self.feature_index:
                raise SparseCircuitsError(
                    f"feature node {g.node_label[node]!r} is not active when the prompt is "
                    "recomputed; were the graph, model and dictionaries made together?"
                )
            return self.feature_index[key]
        if kind == "error":
            return src.n_features + self._dict(layer) * (self.n_pos - 1) + pos - 1
        if kind == "token":
            return src.n_features + len(src.errors) * (self.n_pos - 1) + pos
        raise SparseCircuitsError(f"node {node} is a {kind} node, which is never a source")

    def feature_target(self, node: int) -> int:
        """Index into the active features of a feature target node."""
        if self.graph.node_kind[node] != "feature":
            raise SparseCircuitsError(f"node {node} is a {self.graph.node_kind[node]} node")
        return self.source_index(node)

    def logit_direction(self, model: Any, node: int) -> Float[Tensor, " d_model"]:
        """The demeaned unembedding column of a logit node (what its row reads)."""
        token = int(self.graph.node_feature[node])
        if token < 0:
            raise SparseCircuitsError(
                "the graph's target is a custom direction, which the graph does not store; "
                "head loadings need logit or feature targets"
            )
        W_U = model.W_U.detach()
        return (W_U[:, token] - W_U.mean(dim=1)).float()


def split_targets(graph: Any, nodes: Int[Tensor, " n"]) -> tuple[list[int], list[int]]:
    """Positions in `nodes` of the feature targets and of the logit targets."""
    kinds = [graph.node_kind[int(i)] for i in nodes]
    bad = sorted({k for k in kinds if k not in ("feature", "logit")})
    if bad:
        raise SparseCircuitsError(f"edges must end at feature or logit nodes, not {bad} nodes")
    return (
        [i for i, k in enumerate(kinds) if k == "feature"],
        [i for i, k in enumerate(kinds) if k == "logit"],
    )


def as_long(x: Any) -> Int[Tensor, " n"]:
    """A 1-D long tensor."""
    return torch.as_tensor(x, dtype=torch.long).reshape(-1)
