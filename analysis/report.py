"""Write a `Comparison` as report.md, PNG plots and results.json into a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analysis.claims import Claim, claims_markdown
from analysis.compare import FAITHFUL_LEVEL, REPORT_SIZES, Comparison
from replacement.atomic import atomic_path, write_json, write_text


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _unit(comparison: Comparison) -> str:
    """What circuit sizes count: nodes, or edges for edge-level circuits."""
    return str(comparison.settings.get("level", "nodes"))


def table_markdown(comparison: Comparison) -> str:
    """The one table: a row per set, task results averaged over tasks."""
    head = (
        [
            "set",
            "kind",
            "objective",
            "L0",
            "FVU",
            "CE increase",
            "loss recovered",
            f"{_unit(comparison)} for faithfulness {FAITHFUL_LEVEL}",
        ]
        + [f"faithfulness @{s}" for s in REPORT_SIZES]
        + ["CPR", "CMD", "replacement", "completeness", "m(empty)/m(M)"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    n_tasks = len(comparison.tasks)
    for s in comparison.sets:
        row = comparison.set_row(s.name)
        cells = [
            s.name,
            s.kind,
            s.objective,
            _fmt(row["l0"], 1),
            _fmt(row["fvu"]),
            _fmt(row["ce_increase"]),
            _fmt(row["frac_recovered"]),
            f"{_fmt(row['nodes_needed'], 0)} ({row['tasks_reaching']}/{n_tasks})",
            *[_fmt(row[f"faithfulness_at_{x}"], 2) for x in REPORT_SIZES],
            _fmt(row["cpr"]),
            _fmt(row["cmd"]),
            _fmt(row["replacement"]),
            _fmt(row["completeness_score"]),
            _fmt(row["empty_share"], 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_task_markdown(comparison: Comparison) -> str:
    """Faithfulness at 50 nodes and nodes needed, per set and task."""
    names = [t["name"] for t in comparison.tasks]
    lines = ["| set | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for s in comparison.sets:
        cells = []
        for t in names:
            r = comparison.results[s.name][t]
            cells.append(f"{r['faithfulness_at']['50']:.2f} / {_fmt(r['nodes_needed'], 0)}")
        lines.append(f"| {s.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def write_plots(
    comparison: Comparison, out: Path, sweep: dict[str, Any] | None = None
) -> list[Path]:
    """faithfulness.png (one panel per task, one line per set), ce_vs_l0.png, cpr.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    tasks = [t["name"] for t in comparison.tasks]
    cols = min(3, len(tasks))
    rows = (len(tasks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for s in comparison.sets:
            c = comparison.results[s.name][task]["curve"]
            sizes = [max(x, 0.5) for x in c["sizes"]]  # size 0 drawn at 0.5 on the log axis
            ax.plot(sizes, c["faithfulness"], marker=".", label=s.name)
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.axhline(FAITHFUL_LEVEL, color="grey", lw=0.5, ls=":")
        ax.set_xscale("log")
        ax.set_ylim(-0.5, 1.5)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel(f"circuit size ({_unit(comparison)})")
        ax.set_ylabel("faithfulness")
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
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
            pts = sorted(
                (r["l0"], r["ce_increase"])
                for r in sweep["runs"].values()
                if r["group"] == "gated" and r["activation"] == act
            )
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
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "ce_vs_l0.png")
    _save(fig, paths[-1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.2))
    names = [s.name for s in comparison.sets]
    ax.bar(names, [comparison.set_row(n)["cpr"] or 0 for n in names])
    ax.set_ylabel("CPR (mean over tasks)")
    ax.set_ylim(0.8, 1.02)
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    paths.append(out / "cpr.png")
    _save(fig, paths[-1])
    plt.close(fig)
    return paths


def write_report(
    comparison: Comparison,
    out: str | Path,
    claims: list[Claim] | None = None,
    sweep: dict[str, Any] | None = None,
    findings: str = "",
) -> dict[str, Path]:
    """Write report.md, the plots and results.json (with the sweep and claims) into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(comparison, out, sweep)
    st = comparison.settings
    unit = _unit(comparison)
    how = (
        f"Nodes ranked by {st['method'].replace('_', ' ')}, "
        f"{'per position' if st['per_position'] else 'aggregated over positions'}; nodes outside "
        f"the circuit {st['ablation']}-ablated; one batched forward over all prompts per circuit "
        "size."
        if unit == "nodes"
        else "Edge circuits: edges from a node (per position) to a later site or to the logits, "
        "ranked by edge attribution patching; an edge outside the circuit hands the downstream "
        f"site its upstream node's {st['ablation']} value (`analysis.edges`); one batched "
        "forward per site over all prompts per circuit size. Sizes count edges."
    )
    task_lines = [
        f"- `{t['name']}` ({t['n_pairs']} pairs, {t['n_tokens']} tokens, accuracy "
        f"{t['accuracy']:.3f}): {t['description']}"
        for t in comparison.tasks
    ]
    text = [
        "# Which dictionaries give faithful circuits",
        "",
        f"{how} Loss columns: every layer spliced at once on {_fmt(st['loss_tokens'])} held-out "
        f"tokens. Replacement and completeness: mean scores of the attribution graphs of "
        f"{st['graph_prompts']} prompts per task (target: the metric direction). Run time "
        f"{st['seconds']:.0f} s on {st['threads']} threads.",
        "",
        "Tasks:",
        *task_lines,
        "",
        table_markdown(comparison),
        "",
        f"{unit.capitalize()} for faithfulness {FAITHFUL_LEVEL}: smallest evaluated size reaching it, averaged "
        f"over tasks (a task that never reaches it counts all its {unit}; in brackets the tasks "
        f"that reach it). CPR / CMD: MIB areas over the fraction of {unit} "
        "{0.1 ... 100}%. m(empty)/m(M): the metric left when every node is ablated, as a share "
        "of the full model's; the same for every set because the skip path of a skip transcoder is a node too.",
        "",
        f"Per task, faithfulness at 50 {unit} / {unit} for faithfulness {FAITHFUL_LEVEL}:",
        "",
        per_task_markdown(comparison),
        "",
        "![faithfulness](faithfulness.png)",
        "![CE increase against L0](ce_vs_l0.png)",
        "![CPR](cpr.png)",
        "",
    ]
    if findings:
        text += ["## Finding", "", findings, ""]
    if claims:
        text += [
            "## The seeds' claims",
            "",
            claims_markdown(claims, (sweep or {}).get("setup")),
            "",
        ]
    write_text(out / "report.md", "\n".join(text))
    data = comparison.to_dict()
    data["claims"] = [vars(c) for c in claims or []]
    data["sweep"] = sweep
    write_json(out / "results.json", data)
    return {
        "report": out / "report.md",
        "results": out / "results.json",
        **{p.stem: p for p in plots},
    }
