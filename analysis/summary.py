"""Figures with intervals from a `Comparison`: held-out and in-sample faithfulness, nodes for
a level, the share of the task all features carry, paired comparisons with the baselines and
between rankings, per task and over tasks (method: `analysis.intervals`).

Verdicts come from intervals only: a set needs fewer (more) nodes than a baseline when the
whole 95% interval of the log ratio of their nodes lies below (above) zero, else
"inconclusive".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis.intervals import (
    BOOTSTRAP,
    faithfulness_rows,
    geometric_nodes,
    interval,
    nodes_for,
    pair_resamples,
    task_prompt_mean,
    task_resamples,
)

SPLITS = ("heldout", "discovery")


def _estimate(point: float, samples: np.ndarray) -> dict[str, float]:
    lo, hi = interval(samples)
    return {"value": float(point), "lo": lo, "hi": hi}


def _verdict(e: dict[str, float], fewer: str, more: str) -> str:
    if e["hi"] < 0:
        return fewer
    if e["lo"] > 0:
        return more
    return "inconclusive"


class _Curves:
    """Per task: point and bootstrap faithfulness curves of one (system, currency, split)."""

    def __init__(self, comparison: Any, system: str, currency: str, split: str, method: str,
                 level: float, sizes_at: tuple[int, ...], b: int):  # fmt: skip
        self.tasks, self.point, self.boot, self.caps = [], [], [], []
        self.nodes_point, self.nodes_boot, self.at_point, self.at_boot = [], [], [], []
        for j, t in enumerate(comparison.tasks):
            entry = comparison.results[system][currency][t["name"]]
            if method not in entry["rankings"]:
                continue
            r = entry["rankings"][method]
            metric, model = np.asarray(r["metric"]), np.asarray(t["model"])
            idx = np.asarray(t[split])
            resamples = idx[pair_resamples(len(idx), b, seed=j)]
            point = faithfulness_rows(metric, model, idx)[0]
            boot = faithfulness_rows(metric, model, resamples)
            sizes = r["sizes"]
            self.tasks.append(t["name"])
            self.point.append(point)
            self.boot.append(boot)
            self.caps.append(float(entry["n_nodes"]))
            self.nodes_point.append(nodes_for(sizes, point, level))
            self.nodes_boot.append(nodes_for(sizes, boot, level))
            at = [np.interp(s, sizes, point) for s in sizes_at]
            self.at_point.append(at)
            self.at_boot.append(
                np.stack([[np.interp(s, sizes, f) for s in sizes_at] for f in boot])
            )
        self.caps_arr = np.asarray(self.caps)

    def share(self) -> tuple[np.ndarray, np.ndarray]:
        """Faithfulness with every node kept: per task point [tasks] and samples [B, tasks]."""
        return np.asarray([p[-1] for p in self.point]), np.stack([b[:, -1] for b in self.boot], 1)

    def nodes(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.nodes_point, float), np.stack(self.nodes_boot, 1)

    def at(self) -> tuple[np.ndarray, np.ndarray]:
        """[tasks, sizes_at] and [B, tasks, sizes_at]."""
        return np.asarray(self.at_point), np.stack(self.at_boot, 1)


def summarize(
    comparison: Any,
    level: float | None = None,
    sizes_at: tuple[int, ...] = (10, 50, 200),
    b: int = BOOTSTRAP,
    method: str | None = None,
) -> dict[str, Any]:
    """Every reported figure with its 95% interval; see the module docstring."""
    st = comparison.settings
    level = st.get("faithful_level", 0.8) if level is None else level
    method = method or st["method"]
    systems = list(comparison.results)
    info = st["systems"]
    n_tasks = len(comparison.tasks)
    T = task_resamples(n_tasks, b)
    rows = np.arange(b)[:, None]
    out: dict[str, Any] = {
        "level": level,
        "sizes_at": list(sizes_at),
        "method": method,
        "bootstrap": b,
        "empty_share": {},
        "currencies": {},
    }
    for t in comparison.tasks:
        r = comparison.results[systems[0]][st["currencies"][0]][t["name"]]["rankings"][method]
        model = np.asarray(t["model"])
        out["empty_share"][t["name"]] = float(np.mean(r["metric"][0]) / model.mean())
    for currency in st["currencies"]:
        cur: dict[str, Any] = {"systems": {}, "rankings": {}}
        agg_nodes: dict[tuple[str, str], np.ndarray] = {}
        for name in systems:
            entry: dict[str, Any] = {"kind": info[name]["kind"], "per_task": {}}
            for split in SPLITS:
                c = _Curves(comparison, name, currency, split, method, level, sizes_at, b)
                nodes_p, nodes_b = c.nodes()
                at_p, at_b = c.at()
                share_p, share_b = c.share()
                agg_b = geometric_nodes(nodes_b[rows, T], c.caps_arr[T])
                agg_nodes[(name, split)] = agg_b
                entry[split] = {
                    "nodes": _estimate(geometric_nodes(nodes_p, c.caps_arr), agg_b),
                    "reached": int(np.sum(~np.isnan(nodes_p))),
                    "faithfulness_at": {
                        str(s): _estimate(at_p[:, i].mean(), at_b[rows, T, i].mean(-1))
                        for i, s in enumerate(sizes_at)
                    },
                    "share": _estimate(share_p.mean(), share_b[rows, T].mean(-1)),
                }
                if split == "heldout":
                    entry["_at"] = (at_p, at_b)
                    for j, task in enumerate(c.tasks):
                        entry["per_task"][task] = {
                            "nodes": _estimate(nodes_p[j], nodes_b[:, j]),
                            "faithfulness_at_50": _estimate(at_p[j, 1], at_b[:, j, 1]),
                            "share": _estimate(share_p[j], share_b[:, j]),
                            "n_nodes": c.caps[j],
                        }
                else:
                    held_p, held_b = entry.pop("_at")
                    gap_p, gap_b = at_p - held_p, at_b - held_b
                    entry["gap_at"] = {
                        str(s): _estimate(gap_p[:, i].mean(), gap_b[rows, T, i].mean(-1))
                        for i, s in enumerate(sizes_at)
                    }
                    gap_nodes = np.log(agg_b) - np.log(agg_nodes[(name, "heldout")])
                    entry["gap_log_nodes"] = _estimate(
                        np.log(entry["discovery"]["nodes"]["value"])
                        - np.log(entry["heldout"]["nodes"]["value"]),
                        gap_nodes,
                    )
            cur["systems"][name] = entry
        for name in systems:
            if info[name]["kind"] != "dictionary":
                continue
            vs = {}
            baselines = [s for s in systems if info[s]["kind"] in ("neurons", "mlp")]
            if info[name].get("random") in systems:
                baselines.insert(0, info[name]["random"])
            for base in baselines:
                diff = np.log(agg_nodes[(name, "heldout")]) - np.log(agg_nodes[(base, "heldout")])
                point = np.log(cur["systems"][name]["heldout"]["nodes"]["value"]) - np.log(
                    cur["systems"][base]["heldout"]["nodes"]["value"]
                )
                e = _estimate(point, diff)
                e["verdict"] = _verdict(e, "fewer nodes", "more nodes")
                vs[base] = e
            cur["systems"][name]["vs"] = vs
        cur["rankings"] = _rankings(comparison, currency, level, b)
        out["currencies"][currency] = cur
    out["graph"] = graph_scores(comparison, b)
    return out


def graph_scores(comparison: Any, b: int = BOOTSTRAP) -> dict[str, dict[str, dict[str, float]]]:
    """Per system with traced graphs, its replacement and completeness scores: the mean over
    tasks of each task's mean over its held-out prompts, with the 95% interval of
    `task_prompt_mean` (none from a results file without per-prompt scores, or from one prompt
    in all); for a set with a random control traced on the same prompts, also `<score> - random`,
    the paired difference (the same tasks and prompts resampled for both)."""
    systems = comparison.settings["systems"]

    def per_task(info: dict[str, Any], key: str) -> dict[str, list[float]]:
        graph = info.get("graph", {})
        return {
            t: g["per_prompt"][key] for t, g in graph.items() if g.get("per_prompt", {}).get(key)
        }

    def estimate(values: list[list[float]]) -> dict[str, float]:
        point, bounds = task_prompt_mean(values, b)
        lo, hi = bounds if bounds else (None, None)
        return {"value": point, "lo": lo, "hi": hi}

    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, info in systems.items():
        for key in ("replacement", "completeness"):
            mine = per_task(info, key)
            if not mine:
                continue
            out.setdefault(name, {})[key] = estimate(list(mine.values()))
            control = per_task(systems.get(info.get("random"), {}), key)
            pairs = [t for t in mine if len(control.get(t, [])) == len(mine[t])]
            if pairs:
                diffs = [list(np.subtract(mine[t], control[t])) for t in pairs]
                out[name][f"{key}_minus_random"] = estimate(diffs)
    return out


SHORT = {
    "attribution_patching": "AtP",
    "integrated_gradients": "IG per source",
    "joint_integrated_gradients": "joint IG",
}
"""Short names of the rankings in tables and verdicts."""


def _rankings(comparison: Any, currency: str, level: float, b: int) -> dict[str, Any]:
    """Per system, on the tasks ranked every way: held-out nodes for the level under each
    ranking, and each other ranking against the report's one (`settings["method"]`):
    agreement of their scores and the paired log ratio of their nodes (other over report's)."""
    method = comparison.settings["method"]
    ranked = [t for t in comparison.tasks if len(t.get("rankings", [])) > 1]
    if not ranked:
        return {}
    methods = ranked[0]["rankings"]
    names = [t["name"] for t in ranked]
    T = task_resamples(len(ranked), b, seed=2)
    rows = np.arange(b)[:, None]
    out = {}
    for name, per_cur in comparison.results.items():
        entries = [per_cur[currency][n] for n in names]
        if any(not e.get("agreement") for e in entries):
            continue
        agg, point = {}, {}
        for m in methods:
            nodes_p, nodes_b, caps = [], [], []
            for j, (t, e) in enumerate(zip(ranked, entries, strict=True)):
                r = e["rankings"][m]
                metric, model = np.asarray(r["metric"]), np.asarray(t["model"])
                idx = np.asarray(t["heldout"])
                nodes_p.append(
                    nodes_for(r["sizes"], faithfulness_rows(metric, model, idx)[0], level)
                )
                res = idx[pair_resamples(len(idx), b, seed=j)]
                nodes_b.append(nodes_for(r["sizes"], faithfulness_rows(metric, model, res), level))
                caps.append(float(e["n_nodes"]))
            caps_a = np.asarray(caps)
            agg[m] = geometric_nodes(np.stack(nodes_b, 1)[rows, T], caps_a[T])
            point[m] = geometric_nodes(np.asarray(nodes_p, float), caps_a)
        versus = {}
        for m in methods:
            if m == method:
                continue
            ratio = _estimate(
                np.log(point[m]) - np.log(point[method]), np.log(agg[m]) - np.log(agg[method])
            )
            ratio["verdict"] = _verdict(ratio, f"{SHORT[m]} needs fewer", f"{SHORT[m]} needs more")
            versus[m] = {
                "spearman": float(np.mean([e["agreement"][m]["spearman"] for e in entries])),
                "top_overlap": float(np.mean([e["agreement"][m]["top_overlap"] for e in entries])),
                "log_ratio": ratio,
            }
        out[name] = {"tasks": names, "reference": method, "nodes": point, "versus": versus}
    return out
