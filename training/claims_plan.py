"""The runs that test each seed paper's claim: arms, sparsities, seeds and learning rates.

Three claims (issue 22), each a set of points (arm x sparsity), every point trained with >= 2
seeds, each (point, seed) a ladder of budgets until its held-out CE increase settles
(`training.convergence`):

- braun (Braun et al. 2024): local vs e2e vs e2e+ds SAEs, each layer trained alone (the
  others not spliced), L1-penalised ReLU SAEs as in the paper and TopK SAEs;
- gated (Rajamanoharan et al. 2024): gated vs ReLU SAEs over eight L1 coefficients, the lr
  tuned per architecture on a grid (`tune` points, chosen on a tuning split);
- skip (Paulo et al. 2025): skip vs plain transcoders at four values of k.

Each claim also has a dictionary-free baseline both arms must beat, fitted in closed form
(`training.closed_form_baselines`): the affine map for the transcoders, the site's mean (mean
ablation) for the SAEs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CLAIMS = ("braun", "gated", "skip")
SWEEP_LR = 4e-3
"""One learning rate for every run that is not lr-tuned: objectives then differ in their loss
only (the zoo's local lr, `training/build_zoo.py`)."""
TOPK_KS = (4, 8, 16, 32)
SKIP_KS = (4, 8, 16, 32)
# L1 coefficients are in units of each objective's own loss (MSE for local, KL for e2e), so
# equal coefficients do not give equal L0: each objective gets its own range, wide enough that
# the Pareto curves overlap in L0 (the analysis reports the overlap it found). Local takes the
# gated claim's ReLU coefficients: while ReLU's tuned lr is the sweep lr those are the same runs,
# trained once (`training.claims_sweep`), and its curve has no 7-27x L0 gaps.
BRAUN_L1 = {
    "local": (0.01, 0.03, 0.1, 0.17, 0.3, 0.55, 1.0, 3.0),
    "e2e": (0.01, 0.03, 0.1, 0.17, 0.3, 0.55),
    "e2e_ds": (0.01, 0.03, 0.1, 0.17, 0.3, 0.55),
}
"""e2e's range comes from a 1M-token pilot of e2e ReLU SAEs at layer 1 (seed 0, lr 4e-3, 2
CPU cores, 2026-12-05): L1 0.01 gave L0 120, 0.03: 72, 0.1: 21, 0.3: 4.7, 1: 0.7 (FVU 1.22,
27% dead; collapsed). The first plan's (0.3, 1, 3, 10) would have spent three of four points
on collapsed SAEs. 0.17 and 0.55 halve the widest L0 steps, as for the gated claim."""
GATED_L1 = (0.01, 0.03, 0.1, 0.17, 0.3, 0.55, 1.0, 3.0)
"""0.17 and 0.55 (the geometric midpoints) were added once the first six had converged: their
curves jumped from L0 53 to 7.8 (ReLU) and 66 to 9.7 (gated), 0.1 -> 0.3, and from 7.8 to a
dead SAE at L1 1 (ReLU), so equal L0 there was interpolation across a 7-25x gap."""
GATED_LR_GRID = (1e-3, 4e-3, 1e-2)
GATED_TUNE_L1 = 0.1
"""The coefficient at which each architecture's lr is tuned."""


@dataclass(frozen=True)
class SweepPoint:
    """One point of a claim's sweep: an arm at one sparsity, trained for every seed."""

    name: str
    """Unique name, also the run folder (`runs/<name>/seed<s>/t<tokens>`)."""
    claim: str
    """braun, gated or skip."""
    arm: str
    """What the claim compares (local / e2e / e2e_ds; relu / gated; transcoder / skip_transcoder),
    with the activation family for braun (`local:relu`, `e2e:topk`, ...)."""
    fields: dict[str, Any] = field(default_factory=dict, hash=False)
    """TrainConfig fields of the point (lr `"tuned"` is filled in from the tune points)."""
    stage: str = "sweep"
    """`tune` points only choose a learning rate, on the tuning split; `baseline` points are
    fitted in closed form, once (`training.closed_form_baselines`)."""


def claim_points(claims: tuple[str, ...] = CLAIMS, layer: int = 1) -> list[SweepPoint]:
    """Every point of the requested claims, tune points first."""
    unknown = sorted(set(claims) - set(CLAIMS))
    if unknown:
        raise ValueError(f"unknown claims {unknown}; expected some of {list(CLAIMS)}")
    points: list[SweepPoint] = []
    base = {"layers": [layer], "lr": SWEEP_LR}
    if "gated" in claims:
        for act in ("relu", "gated"):
            for lr in GATED_LR_GRID:
                points.append(
                    SweepPoint(
                        f"gated/tune_{act}_lr{lr:g}",
                        "gated",
                        act,
                        {
                            **base,
                            "kind": "sae",
                            "activation": act,
                            "lr": lr,
                            "l1_coefficient": GATED_TUNE_L1,
                        },
                        stage="tune",
                    )
                )
        # both arms at one coefficient before the next: a sweep cut short still has both
        # curves over a common L0 range
        for c in GATED_L1:
            for act in ("relu", "gated"):
                points.append(
                    SweepPoint(
                        f"gated/{act}_l1_{c:g}",
                        "gated",
                        act,
                        {
                            **base,
                            "kind": "sae",
                            "activation": act,
                            "l1_coefficient": c,
                            "lr": "tuned",
                        },
                    )
                )
        points.append(mean_baseline("gated", layer))
    if "skip" in claims:
        # both arms at one k before the next k: a sweep cut short still pairs its arms
        for k in SKIP_KS:
            for kind in ("transcoder", "skip_transcoder"):
                points.append(
                    SweepPoint(
                        f"skip/{kind}_k{k}",
                        "skip",
                        kind,
                        {**base, "kind": kind, "activation": "topk", "k": k},
                    )
                )
        # the floor both arms must beat: the skip path alone, fitted in closed form (no seed)
        points.append(
            SweepPoint(
                "skip/linear",
                "skip",
                "linear",
                {"layers": [layer], "kind": "skip_transcoder"},
                stage="baseline",
            )
        )
    if "braun" in claims:
        for objective in ("local", "e2e", "e2e_ds"):
            for k in TOPK_KS:
                points.append(
                    SweepPoint(
                        f"braun/{objective}_topk_k{k}",
                        "braun",
                        f"{objective}:topk",
                        {
                            **base,
                            "kind": "sae",
                            "activation": "topk",
                            "k": k,
                            "objective": objective,
                        },
                    )
                )
            for c in BRAUN_L1[objective]:
                points.append(
                    SweepPoint(
                        f"braun/{objective}_relu_l1_{c:g}",
                        "braun",
                        f"{objective}:relu",
                        {
                            **base,
                            "kind": "sae",
                            "activation": "relu",
                            "l1_coefficient": c,
                            "objective": objective,
                        },
                    )
                )
        points.append(mean_baseline("braun", layer))
    return sorted(points, key=lambda p: p.stage != "tune")


def mean_baseline(claim: str, layer: int) -> SweepPoint:
    """The SAE claims' floor: the SAEs' site replaced by its mean, fitted once (no seed)."""
    return SweepPoint(
        f"{claim}/mean", claim, "mean", {"layers": [layer], "kind": "sae"}, stage="baseline"
    )
