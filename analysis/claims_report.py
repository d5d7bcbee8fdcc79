"""The claims report: verdicts with intervals, Pareto curves and convergence curves.

`write_claims_report(results, out)` writes `claims.md`, `claims_pareto.png` (metric against L0
per claim, one marker per seed, the seed mean joined), `claims_convergence.png` (held-out CE
increase against training tokens for every run, so a reader sees each one settle) and
`claims_verdicts.json` into `out`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from analysis.claims import arms, claims, claims_markdown, rung_figures
from replacement.atomic import atomic_path, write_json, write_text

_PANELS = (
    ("skip", "fvu", "FVU"),
    ("gated", "ce_increase", "CE increase (nats)"),
    ("braun", "ce_increase", "CE increase (nats)"),
)


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_pareto(results: dict[str, Any], path: Path) -> None:
    """One panel per claim: each arm's metric against L0, seeds as points, their mean joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(_PANELS), figsize=(4.4 * len(_PANELS), 3.4), squeeze=False)
    for ax, (claim, key, label) in zip(axes.flat, _PANELS, strict=True):
        for name, arm in sorted(arms(results, claim).items()):
            if not arm.seeds:
                continue
            per_seed = [
                arm.curve(s, np.ones(len(arm.points[0][s]["chunks"]["tokens"])), key)
                for s in arm.seeds
            ]
            for l0, metric in per_seed:
                ax.scatter(l0, metric, s=8, alpha=0.5)
            l0 = np.mean([c[0] for c in per_seed], axis=0)
            metric = np.mean([c[1] for c in per_seed], axis=0)
            order = np.argsort(l0)
            ax.plot(l0[order], metric[order], lw=1, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("L0 (active features per token)")
        ax.set_ylabel(label)
        ax.set_title(claim, fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
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
    for ax, claim in zip(axes.flat, claims_seen, strict=False):
        for run in results["runs"].values():
            if run["claim"] != claim or run["stage"] != "sweep":
                continue
            for entry in run["seeds"].values():
                pts = [(r["tokens"], rung_figures(r)["ce_increase"]) for r in entry["rungs"]]
                if pts:
                    ax.plot(
                        *zip(*pts, strict=True),
                        marker="." if entry["converged"] else "x",
                        lw=0.7,
                        alpha=0.7,
                    )
        ax.set_xscale("log")
        ax.set_xlabel("training tokens")
        ax.set_ylabel("held-out CE increase (nats)")
        ax.set_title(f"{claim} (x: not converged)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def write_claims_report(results: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write claims.md, the two plots and claims_verdicts.json into `out`; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    found = claims(results)
    paths = {
        "report": out / "claims.md",
        "pareto": out / "claims_pareto.png",
        "convergence": out / "claims_convergence.png",
        "verdicts": out / "claims_verdicts.json",
    }
    plot_pareto(results, paths["pareto"])
    plot_convergence(results, paths["convergence"])
    text = [
        "# The seed papers' claims",
        "",
        claims_markdown(found, results.get("setup")),
        "![Pareto curves](claims_pareto.png)",
        "",
        "![Convergence](claims_convergence.png)",
        "",
    ]
    write_text(paths["report"], "\n".join(text))
    write_json(paths["verdicts"], [vars(c) for c in found])
    return paths
