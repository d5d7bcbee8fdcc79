"""Rank a spliced model's nodes by their effect on a task metric, averaged over its prompts.

Three methods:

- `attribution_patching` (Marks et al. 2024): effect of node i on prompt b ~
  dm/da_i * (a_i(clean) - a_i(reference)), the first-order change of the metric if the node
  were ablated, from one forward and one backward pass over all prompts;
- `integrated_gradients`: the same with the gradient averaged along the straight path from
  the reference to the clean values of one site at a time (`steps` points per site), slower
  and more accurate where the metric is not linear in the nodes;
- `graph_influence`: each prompt's attribution graph (`circuits.attribution.attribute`) with the metric's
  unembedding direction as target; a node's score is its influence on that target.

Scores are signed mean effects (influence is never negative); circuits take the nodes of
largest absolute score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from analysis.node_forward import SiteControl, SiteValues, node_forward
from analysis.nodes import NodeLayout, layout_for, reference_values, site_values, valid_positions
from analysis.tasks import TaskBatch, prompt_metric, target_direction
from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError

METHODS = ("attribution_patching", "integrated_gradients", "graph_influence")


@dataclass
class NodeScores:
    """One score per node of a layout."""

    scores: Float[Tensor, " n_nodes"]
    """Signed mean effect of each node on the metric (for graph influence: its influence)."""
    layout: NodeLayout
    """Which node each score belongs to."""
    method: str
    """How the scores were computed."""

    def order(self) -> Tensor:
        """Node indices by decreasing |score| (ties in index order)."""
        return torch.sort(self.scores.abs(), descending=True, stable=True).indices

    def top(self, n: int = 10) -> list[tuple[tuple[int, int, int], float]]:
        """The n best nodes as ((layer, position, feature), score); feature -1 is an error."""
        return [(self.layout.describe(int(i)), float(self.scores[i])) for i in self.order()[:n]]


def _node_effects(
    layout: NodeLayout,
    batch: TaskBatch,
    grads: dict[str, SiteValues],
    clean: dict[str, SiteValues],
    reference: dict[str, SiteValues],
) -> Float[Tensor, " n_nodes"]:
    """sum over prompts of grad * (clean - reference), shaped as the layout's nodes."""
    valid = valid_positions(batch)
    per_site = []
    for hook in layout.hooks:
        g, c, r = grads[hook].parts(), clean[hook].parts(), reference[hook].parts()
        mask = valid.to(c["acts"].device)
        effects = {}
        for name in c:
            e = g[name] * (c[name] - r[name].to(c[name]))  # [b, pos, F or d]
            e = e if name == "acts" else e.sum(-1, keepdim=True)
            e = e * mask[..., None]
            e = e.sum(0)[1:] if layout.per_position else e.sum((0, 1))[None]
            effects[name] = e
        skip = effects["skip"].reshape(-1) if "skip" in effects else None
        per_site.append((effects["acts"], effects["err"].reshape(-1), skip))
    return layout.join(per_site)


def _chunks(batch: TaskBatch, size: int):
    """(rows, batch of those rows) for consecutive chunks of `size` prompts."""
    n = batch.clean.shape[0]
    for start in range(0, n, size):
        rows = slice(start, min(start + size, n))
        yield rows, batch.rows(rows)


def _slice_values(values: dict[str, SiteValues], sl: slice) -> dict[str, SiteValues]:
    """Rows `sl` of per-prompt values; broadcast (batch 1) values stay as they are."""
    return {
        h: v if v.acts.shape[0] == 1 else SiteValues(**{k: t[sl] for k, t in v.parts().items()})
        for h, v in values.items()
    }


def _leaves(values: dict[str, SiteValues]) -> dict[str, SiteValues]:
    """Zero tensors shaped like each site's nodes, requiring grad."""
    return {
        h: SiteValues(**{k: torch.zeros_like(t, requires_grad=True) for k, t in v.parts().items()})
        for h, v in values.items()
    }


def _grads(
    model: Any, dictionaries, batch: TaskBatch, controls: dict[str, SiteControl], leaves
) -> dict[str, SiteValues]:
    with torch.enable_grad(), node_forward(model, dictionaries, controls):
        metric = prompt_metric(model, batch).sum()
    flat = [(h, k, t) for h in leaves for k, t in leaves[h].parts().items()]
    grads = torch.autograd.grad(metric, [t for _, _, t in flat], allow_unused=True)
    out: dict[str, dict[str, Tensor]] = {h: {} for h in leaves}
    for (h, k, t), g in zip(flat, grads, strict=True):
        out[h][k] = torch.zeros_like(t) if g is None else g
    return {h: SiteValues(**parts) for h, parts in out.items()}


def attribution_patching(
    model: Any,
    dictionaries: Sequence[Dictionary],
    batch: TaskBatch,
    ablation: str = "mean",
    per_position: bool = True,
    batch_size: int = 64,
) -> NodeScores:
    """Scores = mean over prompts of dm/d(node) * (clean - reference), one backward per chunk."""
    batch = batch.to(model.cfg.device)
    layout = layout_for(model, dictionaries, batch, per_position)
    reference = reference_values(model, dictionaries, batch, ablation, per_position)
    total = torch.zeros(layout.n_nodes)
    for sl, part in _chunks(batch, batch_size):
        clean = site_values(model, dictionaries, part.clean)
        leaves = _leaves(clean)
        controls = {h: SiteControl(delta=leaves[h]) for h in leaves}
        grads = _grads(model, dictionaries, part, controls, leaves)
        total += _node_effects(layout, part, grads, clean, _slice_values(reference, sl)).cpu()
    return NodeScores(total / batch.clean.shape[0], layout, "attribution_patching")


def integrated_gradients(
    model: Any,
    dictionaries: Sequence[Dictionary],
    batch: TaskBatch,
    ablation: str = "mean",
    per_position: bool = True,
    steps: int = 5,
    batch_size: int = 64,
    verbose: bool = False,
) -> NodeScores:
    """Integrated gradients per site: the site's nodes move from the reference to their clean
    values in `steps` midpoint steps while the other sites run live; scores are the mean
    gradient along the path times (clean - reference). Costs sites x steps backward passes."""
    if steps < 1:
        raise SparseCircuitsError(f"steps must be at least 1, got {steps}")
    batch = batch.to(model.cfg.device)
    layout = layout_for(model, dictionaries, batch, per_position)
    reference = reference_values(model, dictionaries, batch, ablation, per_position)
    total = torch.zeros(layout.n_nodes)
    bar = tqdm(
        total=len(layout.hooks) * steps,
        desc="integrated gradients",
        disable=not verbose,
        leave=False,
    )
    for sl, part in _chunks(batch, batch_size):
        clean = site_values(model, dictionaries, part.clean)
        ref = _slice_values(reference, sl)
        mean_grads = {
            h: {k: torch.zeros_like(t) for k, t in v.parts().items()} for h, v in clean.items()
        }
        for hook in layout.hooks:
            c, r = clean[hook].parts(), ref[hook].parts()
            for step in range(steps):
                alpha = (step + 0.5) / steps
                point = SiteValues(**{k: r[k].to(c[k]) + alpha * (c[k] - r[k].to(c[k])) for k in c})
                leaves = _leaves({hook: point})
                controls = {hook: SiteControl(replace=point, delta=leaves[hook])}
                g = _grads(model, dictionaries, part, controls, leaves)[hook].parts()
                for k in g:
                    mean_grads[hook][k] += g[k] / steps
                bar.update(1)
        mean_grads = {h: SiteValues(**parts) for h, parts in mean_grads.items()}
        total += _node_effects(layout, part, mean_grads, clean, ref).cpu()
    bar.close()
    return NodeScores(total / batch.clean.shape[0], layout, "integrated_gradients")


def graph_influence(
    model: Any,
    dictionaries: Sequence[Dictionary],
    batch: TaskBatch,
    per_position: bool = True,
    max_prompts: int = 8,
    max_feature_nodes: int | None = 256,
    verbose: bool = False,
) -> NodeScores:
    """Scores = mean influence on the metric direction in each prompt's attribution graph.

    The target of each graph is W_U[:, answer] - W_U[:, wrong] at the final norm's output
    (`attribute(..., target_direction=...)`); the first `max_prompts` prompts are traced,
    keeping at most `max_feature_nodes` features each.
    """
    from circuits.attribution.attribute import attribute

    batch = batch.to(model.cfg.device)
    layout = layout_for(model, dictionaries, batch, per_position)
    site_of_layer = {layer: i for i, layer in enumerate(layout.layers)}
    if len(site_of_layer) != len(layout.layers):
        raise SparseCircuitsError("graph influence needs at most one dictionary per layer")
    n = min(max_prompts, batch.clean.shape[0])
    p = layout.node_positions
    # skip paths are edges in attribution graphs, not nodes: their score stays 0
    per_site = [
        (torch.zeros(p, f), torch.zeros(p), torch.zeros(p) if s else None)
        for f, s in zip(layout.n_features, layout.has_skip, strict=True)
    ]
    for b in tqdm(range(n), desc="attribution graphs", disable=not verbose, leave=False):
        one = batch.rows(slice(b, b + 1))
        tokens = one.clean[0, : int(one.last[0]) + 1]
        graph = attribute(
            model,
            dictionaries,
            tokens,
            target_direction=target_direction(model, one),
            max_feature_nodes=max_feature_nodes,
            verbose=False,
        )
        influence = graph.influence()
        for i, kind in enumerate(graph.node_kind):
            if kind not in ("feature", "error"):
                continue
            site = site_of_layer[int(graph.node_layer[i])]
            row = int(graph.node_pos[i]) - 1 if per_position else 0
            feat, err, _ = per_site[site]
            if kind == "feature":
                feat[row, int(graph.node_feature[i])] += float(influence[i])
            else:
                err[row] += float(influence[i])
    return NodeScores(layout.join(per_site) / n, layout, "graph_influence")


def rank_nodes(
    model: Any,
    dictionaries: Sequence[Dictionary],
    batch: TaskBatch,
    method: str = "attribution_patching",
    ablation: str = "mean",
    per_position: bool = True,
    **kwargs: Any,
) -> NodeScores:
    """Node scores by `method` (one of `METHODS`); extra keywords go to the method."""
    if method == "attribution_patching":
        return attribution_patching(model, dictionaries, batch, ablation, per_position, **kwargs)
    if method == "integrated_gradients":
        return integrated_gradients(model, dictionaries, batch, ablation, per_position, **kwargs)
    if method == "graph_influence":
        return graph_influence(model, dictionaries, batch, per_position, **kwargs)
    raise SparseCircuitsError(f"method {method!r} is unknown; expected one of {METHODS}")
