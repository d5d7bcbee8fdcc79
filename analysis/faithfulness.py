"""Faithfulness and completeness of circuits of growing size, and the MIB area metrics.

For a circuit C (a set of nodes) in the spliced model M, with every node outside C ablated
(mean over the task's prompts by default; zero or counterfactual values as options):

    faithfulness(C) = (m(C) - m(empty)) / (m(M) - m(empty))
    completeness(C) = (m(M without C) - m(empty)) / (m(M) - m(empty))      (0 = complete)

with m the task metric averaged over prompts. M keeps every node, so with error nodes it is
the original model. Circuits are the top nodes by |score|; each size costs one batched
forward over all prompts (and one more for completeness).

MIB circuit track (Mueller et al. 2025): circuits of the top {0.1, 0.2, 0.5, 1, 2, 5, 10,
20, 50, 100}% of nodes; CPR = area under faithfulness against the fraction of nodes, CMD =
area under |1 - faithfulness|, both by the trapezoid rule over those points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from analysis.node_forward import SiteControl, SiteValues, node_forward
from analysis.nodes import reference_values
from analysis.ranking import NodeScores, _chunks, _slice_values
from analysis.tasks import TaskBatch, prompt_metric
from replacement.dictionary import Dictionary

MIB_PERCENTAGES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
"""Circuit sizes of the MIB circuit track, in percent of all nodes."""
COUNTS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
"""Absolute circuit sizes evaluated besides the MIB grid."""


@dataclass
class FaithfulnessCurve:
    """Faithfulness and completeness at each evaluated circuit size."""

    sizes: list[int]
    """Circuit sizes (numbers of nodes), increasing."""
    faithfulness: list[float]
    """Faithfulness of the top-`size` circuit."""
    completeness: list[float]
    """Completeness of the same circuit (metric of the model without it, normalised)."""
    n_nodes: int
    """All nodes."""
    metric_full: float
    """Mean metric of the full model m(M)."""
    metric_empty: float
    """Mean metric with every node ablated m(empty)."""
    ablation: str
    """mean, zero or counterfactual."""
    method: str
    """How the nodes were ranked."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping."""

    def at(self, size: int) -> float:
        """Faithfulness at `size` nodes (interpolated linearly between evaluated sizes)."""
        return float(np.interp(size, self.sizes, self.faithfulness))

    def nodes_needed(self, level: float = 0.8) -> int | None:
        """Smallest evaluated size whose faithfulness reaches `level` (None if none does)."""
        for size, f in zip(self.sizes, self.faithfulness, strict=True):
            if f >= level:
                return size
        return None

    def mib(self) -> tuple[list[float], list[float]]:
        """(fractions, faithfulness) on the MIB grid."""
        fractions = [p / 100 for p in MIB_PERCENTAGES]
        return fractions, [self.at(mib_size(p, self.n_nodes)) for p in MIB_PERCENTAGES]

    @property
    def cpr(self) -> float:
        """Area under faithfulness over the MIB grid (higher is better)."""
        return cpr(*self.mib())

    @property
    def cmd(self) -> float:
        """Area under |1 - faithfulness| over the MIB grid (lower is better)."""
        return cmd(*self.mib())

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, with CPR and CMD."""
        return {
            "sizes": self.sizes,
            "faithfulness": self.faithfulness,
            "completeness": self.completeness,
            "n_nodes": self.n_nodes,
            "metric_full": self.metric_full,
            "metric_empty": self.metric_empty,
            "ablation": self.ablation,
            "method": self.method,
            "cpr": self.cpr,
            "cmd": self.cmd,
            **self.extra,
        }


def mib_size(percent: float, n_nodes: int) -> int:
    """Nodes in a circuit of `percent` % of `n_nodes` (at least one)."""
    return max(1, int(round(percent / 100 * n_nodes)))


def cpr(fractions: Sequence[float], faithfulness: Sequence[float]) -> float:
    """Area under the faithfulness curve (trapezoid rule over the given fractions)."""
    return float(np.trapezoid(np.asarray(faithfulness, float), np.asarray(fractions, float)))


def cmd(fractions: Sequence[float], faithfulness: Sequence[float]) -> float:
    """Area under |1 - faithfulness| (trapezoid rule over the given fractions)."""
    gap = np.abs(1.0 - np.asarray(faithfulness, float))
    return float(np.trapezoid(gap, np.asarray(fractions, float)))


def default_sizes(n_nodes: int) -> list[int]:
    """The MIB grid and the absolute counts that fit, plus 0 and all nodes."""
    sizes = {0, n_nodes, *(mib_size(p, n_nodes) for p in MIB_PERCENTAGES)}
    sizes.update(c for c in COUNTS if c < n_nodes)
    return sorted(sizes)


@torch.no_grad()
def _mean_metric(
    model: Any,
    dictionaries: Sequence[Dictionary],
    batch: TaskBatch,
    masks: dict[str, tuple[Tensor, Tensor, Tensor | None]] | None,
    reference: dict[str, SiteValues],
    batch_size: int,
) -> float:
    total = 0.0
    for sl, part in _chunks(batch, batch_size):
        ref = _slice_values(reference, sl)
        controls = (
            {
                h: SiteControl(keep_features=f, keep_errors=e, keep_skips=k, reference=ref[h])
                for h, (f, e, k) in masks.items()
            }
            if masks is not None
            else {}
        )
        with node_forward(model, dictionaries, controls):
            total += float(prompt_metric(model, part).sum())
    return total / batch.clean.shape[0]


def faithfulness_curve(
    model: Any,
    dictionaries: Sequence[Dictionary],
    batch: TaskBatch,
    scores: NodeScores,
    sizes: Sequence[int] | None = None,
    ablation: str = "mean",
    batch_size: int = 256,
    completeness_sizes: Sequence[int] | None = None,
    verbose: bool = False,
) -> FaithfulnessCurve:
    """Faithfulness and completeness of the top-n circuits by |score| for every n in `sizes`.

    Args:
        model, dictionaries: the spliced model (nodes as in `scores.layout`).
        batch: the task (the same prompts the scores were computed on, or held-out ones of
            the same length).
        scores: node scores from `analysis.ranking`.
        sizes: circuit sizes; default `default_sizes` (MIB grid and 1, 2, 5, 10, ...).
        ablation: values of the nodes outside the circuit: mean, zero or counterfactual.
        batch_size: prompts per forward pass (all of a task's prompts at once by default).
        completeness_sizes: sizes at which completeness is measured too (one more forward
            each); default every size. Elsewhere it is interpolated.
    """
    batch = batch.to(model.cfg.device)
    layout = scores.layout
    reference = reference_values(model, dictionaries, batch, ablation, layout.per_position)

    def measure(keep: Tensor | None) -> float:
        masks = None if keep is None else layout.masks(keep)
        return _mean_metric(model, dictionaries, batch, masks, reference, batch_size)

    return grow_circuits(
        measure, scores.order(), layout.n_nodes, sizes, completeness_sizes, verbose
    ).finish(ablation, scores.method)


@dataclass
class _Grown:
    """What `grow_circuits` measured, before it is labelled as a curve."""

    sizes: list[int]
    faithfulness: list[float]
    completeness: list[float]
    n: int
    full: float
    empty: float

    def finish(self, ablation: str, method: str, **extra: Any) -> FaithfulnessCurve:
        return FaithfulnessCurve(
            self.sizes,
            self.faithfulness,
            self.completeness,
            self.n,
            self.full,
            self.empty,
            ablation,
            method,
            dict(extra),
        )


def grow_circuits(
    measure: Any,
    order: Tensor,
    n: int,
    sizes: Sequence[int] | None = None,
    completeness_sizes: Sequence[int] | None = None,
    verbose: bool = False,
) -> _Grown:
    """Faithfulness and completeness of the top-`size` items of `order` for every size.

    `measure(keep)` is the mean metric with the items where `keep` (bool [n]) is true kept
    and the others ablated; `measure(None)` is the unablated model. Items are nodes or edges.
    """
    sizes = sorted(
        {int(s) for s in (sizes if sizes is not None else default_sizes(n)) if 0 <= s <= n}
    )
    full = measure(None)
    nothing = torch.zeros(n, dtype=torch.bool)
    empty = measure(nothing)
    denominator = full - empty
    measure_rest = set(sizes if completeness_sizes is None else completeness_sizes) | {0, n}

    def normalised(value: float) -> float:
        return (value - empty) / denominator if denominator != 0 else float("nan")

    faith, comp_sizes, comp = [], [], []
    for size in tqdm(sizes, desc="circuit sizes", disable=not verbose, leave=False):
        keep = nothing.clone()
        keep[order[:size]] = True
        faith.append(normalised(measure(keep)))
        if size in measure_rest:
            comp_sizes.append(size)
            comp.append(normalised(measure(~keep)))
    completeness = [float(v) for v in np.interp(sizes, comp_sizes, comp)]
    return _Grown(sizes, faith, completeness, n, full, empty)
