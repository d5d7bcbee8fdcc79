"""`AttributionGraph`: the node table and dense adjacency of a prompt's attribution graph.

Nodes come in four kinds, in this order: active features, error nodes (one per layer and
position), token embeddings (one per position), and logits. The adjacency is dense and on the
CPU, rows are targets and columns are sources: `adjacency[t, s]` is the direct effect of
source s on target t's pre-activation (for a logit: on its demeaned logit).

Fields:
    prompt, tokens [pos] (BOS at 0), token_strs, node_kind, node_layer [n] (tokens -1, logits
    n_layers), node_pos [n], node_feature [n] (feature index; token id for tokens; vocab id for
    logits; -1 for errors), node_activation [n] (feature activation; logit probability; error
    norm; 0 for tokens), node_label, adjacency [n, n], n_layers, model_name, dictionary_names,
    metadata, node_influence [n] | None (cumulative-influence fraction, set by `prune`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int
from safetensors.torch import load_file
from torch import Tensor

from circuits.graph.sparse_rows import coo
from replacement.errors import NonFiniteError, ShapeError, SparseCircuitsError
from replacement.file_pair import check_pair, save_pair

if TYPE_CHECKING:  # the methods delegate to modules that never import this one at run time
    import networkx as nx
    from matplotlib.figure import Figure

    from circuits.graph.scores import GraphScores

KINDS = ("feature", "error", "token", "logit")
_TENSOR_FIELDS = (
    "tokens",
    "node_layer",
    "node_pos",
    "node_feature",
    "node_activation",
    "adjacency",
)
GRAPH_FORMAT_VERSION = 1


@dataclass
class AttributionGraph:
    """Attribution graph of one prompt.

    Fields (n nodes in the order features, errors, tokens, logits):
        prompt: str; tokens [pos] (BOS at position 0); token_strs: decoded token per position;
        node_kind: "feature" | "error" | "token" | "logit" per node;
        node_layer [n]: block index (tokens -1, logits n_layers);
        node_pos [n]: position in the prompt;
        node_feature [n]: feature index; token id for tokens; vocab id for logits (-1 for a
            custom target direction); -1 for errors;
        node_activation [n]: feature activation; logit probability (1 for a custom
            direction); error norm; 0 for tokens;
        node_label: human-readable label per node;
        adjacency [n, n]: CPU, rows = targets, columns = sources; dense, or a coalesced
            sparse COO tensor from `attribute(..., sparse=True)` (influence, prune, scores,
            subgraph, save/load, exports and drawing take either);
        n_layers, model_name, dictionary_names (per dictionary, where it came from), metadata
        (settings, timings, pruning thresholds);
        node_influence [n] | None: cumulative-influence fraction, filled by `prune`.
    Methods: n_nodes, mask, find, feature_ids, logit_probs, logit_weights, subgraph,
    influence, prune, scores, top_features, save/load, to_json, to_networkx, to_graphml,
    with_atlas, draw, to_html, _repr_png_.
    """

    prompt: str
    tokens: Int[Tensor, " pos"]
    token_strs: list[str]
    node_kind: list[str]
    node_layer: Int[Tensor, " n"]
    node_pos: Int[Tensor, " n"]
    node_feature: Int[Tensor, " n"]
    node_activation: Float[Tensor, " n"]
    node_label: list[str]
    adjacency: Float[Tensor, "n n"]
    n_layers: int
    model_name: str = ""
    dictionary_names: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    node_influence: Float[Tensor, " n"] | None = None

    # ---- node table ----------------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        """Number of nodes."""
        return len(self.node_kind)

    def mask(self, kind: str) -> Bool[Tensor, " n"]:
        """Boolean mask of the nodes of one kind."""
        if kind not in KINDS:
            raise SparseCircuitsError(f"unknown node kind {kind!r}; expected one of {KINDS}")
        return torch.tensor([k == kind for k in self.node_kind], dtype=torch.bool)

    @property
    def logit_weights(self) -> Float[Tensor, " n"]:
        """Logit probabilities on logit nodes, zero elsewhere (the `w` of influence)."""
        return torch.where(self.mask("logit"), self.node_activation, 0.0).to(self.adjacency.dtype)

    @property
    def logit_probs(self) -> Float[Tensor, " n_logits"]:
        """Probability of each logit node (1 for a custom target direction), in node order."""
        return self.node_activation[self.mask("logit")]

    def feature_ids(self) -> list[tuple[int, int, int]]:
        """(layer, position, feature) of every feature node, in node order."""
        idx = self.mask("feature").nonzero().flatten().tolist()
        return [
            (int(self.node_layer[i]), int(self.node_pos[i]), int(self.node_feature[i])) for i in idx
        ]

    def find(
        self,
        kind: str,
        layer: int | None = None,
        pos: int | None = None,
        feature: int | None = None,
    ) -> list[int]:
        """Indices of nodes matching the given kind and optional layer, position, feature."""
        hits = self.mask(kind)
        if layer is not None:
            hits &= self.node_layer == layer
        if pos is not None:
            hits &= self.node_pos == pos
        if feature is not None:
            hits &= self.node_feature == feature
        return hits.nonzero().flatten().tolist()

    @property
    def n_edges(self) -> int:
        """Number of non-zero adjacency entries."""
        return len(self.edges()[2])

    def edges(self) -> tuple[Int[Tensor, " e"], Int[Tensor, " e"], Float[Tensor, " e"]]:
        """(target, source, weight) of every non-zero adjacency entry, row-major."""
        if self.adjacency.is_sparse:
            a = self.adjacency.coalesce()
            (target, source), weight = a.indices(), a.values()
            nonzero = weight != 0
            return target[nonzero], source[nonzero], weight[nonzero]
        target, source = self.adjacency.nonzero(as_tuple=True)
        return target, source, self.adjacency[target, source]

    def subgraph(self, keep: Bool[Tensor, " n"]) -> AttributionGraph:
        """The graph restricted to the nodes in `keep` (order preserved)."""
        idx = keep.nonzero().flatten()
        pick = idx.tolist()
        if self.adjacency.is_sparse:
            node = torch.full((self.n_nodes,), -1, dtype=torch.long)
            node[idx] = torch.arange(len(idx))
            target, source, weight = self.edges()
            inside = keep[target] & keep[source]
            index = torch.stack([node[target[inside]], node[source[inside]]])
            adjacency = coo(index, weight[inside], (len(idx), len(idx))).coalesce()
        else:
            adjacency = self.adjacency[idx][:, idx]
        return replace(
            self,
            node_kind=[self.node_kind[i] for i in pick],
            node_layer=self.node_layer[idx],
            node_pos=self.node_pos[idx],
            node_feature=self.node_feature[idx],
            node_activation=self.node_activation[idx],
            node_label=[self.node_label[i] for i in pick],
            adjacency=adjacency,
            node_influence=None if self.node_influence is None else self.node_influence[idx],
            metadata=dict(self.metadata),
        )

    # ---- analysis ------------------------------------------------------------------------
    def influence(self) -> Float[Tensor, " n"]:
        """Each node's total influence on the logits, w (A_hat + A_hat^2 + ...)."""
        from circuits.graph.prune import node_influence

        return node_influence(self.adjacency, self.logit_weights)

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> AttributionGraph:
        """Pruned copy: see `circuits.graph.prune.prune_graph`."""
        from circuits.graph.prune import prune_graph

        return prune_graph(self, node_threshold, edge_threshold)

    def scores(self) -> GraphScores:
        """Replacement and completeness scores (see `circuits.graph.scores.graph_scores`)."""
        from circuits.graph.scores import graph_scores

        return graph_scores(self)

    def top_features(self, n: int = 10) -> list[tuple[int, float]]:
        """The n feature nodes of largest influence on the logits: (node index, influence)."""
        infl = self.influence()
        feats = self.mask("feature").nonzero().flatten()
        order = infl[feats].argsort(descending=True)[:n]
        return [(int(feats[i]), float(infl[feats[i]])) for i in order]

    # ---- files and exports ---------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write `<path>.safetensors` (tensors) and `<path>.json` (the rest), atomically.

        Each file is replaced atomically; both carry the same random `pair_id` and the JSON the
        tensors' checksum, so that `load` refuses a pair from two different saves (one
        interrupted between the two writes) (`replacement.file_pair`).
        """
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
        tensors = {name: getattr(self, name).contiguous() for name in _TENSOR_FIELDS[:-1]}
        if self.adjacency.is_sparse:  # safetensors holds dense tensors: store the entries
            target, source, weight = self.edges()
            tensors["adjacency_index"] = torch.stack([target, source]).contiguous()
            tensors["adjacency_value"] = weight.contiguous()
        else:
            tensors["adjacency"] = self.adjacency.contiguous()
        if self.node_influence is not None:
            tensors["node_influence"] = self.node_influence.contiguous()
        meta = {
            "format_version": GRAPH_FORMAT_VERSION,
            "prompt": self.prompt,
            "token_strs": self.token_strs,
            "node_kind": self.node_kind,
            "node_label": self.node_label,
            "n_layers": self.n_layers,
            "model_name": self.model_name,
            "dictionary_names": self.dictionary_names,
            "metadata": self.metadata,
        }
        save_pair(stem.with_suffix(".json"), stem.with_suffix(".safetensors"), tensors, meta)
        return stem.with_suffix(".json")

    @classmethod
    def load(cls, path: str | Path) -> AttributionGraph:
        """Read a graph written by `save`."""
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
        json_path, tensor_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
        for p in (json_path, tensor_path):
            if not p.is_file():
                raise SparseCircuitsError(f"graph file {str(p)!r} does not exist")
        try:
            meta = json.loads(json_path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise SparseCircuitsError(f"{str(json_path)!r} is not valid JSON: {exc}") from exc
        keys = ("prompt", "token_strs", "node_kind", "node_label", "n_layers")
        if not isinstance(meta, dict) or any(k not in meta for k in keys):
            raise SparseCircuitsError(
                f"{str(json_path)!r} is not a graph file of `AttributionGraph.save`; expected "
                f"the keys {list(keys)}"
            )
        try:
            tensors = load_file(str(tensor_path))
        except Exception as exc:  # safetensors raises several types on corrupt files
            raise SparseCircuitsError(
                f"{str(tensor_path)!r} is not valid safetensors: {exc}"
            ) from exc
        check_pair(json_path, tensor_path, meta, "save the graph again")
        if "adjacency_index" in tensors:
            n = len(meta["node_kind"])
            index, value = tensors.pop("adjacency_index"), tensors.pop("adjacency_value")
            try:  # a file's indices are checked (out of range would crash later)
                adjacency = torch.sparse_coo_tensor(index, value, (n, n), check_invariants=True)
            except RuntimeError as exc:
                raise SparseCircuitsError(
                    f"{str(tensor_path)!r} holds a sparse adjacency that does not fit its "
                    f"{n} nodes: {exc}"
                ) from exc
            tensors["adjacency"] = adjacency.coalesce()
        missing = [name for name in _TENSOR_FIELDS if name not in tensors]
        if missing:
            raise SparseCircuitsError(f"{str(tensor_path)!r} lacks the tensors {missing}")
        _check_loaded(meta, tensors, json_path)
        return cls(
            prompt=meta["prompt"],
            token_strs=meta["token_strs"],
            node_kind=meta["node_kind"],
            node_label=meta["node_label"],
            n_layers=meta["n_layers"],
            model_name=meta.get("model_name", ""),
            dictionary_names=meta.get("dictionary_names", []),
            metadata=meta.get("metadata", {}),
            node_influence=tensors.get("node_influence"),
            **{name: tensors[name] for name in _TENSOR_FIELDS},
        )

    def to_json(
        self,
        slug: str = "graph",
        path: str | Path | None = None,
        node_threshold: float | None = None,
    ) -> dict[str, Any]:
        """The circuit-tracer / Neuronpedia JSON (validated against the project's schema)."""
        from circuits.graph.export import graph_to_json

        return graph_to_json(self, slug=slug, path=path, node_threshold=node_threshold)

    def to_networkx(self) -> nx.DiGraph:
        """A networkx DiGraph (edges source -> target, attribute `weight`)."""
        from circuits.graph.export import graph_to_networkx

        return graph_to_networkx(self)

    def to_graphml(self, path: str | Path) -> Path:
        """Write GraphML (atomically)."""
        from circuits.graph.export import graph_to_graphml

        return graph_to_graphml(self, path)

    def with_atlas(self, atlas: Any) -> AttributionGraph:
        """A copy whose feature nodes carry the labels of a `replacement.atlas.FeatureAtlas`."""
        from circuits.views.feature_labels import label_features

        return label_features(self, atlas)

    def draw(self, **kwargs: Any) -> Figure:
        """A matplotlib figure of the graph (see `circuits.views.draw.draw_graph`)."""
        from circuits.views.draw import draw_graph

        return draw_graph(self, **kwargs)

    def to_html(self, path: str | Path, **kwargs: Any) -> Path:
        """A self-contained interactive HTML page (see `circuits.views.html_page.write_html`)."""
        from circuits.views.html_page import write_html

        return write_html(self, path, **kwargs)

    def _repr_png_(self) -> bytes:
        """PNG of `draw()` for notebooks (at most 100 edges and 1100 px wide, so that a notebook
        stored with its outputs stays small)."""
        import io

        import matplotlib.pyplot as plt

        figure = self.draw(max_edges=100)
        buffer = io.BytesIO()
        width = figure.get_size_inches()[0]
        figure.savefig(buffer, format="png", bbox_inches="tight", dpi=min(90, 1100 / width))
        plt.close(figure)
        return buffer.getvalue()

    def __repr__(self) -> str:
        counts = {k: self.node_kind.count(k) for k in KINDS}
        return (
            f"AttributionGraph(prompt={self.prompt!r}, nodes={self.n_nodes} {counts}, "
            f"edges={self.n_edges}, model={self.model_name!r})"
        )


def _check_loaded(meta: dict[str, Any], tensors: dict[str, Tensor], path: Path) -> None:
    """Refuse a graph file whose node kinds, sizes or values do not make a graph (a file edited
    by hand, or of another tool, would otherwise load and prune to an empty graph)."""
    kinds = meta["node_kind"]
    unknown = sorted({str(k) for k in kinds} - set(KINDS)) if isinstance(kinds, list) else kinds
    if unknown:
        raise SparseCircuitsError(
            f"{str(path)!r} has node kinds {unknown}; expected a list of {list(KINDS)}"
        )
    order = [KINDS.index(k) for k in kinds]
    if order != sorted(order):
        raise SparseCircuitsError(
            f"{str(path)!r}: nodes are not in the order {list(KINDS)} (an edited or foreign file)"
        )
    n, n_pos = len(kinds), int(tensors["tokens"].numel())
    want = {name: (n,) for name in _TENSOR_FIELDS if name.startswith("node_")}
    want.update(tokens=(n_pos,), adjacency=(n, n))
    if "node_influence" in tensors:
        want["node_influence"] = (n,)
    for name, shape in want.items():
        if tuple(tensors[name].shape) != shape:
            raise ShapeError(
                f"{str(path)!r}: {name} has shape {tuple(tensors[name].shape)}; the file's "
                f"{n} nodes and {n_pos} tokens need {shape}"
            )
    for name, items, size in (
        ("node_label", meta["node_label"], n),
        ("token_strs", meta["token_strs"], n_pos),
    ):
        if not isinstance(items, list) or len(items) != size:
            raise ShapeError(f"{str(path)!r}: {name} should list {size} entries")
    if n and not 0 <= int(tensors["node_pos"].min()) <= int(tensors["node_pos"].max()) < n_pos:
        raise ShapeError(f"{str(path)!r}: node positions outside the prompt's {n_pos} tokens")
    for name in ("adjacency", "node_activation", "node_influence"):
        t = tensors.get(name)
        if t is None:
            continue
        values = t.coalesce().values() if t.is_sparse else t
        if not bool(torch.isfinite(values).all()):
            raise NonFiniteError(f"{str(path)!r}: {name} holds NaN/inf values")
