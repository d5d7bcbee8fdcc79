"""Which dictionaries give faithful circuits: `compare(model, {name: dictionaries}, tasks)`.

For every dictionary set and every baseline (random dictionaries of each set's shapes, MLP
neurons, whole MLP outputs), every task and every node currency (`analysis.units`): nodes,
attention heads included, are ranked on a discovery split of the task's pairs (attribution
patching, and integrated gradients side by side on some tasks), and the top-n circuits are
measured on every pair for n on a log grid, prompt by prompt, so that `analysis.summary` can
report held-out and in-sample faithfulness with bootstrap intervals. Also per set: its
spliced-model loss (L0, FVU, CE increase, fraction of loss recovered) and the mean replacement
and completeness scores of a few prompts' attribution graphs. `analysis.report` writes the
result as report.md, plots and JSON.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from analysis.baselines import random_baselines
from analysis.choices import BASELINES, DEFAULT_RANKING, LEVELS
from analysis.circuit_eval import (
    ABLATIONS,
    RANKINGS,
    grid_sizes,
    measure,
    node_effects,
    order_of,
    record,
    references,
)
from analysis.intervals import split_pairs
from analysis.tasks import Task, TaskBatch, target_direction, task_accuracy, tokenize_task
from analysis.units import CURRENCIES, DENSE_PARTS, Layout, NodeSystem, system_for
from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError

REPORT_SIZES = (10, 50, 200)
"""Circuit sizes (nodes) whose faithfulness the report's table shows."""
FAITHFUL_LEVEL = 0.8
"""The report counts the nodes needed to reach this faithfulness."""


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
    fvu_sites: dict[str, float] | None = None
    """Each site's FVU (the report shows these: one site can dominate the mean, as a
    last-block e2e dictionary that rescales the stream does; docs/claims.md)."""
    ce_increase: float | None = None
    """CE increase with every site spliced at once."""
    frac_recovered: float | None = None
    """Fraction of loss recovered (zero-ablation baseline), every site spliced at once."""
    ce_increase_interval: list[float] | None = None
    """95% bootstrap interval of ce_increase over the evaluated sequences."""
    frac_recovered_interval: list[float] | None = None
    """95% bootstrap interval of frac_recovered over the evaluated sequences."""
    l0_interval: list[float] | None = None
    """95% bootstrap interval of l0 (the mean over sites) over the evaluated sequences."""
    fvu_interval: list[float] | None = None
    """95% bootstrap interval of fvu (the mean over sites) over the evaluated sequences."""
    fvu_sites_interval: dict[str, list[float] | None] | None = None
    """95% bootstrap interval of each site's FVU over the evaluated sequences."""


@dataclass
class Comparison:
    """Result of `compare`: set summaries, tasks with their splits, and per node system,
    currency, task and ranking the metric of every prompt for every circuit size."""

    sets: list[SetSummary]
    """One summary per dictionary set, in the given order."""
    tasks: list[dict[str, Any]]
    """name, description, n_pairs, n_tokens, accuracy, metric, discovery and heldout (pair
    indices), model (each pair's metric m(M))."""
    results: dict[str, dict[str, dict[str, dict[str, Any]]]]
    """system -> currency -> task -> {rankings: {method: {sizes, metric [sizes][pairs], top}},
    n_nodes, seconds}."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Rankings, ablation, currencies, systems (name -> kind, baseline of), timings."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comparison:
        """Rebuild from `to_dict()` output (results.json), also one written when two rankings
        shared one flat agreement entry (before joint integrated gradients)."""
        method = data["settings"].get("method")
        for per_currency in data["results"].values():
            for per_task in per_currency.values():
                for entry in per_task.values():
                    agreement = entry.get("agreement")
                    if agreement and "spearman" in agreement:
                        other = [m for m in entry["rankings"] if m != method]
                        entry["agreement"] = {other[0]: agreement} if len(other) == 1 else {}
        return cls(
            [SetSummary(**s) for s in data["sets"]],
            data["tasks"],
            data["results"],
            data["settings"],
        )

    def to_dict(self) -> dict[str, Any]:
        """Every number, JSON-serialisable (the summary with intervals is added by the report)."""
        return {
            "settings": self.settings,
            "tasks": self.tasks,
            "sets": [vars(s) for s in self.sets],
            "results": self.results,
        }

    def run(self, system: str, currency: str, task: str, method: str | None = None) -> dict:
        """One (system, currency, task) result of `method` (default: the report's ranking)."""
        r = self.results[system][currency][task]
        return r["rankings"][method or self.settings["method"]]


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
    summary.fvu_sites = {r.name: float(r.fvu) for r in rows}
    summary.ce_increase = report.all.ce_increase
    summary.frac_recovered = report.all.recovered_zero
    summary.ce_increase_interval = report.all.ce_increase_interval
    summary.frac_recovered_interval = report.all.recovered_zero_interval
    summary.l0_interval, summary.fvu_interval = report.mean_l0_interval, report.mean_fvu_interval
    summary.fvu_sites_interval = {r.name: r.fvu_interval for r in rows}


def _graph_scores(
    model, dictionaries, batch: TaskBatch, rows: torch.Tensor, max_feature_nodes: int
) -> dict[str, list[float]]:
    """Replacement and completeness scores of the attribution graphs of the prompts `rows`,
    one per prompt (the report bootstraps them over tasks and prompts)."""
    from circuits.attribution.attribute import attribute

    scores: dict[str, list[float]] = {"replacement": [], "completeness": []}
    for b in range(len(rows)):
        one = batch.rows(rows[b : b + 1])
        graph = attribute(
            model,
            dictionaries,
            one.clean[0, : int(one.last[0]) + 1],
            target_direction=target_direction(model, one),
            max_feature_nodes=max_feature_nodes,
            verbose=False,
        )
        found = graph.scores()
        scores["replacement"].append(float(found.replacement))
        scores["completeness"].append(float(found.completeness))
    return scores


def ranking_agreement(a: torch.Tensor, b: torch.Tensor, top: int = 50) -> dict[str, float]:
    """Spearman correlation of two node scorings (ties at their mean rank) and the share of
    the `top` nodes by |score| they have in common."""

    def ranks(x: np.ndarray) -> np.ndarray:
        _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        start = np.cumsum(counts) - counts
        return (start + (counts - 1) / 2)[inverse]

    ra, rb = ranks(a.numpy()), ranks(b.numpy())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    top = min(top, a.numel())
    common = set(order_of(a)[:top].tolist()) & set(order_of(b)[:top].tolist())
    return {
        "spearman": float((ra * rb).sum() / denominator) if denominator else float("nan"),
        "top_overlap": len(common) / top,
        "top": top,
    }


def _top(layout: Layout, scores: torch.Tensor, order: torch.Tensor, n: int = 10) -> list[dict]:
    out = []
    for i in order[:n].tolist():
        part, layer, pos, k = layout.describe(int(i))
        out.append({"part": part, "layer": layer, "pos": pos, "k": k, "score": float(scores[i])})
    return out


def _systems(
    model: Any,
    sets: Mapping[str, Sequence[Dictionary]],
    baselines: Sequence[str],
    seed: int,
) -> tuple[dict[str, tuple[Sequence[Dictionary] | None, str | None]], dict[str, dict]]:
    """Every node system to run: the sets, then the baselines. (name -> (dictionaries or None,
    baseline name or None)), and name -> {kind, random_of / baseline_for}."""
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise SparseCircuitsError(f"baselines {unknown} are unknown; expected some of {BASELINES}")
    systems: dict[str, tuple[Sequence[Dictionary] | None, str | None]] = {}
    info: dict[str, dict] = {}
    for name, dicts in sets.items():
        systems[name] = ([d.float().eval() for d in dicts], None)
        info[name] = {"kind": "dictionary"}
    if "random" in baselines:
        randoms, of_set = random_baselines({n: systems[n][0] for n in sets}, seed)
        for name, dicts in randoms.items():
            if name in systems:
                raise SparseCircuitsError(f"a set is named {name!r}, the name of a baseline")
            systems[name] = (dicts, None)
            info[name] = {
                "kind": "random",
                "baseline_for": [s for s, r in of_set.items() if r == name],
            }
        for s, r in of_set.items():
            info[s]["random"] = r
    for b in ("neurons", "mlp"):
        if b in baselines:
            if b in systems:
                raise SparseCircuitsError(f"a set is named {b!r}, the name of a baseline")
            systems[b] = (None, b)
            info[b] = {"kind": b}
    return systems, info


def compare(
    model: Any,
    sets: Mapping[str, Sequence[Dictionary]],
    tasks: Sequence[Task],
    *,
    loss_tokens: torch.Tensor | None = None,
    method: str = DEFAULT_RANKING,
    ablation: str = "mean",
    per_position: bool = True,
    graph_prompts: int = 1,
    graph_max_features: int = 128,
    level: str = "nodes",
    currencies: Sequence[str] = CURRENCIES,
    baselines: Sequence[str] = BASELINES,
    heads: bool = True,
    heldout: float = 0.5,
    compare_rankings: int | None = 1,
    ig_steps: int = 4,
    seed: int = 0,
    verbose: bool = True,
) -> Comparison:
    """Faithfulness of circuits built from each dictionary set and each baseline, on each task,
    in each node currency; nodes ranked on a discovery split of the pairs and measured on all
    pairs (the report separates held-out and in-sample figures and bootstraps intervals).

    Args:
        model: the model every set was trained on.
        sets: name -> dictionaries (one per site).
        tasks: tasks with their prompts (`analysis.code_tasks.default_tasks` for the default model).
        loss_tokens: held-out token rows [n, ctx] (BOS first) for L0, FVU, CE increase and loss
            recovered; None leaves those columns empty.
        method: the ranking the report uses, one of `analysis.circuit_eval.RANKINGS`.
        ablation: mean (over the discovery pairs, per position), zero or counterfactual values
            for nodes outside the circuit.
        per_position: nodes per position (prompts of one length) or aggregated over positions.
        graph_prompts: held-out prompts per task traced with `attribute` for the graph scores of
            each set and of its random control (0: none).
        graph_max_features: feature budget of those graphs.
        level: only "nodes" (edge circuits: `analysis.edges`).
        currencies: node currencies (`analysis.units.CURRENCIES`).
        baselines: some of `BASELINES`: random dictionaries of each set's shapes, MLP neurons,
            whole MLP outputs.
        heads: attention heads (per layer, head and position) as nodes, so that the empty
            circuit is the fully ablated model; False leaves attention live (MLP-only circuits).
        heldout: share of each task's pairs held out from ranking (0: rank and measure on all).
        compare_rankings: rank by every ranking of `RANKINGS` on this many tasks, the shortest
            prompts first (None: every task; 0: only `method`); each is compared with `method`.
        ig_steps: path points of integrated gradients.
        seed: seed of the splits and the random dictionaries.
        verbose: progress bars.
    """
    if not sets:
        raise SparseCircuitsError("compare needs at least one dictionary set")
    if not tasks:
        raise SparseCircuitsError("compare needs at least one task")
    if level not in LEVELS:
        raise SparseCircuitsError(f"level {level!r} is unknown; expected one of {LEVELS}")
    if level == "edges":
        raise SparseCircuitsError(
            "compare measures node circuits (in currencies, with baselines and held-out pairs); "
            "for edge circuits use analysis.edges.edge_attribution_patching and "
            "edge_faithfulness_curve"
        )
    if method not in RANKINGS:
        raise SparseCircuitsError(f"ranking {method!r} is unknown; expected one of {RANKINGS}")
    bad = [c for c in currencies if c not in CURRENCIES]
    if bad or not currencies:
        raise SparseCircuitsError(f"currencies {bad or '[]'}: expected some of {CURRENCIES}")
    if ablation not in ABLATIONS:
        raise SparseCircuitsError(f"ablation {ablation!r} is unknown; expected one of {ABLATIONS}")
    start = time.perf_counter()
    systems, info = _systems(model, sets, baselines, seed)
    # the side-by-side rankings run on the shortest tasks (integrated gradients cost a
    # batched backward per source)
    tokenized = [tokenize_task(model, t).to(model.cfg.device) for t in tasks]
    by_length = sorted(range(len(tasks)), key=lambda i: (tokenized[i].clean.numel(), i))
    n_rank = len(tasks) if compare_rankings is None else compare_rankings
    both_rankings = set(by_length[:n_rank])
    batches, task_info = {}, []
    for i, t in enumerate(tasks):
        batch = tokenized[i]
        if per_position and not batch.equal_length:
            raise SparseCircuitsError(
                f"task {t.name!r}: per-position nodes need prompts of one token length "
                "(positions must align); use per_position=False to aggregate over positions"
            )
        disc, held = split_pairs(len(t), heldout, seed + i)
        batches[t.name] = (batch, torch.as_tensor(disc), torch.as_tensor(held))
        accuracy = t.metadata.get("accuracy")
        if accuracy is None:
            accuracy = task_accuracy(model, batch)
        task_info.append(
            {
                "name": t.name,
                "description": t.description,
                "n_pairs": len(t),
                "n_tokens": int(batch.clean.shape[1]) - 1,
                "accuracy": accuracy,
                "metric": t.metric,
                "discovery": disc.tolist(),
                "heldout": held.tolist(),
                "rankings": [method, *(m for m in RANKINGS if m != method)]
                if i in both_rankings
                else [method],
            }
        )
    summaries, results = [], {}
    bar = tqdm(total=len(systems) * len(tasks), desc="compare (system x task)", disable=not verbose)
    for name, (dicts, baseline) in systems.items():
        if info[name]["kind"] == "dictionary":
            summary = describe_set(name, dicts)
            if loss_tokens is not None:
                _loss_summary(model, dicts, loss_tokens, summary)
            summaries.append(summary)
        results[name] = {c: {} for c in currencies}
        for ti, task in enumerate(tasks):
            t0 = time.perf_counter()
            batch, disc, _ = batches[task.name]
            system = system_for(model, dicts, name, "all", heads, baseline, info[name]["kind"])
            clean, model_metric = record(system, model, batch)
            if "model" not in task_info[ti]:
                task_info[ti]["model"] = [round(float(v), 6) for v in model_metric]
            corrupt = (
                record(system, model, batch, True)[0] if ablation == "counterfactual" else None
            )
            reference = references(
                {k: v[disc] for k, v in clean.items()}, batch.rows(disc), ablation, per_position,
                corrupt,
            )  # fmt: skip
            ref_disc = {k: v if v.shape[0] == 1 else v[disc] for k, v in reference.items()}
            effects: dict[tuple, dict] = {}
            dense = any(p.name in DENSE_PARTS for p in system.parts)
            done: dict[str, Any] = {}
            for currency in currencies:
                if not dense and done:  # no dense parts: every currency is the same system
                    results[name][currency][task.name] = next(iter(done.values()))
                    continue
                cur = NodeSystem(name, system.sources, currency, system.kind)
                layout = Layout(cur.counted, int(batch.clean.shape[1]), per_position)
                sizes = grid_sizes(layout.n_nodes, REPORT_SIZES)
                entry: dict[str, Any] = {"n_nodes": layout.n_nodes, "rankings": {}}
                all_scores = {}
                for m in task_info[ti]["rankings"]:
                    key = (m, tuple(p.key for p in cur.held_ablated))
                    if key not in effects:
                        effects[key] = node_effects(
                            cur, model, batch.rows(disc), ref_disc, m, ig_steps
                        )
                    scores = layout.flatten(effects[key])
                    order = order_of(scores)
                    all_scores[m] = scores
                    full_row = None if cur.held_ablated else model_metric  # all nodes = M
                    metric = measure(
                        cur, model, batch, reference, layout, order, sizes, full_row=full_row
                    )
                    entry["rankings"][m] = {
                        "sizes": sizes,
                        "metric": [[round(float(v), 6) for v in row] for row in metric],
                        "top": _top(layout, scores, order),
                    }
                first, *others = all_scores  # the report's ranking, then the others
                entry["agreement"] = {
                    m: ranking_agreement(all_scores[first], all_scores[m]) for m in others
                }
                entry["seconds"] = time.perf_counter() - t0
                results[name][currency][task.name] = done[currency] = entry
            if info[name]["kind"] in ("dictionary", "random") and graph_prompts > 0:
                # the first held-out prompts: the same ones for a set and its random control
                held = batches[task.name][2][:graph_prompts]
                per_prompt = _graph_scores(model, dicts, batch, held, graph_max_features)
                info[name].setdefault("graph", {})[task.name] = {
                    **{k: float(np.mean(v)) if v else None for k, v in per_prompt.items()},
                    "per_prompt": per_prompt,
                }
            bar.update(1)
    bar.close()
    settings = {
        "method": method,
        "ablation": ablation,
        "per_position": per_position,
        "level": level,
        "currencies": list(currencies),
        "baselines": list(baselines),
        "heads": heads,
        "heldout": heldout,
        "ig_steps": ig_steps,
        "seed": seed,
        "systems": info,
        "graph_prompts": graph_prompts,
        "graph_max_features": graph_max_features,
        "faithful_level": FAITHFUL_LEVEL,
        "loss_tokens": None if loss_tokens is None else int(loss_tokens[:, 1:].numel()),
        "seconds": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
    }
    return Comparison(summaries, task_info, results, settings)
