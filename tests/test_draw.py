"""The matplotlib drawing: layout, edge choice, and a PNG that shows what it should."""

from __future__ import annotations

import io

import pytest
import torch

from circuits.graph.attribution_graph import AttributionGraph
from circuits.views.draw import (
    NEGATIVE,
    NODES_PER_UNIT,
    POSITIVE,
    draw_graph,
    graph_layout,
    graph_png,
    top_edges,
)


def synthetic_graph(seed: int = 0, n_pos: int = 5, n_layers: int = 2) -> AttributionGraph:
    """A random layered graph shaped like an attribution graph (edges only go upward).

    Features: 0-3 per (layer, position >= 1); one error node per (layer, position >= 1); a
    token per position; two logits at the last position.
    """
    gen = torch.Generator().manual_seed(seed)
    layer, pos, feat, kind = [], [], [], []
    for lay in range(n_layers):
        for p in range(1, n_pos):
            n_here = int(torch.randint(0, 4, (1,), generator=gen))
            for f in torch.randperm(50, generator=gen)[:n_here]:
                layer.append(lay), pos.append(p), feat.append(int(f)), kind.append("feature")
    for lay in range(n_layers):
        for p in range(1, n_pos):
            layer.append(lay), pos.append(p), feat.append(-1), kind.append("error")
    for p in range(n_pos):
        layer.append(-1), pos.append(p), feat.append(10 + p), kind.append("token")
    for v in (7, 8):
        layer.append(n_layers), pos.append(n_pos - 1), feat.append(v), kind.append("logit")
    n = len(kind)
    layer_t, pos_t = torch.tensor(layer), torch.tensor(pos)
    # source s can feed target t if it is lower and not later; features only (errors, tokens)
    # are never targets
    can = (layer_t[None, :] < layer_t[:, None]) & (pos_t[None, :] <= pos_t[:, None])
    can &= torch.tensor([k in ("feature", "logit") for k in kind])[:, None]
    can &= torch.tensor([k != "logit" for k in kind])[None, :]
    sparse = torch.rand(n, n, generator=gen) < 0.5
    adjacency = torch.randn(n, n, generator=gen) * can * sparse
    activation = torch.rand(n, generator=gen) * 3
    activation[[i for i, k in enumerate(kind) if k == "token"]] = 0.0
    logits = [i for i, k in enumerate(kind) if k == "logit"]
    activation[logits] = torch.tensor([0.7, 0.2])
    labels = [f"{k} L{la} p{p} #{f}" for k, la, p, f in zip(kind, layer, pos, feat, strict=True)]
    return AttributionGraph(
        prompt="def f(x): return",
        tokens=torch.tensor([0] + [10 + p for p in range(1, n_pos)]),
        token_strs=["<bos>", "def", " f", "(x", "):"][:n_pos] + ["?"] * max(0, n_pos - 5),
        node_kind=kind,
        node_layer=layer_t,
        node_pos=pos_t,
        node_feature=torch.tensor(feat),
        node_activation=activation,
        node_label=labels,
        adjacency=adjacency,
        n_layers=n_layers,
        model_name="synthetic",
    )


def test_layout_rows_and_cells():
    graph = synthetic_graph()
    layout = graph_layout(graph)
    assert torch.equal(layout.y, graph.node_layer + 1)
    centres = layout.column_center
    assert len(centres) == len(graph.token_strs) and (centres.diff() >= 1.0).all()
    cells = {}
    for i in range(graph.n_nodes):
        cells.setdefault((int(layout.y[i]), int(graph.node_pos[i])), []).append(i)
    for members in cells.values():
        xs = [float(layout.x[i]) for i in members]
        assert xs == sorted(xs) and len(set(xs)) == len(xs)  # spread, in node order
        centre = float(centres[int(graph.node_pos[members[0]])])
        assert abs(sum(xs) / len(xs) - centre) < 1e-9  # centred on the column
        assert all(int(layout.cell_size[i]) == len(members) for i in members)
        if len(xs) > 1:
            assert min(b - a for a, b in zip(xs, xs[1:], strict=False)) == pytest.approx(
                float(layout.spacing[members[0]])
            )


def test_crowded_columns_widen():
    graph = synthetic_graph(n_pos=3, n_layers=1)
    # the crowded cell: layer 0, last position (its features and its error node)
    last = graph.find("feature", layer=0, pos=2) + graph.find("error", layer=0, pos=2)
    # 30 more features in layer 0 at the last position: that column widens to 30/6 units
    extra = 30
    n = graph.n_nodes
    graph.node_kind = ["feature"] * extra + graph.node_kind
    graph.node_layer = torch.cat([torch.zeros(extra, dtype=torch.long), graph.node_layer])
    graph.node_pos = torch.cat([torch.full((extra,), 2), graph.node_pos])
    graph.node_feature = torch.cat([torch.arange(100, 100 + extra), graph.node_feature])
    graph.node_activation = torch.cat([torch.ones(extra), graph.node_activation])
    graph.node_label = [f"x{i}" for i in range(extra)] + graph.node_label
    graph.adjacency = torch.zeros(n + extra, n + extra)
    layout = graph_layout(graph)
    crowd = extra + len(last)
    assert layout.width == pytest.approx(2.0 + crowd / NODES_PER_UNIT)
    assert float(layout.column_center[2]) == pytest.approx(2.0 + crowd / NODES_PER_UNIT / 2)
    png = graph_png(graph)
    assert png[:4] == b"\x89PNG"


def test_top_edges_are_the_strongest():
    a = torch.tensor([[0.0, 2.0, -5.0], [0.5, 0.0, 0.0], [0.0, -1.0, 0.0]])
    src, tgt, w = top_edges(a, 2)
    assert sorted(zip(tgt.tolist(), src.tolist(), w.tolist(), strict=True)) == [
        (0, 1, 2.0),
        (0, 2, -5.0),
    ]
    src, tgt, w = top_edges(a, 100)
    assert len(w) == 4 and torch.equal(a[tgt, src], w)
    assert w.abs().tolist() == sorted(w.abs().tolist())  # strongest drawn last


def test_drawing_has_every_node_and_the_chosen_edges():
    graph = synthetic_graph()
    fig = draw_graph(graph, max_edges=25)
    ax = fig.axes[0]
    n_points = sum(len(c.get_offsets()) for c in ax.collections if hasattr(c, "get_sizes"))
    lines = [c for c in ax.collections if type(c).__name__ == "LineCollection"]
    assert n_points == graph.n_nodes
    assert len(lines) == 1 and len(lines[0].get_segments()) == 25
    colours = {tuple(c) for c in lines[0].get_colors()}
    from matplotlib.colors import to_rgba

    _, _, w = top_edges(graph.adjacency, 25)
    expected = {to_rgba(POSITIVE if v > 0 else NEGATIVE) for v in w.tolist()}
    assert {c[:3] for c in colours} == {c[:3] for c in expected}
    widths = lines[0].get_linewidths()
    assert widths[-1] == max(widths)  # the strongest edge is the widest
    assert [t.get_text() for t in ax.get_xticklabels()] == graph.token_strs
    assert [t.get_text() for t in ax.get_yticklabels()] == ["emb", "L0", "L1", "logit"]


def test_png_bytes_and_repr(tmp_path):
    graph = synthetic_graph()
    data = graph_png(graph)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert graph._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    image = imread(io.BytesIO(data))
    assert image.shape[0] > 200 and image.shape[1] > 400
    # an edgeless graph still draws
    empty = synthetic_graph()
    empty.adjacency = torch.zeros_like(empty.adjacency)
    assert graph_png(empty)[:4] == b"\x89PNG"
