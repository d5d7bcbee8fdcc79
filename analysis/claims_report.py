"""The claims report: verdicts with intervals, Pareto curves and convergence curves.

`write_claims_report(results, out)` writes into `out`:
- `claims.md`: the verdicts, and every finished point's figures with 95% intervals (seeds and
  evaluation chunks resampled) as a table;
- `claims_pareto.png`: metric against L0 per claim (FVU and CE increase for the skip claim),
  one marker per seed, the seed mean joined, the intervals as error bars, and each claim's
  closed-form baseline (linear only for the transcoders, mean ablation for the SAEs) dotted;
- `claims_convergence.png`: held-out CE increase against training tokens for every run, so a
  reader sees each one settle;
- `claims_verdicts.json`;
- `claims_readings.json`: the Braun TopK comparison at the e2e ladders' common budget while
  they still train, and e2e+ds against e2e at equal budget (`analysis.claims_budget`;
  readings, never verdicts), also in claims.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from analysis.claims import BASELINES, claims, claims_markdown
from analysis.claims_arms import Arm, arms, baseline_rung, n_chunks, rung_figures, single_run
from analysis.claims_budget import braun_readings, readings_markdown
from analysis.claims_stats import Interval, bootstrap, seed_mean
from replacement.atomic import atomic_path, write_json, write_text

_PANELS = (
    ("skip", "fvu", "FVU"),
    ("skip", "ce_increase", "CE increase (nats)"),
    ("gated", "ce_increase", "CE increase (nats)"),
    ("gated", "shrinkage", "gamma (relative reconstruction bias)"),
    ("braun", "ce_increase", "CE increase (nats)"),
)
"""The Pareto plot's panels: (claim, metric, axis label); Paulo et al. claim both FVU and CE,
Rajamanoharan et al. both CE and shrinkage (gamma < 1)."""
_TABLE_KEY = {"skip": "fvu", "gated": "ce_increase", "braun": "ce_increase"}
"""Each claim's own metric in the table of points (CE increase has a column of its own)."""
_BASELINE_POINT = {"linear": "no features", "mean": "no dictionary"}
_BASELINE_LINE = {"linear": "linear only (no features)", "mean": "mean ablation (no dictionary)"}


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def point_interval(arm: Arm, index: int, key: str, chunks: int) -> Interval:
    """The seed mean of `key` at one point of an arm, with its 95% interval (chunks and seeds
    resampled)."""
    point = arm.points[index]

    def stat(weights: np.ndarray, picks: dict[str, np.ndarray]) -> np.ndarray:
        return seed_mean({s: rung_figures(point[s], weights)[key] for s in point}, picks["x"])

    return bootstrap(stat, chunks, {"x": sorted(point)})


def _sparsity(label: str) -> tuple[float, str]:
    """`k=8` -> 8.0, `l1=0.17` -> 0.17 (a label without a number sorts last, by name)."""
    try:
        return float(label.split("=", 1)[-1]), label
    except ValueError:
        return float("inf"), label


def point_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (claim, arm, point) of the finished runs: L0, the panel's metric and CE
    increase with intervals, seeds, final budgets and convergence."""
    chunks = n_chunks(results)
    rows = []
    for claim, key in _TABLE_KEY.items():
        for name, arm in sorted(arms(results, claim).items()):
            # in order of sparsity, not of when a point was added to the plan
            for i in sorted(range(len(arm.labels)), key=lambda j: _sparsity(arm.labels[j])):
                label, point = arm.labels[i], arm.points[i]
                found = {
                    k: point_interval(arm, i, k, chunks)
                    for k in {key, "ce_increase", "l0", "shrinkage"}
                }
                rows.append(
                    {
                        "claim": claim,
                        "arm": name,
                        "point": label,
                        "seeds": sorted(point),
                        "tokens": [int(point[s]["tokens"]) for s in sorted(point)],
                        "key": key,
                        **{k: [v.estimate, v.low, v.high] for k, v in found.items()},
                        "l0_change": arm.l0_changes[i] if arm.l0_changes else None,
                    }
                )
        base_arm = BASELINES[claim][0]
        base = baseline_rung(results, claim, base_arm)
        if base is not None:
            found = {
                k: single_run(base, k, chunks) for k in {key, "ce_increase", "l0", "shrinkage"}
            }
            rows.append(
                {
                    "claim": claim,
                    "arm": f"{base_arm} (baseline)",
                    "point": _BASELINE_POINT[base_arm],
                    "seeds": [0],
                    "tokens": [int(base["tokens"])],
                    "key": key,
                    **{k: [v.estimate, v.low, v.high] for k, v in found.items()},
                    "l0_change": None,
                }
            )
    return rows


def points_markdown(rows: list[dict[str, Any]]) -> str:
    """The finished points as one table: each figure with its 95% interval."""
    if not rows:
        return "No point has finished yet.\n"

    def iv(x: list[float], digits: int = 4) -> str:
        return f"{x[0]:.{digits}f} [{x[1]:.{digits}f}, {x[2]:.{digits}f}]"

    lines = [
        "| claim | arm | point | seeds | final tokens | L0 | L0 change, last doubling "
        "| FVU or CE increase | CE increase | gamma |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tokens = ", ".join(f"{t / 1e6:g}M" for t in r["tokens"])
        change = "-" if r.get("l0_change") is None else f"{100 * r['l0_change']:+.1f}%"
        lines.append(
            f"| {r['claim']} | {r['arm']} | {r['point']} | {len(r['seeds'])} | {tokens} | "
            f"{iv(r['l0'], 1)} | {change} | {r['key']} {iv(r[r['key']])} | "
            f"{iv(r['ce_increase'])} | {iv(r['shrinkage'], 3)} |"
        )
    return "\n".join(lines) + "\n"


def plot_pareto(results: dict[str, Any], path: Path) -> None:
    """One panel per claim: each arm's metric against L0, seeds as points, their mean joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    cols = 3
    rows = -(-len(_PANELS) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(_PANELS) :]:
        ax.set_visible(False)
    for ax, (claim, key, label) in zip(axes.flat, _PANELS, strict=False):
        for name, arm in sorted(arms(results, claim).items()):
            if not arm.seeds:
                continue
            per_seed = [
                arm.curve(s, np.ones(len(arm.points[0][s]["chunks"]["tokens"])), key)
                for s in arm.seeds
            ]
            l0 = np.mean([c[0] for c in per_seed], axis=0)
            metric = np.mean([c[1] for c in per_seed], axis=0)
            order = np.argsort(l0)
            line = ax.plot(l0[order], metric[order], lw=1, label=name)[0]
            for seed_l0, seed_metric in per_seed:
                ax.scatter(seed_l0, seed_metric, s=8, alpha=0.5, color=line.get_color())
            chunks = len(arm.points[0][arm.seeds[0]]["chunks"]["tokens"])
            bounds = np.array([point_interval(arm, i, key, chunks) for i in range(len(arm.points))])
            low = np.array([b.low for b in bounds])
            high = np.array([b.high for b in bounds])
            ax.errorbar(l0, metric, yerr=[metric - low, high - metric], fmt="none",
                        ecolor=line.get_color(), capsize=2, lw=0.8)  # fmt: skip
        base_arm = BASELINES[claim][0]
        base = baseline_rung(results, claim, base_arm)
        # gamma of a constant output measures nothing about shrinkage: no line there
        if base is not None and key != "shrinkage" and ax.get_legend_handles_labels()[0]:
            ax.axhline(rung_figures(base)[key], color="0.4", ls=":", lw=1,
                       label=_BASELINE_LINE[base_arm])  # fmt: skip
        ax.set_xscale("log")
        low, high = ax.get_xlim()
        if high / low < 2:  # matplotlib labels every minor tick of so narrow a range: they overlap
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("L0 (active features per token)")
        ax.set_ylabel(label)
        ax.set_title(claim, fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no finished runs yet", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_convergence(results: dict[str, Any], path: Path) -> None:
    """Held-out CE increase against training tokens, one line per (point, seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    claims_seen = sorted({r["claim"] for r in results["runs"].values()})
    fig, axes = plt.subplots(
        1, max(1, len(claims_seen)), figsize=(4.4 * max(1, len(claims_seen)), 3.4), squeeze=False
    )
    colours = plt.get_cmap("tab20").colors
    for ax, claim in zip(axes.flat, claims_seen, strict=False):
        points = sorted(
            (name, run)
            for name, run in results["runs"].items()
            if run["claim"] == claim and run["stage"] == "sweep"
        )
        # one colour per point, one line style per seed, so every line can be told apart
        for i, (name, run) in enumerate(points):
            for seed, entry in sorted(run["seeds"].items()):
                # a shipped early rung keeps its figures only (`shipped_form`)
                pts = [
                    (r["tokens"], (r.get("figures") or rung_figures(r))["ce_increase"])
                    for r in entry["rungs"]
                ]
                if pts:
                    ax.plot(
                        *zip(*pts, strict=True),
                        marker="." if entry["converged"] else "x",
                        ls=("-", "--", ":", "-.")[int(seed) % 4],
                        color=colours[i % len(colours)],
                        lw=0.7,
                        alpha=0.8,
                        label=name.split("/", 1)[-1] if seed == min(run["seeds"]) else None,
                    )
        ax.set_xscale("log")
        ax.set_xlabel("training tokens")
        ax.set_yscale("log")  # the gated claim's points span 0.002 to 0.3 nats
        ax.set_ylabel("held-out CE increase (nats)")
        ax.set_title(f"{claim} (seed 0 solid, seed 1 dashed; x: not converged)", fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def write_claims_report(results: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write claims.md, the two plots and claims_verdicts.json into `out`; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    found = claims(results)
    readings = braun_readings(results, n_chunks(results))
    paths = {
        "report": out / "claims.md",
        "pareto": out / "claims_pareto.png",
        "convergence": out / "claims_convergence.png",
        "verdicts": out / "claims_verdicts.json",
        "readings": out / "claims_readings.json",
    }
    plot_pareto(results, paths["pareto"])
    plot_convergence(results, paths["convergence"])
    text = [
        "# The seed papers' claims",
        "",
        claims_markdown(found, results.get("setup")),
        *(
            ["## Readings at a stated budget (not verdicts)", "", readings_markdown(readings)]
            if readings
            else []
        ),
        "![Pareto curves](claims_pareto.png)",
        "",
        "![Convergence](claims_convergence.png)",
        "",
        "## Every finished point",
        "",
        f"Seed means with 95% intervals (bootstrap over the {n_chunks(results)} evaluation "
        "chunks and the seeds);",
        "a run still training is left out until its ladder ends. gamma is the relative",
        "reconstruction bias sum |y_hat|^2 / sum <y_hat, y> (1: none; below 1: shrunk).",
        "Convergence is read on CE increase only; the L0 change over each ladder's last",
        "doubling (seed mean) says how far a point may still move along the L0 axis.",
        "",
        points_markdown(point_rows(results)),
    ]
    write_text(paths["report"], "\n".join(text))
    write_json(paths["verdicts"], [vars(c) for c in found])
    write_json(paths["readings"], [vars(r) for r in readings])
    return paths
