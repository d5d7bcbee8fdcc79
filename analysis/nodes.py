"""Node layout of a spliced model on a task, and the node values ablation starts from.

Nodes are, at every dictionary site, each feature, one error node and, for skip
transcoders, one skip node (see `analysis.node_forward`), either per position
(`per_position=True`: positions 1..n-1 of prompts that all have the same length) or
aggregated over positions (one node per feature and site, ablated at every position).
Position 0 (BOS) has no nodes. Flat node index: site by site, features (position-major),
then the site's error nodes, then its skip nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from analysis.choices import ABLATIONS
from analysis.node_forward import SiteValues, node_forward, ordered_sites
from analysis.tasks import TaskBatch
from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError
from replacement.hooks import hook_layer


@dataclass
class NodeLayout:
    """Which node a flat index is: site, position and feature (-1 error node, -2 skip node)."""

    hooks: list[str]
    """out_hook of each site, in layer order."""
    layers: list[int]
    """Block index of each site."""
    n_features: list[int]
    """Features of each site."""
    n_pos: int
    """Positions of the task's (padded) prompts, BOS included."""
    per_position: bool
    """Nodes per position, or one node per feature aggregated over positions."""
    has_skip: list[bool]
    """Whether each site has skip nodes (skip transcoders)."""

    @property
    def node_positions(self) -> int:
        """Positions that carry nodes: n_pos - 1 (BOS has none), or 1 when aggregated."""
        return self.n_pos - 1 if self.per_position else 1

    def site_sizes(self) -> list[int]:
        """Nodes of each site: positions x (features + 1 error + 1 skip if any)."""
        return [
            self.node_positions * (f + 1 + int(s))
            for f, s in zip(self.n_features, self.has_skip, strict=True)
        ]

    @property
    def n_nodes(self) -> int:
        """All nodes."""
        return sum(self.site_sizes())

    def describe(self, index: int) -> tuple[int, int, int]:
        """(layer, position, feature) of a node; feature -1 is the error node, -2 the skip
        node; position -1 means aggregated over positions."""
        for site, size in enumerate(self.site_sizes()):
            if index < size:
                p, f = self.node_positions, self.n_features[site]
                pos = -1
                if index < p * f:
                    row, feature = divmod(index, f)
                elif index < p * (f + 1):
                    row, feature = index - p * f, -1
                else:
                    row, feature = index - p * (f + 1), -2
                if self.per_position:
                    pos = row + 1
                return self.layers[site], pos, feature
            index -= size
        raise IndexError(f"node {index} is beyond the {self.n_nodes} nodes")

    def split(
        self, values: Float[Tensor, " n_nodes"]
    ) -> list[tuple[Tensor, Tensor, Tensor | None]]:
        """Per site: (features [node_positions, F], errors [node_positions], skips or None)."""
        out, start = [], 0
        p = self.node_positions
        for f, has_skip, size in zip(
            self.n_features, self.has_skip, self.site_sizes(), strict=True
        ):
            chunk = values[start : start + size]
            skip = chunk[p * (f + 1) :] if has_skip else None
            out.append((chunk[: p * f].reshape(p, f), chunk[p * f : p * (f + 1)], skip))
            start += size
        return out

    def join(
        self, per_site: Sequence[tuple[Tensor, Tensor, Tensor | None]]
    ) -> Float[Tensor, " n_nodes"]:
        """Inverse of `split`."""
        return torch.cat(
            [torch.cat([t.reshape(-1) for t in parts if t is not None]) for parts in per_site]
        )

    def masks(
        self, keep: Bool[Tensor, " n_nodes"]
    ) -> dict[str, tuple[Tensor, Tensor, Tensor | None]]:
        """Per out_hook: (keep_features [n_pos, F], keep_errors [n_pos], keep_skips [n_pos] or
        None) for `SiteControl`; position 0 (BOS) is always kept."""
        out = {}
        for hook, parts in zip(self.hooks, self.split(keep), strict=True):
            full = []
            for t in parts:
                if t is None:
                    full.append(None)
                elif self.per_position:
                    full.append(torch.cat([torch.ones_like(t[:1]), t]))
                else:
                    full.append(t.expand(self.n_pos, *t.shape[1:]))
            out[hook] = tuple(full)
        return out


def layout_for(
    model: Any, dictionaries: Sequence[Dictionary], batch: TaskBatch, per_position: bool
) -> NodeLayout:
    """The node layout of `dictionaries` on `batch`.

    Raises:
        SparseCircuitsError: per-position nodes on prompts of different lengths.
    """
    sites = ordered_sites(model, dictionaries)
    if per_position and not batch.equal_length:
        raise SparseCircuitsError(
            "per-position nodes need prompts of one token length (positions must align); "
            "use per_position=False to aggregate nodes over positions"
        )
    return NodeLayout(
        hooks=[d.out_hook for d in sites],
        layers=[hook_layer(d.out_hook) for d in sites],
        n_features=[d.n_features for d in sites],
        n_pos=int(batch.clean.shape[1]),
        per_position=per_position,
        has_skip=[d.W_skip is not None for d in sites],
    )


def valid_positions(batch: TaskBatch) -> Bool[Tensor, "n pos"]:
    """Positions 1..last of each prompt (no BOS, no padding)."""
    pos = torch.arange(batch.clean.shape[1], device=batch.last.device)
    return (pos[None] >= 1) & (pos[None] <= batch.last[:, None])


@torch.no_grad()
def site_values(
    model: Any, dictionaries: Sequence[Dictionary], tokens: Int[Tensor, "n pos"]
) -> dict[str, SiteValues]:
    """Each site's live feature activations and errors on `tokens` (one forward pass)."""
    with node_forward(model, dictionaries, record=True) as state:
        model(tokens.to(model.cfg.device))
    return state.values


def reference_values(
    model: Any,
    dictionaries: Sequence[Dictionary],
    batch: TaskBatch,
    ablation: str,
    per_position: bool,
    clean: dict[str, SiteValues] | None = None,
) -> dict[str, SiteValues]:
    """Values ablated nodes take: the task mean, zero, or the counterfactual prompt's values.

    The mean is over the task's clean prompts, per position when nodes are per position and
    over every non-BOS position otherwise.
    """
    if ablation not in ABLATIONS:
        raise SparseCircuitsError(f"ablation {ablation!r} is unknown; expected one of {ABLATIONS}")
    if ablation == "counterfactual":
        return site_values(model, dictionaries, batch.corrupt)
    clean = clean if clean is not None else site_values(model, dictionaries, batch.clean)
    out = {}
    for hook, v in clean.items():
        parts = v.parts()
        if ablation == "zero":
            ref = {k: t.new_zeros(1, 1, t.shape[-1]) for k, t in parts.items()}
        elif per_position:
            ref = {k: t.mean(0, keepdim=True) for k, t in parts.items()}
        else:
            mask = valid_positions(batch).to(v.acts.device)[..., None].to(v.acts)
            ref = {
                k: ((t * mask).sum((0, 1)) / mask.sum()).reshape(1, 1, -1) for k, t in parts.items()
            }
        out[hook] = SiteValues(**ref)
    return out
