"""The seed papers' claims, checked against the sweep of `python -m training.claims_sweep`.

`claims(results)` reads the sweep's JSON (the shipped copy `analysis/claims_sweep.json` by
default) and returns one verdict per claim: the paper's statement, our numbers, and whether
they agree. `claims_markdown` renders them for report.md and the README.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

SHIPPED_SWEEP = Path(str(resources.files("analysis") / "claims_sweep.json"))
"""The sweep results shipped with the package (layer 1 of the default model)."""


@dataclass
class Claim:
    """One claim and what our sweep says about it."""

    name: str
    """Short title."""
    paper: str
    """What the paper states."""
    ours: str
    """Our numbers."""
    verdict: str
    """agree, disagree or partly."""


def load_sweep(path: str | Path | None = None) -> dict[str, Any] | None:
    """The sweep results (None when the file does not exist)."""
    path = Path(path) if path is not None else SHIPPED_SWEEP
    return json.loads(path.read_text()) if path.is_file() else None


def _verdict(flags: list[bool]) -> str:
    if all(flags):
        return "agree"
    return "disagree" if not any(flags) else "partly"


def _skip_claim(runs: dict[str, Any]) -> Claim | None:
    ks = sorted({r["k"] for r in runs.values() if r["group"] == "skip"})
    parts, flags = [], []
    for k in ks:
        tc, sk = runs.get(f"transcoder_k{k}"), runs.get(f"skip_transcoder_k{k}")
        if not tc or not sk:
            continue
        parts.append(
            f"k={k}: FVU {tc['fvu']:.3f} -> {sk['fvu']:.3f}, CE increase {tc['ce_increase']:.3f} "
            f"-> {sk['ce_increase']:.3f} (transcoder -> skip)"
        )
        flags += [sk["fvu"] < tc["fvu"], sk["ce_increase"] < tc["ce_increase"]]
    if not parts:
        return None
    return Claim(
        "Skip transcoders vs transcoders at equal k",
        "Paulo et al. 2025: skip transcoders reach lower reconstruction error and CE loss "
        "increase than transcoders of the same sparsity, at no cost in interpretability.",
        "; ".join(parts),
        _verdict(flags),
    )


def _curve(runs: dict[str, Any], activation: str) -> tuple[np.ndarray, np.ndarray, list]:
    rows = sorted(
        (r for r in runs.values() if r["group"] == "gated" and r["activation"] == activation),
        key=lambda r: r["l0"],
    )
    return (
        np.array([r["l0"] for r in rows]),
        np.array([r["frac_recovered"] for r in rows]),
        rows,
    )


def _gated_claim(runs: dict[str, Any]) -> Claim | None:
    l0_r, rec_r, relu = _curve(runs, "relu")
    l0_g, rec_g, gated = _curve(runs, "gated")
    if len(relu) < 2 or len(gated) < 2:
        return None
    lo, hi = max(l0_r.min(), l0_g.min()), min(l0_r.max(), l0_g.max())
    grid = np.geomspace(lo, hi, 5) if hi > lo else np.array([])
    # loss recovered of each kind interpolated at common L0 values (log L0 axis)
    better = [
        float(np.interp(np.log(x), np.log(l0_g), rec_g) - np.interp(np.log(x), np.log(l0_r), rec_r))
        for x in grid
    ]
    gamma_r = [r["shrinkage"] for r in relu]
    gamma_g = [r["shrinkage"] for r in gated]

    def points(rows: list) -> str:
        return ", ".join(
            f"L0 {r['l0']:.1f}: rec {r['frac_recovered']:.3f}, gamma {r['shrinkage']:.3f}"
            for r in rows
        )

    ours = (
        f"ReLU ({points(relu)}); gated ({points(gated)}). At equal L0 "
        + (
            f"(interpolated at {len(grid)} L0 values in [{lo:.1f}, {hi:.1f}]) gated recovers "
            f"{np.mean(better):+.3f} of the loss on average (min {min(better):+.3f}, max "
            f"{max(better):+.3f}). "
            if len(grid)
            else "the L0 ranges do not overlap. "
        )
        + f"Shrinkage |1 - gamma|: ReLU mean {np.mean(np.abs(1 - np.array(gamma_r))):.3f}, "
        f"gated {np.mean(np.abs(1 - np.array(gamma_g))):.3f}."
    )
    flags = [b > 0 for b in better] + [
        np.mean(np.abs(1 - np.array(gamma_g))) < np.mean(np.abs(1 - np.array(gamma_r)))
    ]
    return Claim(
        "Gated vs ReLU SAEs at equal L0",
        "Rajamanoharan et al. 2024: at equal L0 gated SAEs recover more of the loss than ReLU "
        "SAEs, and their relative reconstruction bias gamma is near 1 where ReLU SAEs shrink "
        "(gamma < 1).",
        ours,
        _verdict(flags),
    )


def _e2e_claim(runs: dict[str, Any], layer: int) -> Claim | None:
    ks = sorted({r["k"] for r in runs.values() if r["group"] == "e2e"})
    parts, flags = [], []
    ds_hooks = None
    for k in ks:
        loc, e2e, ds = (runs.get(f"sae_{o}_k{k}") for o in ("local", "e2e", "e2e_ds"))
        if not (loc and e2e and ds):
            continue

        def downstream(r: dict[str, Any]) -> float:
            return float(np.mean(list(r["downstream_fvu"].values())))

        ds_hooks = list(loc["downstream_fvu"])
        parts.append(
            f"k={k}: CE increase local {loc['ce_increase']:.3f} / e2e {e2e['ce_increase']:.3f} / "
            f"e2e+ds {ds['ce_increase']:.3f}; alive features {loc['alive']} / {e2e['alive']} / "
            f"{ds['alive']}; downstream FVU (mean over later resid_post) {downstream(loc):.3f} / "
            f"{downstream(e2e):.3f} / {downstream(ds):.3f}; FVU {loc['fvu']:.3f} / {e2e['fvu']:.3f} "
            f"/ {ds['fvu']:.3f}"
        )
        flags += [
            e2e["ce_increase"] < loc["ce_increase"],
            e2e["alive"] < loc["alive"],
            abs(ds["ce_increase"] - e2e["ce_increase"])
            < 0.5 * abs(loc["ce_increase"] - e2e["ce_increase"]) + 0.01,
            downstream(ds) < downstream(e2e),
        ]
    if not parts:
        return None
    return Claim(
        f"e2e and e2e+ds SAEs trained one layer at a time (layer {layer})",
        "Braun et al. 2024: at equal L0, e2e SAEs increase CE less than local SAEs and use "
        "fewer alive features; e2e+ds stays close in CE while reconstructing the downstream "
        "activations better than e2e.",
        "; ".join(parts) + f" (downstream hooks: {', '.join(ds_hooks or [])})",
        _verdict(flags),
    )


def _zoo_claim(runs: dict[str, Any]) -> Claim | None:
    base = runs.get("sae_e2e_k16")
    low_lr, all_layers = runs.get("sae_e2e_k16_zoo_lr"), runs.get("sae_e2e_k16_all_layers")
    local = runs.get("sae_local_k16")
    if not (base and low_lr and all_layers and local):
        return None
    ours = (
        f"layer-1 SAE, k=16, same tokens: local rec {local['frac_recovered']:.3f}; e2e alone at "
        f"lr {base['lr']:.0e} rec {base['frac_recovered']:.3f}; e2e alone at the zoo's e2e lr "
        f"{low_lr['lr']:.0e} rec {low_lr['frac_recovered']:.3f}; e2e trained with all four "
        f"layers spliced, layer 1 then spliced alone rec {all_layers['frac_recovered']:.3f} "
        f"(all four spliced: {all_layers.get('all_layers', {}).get('frac_recovered', float('nan')):.3f})"
    )
    return Claim(
        "Why the zoo's local SAEs recover more loss than its e2e sets",
        "Expected from Braun et al.: e2e at least matches local in loss recovered at equal L0.",
        ours,
        "explained (see text)",
    )


def claims(results: dict[str, Any] | None = None) -> list[Claim]:
    """Every claim the sweep results can speak to (the shipped sweep by default)."""
    results = results if results is not None else load_sweep()
    if not results:
        return []
    runs = results["runs"]
    layer = results.get("setup", {}).get("layer", 1)
    out = [_skip_claim(runs), _gated_claim(runs), _e2e_claim(runs, layer), _zoo_claim(runs)]
    return [c for c in out if c is not None]


def claims_markdown(items: list[Claim], setup: dict[str, Any] | None = None) -> str:
    """The claims as a markdown section body."""
    lines = []
    if setup:
        lines.append(
            f"Sweep: layer {setup.get('layer')} of the default model, F={setup.get('n_features')}, "
            f"{setup.get('tokens_local'):,} training tokens per local run and "
            f"{setup.get('tokens_e2e'):,} per e2e run (lr {setup.get('lr')}), measured on "
            f"{setup.get('eval_tokens'):,} held-out tokens; reproduce with "
            f"`{setup.get('command', 'python -m training.claims_sweep')}`.\n"
        )
    for c in items:
        lines += [
            f"**{c.name}** — {c.verdict}.",
            "",
            f"- Paper: {c.paper}",
            f"- Ours: {c.ours}",
            "",
        ]
    return "\n".join(lines)
