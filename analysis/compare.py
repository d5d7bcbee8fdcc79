"""Which dictionaries give faithful circuits: `compare(model, {name: dictionaries}, tasks)`.

For every dictionary set: its spliced-model loss (L0, FVU, CE increase, fraction of loss
recovered, all layers spliced at once) on held-out tokens; for every task: node scores
(attribution patching by default), the faithfulness curve on the MIB grid and fixed sizes,
CPR and CMD, and the mean replacement and completeness scores of the attribution graphs of a
few of the task's prompts. `analysis.report` writes the result as report.md, plots and JSON.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from analysis.faithfulness import MIB_PERCENTAGES, faithfulness_curve, mib_size
from analysis.ranking import rank_nodes
from analysis.tasks import Task, TaskBatch, target_direction, task_accuracy, tokenize_task
from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError

REPORT_SIZES = (10, 50, 200)
"""Circuit sizes (nodes) whose faithfulness the report's table shows."""
FAITHFUL_LEVEL = 0.8
"""The report counts the nodes needed to reach this faithfulness."""
LEVELS = ("nodes", "edges")
"""Circuits as node sets or as edge sets."""


@dataclass
class SetSummary:
    """What one dictionary set is and how much loss it gives up."""

    name: str
    """The set's name in the comparison."""
    kind: str
    """sae, transcoder or skip_transcoder (mixed sets list several)."""
    objective: str
    """Training objective recorded in the dictionaries' metadata (local, e2e, e2e_ds)."""
    l0: float | None = None
    """Mean active features per token, averaged over the set's sites."""
    fvu: float | None = None
    """Fraction of variance unexplained, averaged over sites."""
    ce_increase: float | None = None
    """CE increase with every site spliced at once."""
    frac_recovered: float | None = None
    """Fraction of loss recovered (zero-ablation baseline), every site spliced at once."""


@dataclass
class Comparison:
    """Result of `compare`: set summaries and, per (set, task), curve and graph scores."""

    sets: list[SetSummary]
    """One summary per set, in the given order."""
    tasks: list[dict[str, Any]]
    """name, description, n prompts, accuracy of the model, metric."""
    results: dict[str, dict[str, dict[str, Any]]]
    """set -> task -> {curve (FaithfulnessCurve.to_dict()), replacement, completeness_score,
    nodes_needed, faithfulness_at, top_nodes, seconds}."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Method, ablation, node granularity, timings."""

    def set_row(self, name: str) -> dict[str, Any]:
        """The report's row of one set: its summary and its task results averaged."""
        summary = next(s for s in self.sets if s.name == name)
        per_task = list(self.results[name].values())

        def mean(values: list[float | None]) -> float | None:
            kept = [v for v in values if v is not None and np.isfinite(v)]
            return float(np.mean(kept)) if kept else None

        needed = [r["nodes_needed"] for r in per_task]
        return {
            **vars(summary),
            # a task that never reaches the level counts as needing every node
            "nodes_needed": mean(
                [
                    n if n is not None else r["curve"]["n_nodes"]
                    for n, r in zip(needed, per_task, strict=True)
                ]
            ),
            "tasks_reaching": sum(n is not None for n in needed),
            **{
                f"faithfulness_at_{s}": mean([r["faithfulness_at"][str(s)] for r in per_task])
                for s in REPORT_SIZES
            },
            "cpr": mean([r["curve"]["cpr"] for r in per_task]),
            "cmd": mean([r["curve"]["cmd"] for r in per_task]),
            "replacement": mean([r["replacement"] for r in per_task]),
            "completeness_score": mean([r["completeness_score"] for r in per_task]),
            "empty_share": mean([r["empty_share"] for r in per_task]),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comparison:
        """Rebuild from `to_dict()` output (results.json)."""
        return cls(
            [SetSummary(**s) for s in data["sets"]],
            data["tasks"],
            data["results"],
            data["settings"],
        )

    def to_dict(self) -> dict[str, Any]:
        """Every number, JSON-serialisable."""
        return {
            "settings": self.settings,
            "tasks": self.tasks,
            "sets": [vars(s) for s in self.sets],
            "rows": [self.set_row(s.name) for s in self.sets],
            "results": self.results,
        }


def describe_set(name: str, dictionaries: Sequence[Dictionary]) -> SetSummary:
    """Kind and objective of a set from its dictionaries (and their training metadata)."""
    kinds = sorted({d.kind for d in dictionaries})
    objectives = sorted(
        {str(d.metadata.get("training", {}).get("objective", "unknown")) for d in dictionaries}
    )
    return SetSummary(name, "+".join(kinds), "+".join(objectives))


def _loss_summary(model: Any, dictionaries, tokens: torch.Tensor, summary: SetSummary) -> None:
    from replacement.loss import spliced_loss

    report = spliced_loss(model, list(dictionaries), tokens, verbose=False, ablations=("zero",))
    rows = [r for r in report.rows if r.name != "all"]
    summary.l0 = float(np.mean([r.l0 for r in rows]))
    summary.fvu = float(np.mean([r.fvu for r in rows]))
    summary.ce_increase = report.all.ce_increase
    summary.frac_recovered = report.all.recovered_zero


def _graph_scores(model, dictionaries, batch: TaskBatch, n_prompts: int, max_feature_nodes: int):
    """Mean replacement and completeness scores of the first prompts' attribution graphs."""
    from circuits.attribution.attribute import attribute

    replacement, completeness = [], []
    for b in range(min(n_prompts, batch.clean.shape[0])):
        one = batch.rows(slice(b, b + 1))
        graph = attribute(
            model,
            dictionaries,
            one.clean[0, : int(one.last[0]) + 1],
            target_direction=target_direction(model, one),
            max_feature_nodes=max_feature_nodes,
            verbose=False,
        )
        scores = graph.scores()
        replacement.append(scores.replacement)
        completeness.append(scores.completeness)
    if not replacement:
        return None, None
    return float(np.mean(replacement)), float(np.mean(completeness))


def _circuits(model, dictionaries, batch, level, method, ablation, per_position):
    """Faithfulness curve and the ten best nodes (or edges) of one set on one task."""
    if level == "edges":
        from analysis.edges import edge_attribution_patching, edge_faithfulness_curve

        scores = edge_attribution_patching(model, dictionaries, batch, ablation, per_position)
        n, curve_of = scores.n_edges, edge_faithfulness_curve
        top = [
            {"layer": lpf[0], "pos": lpf[1], "feature": lpf[2], "target": t, "score": s}
            for lpf, t, s in scores.top(10)
        ]
    else:
        scores = rank_nodes(model, dictionaries, batch, method, ablation, per_position)
        n, curve_of = scores.layout.n_nodes, faithfulness_curve
        top = [
            {"layer": lpf[0], "pos": lpf[1], "feature": lpf[2], "score": s}
            for lpf, s in scores.top(10)
        ]
    curve = curve_of(
        model,
        dictionaries,
        batch,
        scores,
        ablation=ablation,
        completeness_sizes=[mib_size(p, n) for p in MIB_PERCENTAGES],
    )
    return curve, top


def compare(
    model: Any,
    sets: Mapping[str, Sequence[Dictionary]],
    tasks: Sequence[Task],
    *,
    loss_tokens: torch.Tensor | None = None,
    method: str = "attribution_patching",
    ablation: str = "mean",
    per_position: bool = True,
    graph_prompts: int = 2,
    graph_max_features: int = 128,
    level: str = "nodes",
    verbose: bool = True,
) -> Comparison:
    """Faithfulness of circuits built from each dictionary set, on each task.

    Args:
        model: the model every set was trained on.
        sets: name -> dictionaries (one per site).
        tasks: tasks with their prompts (`analysis.code_tasks.default_tasks` for the default model).
        loss_tokens: held-out token rows [n, ctx] (BOS first) for L0, FVU, CE increase and loss
            recovered; None leaves those columns empty.
        method: node ranking, see `analysis.ranking.METHODS`.
        ablation: mean, zero or counterfactual values for nodes outside the circuit.
        per_position: nodes per position (prompts of one length) or aggregated over positions.
        graph_prompts: prompts per task traced with `attribute` for the graph scores (0: none).
        graph_max_features: feature budget of those graphs.
        level: "nodes" (circuits are node sets) or "edges" (edge sets, `analysis.edges`;
            ranked by edge attribution patching, sizes count edges).
        verbose: progress bars.
    """
    if not sets:
        raise SparseCircuitsError("compare needs at least one dictionary set")
    if not tasks:
        raise SparseCircuitsError("compare needs at least one task")
    if level not in LEVELS:
        raise SparseCircuitsError(f"level {level!r} is unknown; expected one of {LEVELS}")
    if level == "edges" and method != "attribution_patching":
        raise SparseCircuitsError(
            f"edge circuits are ranked by edge attribution patching; got method {method!r}"
        )
    start = time.perf_counter()
    batches = {t.name: tokenize_task(model, t) for t in tasks}
    task_info = []
    for t in tasks:
        accuracy = t.metadata.get("accuracy")
        if accuracy is None:
            accuracy = task_accuracy(model, batches[t.name])
        task_info.append(
            {
                "name": t.name,
                "description": t.description,
                "n_pairs": len(t),
                "n_tokens": int(batches[t.name].clean.shape[1]) - 1,
                "accuracy": accuracy,
                "metric": t.metric,
            }
        )
    summaries, results = [], {}
    bar = tqdm(total=len(sets) * len(tasks), desc="compare (set x task)", disable=not verbose)
    for name, dictionaries in sets.items():
        dictionaries = [d.float().eval() for d in dictionaries]
        summary = describe_set(name, dictionaries)
        if loss_tokens is not None:
            _loss_summary(model, dictionaries, loss_tokens, summary)
        summaries.append(summary)
        results[name] = {}
        for task in tasks:
            t0 = time.perf_counter()
            batch = batches[task.name]
            curve, top = _circuits(
                model, dictionaries, batch, level, method, ablation, per_position
            )
            replacement, completeness = _graph_scores(
                model, dictionaries, batch, graph_prompts, graph_max_features
            )
            results[name][task.name] = {
                "curve": curve.to_dict(),
                "nodes_needed": curve.nodes_needed(FAITHFUL_LEVEL),
                "faithfulness_at": {str(s): curve.at(s) for s in REPORT_SIZES},
                "empty_share": curve.metric_empty / curve.metric_full
                if curve.metric_full
                else None,
                "replacement": replacement,
                "completeness_score": completeness,
                "top_nodes" if level == "nodes" else "top_edges": top,
                "seconds": time.perf_counter() - t0,
            }
            bar.update(1)
    bar.close()
    settings = {
        "method": method,
        "ablation": ablation,
        "per_position": per_position,
        "level": level,
        "graph_prompts": graph_prompts,
        "graph_max_features": graph_max_features,
        "faithful_level": FAITHFUL_LEVEL,
        "loss_tokens": None if loss_tokens is None else int(loss_tokens[:, 1:].numel()),
        "seconds": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
    }
    return Comparison(summaries, task_info, results, settings)
