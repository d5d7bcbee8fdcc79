"""Edge-level circuits: edges from a node to a later site (or to the logits).

Nodes are those of `analysis.nodes` (features, error and skip nodes per site and position).
An edge u -> T runs from node u at site A to a later site T, or to the logits, and carries
every path from u to T's input that passes through no other dictionary site (through
attention, MLPs and norms that are not sites, and the residual stream). Downstream, an edge
ends at the whole site T (all its nodes, all positions): attention mixes positions and one
forward pass can give T's input only one view of its upstream nodes.

**Ablating edges.** The edge circuit model computes, for each target in layer order, one
forward pass in which every upstream node u takes its circuit value where the edge u -> T is
kept and its reference value (mean, zero or counterfactual, as for nodes) where it is not.
The circuit value of a site's nodes is what that site computed in its own pass (the first
site, having no upstream nodes, runs live); the logits pass gives the metric. Keeping every
edge is therefore the original model (faithfulness 1) and keeping none is the model with
every node ablated, the same empty circuit as for nodes (faithfulness 0). A circuit costs
one forward per site over all prompts.

**Ranking: edge attribution patching.** effect(u -> T) ~ sum over prompts of
dm/d(u along paths to T only) x (clean - reference value of u), where the derivative is
that of g_T . nodes_T (g_T = dm/d nodes_T, the total derivative) with every site's output
built from detached node values, so that gradients stop at every site. Summed over T these
effects are the node's attribution-patching score (chain rule over the first site a path
meets).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from analysis.faithfulness import FaithfulnessCurve, grow_circuits
from analysis.node_forward import SiteControl, SiteValues, node_forward
from analysis.nodes import NodeLayout, layout_for, reference_values, site_values
from analysis.ranking import _chunks, _grads, _leaves, _node_effects, _slice_values
from analysis.tasks import TaskBatch, prompt_metric
from replacement.dictionary import Dictionary

LOGITS = "logits"
"""Name of the last edge target: the metric read from the logits."""


@dataclass
class EdgeScores:
    """One score per edge (upstream node, downstream target)."""

    scores: Float[Tensor, "targets n_nodes"]
    """Signed mean effect of edge (node -> target); 0 where the node is not upstream."""
    layout: NodeLayout
    """The nodes."""
    method: str
    """How the scores were computed."""

    @property
    def targets(self) -> list[str]:
        """Each site after the first (its out_hook), then `LOGITS`."""
        return [*self.layout.hooks[1:], LOGITS]

    @property
    def valid(self) -> Bool[Tensor, "targets n_nodes"]:
        """Which (target, node) pairs are edges: the node's site comes before the target."""
        sizes = torch.tensor(self.layout.site_sizes())
        site = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
        return site[None, :] <= torch.arange(len(self.targets))[:, None]

    @property
    def n_edges(self) -> int:
        """All edges."""
        return int(self.valid.sum())

    def edge_index(self) -> Tensor:
        """Flat (target * n_nodes + node) index of every edge, in edge order."""
        return self.valid.reshape(-1).nonzero().squeeze(1)

    def order(self) -> Tensor:
        """Edges (positions in `edge_index`) by decreasing |score| (ties in index order)."""
        flat = self.scores.reshape(-1)[self.edge_index()]
        return torch.sort(flat.abs(), descending=True, stable=True).indices

    def keep_matrix(self, keep: Bool[Tensor, " n_edges"]) -> Bool[Tensor, "targets n_nodes"]:
        """The kept edges as a [targets, n_nodes] mask."""
        out = torch.zeros(self.scores.numel(), dtype=torch.bool)
        out[self.edge_index()] = keep
        return out.reshape(self.scores.shape)

    def top(self, n: int = 10) -> list[tuple[tuple[int, int, int], str, float]]:
        """The n best edges as ((layer, position, feature) of the node, target, score)."""
        index, nodes = self.edge_index(), self.layout.n_nodes
        out = []
        for i in self.order()[:n]:
            target, node = divmod(int(index[i]), nodes)
            score = float(self.scores[target, node])
            out.append((self.layout.describe(node), self.targets[target], score))
        return out


def edge_attribution_patching(
    model: Any,
    dictionaries: Sequence[Dictionary],
    batch: TaskBatch,
    ablation: str = "mean",
    per_position: bool = True,
    batch_size: int = 64,
) -> EdgeScores:
    """Edge scores: per target, the gradient of g_T . nodes_T (or of the metric, for the
    logits) with gradients stopped at every site, times (clean - reference) of each node.
    Costs two forwards and sites + 1 backwards per chunk of prompts."""
    batch = batch.to(model.cfg.device)
    layout = layout_for(model, dictionaries, batch, per_position)
    reference = reference_values(model, dictionaries, batch, ablation, per_position)
    hooks, n_targets = layout.hooks, len(layout.hooks)
    total = torch.zeros(n_targets, layout.n_nodes)
    for sl, part in _chunks(batch, batch_size):
        clean = site_values(model, dictionaries, part.clean)
        ref = _slice_values(reference, sl)
        leaves = _leaves(clean)
        g = _grads(
            model, dictionaries, part, {h: SiteControl(delta=leaves[h]) for h in hooks}, leaves
        )
        leaves = _leaves(clean)
        cut = {h: SiteControl(delta=leaves[h], cut=True) for h in hooks}
        with (
            torch.enable_grad(),
            node_forward(model, dictionaries, cut, record=True, graph=True) as state,
        ):
            metric = prompt_metric(model, part).sum()
        for t in range(n_targets):
            if t + 1 < n_targets:  # a site: its nodes weighted by their total derivatives
                target = hooks[t + 1]
                g_t, values = g[target].parts(), state.values[target].parts()
                objective = sum((g_t[k] * values[k]).sum() for k in values)
            else:
                objective = metric
            flat = [(h, k, x) for h in hooks[: t + 1] for k, x in leaves[h].parts().items()]
            grads = torch.autograd.grad(
                objective, [x for _, _, x in flat], retain_graph=True, allow_unused=True
            )
            per_site = {
                h: {k: torch.zeros_like(x) for k, x in leaves[h].parts().items()} for h in hooks
            }
            for (h, k, _), d in zip(flat, grads, strict=True):
                if d is not None:
                    per_site[h][k] = d
            direct = {h: SiteValues(**parts) for h, parts in per_site.items()}
            total[t] += _node_effects(layout, part, direct, clean, ref).cpu()
    return EdgeScores(total / batch.clean.shape[0], layout, "edge_attribution_patching")


def _mix(
    circuit: SiteValues, reference: SiteValues, masks: tuple[Tensor, Tensor, Tensor | None]
) -> SiteValues:
    """Circuit values where the mask keeps the node, reference values elsewhere."""
    keep_f, keep_e, keep_s = (None if m is None else m.to(circuit.acts.device) for m in masks)
    out = {
        "acts": torch.where(keep_f[None], circuit.acts, reference.acts.to(circuit.acts)),
        "err": torch.where(keep_e[None, :, None], circuit.err, reference.err.to(circuit.err)),
    }
    if circuit.skip is not None:
        out["skip"] = torch.where(
            keep_s[None, :, None], circuit.skip, reference.skip.to(circuit.skip)
        )
    return SiteValues(**out)


@torch.no_grad()
def edge_circuit_metric(
    model: Any,
    dictionaries: Sequence[Dictionary],
    batch: TaskBatch,
    layout: NodeLayout,
    keep: Bool[Tensor, "targets n_nodes"],
    reference: dict[str, SiteValues],
    batch_size: int = 256,
    clean: dict[str, SiteValues] | None = None,
) -> Float[Tensor, " n"]:
    """The metric of each prompt in the edge circuit model keeping the edges in `keep`
    (rows: targets as in `EdgeScores.targets`; entries of non-upstream nodes are ignored).
    `clean`: the live site values on `batch.clean`, if already computed (the first site's
    circuit values are its live ones)."""
    hooks, out = layout.hooks, []
    clean = clean if clean is not None else site_values(model, dictionaries, batch.clean)
    for sl, part in _chunks(batch, batch_size):
        ref = _slice_values(reference, sl)
        circuit = {hooks[0]: _slice_values(clean, sl)[hooks[0]]}
        for t in range(len(hooks)):
            masks = layout.masks(keep[t])
            controls = {
                h: SiteControl(replace=_mix(circuit[h], ref[h], masks[h])) for h in hooks[: t + 1]
            }
            with node_forward(model, dictionaries, controls, record=t + 1 < len(hooks)) as state:
                if t + 1 < len(hooks):
                    model(part.clean)
                    circuit[hooks[t + 1]] = state.values[hooks[t + 1]]
                else:
                    out.append(prompt_metric(model, part))
    return torch.cat(out)


def edge_faithfulness_curve(
    model: Any,
    dictionaries: Sequence[Dictionary],
    batch: TaskBatch,
    scores: EdgeScores,
    sizes: Sequence[int] | None = None,
    ablation: str = "mean",
    batch_size: int = 256,
    completeness_sizes: Sequence[int] | None = None,
    verbose: bool = False,
) -> FaithfulnessCurve:
    """Faithfulness and completeness of the top-n edge circuits by |score| (sizes in edges;
    the curve's `n_nodes` is the number of edges). Arguments as `faithfulness_curve`."""
    batch = batch.to(model.cfg.device)
    layout = scores.layout
    clean = site_values(model, dictionaries, batch.clean)
    reference = reference_values(
        model, dictionaries, batch, ablation, layout.per_position, clean=clean
    )

    def measure(keep: Tensor | None) -> float:
        if keep is None:
            with torch.no_grad():
                return float(prompt_metric(model, batch).mean())
        matrix = scores.keep_matrix(keep)
        metric = edge_circuit_metric(
            model, dictionaries, batch, layout, matrix, reference, batch_size, clean
        )
        return float(metric.mean())

    grown = grow_circuits(
        measure, scores.order(), scores.n_edges, sizes, completeness_sizes, verbose
    )
    return grown.finish(ablation, scores.method, level="edges")
