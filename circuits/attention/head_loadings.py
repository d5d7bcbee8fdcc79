"""Head loadings: an edge split into one term per attention head of each layer plus a bypass.

With attention patterns and norm scales frozen, the Jacobian of layer l's attention block is
I + sum_h J_{l,h} (one term per head: the head's value-output path). An edge is a product of
such factors along the stream, so for every layer l

    edge = bypass_l + sum_h loading_{l,h}

exactly: loading_{l,h} is the part of the edge that passes through head h of layer l (and any
heads of other layers), bypass_l the part that skips layer l's attention. For a target below
layer l or a source above it, layer l is not on the path: every loading is zero and the bypass
is the edge.

Methods. "linear" (where every MLP has a transcoder, as `attribute`'s linear path): one
forward sweep of the edges' sources (`ResidualStream.sweep`: each source's contribution x_s to
every layer's resid_pre) and one backward sweep of their targets (`ResidualStream.backward`: the
gradient g_t at every layer's resid_mid and resid_post), then for every layer at once

    loading_{l,h} = < g_t(mid_l), head_{l,h}(x_s(pre_l)) >
    bypass_l      = < g_t(mid_l), x_s(pre_l) > + (the source's writes at layers >= l) . g_t
                    (the whole edge when the target reads below layer l)

and the edge is the sum of the source's writes dotted with g_t where they are written; that
bypass_l + sum_h loading_{l,h} equals it is a real check of the forward against the backward.

"autograd" (every dictionary kind): the autograd row engine of `circuits.attribute` on a batch of repeated prompts in which
each batch row cuts a different part of the graph (the head's `attn.hook_z` detached, so its
value is unchanged and no gradient passes): row "none" gives the edge, row "layer l" (every head
of l cut) gives bypass_l, row "(l, h)" gives edge - loading_{l,h}. All layers and heads come
from one forward and one backward pass per batch of targets, for every dictionary kind the
autograd engine takes (transcoders, skip and cross-layer transcoders, SAEs: for SAEs the MLPs
are differentiated through, and the split is exact for that linearisation). The sum
bypass_l + sum_h loading_{l,h} = edge is a real check: the three kinds of rows are different
backward passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuits.attention.graph_nodes import NodeMap, as_long, split_targets
from circuits.attention.stream import ResidualStream
from circuits.attribution.attribute import _ordered
from circuits.attribution.linear_rows import linear_path_problem
from circuits.attribution.row_engine import RowEngine
from circuits.attribution.sources import collect_sources
from replacement.errors import SparseCircuitsError
from replacement.hook_table import block_hook, hook_layer

ROWS_PER_BATCH = 64
"""Batch rows per forward/backward pass (each target takes 1 + L + L * H rows)."""


@dataclass
class HeadLoadings:
    """Head loadings of a list of edges (graph node indices, target <- source)."""

    target: Int[Tensor, " e"]
    """Target node of each edge."""
    source: Int[Tensor, " e"]
    """Source node of each edge."""
    edge: Float[Tensor, " e"]
    """The edge recomputed (equals the graph's adjacency entry)."""
    heads: Float[Tensor, "e layer head"]
    """loading_{l,h}: the part of the edge through head h of layer l."""
    bypass: Float[Tensor, "e layer"]
    """The part of the edge that skips layer l's attention."""

    @property
    def n_edges(self) -> int:
        """Number of edges."""
        return int(self.target.numel())

    def max_relative_gap(self) -> float:
        """max over edges and layers of |bypass + sum_h heads - edge| / max |edge|."""
        total = self.bypass + self.heads.sum(-1)
        scale = self.edge.abs().max().clamp_min(1e-30)
        return float(((total - self.edge[:, None]).abs().max() / scale).item())

    def top_heads(self, i: int, n: int = 5) -> list[tuple[int, int, float]]:
        """The n (layer, head, loading) of largest |loading| of edge i."""
        flat = self.heads[i].reshape(-1)
        order = flat.abs().argsort(descending=True)[:n]
        n_heads = self.heads.shape[-1]
        return [(int(j) // n_heads, int(j) % n_heads, float(flat[j])) for j in order]


class _CutRowEngine(RowEngine):
    """The autograd row engine with a per-batch-row cut of attention heads."""

    def __init__(self, *args: Any, cut_mask: Tensor, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.cut_mask = cut_mask  # [batch, layer, head] bool

    def __enter__(self) -> _CutRowEngine:
        def hook(z: Tensor, hook: Any) -> Tensor:
            layer = hook_layer(hook.name)
            mask = self.cut_mask[: z.shape[0], layer].to(z.device)[:, None, :, None]
            return torch.where(mask, z.detach(), z)

        n_layers = self.model.cfg.n_layers
        hooks = [(block_hook(layer, "attn.hook_z"), hook) for layer in range(n_layers)]
        with self.model.hooks(fwd_hooks=hooks):
            super().__enter__()
        return self


def _cut_masks(n_layers: int, n_heads: int) -> Tensor:
    """[1 + L + L H, L, H]: no cut; each layer's heads all cut; each single head cut."""
    masks = torch.zeros(1 + n_layers + n_layers * n_heads, n_layers, n_heads, dtype=torch.bool)
    for layer in range(n_layers):
        masks[1 + layer, layer] = True
        for h in range(n_heads):
            masks[1 + n_layers + layer * n_heads + h, layer, h] = True
    return masks


def head_loadings(
    model: Any,
    dictionaries: Any,
    graph: Any,
    edges: tuple[Any, Any] | None = None,
    *,
    top: int = 200,
    cross_position: bool = False,
    method: str = "auto",
) -> HeadLoadings:
    """Split edges of `graph` into per-head loadings and bypasses, every layer at once.

    Args:
        model, dictionaries: those the graph was attributed with (same prompt, same weights).
        graph: an `AttributionGraph` (dense or sparse adjacency; full or pruned).
        edges: (targets, sources) as graph node indices; None takes the `top` edges of
            largest |weight| (only those whose source and target positions differ when
            `cross_position`).
        method: "linear", "autograd" or "auto" (linear where it applies; module docstring).
    """
    if method not in ("auto", "linear", "autograd"):
        raise SparseCircuitsError(
            f"method {method!r} is not known; expected 'auto', 'linear' or 'autograd'"
        )
    dictionaries = _ordered(model, dictionaries)
    if edges is None:
        edges = strongest_edges(graph, top, cross_position)
    targets, sources_ = as_long(edges[0]), as_long(edges[1])
    if targets.shape != sources_.shape:
        raise SparseCircuitsError("edges need as many targets as sources")
    tokens = graph.tokens.to(model.cfg.device)
    sources = collect_sources(model, dictionaries, tokens)
    nodes = NodeMap(graph, sources, dictionaries)
    src_index = torch.tensor([nodes.source_index(int(s)) for s in sources_], dtype=torch.long)
    unique, position = torch.unique(targets, return_inverse=True)
    feat_at, logit_at = split_targets(graph, unique)
    problem = linear_path_problem(model, dictionaries)
    if method == "linear" and problem is not None:
        raise SparseCircuitsError(f"method='linear' does not apply: {problem}")
    if method != "autograd" and problem is None:
        stream = ResidualStream(model, dictionaries, tokens, sources)
        loadings = _linear(stream, nodes, model, unique, feat_at, logit_at, position, src_index)
        return HeadLoadings(targets, sources_, *loadings)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    masks = _cut_masks(n_layers, n_heads)
    per_target = masks.shape[0]
    k = max(1, ROWS_PER_BATCH // per_target)
    cut_mask = masks.repeat(k, 1, 1)
    columns, src_column = torch.unique(src_index, return_inverse=True)
    rows = torch.empty(len(unique), per_target, len(columns))  # only the edges' sources
    with torch.no_grad():
        with _CutRowEngine(
            model, dictionaries, tokens, sources, k * per_target, cut_mask=cut_mask
        ) as engine:
            for start in range(0, len(feat_at), k):  # one batch of k targets at a time
                part = feat_at[start : start + k]
                chosen = torch.tensor([nodes.feature_target(int(unique[i])) for i in part])
                chosen = chosen.repeat_interleave(per_target).to(sources.feat_dict.device)
                out = engine.rows_for_features(chosen)[:, columns.to(chosen.device)]
                rows[part] = out.float().cpu().reshape(len(part), per_target, -1)
            for start in range(0, len(logit_at), k):
                part = logit_at[start : start + k]
                dirs = torch.stack([nodes.logit_direction(model, int(unique[i])) for i in part])
                out = engine.rows_for_logits(dirs.repeat_interleave(per_target, 0))
                out = out[:, columns.to(out.device)]
                rows[part] = out.float().cpu().reshape(len(part), per_target, -1)
    picked = rows[position, :, src_column]  # [e, rows per target]
    full = picked[:, 0]
    bypass = picked[:, 1 : 1 + n_layers]
    cut = picked[:, 1 + n_layers :].reshape(-1, n_layers, n_heads)
    return HeadLoadings(targets, sources_, full, full[:, None, None] - cut, bypass)


def _linear(
    stream: ResidualStream,
    nodes: NodeMap,
    model: Any,
    unique: Tensor,
    feat_at: list[int],
    logit_at: list[int],
    position: Tensor,
    src_index: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """(edge, heads, bypass) by one forward and one backward sweep (module docstring)."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    feats = torch.tensor([nodes.feature_target(int(unique[i])) for i in feat_at], dtype=torch.long)
    dirs = [nodes.logit_direction(model, int(unique[i])) for i in logit_at]
    dirs = torch.stack(dirs) if dirs else torch.zeros(0, stream.d)
    post, mid, embed_grad = stream.backward(feats, dirs)
    row_of = torch.empty(len(unique), dtype=torch.long)  # unique target -> gradient row
    row_of[feat_at] = torch.arange(len(feat_at))
    row_of[logit_at] = torch.arange(len(feat_at), len(feat_at) + len(logit_at))
    t_row = row_of[position]  # per edge
    kept, s_row = torch.unique(src_index, return_inverse=True)  # per edge: row among `kept`
    n_edges = len(src_index)
    # each write of an edge's source, dotted with its target's gradient where it is written
    writes = torch.zeros(n_edges, n_layers + 1, dtype=stream.dtype)  # column 0: embedding
    for layer, (who, pos, vec) in stream.injections_of(kept).items():
        grad = embed_grad if layer < 0 else post[layer]
        vals = torch.einsum("tid,id->ti", grad[:, pos], vec)  # [targets, writes]
        by_source = torch.zeros(len(grad), len(kept), dtype=vals.dtype)
        by_source.index_add_(1, who, vals)
        writes[:, layer + 1] = by_source[t_row, s_row]
    edge = writes.sum(1)
    target_layer = nodes.graph.node_layer[unique][position]  # logits: n_layers
    heads = torch.zeros(n_edges, n_layers, n_heads, dtype=stream.dtype)
    bypass = torch.zeros(n_edges, n_layers, dtype=stream.dtype)
    for layer, index, x in stream.sweep(keep=kept):
        later = writes[:, layer + 1 :].sum(1)  # writes at this layer's MLP or above
        local = torch.full((len(kept),), -1, dtype=torch.long)
        local[torch.searchsorted(kept, index)] = torch.arange(len(index))
        at = local[s_row]
        live = at >= 0  # edges whose source is written below this layer
        bypass[:, layer] = later
        below = target_layer < layer  # the target reads below this layer: not on the path
        bypass[below, layer] = edge[below]
        live &= ~below
        if not live.any():
            continue
        g = mid[layer][t_row[live]]  # [e, pos, d]
        per_head = stream.attention(x, layer, per_head=True)[at[live]]  # [e, pos, head, d]
        heads[live, layer] = torch.einsum("eqd,eqhd->eh", g, per_head)
        bypass[live, layer] += torch.einsum("eqd,eqd->e", g, x[at[live]])
    return edge.float(), heads.float(), bypass.float()


def strongest_edges(
    graph: Any, top: int, cross_position: bool = False
) -> tuple[Int[Tensor, " e"], Int[Tensor, " e"]]:
    """(targets, sources) of the `top` edges of largest |weight| (optionally only those whose
    endpoints sit at different positions, the edges attention carries)."""
    target, source, weight = graph.edges()
    if cross_position:
        keep = graph.node_pos[target] != graph.node_pos[source]
        target, source, weight = target[keep], source[keep], weight[keep]
    order = weight.abs().argsort(descending=True)[:top]
    return target[order], source[order]
