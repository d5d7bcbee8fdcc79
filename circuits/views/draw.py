"""Static pictures of attribution graphs: a layered matplotlib drawing and its PNG bytes.

Layout (shared with the HTML page): x is the token position, y the layer, with token
embeddings on the bottom row and logits on the top row. Nodes that share a (layer, position)
cell are spread evenly across the cell's width.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from circuits.graph.attribution_graph import AttributionGraph

CELL_WIDTH = 0.8
"""Share of a position's column that the nodes of one cell spread over."""
POSITIVE, NEGATIVE = "#1f5fbf", "#c62828"
KIND_STYLE = {
    # kind: (marker, face colour, legend name)
    "feature": ("o", "#f4b183", "feature"),
    "error": ("s", "#9e9e9e", "error"),
    "token": ("D", "#a5d6a7", "token"),
    "logit": ("^", "#ce93d8", "logit"),
}


NODES_PER_UNIT = 6
"""A column widens by one unit for each this many nodes in its most crowded cell."""
MAX_COLUMN_WIDTH = 8.0
"""Widest column, in units of a plain position's width."""


class GraphLayout(NamedTuple):
    """Where each node sits: x in column units, y the row (0 = tokens)."""

    x: Float[Tensor, " n"]
    """Horizontal coordinate: the column's left edge plus an offset inside the cell."""
    y: Int[Tensor, " n"]
    """Row: node_layer + 1 (tokens 0, layer l at l + 1, logits n_layers + 1)."""
    cell_size: Int[Tensor, " n"]
    """How many nodes share the node's cell."""
    spacing: Float[Tensor, " n"]
    """Distance between neighbours in the node's cell (for sizing markers)."""
    column_center: Float[Tensor, " pos"]
    """x of the centre of each position's column (where its token label goes)."""
    width: float
    """Total width: the sum of the column widths (a plain column is 1 wide)."""


def n_positions(graph: AttributionGraph) -> int:
    """Number of position columns (the prompt's tokens, or more if nodes sit further)."""
    last = int(graph.node_pos.max()) + 1 if graph.n_nodes else 1
    return max(len(graph.token_strs), last, 1)


def graph_layout(graph: AttributionGraph) -> GraphLayout:
    """Layered layout: y = layer row; x = position column, nodes of a cell spread across it.

    Columns whose cells are crowded (often the last position) are wider, so that their nodes
    do not pile up.
    """
    n = graph.n_nodes
    rows = graph.node_layer.long() + 1
    cells: dict[tuple[int, int], list[int]] = {}
    for i, (row, pos) in enumerate(zip(rows.tolist(), graph.node_pos.tolist(), strict=True)):
        cells.setdefault((row, pos), []).append(i)
    crowd = torch.ones(n_positions(graph))
    for (_, pos), members in cells.items():
        crowd[pos] = max(float(crowd[pos]), len(members) / NODES_PER_UNIT)
    widths = crowd.clamp(1.0, MAX_COLUMN_WIDTH).double()
    left = torch.cumsum(widths, 0) - widths
    x = torch.zeros(n, dtype=torch.float64)
    size = torch.ones(n, dtype=torch.long)
    spacing = torch.ones(n, dtype=torch.float64)
    for (_, pos), members in cells.items():
        k = len(members)
        for rank, i in enumerate(members):  # node order: features by index, then errors
            x[i] = left[pos] + widths[pos] * (0.5 + CELL_WIDTH * ((rank + 0.5) / k - 0.5))
            size[i] = k
            spacing[i] = CELL_WIDTH * widths[pos] / k
    return GraphLayout(
        x=x,
        y=rows,
        cell_size=size,
        spacing=spacing,
        column_center=left + widths / 2,
        width=float(widths.sum()),
    )


def top_edges(
    adjacency: Float[Tensor, "n n"], max_edges: int
) -> tuple[Int[Tensor, " e"], Int[Tensor, " e"], Float[Tensor, " e"]]:
    """The `max_edges` non-zero edges of largest |weight|: (source, target, weight)."""
    if adjacency.is_sparse:
        a = adjacency.coalesce()
        (target, source), weight = a.indices(), a.values()
        nonzero = (weight != 0).nonzero().flatten()
        if len(nonzero) > max_edges:
            nonzero = nonzero[weight[nonzero].abs().topk(max_edges).indices]
        nonzero = nonzero[weight[nonzero].abs().argsort()]
        return source[nonzero], target[nonzero], weight[nonzero]
    flat = adjacency.flatten()
    nonzero = flat.nonzero().flatten()
    if len(nonzero) > max_edges:
        nonzero = nonzero[flat[nonzero].abs().topk(max_edges).indices]
    # draw strong edges last so they sit on top
    nonzero = nonzero[flat[nonzero].abs().argsort()]
    n = adjacency.shape[1]
    return nonzero % n, nonzero // n, flat[nonzero]


def _tick_text(token: str, limit: int = 12) -> str:
    text = token.encode("unicode_escape").decode("ascii") if token.strip() != token else token
    text = repr(token)[1:-1] if not text.isprintable() else text
    return text if len(text) <= limit else text[: limit - 1] + "…"


def draw_graph(
    graph: AttributionGraph,
    max_edges: int = 300,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
    max_logit_labels: int = 5,
    max_feature_labels: int = 10,
) -> Figure:
    """A matplotlib figure of the graph's nodes and its `max_edges` strongest edges.

    Features are circles, errors squares, tokens diamonds and logits triangles; edge width
    grows with |weight| and the colour gives the sign (blue positive, red negative).
    Token strings label the x axis and layers the y axis; the `max_logit_labels` most probable
    logits are labelled, and so are the `max_feature_labels` most influential features of a
    graph labelled from an atlas (`circuits.views.feature_labels.label_features`). Returns the
    figure (created with `figsize` unless `ax` is given).
    """
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    layout = graph_layout(graph)
    n_pos = len(layout.column_center)
    n_rows = graph.n_layers + 2
    if ax is None:
        if figsize is None:
            figsize = (min(4.0 + 1.1 * layout.width, 28.0), min(3.0 + 0.9 * n_rows, 16.0))
        fig = Figure(figsize=figsize, layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    x, y = layout.x.numpy(), layout.y.numpy()

    src, tgt, weight = top_edges(graph.adjacency, max_edges)
    if len(weight):
        strength = (weight.abs() / weight.abs().max()).numpy()
        segments = [
            ((x[s], y[s]), (x[t], y[t])) for s, t in zip(src.tolist(), tgt.tolist(), strict=True)
        ]
        colours = [POSITIVE if w > 0 else NEGATIVE for w in weight.tolist()]
        ax.add_collection(
            LineCollection(
                segments,
                colors=colours,
                linewidths=0.3 + 3.2 * strength,
                alpha=0.25 + 0.55 * strength,
                zorder=1,
            )
        )

    # markers shrink when a cell is crowded, so that neighbours do not overlap
    marker_area = (110.0 * (layout.spacing / 0.4).clamp(max=1.0) ** 2).clamp_min(5.0).numpy()
    for kind, (marker, colour, name) in KIND_STYLE.items():
        idx = [i for i, k in enumerate(graph.node_kind) if k == kind]
        if not idx:
            continue
        ax.scatter(
            x[idx],
            y[idx],
            s=marker_area[idx],
            marker=marker,
            c=colour,
            edgecolors="#333333",
            linewidths=0.6,
            zorder=2,
            label=name,
        )
    # label the most probable logits (all of them would overlap in the last column)
    logits = [i for i, kind in enumerate(graph.node_kind) if kind == "logit"]
    logits = sorted(logits, key=lambda i: -float(graph.node_activation[i]))[:max_logit_labels]
    for i in logits:
        ax.annotate(
            _tick_text(graph.node_label[i].removeprefix("logit "), 24),
            (x[i], y[i]),
            xytext=(0, 6),
            textcoords="offset points",
            ha="left",
            va="bottom",
            fontsize=7,
            rotation=45,
            rotation_mode="anchor",
        )

    _annotate_features(graph, ax, x, y, max_feature_labels)

    ax.set_xticks(layout.column_center.tolist())
    ax.set_xticklabels(
        [_tick_text(t) for t in graph.token_strs] + [""] * (n_pos - len(graph.token_strs)),
        rotation=45 if n_pos > 8 else 0,
        ha="right" if n_pos > 8 else "center",
        fontsize=8,
    )
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels(["emb"] + [f"L{layer}" for layer in range(graph.n_layers)] + ["logit"])
    ax.set_xlim(-0.1, layout.width + 0.1)
    ax.set_ylim(-0.5, n_rows - 0.3)
    ax.grid(axis="y", color="#eeeeee", zorder=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="upper left", fontsize=7, frameon=False, ncols=4, bbox_to_anchor=(0, 1.12))
    title = graph.prompt if len(graph.prompt) <= 70 else graph.prompt[:69] + "…"
    ax.set_title(repr(title), fontsize=9, loc="right")
    return fig


def _annotate_features(graph: AttributionGraph, ax: Axes, x, y, limit: int) -> None:
    """Write the atlas labels of the most influential features beside their markers (the most
    influential feature of each (layer, position) cell, `limit` cells at most)."""
    from circuits.views.feature_labels import atlas_label

    labelled = [i for i in graph.find("feature") if atlas_label(graph, i) is not None]
    if not labelled or limit <= 0:
        return
    if graph.node_influence is not None:  # cumulative share: smaller is more influential
        order = sorted(labelled, key=lambda i: float(graph.node_influence[i]))
    else:
        influence = graph.influence()
        order = sorted(labelled, key=lambda i: -float(influence[i]))
    cells: set[tuple[int, int]] = set()  # one label per (layer, position) cell: no overlaps
    for i in order:
        cell = (int(graph.node_layer[i]), int(graph.node_pos[i]))
        if cell in cells:
            continue
        cells.add(cell)
        ax.annotate(
            _tick_text(atlas_label(graph, i), 28),
            (x[i], y[i]),
            xytext=(3, -4),
            textcoords="offset points",
            ha="left",
            va="top",
            fontsize=6.5,
            color="#7a3b00",
            rotation=-20,
            rotation_mode="anchor",
            bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7},
            zorder=3,
        )
        if len(cells) >= limit:
            break


def graph_png(graph: AttributionGraph, dpi: int = 110, **kwargs: Any) -> bytes:
    """PNG bytes of `draw_graph(graph, **kwargs)` (used for notebooks' `_repr_png_`)."""
    fig = draw_graph(graph, **kwargs)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
