"""The interpretability section: markdown tables and plots written into an output folder.

    write_interpretability(results, out)  ->  out/interpretability.md, out/interpretability.png,
                                              out/interpretability_by_frequency.png

Every set is shown next to its random control (same shapes, same TopK sparsity) and the MLP
neurons (sparsified to the same L0); intervals are 95% bootstrap intervals over features;
comparisons between sets are also made within firing-frequency bins (density-matched).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from analysis.interpretability.run import SourceResult
from analysis.interpretability.stats import (
    FREQUENCY_BINS,
    bootstrap_mean,
    difference,
    frequency_bin,
    matched_difference,
    verdict,
)
from replacement.atomic import atomic_path, write_text

COMPARISONS = (
    ("transcoder", "sae_local", "Paulo et al.: transcoder vs SAE"),
    ("skip_transcoder", "sae_local", "Paulo et al.: skip transcoder vs SAE"),
    ("skip_transcoder", "transcoder", "Paulo et al.: skip connection costs nothing"),
    ("sae_e2e", "sae_local", "Braun et al.: e2e vs local SAE"),
    ("sae_e2e_ds", "sae_local", "Braun et al.: e2e+ds vs local SAE"),
    ("skip_transcoder_e2e", "skip_transcoder", "e2e vs local skip transcoder"),
)
"""(a, b, question) pairs compared when both sets were scored."""


def _ci(m: tuple[float, float, float], digits: int = 3) -> str:
    if np.isnan(m[0]):
        return "n/a"
    return f"{m[0]:.{digits}f} [{m[1]:.{digits}f}, {m[2]:.{digits}f}]"


def combined(r: SourceResult) -> np.ndarray:
    """Mean of detection and fuzzing per unit."""
    return (r.detection + r.fuzzing) / 2


def summary_rows(results: Mapping[str, SourceResult], n_boot: int = 1000) -> list[dict[str, Any]]:
    """One row per source: means with intervals, and the gap to its random control."""
    rows = []
    for name, r in results.items():
        row = {
            "source": name,
            "kind": r.kind,
            "units": len(r.scored),
            "scored": int(r.scored.sum()),
            "l0_per_layer": float(r.frequency.sum() / max(len(set(r.layer.tolist())), 1)),
            "detection": bootstrap_mean(r.detection, n_boot),
            "fuzzing": bootstrap_mean(r.fuzzing, n_boot),
            "combined": bootstrap_mean(combined(r), n_boot),
            "label_baseline": bootstrap_mean(
                (r.baseline_detection + r.baseline_fuzzing) / 2, n_boot
            ),
            "concept_f1": bootstrap_mean(
                np.array([np.nan if x is None else x for x in r.probing["unit_f1"]], float), n_boot
            ),
        }
        control = results.get(f"{name}:random")
        if control is not None:
            row["vs_random"] = difference(combined(r), combined(control), n_boot)
            row["vs_random_matched"] = matched_difference(
                combined(r), r.frequency, combined(control), control.frequency, n_boot
            )
            row["separated"] = bool(
                row["combined"][1] > bootstrap_mean(combined(control), n_boot)[2]
            )
        rows.append(row)
    return rows


def probe_rows(results: Mapping[str, SourceResult]) -> list[dict[str, Any]]:
    """Per source: mean over concepts of the best single unit's F1 and of k-sparse accuracy."""
    rows = []
    for name, r in results.items():
        per = r.probing["per_concept"]
        if not per:
            continue
        row = {
            "source": name,
            "concepts": len(per),
            "best_unit_f1": float(np.mean([v["f1"] for v in per.values()])),
        }
        for k in ("1", "2", "5"):
            row[f"probe_{k}"] = float(np.mean([v["probe_accuracy"][k] for v in per.values()]))
        rows.append(row)
    return rows


def bin_rows(results: Mapping[str, SourceResult], n_boot: int = 1000) -> list[dict[str, Any]]:
    """Combined score per source within each firing-frequency bin."""
    rows = []
    for name, r in results.items():
        bins = frequency_bin(r.frequency)
        score = combined(r)
        cells = []
        for k in range(len(FREQUENCY_BINS) - 1):
            v = score[(bins == k) & ~np.isnan(score)]
            cells.append((bootstrap_mean(v, n_boot), int(v.size)))
        rows.append({"source": name, "cells": cells})
    return rows


def comparison_rows(
    results: Mapping[str, SourceResult], n_boot: int = 1000
) -> list[dict[str, Any]]:
    """The seeds' comparisons (`COMPARISONS`) between scored sets."""
    rows = []
    for a, b, question in COMPARISONS:
        if a not in results or b not in results:
            continue
        ra, rb = results[a], results[b]
        raw = difference(combined(ra), combined(rb), n_boot)
        matched = matched_difference(combined(ra), ra.frequency, combined(rb), rb.frequency, n_boot)
        rows.append(
            {
                "a": a,
                "b": b,
                "question": question,
                "difference": raw,
                "matched": matched,
                "verdict": verdict(raw[1], raw[2]),
                "matched_verdict": verdict(matched[1], matched[2]),
            }
        )
    return rows


def interpretability_markdown(
    results: Mapping[str, SourceResult],
    settings: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
) -> str:
    """The section as markdown (tables; the figures are referenced by file name)."""
    s = settings or {}
    summary = summary_rows(results, n_boot)
    lines = [
        "## Interpretability (offline, deterministic explainer)",
        "",
        f"Explanations fitted on {s.get('fit', 'the fit split')}; detection and fuzzing scored "
        f"on {s.get('score', 'the score split')}, a disjoint split. Detection: balanced accuracy "
        "of telling activating from non-activating contexts; fuzzing: of telling contexts "
        "highlighted on the firing tokens from contexts highlighted on as many random tokens "
        "(delphi's definitions; examples drawn across activation quantiles). Explanations are "
        "disjunctions of at most "
        f"{s.get('max_atoms', 3)} atoms (tokens, previous tokens, bigrams, syntax concepts, "
        "concept x token). Intervals: 95% bootstrap over features. `:random` = the set's random "
        "control (same kind, shapes, activation and k; random encoder directions); `neurons` = "
        "MLP neurons sparsified per token to the same L0.",
        "",
        "| source | scored / units | L0 per layer | detection | fuzzing | combined | label tokens "
        "(baseline) | concept F1 | combined - random | density-matched | separated |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        lines.append(
            f"| `{r['source']}` | {r['scored']} / {r['units']} | {r['l0_per_layer']:.1f} | "
            f"{_ci(r['detection'])} | {_ci(r['fuzzing'])} | {_ci(r['combined'])} | "
            f"{_ci(r['label_baseline'])} | {_ci(r['concept_f1'])} | "
            f"{_ci(r['vs_random']) if 'vs_random' in r else ''} | "
            f"{_ci(r['vs_random_matched']) if 'vs_random' in r else ''} | "
            f"{('yes' if r['separated'] else '**no**') if 'separated' in r else ''} |"
        )
    comps = comparison_rows(results, n_boot)
    if comps:
        lines += [
            "",
            "### The seeds' comparisons (combined score, a minus b)",
            "",
            "| question | a | b | difference | verdict | density-matched | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in comps:
            lines.append(
                f"| {c['question']} | `{c['a']}` | `{c['b']}` | {_ci(c['difference'])} | "
                f"{c['verdict']} | {_ci(c['matched'])} | {c['matched_verdict']} |"
            )
    edges = FREQUENCY_BINS
    head = " | ".join(f"({edges[k]:g}, {edges[k + 1]:g}]" for k in range(len(edges) - 1))
    lines += [
        "",
        "### Combined score within firing-frequency bins (n features)",
        "",
        f"| source | {head} |",
        "|---|" + "---|" * (len(edges) - 1),
    ]
    for r in bin_rows(results, n_boot):
        cells = " | ".join(
            f"{m[0]:.3f} [{m[1]:.3f}, {m[2]:.3f}] ({n})" if n else "-" for m, n in r["cells"]
        )
        lines.append(f"| `{r['source']}` | {cells} |")
    probes = probe_rows(results)
    if probes:
        lines += [
            "",
            "### Concept probing (held-out; mean over concepts)",
            "",
            "| source | concepts | best single unit F1 | 1-sparse probe acc | 2-sparse | 5-sparse |",
            "|---|---|---|---|---|---|",
        ]
        for p in probes:
            lines.append(
                f"| `{p['source']}` | {p['concepts']} | {p['best_unit_f1']:.3f} | "
                f"{p['probe_1']:.3f} | {p['probe_2']:.3f} | {p['probe_5']:.3f} |"
            )
    lines += [
        "",
        "![interpretability](interpretability.png)",
        "![by frequency](interpretability_by_frequency.png)",
        "",
    ]
    return "\n".join(lines)


def write_plots(results: Mapping[str, SourceResult], out: Path, n_boot: int = 1000) -> list[Path]:
    """Bar chart of combined scores with intervals; combined score against frequency bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summary_rows(results, n_boot)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(summary)), 3.5))
    names = [r["source"] for r in summary]
    means = np.array([r["combined"][0] for r in summary])
    err = np.array(
        [
            [r["combined"][0] - r["combined"][1], r["combined"][2] - r["combined"][0]]
            for r in summary
        ]
    ).T
    colours = ["#999" if ":random" in n else "#6a9" if n == "neurons" else "#d73" for n in names]
    ax.bar(range(len(names)), means, yerr=err, color=colours, capsize=3)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("detection + fuzzing / 2")
    ax.axhline(0.5, color="k", lw=0.5, ls="--")
    ax.set_ylim(0.4, 1.0)
    fig.tight_layout()
    paths = [out / "interpretability.png"]
    with atomic_path(paths[0]) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    mids = np.arange(len(FREQUENCY_BINS) - 1)
    for r in bin_rows(results, n_boot):
        ys = [m[0] if n >= 5 else np.nan for m, n in r["cells"]]
        style = ":" if ":random" in r["source"] else "-." if r["source"] == "neurons" else "-"
        ax.plot(mids, ys, style, marker="o", label=r["source"], ms=3)
    ax.set_xticks(mids, [f"≤{FREQUENCY_BINS[k + 1]:g}" for k in mids])
    ax.set_xlabel("firing frequency bin")
    ax.set_ylabel("combined score")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    paths.append(out / "interpretability_by_frequency.png")
    with atomic_path(paths[1]) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return paths


def write_interpretability(
    results: Mapping[str, SourceResult],
    out: str | Path,
    settings: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
) -> dict[str, Path]:
    """Write interpretability.md and its plots into `out` (created if absent)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(results, out, n_boot)
    write_text(out / "interpretability.md", interpretability_markdown(results, settings, n_boot))
    return {"markdown": out / "interpretability.md", **{p.stem: p for p in plots}}


def add_to_compare_report(
    model: Any, sets: Mapping[str, Any], out: str | Path, how: str
) -> dict[str, Path]:
    """The compare report's interpretability section: score `sets` ("run"; default model
    only) or read an `interpret` results.json, write the section's files into `out` and
    append the section to `out/report.md`."""
    import json

    from analysis.interpretability.corpus import default_splits
    from analysis.interpretability.run import interpret
    from replacement.errors import SparseCircuitsError

    out = Path(out)
    if how == "run":
        fit, score = default_splits(model)
        results = interpret(model, sets, fit, score, verbose=False)
        info = {
            "fit": f"{fit.n_tokens:,} tokens of {fit.description}",
            "score": f"{score.n_tokens:,} tokens of {score.description}",
        }
    else:
        path = Path(how)
        if not path.is_file():
            raise SparseCircuitsError(
                f"--interpretability {how!r}: expected 'run' or the results.json of "
                "`sparse-circuits interpret`"
            )
        data = json.loads(path.read_text())
        wanted = set(sets) | {f"{n}:random" for n in sets} | {"neurons"}
        results = {n: SourceResult.from_dict(r) for n, r in data["results"].items() if n in wanted}
        info = data.get("info", {})
    files = write_interpretability(results, out, info)
    report = out / "report.md"
    if report.is_file():
        text = report.read_text() + "\n" + files["markdown"].read_text()
        write_text(report, text)
    return files
