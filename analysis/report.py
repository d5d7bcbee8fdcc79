"""Write a `Comparison` as report.md, PNG plots and results.json into a folder.

The report leads with the `features` currency and the baselines, then the other currencies;
every figure comes with its bootstrap 95% interval (`analysis.summary`), and verdicts follow
from intervals only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from analysis.circuit_eval import GRID
from analysis.claims import Claim, claims_markdown
from analysis.compare import Comparison, SetSummary
from analysis.intervals import faithfulness_rows
from analysis.summary import SHORT, graph_scores, summarize
from analysis.units import CURRENCIES
from replacement.atomic import atomic_path, write_json, write_text

CURRENCY_TEXT = {
    "features": "only dictionary features count; error terms and skip paths are held at their "
    "ablated value, so a circuit shows what the features carry alone (all features together "
    "carry the share in the 'share' column)",
    "all": "features, error terms and skip paths all count as nodes (a dense error or skip "
    "vector costs as much as one feature)",
    "features-dense-live": "only features count; error terms and skip paths keep their live "
    "value and are not counted, so a circuit shows what the features add on top of the dense "
    "paths",
}
KIND_TEXT = {
    "random": "random dictionary with the set's shapes and sparsity",
    "neurons": "MLP neurons as nodes",
    "mlp": "whole MLP output, one node per layer and position",
    "dictionary": "",
}
ORDER = ("features", "all", "features-dense-live")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not np.isfinite(value):
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def _ci(e: dict[str, float], digits: int = 2) -> str:
    """value [lo, hi]."""
    if not np.isfinite(e["value"]):
        return "-"
    d = 0 if digits == 0 else digits
    return f"{e['value']:.{d}f} [{e['lo']:.{d}f}, {e['hi']:.{d}f}]"


def _against(verdict: str, other: str) -> str:
    """'fewer nodes than X', 'more nodes than X' or 'inconclusive against X'."""
    return f"{verdict} {'against' if verdict == 'inconclusive' else 'than'} {other}"


def _one(values: list[int]) -> str:
    return str(values[0]) if len(values) == 1 else f"{min(values)}-{max(values)}"


def _nodes(e: dict[str, float], reached: int, n_tasks: int) -> str:
    text = f"{e['value']:.0f} [{e['lo']:.0f}, {e['hi']:.0f}]"
    return text + (f" ({reached}/{n_tasks}, >=)" if reached < n_tasks else "")


def currency_table(summary: dict[str, Any], currency: str, n_tasks: int) -> str:
    """A row per set and baseline: held-out nodes for the level, share, faithfulness at the
    report sizes, in-sample nodes and the verdicts against the baselines."""
    cur = summary["currencies"][currency]
    level, at = summary["level"], summary["sizes_at"]
    head = [
        "system",
        "baseline",
        f"nodes for {level} (held-out)",
        f"nodes for {level} (in-sample)",
        "share carried by all nodes",
        *[f"faithfulness @{s}" for s in at],
        "against the baselines (nodes, held-out)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in cur["systems"].items():
        vs = "; ".join(_against(v["verdict"], b) for b, v in e.get("vs", {}).items())
        cells = [
            f"`{name}`",
            KIND_TEXT[e["kind"]] or "-",
            _nodes(e["heldout"]["nodes"], e["heldout"]["reached"], n_tasks),
            _nodes(e["discovery"]["nodes"], e["discovery"]["reached"], n_tasks),
            _ci(e["heldout"]["share"]),
            *[_ci(e["heldout"]["faithfulness_at"][str(s)]) for s in at],
            vs or "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gap_table(summary: dict[str, Any]) -> str:
    """In-sample minus held-out faithfulness at 50 nodes and the ratio of nodes, per currency."""
    currencies = [c for c in ORDER if c in summary["currencies"]]
    head = ["system"] + [f"{c}: faithfulness @50 gap / nodes ratio" for c in currencies]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = summary["currencies"][currencies[0]]["systems"]
    for name in first:
        cells = [f"`{name}`"]
        for c in currencies:
            e = summary["currencies"][c]["systems"][name]
            g = e["gap_log_nodes"]
            ratio = {k: float(np.exp(v)) for k, v in g.items()}
            cells.append(f"{_ci(e['gap_at']['50'])} / {_ci(ratio)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rankings_table(summary: dict[str, Any]) -> str:
    """Each ranking against the report's one, per currency and system: agreement of the node
    scores, held-out nodes for the level under both, and their ratio with its interval."""
    lines = [
        "| currency | system | ranking | Spearman | top-50 overlap | nodes (report's) | "
        "nodes (this) | this / report's nodes | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in ORDER:
        if c not in summary["currencies"]:
            continue
        for name, r in summary["currencies"][c]["rankings"].items():
            for m, v in r["versus"].items():
                ratio = {k: float(np.exp(x)) for k, x in v["log_ratio"].items() if k != "verdict"}
                lines.append(
                    f"| {c} | `{name}` | {SHORT[m]} | {v['spearman']:.2f} | "
                    f"{v['top_overlap']:.2f} | {r['nodes'][r['reference']]:.0f} | "
                    f"{r['nodes'][m]:.0f} | {_ci(ratio)} | {v['log_ratio']['verdict']} |"
                )
    return "\n".join(lines)


def per_task_table(summary: dict[str, Any], currency: str, tasks: list[str]) -> str:
    """Held-out nodes for the level [interval] per system and task (share in brackets for the
    features currency)."""
    cur = summary["currencies"][currency]["systems"]
    lines = ["| system | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
    for name, e in cur.items():
        cells = []
        for t in tasks:
            p = e["per_task"][t]
            n = p["nodes"]
            text = (
                f"{n['value']:.0f} [{n['lo']:.0f}, {n['hi']:.0f}]"
                if np.isfinite(n["value"])
                else f"> {p['n_nodes']:.0f}"
            )
            if currency == "features":
                text += f" (share {p['share']['value']:.2f})"
            cells.append(text)
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def loss_table(comparison: Comparison, graph: dict[str, Any] | None = None) -> str:
    """Spliced-model loss and attribution-graph scores of each dictionary set; `graph` is the
    summary's `graph_scores` (computed here when not given)."""
    head = ["set", "kind", "objective", "L0", "FVU per site", "CE increase", "loss recovered",
            "graph replacement", "graph completeness", "replacement - random"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    systems = comparison.settings["systems"]
    scores = graph_scores(comparison) if graph is None else graph
    for s in comparison.sets:
        traced = systems.get(s.name, {}).get("graph", {})

        def cell(key: str, traced: dict = traced, name: str = s.name) -> str:
            return _graph_cell(traced, key, scores.get(name, {}).get(key))

        cells = [s.name, s.kind, s.objective, _with_interval(s.l0, s.l0_interval, 1), _fvu_cell(s),
                 _with_interval(s.ce_increase, s.ce_increase_interval),
                 _with_interval(s.frac_recovered, s.frac_recovered_interval),
                 cell("replacement"), cell("completeness"),
                 cell("replacement_minus_random")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _graph_cell(graph: dict[str, dict[str, Any]], key: str, found: dict | None) -> str:
    """A set's graph score with its interval (`analysis.summary.graph_scores`); a results file
    from before per-prompt scores shows the mean over tasks alone."""
    if found is not None:
        bounds = [found["lo"], found["hi"]] if found["lo"] is not None else None
        return _with_interval(found["value"], bounds)
    means = [g[key] for g in graph.values() if g.get(key) is not None]
    return _fmt(float(np.mean(means)) if means else None)


def _loss_note(settings: dict[str, Any]) -> str:
    """What the loss table's figures were measured on, against what, with which intervals."""
    if not settings.get("loss_tokens"):
        loss = "No loss evaluation was run: the loss columns are empty."
    else:
        loss = (
            f"Every set spliced at once on {settings['loss_tokens']:,} held-out tokens (the "
            "validation rows of the corpus this project trains on); baseline: loss recovered is "
            "measured against zero ablation of the same sites; L0 and FVU per site on the same "
            "tokens, from the original activations; brackets: 95% bootstrap intervals over the "
            "evaluated sequences (the same resamples for every figure of a set)."
        )
    prompts = settings.get("graph_prompts", 0)
    if not prompts:
        return loss + " No attribution graphs were traced: the graph columns are empty."
    return loss + (
        f" Graph scores: the mean over tasks of each task's first {prompts} held-out prompt(s), "
        "traced with the set's dictionaries; baseline: the same prompts traced with the set's "
        "random control (replacement - random, paired); brackets: 95% bootstrap over the "
        "tasks and their prompts."
    )


def _with_interval(value: float | None, interval: list[float] | None, digits: int = 3) -> str:
    """A figure and its interval (a results file from before the intervals has none)."""
    if not interval:
        return _fmt(value, digits)
    return f"{_fmt(value, digits)} [{_fmt(interval[0], digits)}, {_fmt(interval[1], digits)}]"


def _fvu_cell(s: SetSummary) -> str:
    """Each site's FVU with its interval (one site can dominate the mean), else the mean."""
    if not s.fvu_sites:
        return _with_interval(s.fvu, s.fvu_interval)
    bounds = s.fvu_sites_interval or {}
    return " / ".join(_with_interval(v, bounds.get(k)) for k, v in s.fvu_sites.items())


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def mean_curve(comparison: Comparison, system: str, currency: str, grid: np.ndarray) -> np.ndarray:
    """Held-out faithfulness averaged over tasks at `grid` sizes (each task's curve
    interpolated in log size and held at its last value beyond its node count)."""
    method = comparison.settings["method"]
    curves = []
    for t in comparison.tasks:
        r = comparison.results[system][currency][t["name"]]["rankings"][method]
        f = faithfulness_rows(
            np.asarray(r["metric"]), np.asarray(t["model"]), np.asarray(t["heldout"])
        )[0]
        x = np.log(np.maximum(np.asarray(r["sizes"], float), 0.5))
        curves.append(np.interp(np.log(grid), x, f))
    return np.mean(curves, 0)


def _sweep_curve(sweep: dict[str, Any], act: str) -> list[tuple[float, float]]:
    """(L0, CE increase) of the claims sweep's `act` SAEs of the gated claim: the pilot's
    runs, or (format 2) each finished point's seed mean."""
    if sweep.get("version", 1) < 2:
        return sorted(
            (r["l0"], r["ce_increase"])
            for r in sweep["runs"].values()
            if r.get("group") == "gated" and r.get("activation") == act
        )
    from analysis.claims_arms import arms, rung_figures

    arm = arms(sweep, "gated").get(act)
    if arm is None:
        return []
    pts = []
    for point in arm.points:
        figs = [rung_figures(rung) for rung in point.values()]
        pts.append(tuple(float(np.mean([f[k] for f in figs])) for k in ("l0", "ce_increase")))
    return sorted(pts)


def write_plots(
    comparison: Comparison, out: Path, sweep: dict[str, Any] | None = None
) -> list[Path]:
    """faithfulness.png (one panel per currency, one line per set, baselines dashed) and
    ce_vs_l0.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    currencies = [c for c in ORDER if c in comparison.settings["currencies"]]
    systems = comparison.settings["systems"]
    level = comparison.settings.get("faithful_level", 0.8)
    fig, axes = plt.subplots(
        1, len(currencies), figsize=(4.6 * len(currencies), 3.6), squeeze=False
    )
    grid = np.unique(np.round(np.logspace(-0.3, 5, 60)))
    for ax, currency in zip(axes.flat, currencies, strict=True):
        for name in comparison.results:
            kind = systems[name]["kind"]
            style = {"dictionary": "-", "random": ":", "neurons": "--", "mlp": "-."}[kind]
            width = 1.6 if kind == "dictionary" else 1.0
            colour = "black" if kind in ("neurons", "mlp") else None
            ax.plot(grid, mean_curve(comparison, name, currency, grid), ls=style, lw=width,
                    color=colour, label=name)  # fmt: skip
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.axhline(level, color="grey", lw=0.5, ls=":")
        ax.set_xscale("log")
        ax.set_ylim(-0.3, 1.3)
        ax.set_title(f"currency: {currency}", fontsize=9)
        ax.set_xlabel("circuit size (nodes)")
        ax.set_ylabel("held-out faithfulness (mean over tasks)")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    paths.append(out / "faithfulness.png")
    _save(fig, paths[-1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for s in comparison.sets:
        if s.l0 is not None:
            ax.scatter([s.l0], [s.ce_increase], label=s.name)
    if sweep:
        for act, marker in (("relu", "x"), ("gated", "+")):
            pts = _sweep_curve(sweep, act)
            if pts:
                ax.plot(
                    *zip(*pts, strict=True),
                    marker=marker,
                    ls="--",
                    lw=0.8,
                    label=f"sweep {act} SAE (layer {sweep['setup']['layer']} alone)",
                )
    if any(x > 0 for line in ax.lines for x in line.get_xdata()) or any(
        len(c.get_offsets()) for c in ax.collections
    ):  # no points (no loss rows, no sweep): a log axis would refuse the empty data
        ax.set_xscale("log")
    ax.set_xlabel("L0 (active features per token)")
    ax.set_ylabel("CE increase (nats)")
    if ax.get_legend_handles_labels()[0]:  # no set has an L0 when none was spliced
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "ce_vs_l0.png")
    _save(fig, paths[-1])
    plt.close(fig)
    return paths


def findings(comparison: Comparison, summary: dict[str, Any] | None = None) -> str:
    """The verdicts the intervals support, one line per currency and set."""
    summary = summary or summarize(comparison)
    lines = []
    for c in ORDER:
        if c not in summary["currencies"]:
            continue
        for name, e in summary["currencies"][c]["systems"].items():
            if e["kind"] != "dictionary":
                continue
            verdicts = ", ".join(_against(v["verdict"], f"`{b}`") for b, v in e["vs"].items())
            share = (
                f"; all features carry {_ci(e['heldout']['share'])} of the task"
                if c == "features"
                else ""
            )
            lines.append(
                f"- {c}: `{name}` needs {_nodes(e['heldout']['nodes'], e['heldout']['reached'], len(comparison.tasks))} "
                f"nodes for {summary['level']} on held-out pairs{share}; {verdicts or 'no baseline'}."
            )
    return "\n".join(lines)


def write_report(
    comparison: Comparison,
    out: str | Path,
    claims: list[Claim] | None = None,
    sweep: dict[str, Any] | None = None,
    findings_text: str = "",
    summary: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write report.md, the plots and results.json (raw per-pair metrics, the summary with
    intervals, the sweep and claims) into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summary or summarize(comparison)
    plots = write_plots(comparison, out, sweep)
    st = comparison.settings
    n_tasks = len(comparison.tasks)
    level = summary["level"]
    currencies = [c for c in ORDER if c in st["currencies"]]
    ranked = {t["name"]: t.get("rankings", [st["method"]]) for t in comparison.tasks}
    both = [n for n, r in ranked.items() if len(r) > 1]
    n_pairs = sorted({t["n_pairs"] for t in comparison.tasks})
    n_held = sorted({len(t["heldout"]) for t in comparison.tasks})
    how = (
        f"Nodes: {'attention heads per (layer, head, position) via hook_z, ' if st['heads'] else ''}"
        "and per dictionary site its features, error term and (skip transcoders) skip path, "
        f"{'per position' if st['per_position'] else 'aggregated over positions'}. Nodes are "
        f"ranked by {st['method'].replace('_', ' ')} on a discovery split of each task's pairs "
        f"and measured on the disjoint held-out split ({_one(n_held)} of {_one(n_pairs)} pairs "
        "held out, "
        f"seed {st['seed']}); nodes outside the circuit take their {st['ablation']} value "
        f"({'mean over the discovery pairs, per position' if st['ablation'] == 'mean' else st['ablation']}). "
        f"Circuit sizes: 0, the grid {', '.join(str(s) for s in GRID)} (below the node count) "
        "and all nodes. "
        f"Nodes for {level}: the first crossing of {level}, interpolated in log size; over tasks "
        "the geometric mean, a task that never reaches it counting all its nodes (marked "
        f"'(k/{n_tasks}, >=)': a lower bound). Intervals: {summary['bootstrap']} bootstrap "
        "resamples of the tasks and, within each, of the pairs (95% percentile intervals); "
        "comparisons with baselines are paired (same resamples). Run time "
        f"{st['seconds']:.0f} s on {st['threads']} threads."
    )
    task_lines = [
        f"- `{t['name']}` ({t['n_pairs']} pairs, {t['n_tokens']} tokens, accuracy "
        f"{t['accuracy']:.3f}, m(empty)/m(model) {summary['empty_share'][t['name']]:.2f}): "
        f"{t['description']}"
        for t in comparison.tasks
    ]
    text = [
        "# Which dictionaries give faithful circuits",
        "",
        how,
        "",
        "Currencies (which nodes a circuit pays for; attention heads count in all of them):",
        *[f"- `{c}`: {CURRENCY_TEXT[c]}." for c in currencies],
        "",
        "Baselines: random dictionaries with each set's shapes, activation and sparsity "
        "(seeded, built in memory; `analysis.baselines`), MLP neurons as nodes (`neurons`), and "
        "the whole MLP output as one node per layer and position (`mlp`).",
        "",
        "Tasks (m(empty)/m(model): the metric left when every node is ablated, as a share of the "
        "model's):",
        *task_lines,
        "",
    ]
    if findings_text:
        text += ["## Findings", "", findings_text, ""]
    for c in currencies:
        text += [
            f"## Currency `{c}`",
            "",
            f"{CURRENCY_TEXT[c][0].upper()}{CURRENCY_TEXT[c][1:]}.",
            "",
            currency_table(summary, c, n_tasks),
            "",
        ]
    text += [
        "![faithfulness per currency](faithfulness.png)",
        "",
        "## Held-out against in-sample",
        "",
        "In-sample (discovery pairs) minus held-out faithfulness at 50 nodes, and in-sample over "
        "held-out nodes for the level (below 1: in-sample figures flatter the circuits):",
        "",
        gap_table(summary),
        "",
    ]
    if both:
        text += [
            "## Rankings",
            "",
            f"Every ranking on {len(both)} task(s) ({', '.join(both)}), each against the "
            f"report's ({SHORT[st['method']]}): attribution patching (AtP, one gradient at the "
            f"live values), integrated gradients per source (IG, {st['ig_steps']} points per "
            f"source, the other sources live) and joint integrated gradients ({st['ig_steps']} "
            "points on the path where every node moves from ablated to live together). "
            "Columns: Spearman correlation of the node scores, overlap of the top 50 nodes, "
            f"held-out nodes for {level} under both, and the paired interval of their ratio.",
            "",
            rankings_table(summary),
            "",
        ]
    for c in currencies:
        text += [f"## Per task, currency `{c}` (held-out nodes for {level})", "",
                 per_task_table(summary, c, list(ranked)), ""]  # fmt: skip
    text += ["## Loss and attribution graphs", "",
             _loss_note(st), "",
             loss_table(comparison, summary.get("graph")), "",
             "![CE increase against L0](ce_vs_l0.png)", ""]  # fmt: skip
    if claims:
        text += [
            "## The seeds' claims",
            "",
            claims_markdown(claims, (sweep or {}).get("setup")),
            "",
        ]
    write_text(out / "report.md", "\n".join(text))
    data = comparison.to_dict()
    data["summary"] = summary
    data["claims"] = [vars(c) for c in claims or []]
    data["sweep"] = sweep
    write_json(out / "results.json", data)
    return {
        "report": out / "report.md",
        "results": out / "results.json",
        **{p.stem: p for p in plots},
    }


__all__ = ["CURRENCIES", "findings", "summarize", "write_plots", "write_report"]
