"""The claims sweep's results read as arms: each arm's points (their final rungs per seed), and
the paired comparisons between arms (matched L0, equal sparsity, against a baseline) with
their bootstrap intervals (`analysis.claims_stats`). `analysis.claims` turns them into claims
and verdicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis.claims_stats import (
    Interval,
    at_l0_draws,
    bootstrap,
    bootstrap_many,
    matched_grid,
    seed_mean,
)


def rung_figures(rung: dict[str, Any], weights: np.ndarray | None = None) -> dict[str, float]:
    """ce_increase, fvu, l0, shrinkage, downstream_fvu (`training.claims_eval.figures`) of a
    rung under chunk weights, and its alive features (one per draw for a [draws, chunks]
    matrix of weights: they do not depend on the chunks)."""
    from training.claims_eval import figures

    alive = float(rung["alive"])
    if weights is not None and np.ndim(weights) == 2:
        return {**figures(rung["chunks"], weights), "alive": np.full(len(weights), alive)}
    return {**figures(rung["chunks"], weights), "alive": alive}


@dataclass
class Arm:
    """The sweep points of one arm: their final rungs per seed."""

    name: str
    points: list[dict[int, dict[str, Any]]]
    converged: bool
    labels: list[str] = field(default_factory=list)
    """Each point's sparsity (`k=8`, `l1=0.1`), to pair points across arms."""
    l0_changes: list[float | None] = field(default_factory=list)
    """Each point's relative change of L0 over its last doubling, seed mean (None where a
    seed's ladder ended without one): the convergence rule reads CE increase only, so this
    says how far the point may still move along the L0 axis."""

    @property
    def seeds(self) -> list[int]:
        """Seeds every point of the arm has."""
        common = set.intersection(*(set(p) for p in self.points)) if self.points else set()
        return sorted(common)

    def curve(self, seed: int, weights: np.ndarray, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(L0, metric) over the arm's points for one seed ([points], or [points, draws] for a
        [draws, chunks] matrix of weights)."""
        figs = [rung_figures(p[seed], weights) for p in self.points]
        return np.array([f["l0"] for f in figs]), np.array([f[key] for f in figs])

    def only(self, labels: list[str]) -> Arm:
        """The arm restricted to the points of `labels` (in that order)."""
        own = self.labels or [str(i) for i in range(len(self.points))]
        index = {label: i for i, label in enumerate(own)}
        changes = [self.l0_changes[index[x]] for x in labels] if self.l0_changes else []
        return Arm(
            self.name, [self.points[index[x]] for x in labels], self.converged, labels, changes
        )


def sparsity_label(fields: dict[str, Any], name: str) -> str:
    """`k=8` for TopK points, `l1=0.1` for L1-penalised ones, else the name's last part."""
    if "k" in fields:
        return f"k={fields['k']}"
    if "l1_coefficient" in fields:
        return f"l1={fields['l1_coefficient']:g}"
    return name.rsplit("_", 1)[-1]


def with_arrays(rung: dict[str, Any]) -> dict[str, Any]:
    """A copy of the rung whose per-chunk sums are a `ChunkSums` (numpy): a bootstrap weighs
    them with every draw's chunk weights in one matrix product."""
    from training.claims_eval import ChunkSums

    return {**rung, "chunks": ChunkSums(rung["chunks"])} if rung.get("chunks") else rung


def finished(entry: dict[str, Any], setup: dict[str, Any]) -> bool:
    """A (point, seed) whose ladder has ended: converged, or its last rung at the cap."""
    if entry.get("converged"):
        return True
    cap = setup.get("cap_tokens")
    return bool(cap and entry["rungs"] and entry["rungs"][-1]["tokens"] >= cap)


def passes(tokens: int | list[int], setup: dict[str, Any]) -> str:
    """How many passes over the sweep's distinct training tokens a budget (or a range of
    budgets) makes, as ", 1.9 passes over the 8,333,867 training tokens"; "" where the
    sweep did not record them. A budget above one pass repeats rows: the report says so
    beside every budget it gives."""
    train = setup.get("train_tokens")
    if not train:
        return ""
    lo, hi = (min(tokens), max(tokens)) if isinstance(tokens, list) else (tokens, tokens)
    span = f"{lo / train:.2g}" if lo == hi else f"{lo / train:.2g}-{hi / train:.2g}"
    return f", {span} passes over the {train:,} training tokens"


def last_doubling_change(rungs: list[dict[str, Any]], key: str) -> float | None:
    """Relative change of figure `key` from a ladder's second-last rung to its last, when the
    last doubled the budget (None otherwise: one rung, or a last rung at the cap)."""
    if len(rungs) < 2 or rungs[-1]["tokens"] != 2 * rungs[-2]["tokens"]:
        return None
    before, last = (
        r.get("figures") or (rung_figures(r) if "chunks" in r else {}) for r in rungs[-2:]
    )
    if key not in before or key not in last or not before[key]:
        return None  # a rung recorded without its figures
    return float(last[key] / before[key] - 1)


def arms(results: dict[str, Any], claim: str) -> dict[str, Arm]:
    """The sweep points of `claim` grouped by arm (tune points left out), each with the seeds
    whose ladder has ended: a run still training is not read at an early budget."""
    grouped: dict[str, Arm] = {}
    setup = results.get("setup", {})
    for name, run in results["runs"].items():
        if run["claim"] != claim or run["stage"] != "sweep":
            continue
        done = {s: e for s, e in run["seeds"].items() if e["rungs"] and finished(e, setup)}
        if not done:
            continue
        arm = grouped.setdefault(run["arm"], Arm(run["arm"], [], True))
        arm.points.append({int(s): with_arrays(e["rungs"][-1]) for s, e in done.items()})
        arm.labels.append(sparsity_label(run.get("fields", {}), name))
        changes = [last_doubling_change(e["rungs"], "l0") for e in done.values()]
        arm.l0_changes.append(
            None if None in changes else float(np.mean([c for c in changes if c is not None]))
        )
        arm.converged &= all(e["converged"] for e in done.values())
    return grouped


def progress(results: dict[str, Any], claim: str) -> tuple[int, int]:
    """(runs whose ladder has ended, runs the sweep plans) of `claim`; a file without the
    sweep's setup counts the runs it holds as planned."""
    setup = results.get("setup", {})
    runs = [r for r in results["runs"].values() if r["claim"] == claim and r["stage"] == "sweep"]
    done = sum(finished(e, setup) for r in runs for e in r["seeds"].values() if e["rungs"])
    if "seeds" not in setup or "layer" not in setup:
        return done, sum(len(r["seeds"]) for r in runs)
    from training.claims_plan import claim_points

    planned = [p for p in claim_points((claim,), int(setup["layer"])) if p.stage == "sweep"]
    return done, len(planned) * int(setup["seeds"])


def n_chunks(results: dict[str, Any]) -> int:
    """Chunks of the evaluation rows (the bootstrap's units)."""
    for run in results["runs"].values():
        for entry in run["seeds"].values():
            if entry["rungs"]:
                return len(entry["rungs"][-1]["chunks"]["tokens"])  # the last rung keeps its sums
    return 0


# ---- comparisons -------------------------------------------------------------------------------
COLLAPSED_FVU = 1.0
"""A point whose seed-mean FVU is at least this reconstructs no better than the mean."""


def live(arm: Arm) -> tuple[Arm, list[str]]:
    """The arm without its collapsed points (seed-mean FVU >= 1: a dead dictionary), and their
    labels. A collapsed point marks where a curve ends; at its L0 it says nothing about the
    architecture, and two arms' dead ends would otherwise be compared as if they were curves."""
    own = arm.labels or [str(i) for i in range(len(arm.points))]
    keep, dropped = [], []
    for label, point in zip(own, arm.points, strict=True):
        fvu = float(np.mean([rung_figures(point[s])["fvu"] for s in point]))
        (dropped if fvu >= COLLAPSED_FVU else keep).append(label)
    return arm.only(keep), dropped


def collapsed_text(dropped: dict[str, list[str]]) -> str:
    """ "; collapsed points left out (FVU >= 1): relu l1=1, l1=3", or "" when none were."""
    named = "; ".join(f"{arm} {', '.join(labels)}" for arm, labels in dropped.items() if labels)
    return f"; collapsed points left out (FVU >= 1): {named}" if named else ""


def matched_l0_difference(
    a: Arm, b: Arm, key: str, n_chunks_: int, grid_size: int = 5, transform: Any = None
) -> tuple[Interval, np.ndarray]:
    """B - A of `key` averaged over a common log-L0 grid, with its interval; and the grid.

    The grid is fixed from the point estimate (every chunk, every seed): the interval is then
    of one well-defined quantity. `transform` (say |1 - x|) applies to the metric first.
    """
    mean, _, grid = matched_l0_profile(a, b, key, n_chunks_, grid_size, transform)
    return mean, grid


def matched_l0_profile(
    a: Arm, b: Arm, key: str, n_chunks_: int, grid_size: int = 5, transform: Any = None
) -> tuple[Interval, list[Interval], np.ndarray]:
    """`matched_l0_difference`, and B - A at each L0 of the grid, all read on the same
    bootstrap draws: where along the curves a difference lies."""
    f = transform or (lambda x: x)
    ones = np.ones(n_chunks_)
    grid = matched_grid(
        [a.curve(s, ones, key) for s in a.seeds] + [b.curve(s, ones, key) for s in b.seeds],
        grid_size,
    )
    if grid.size == 0:
        return Interval(float("nan"), float("nan"), float("nan")), [], grid

    def stat(weights: np.ndarray, picks: dict[str, np.ndarray]) -> np.ndarray:
        means = []
        for arm, side in ((a, "a"), (b, "b")):
            per_seed = {s: at_l0_draws(*arm.curve(s, weights, key), grid) for s in arm.seeds}
            means.append(f(seed_mean(per_seed, picks[side])))  # [grid, draws]
        diff = means[1] - means[0]
        return np.vstack([diff.mean(axis=0), diff])

    found = bootstrap_many(stat, n_chunks_, {"a": a.seeds, "b": b.seeds})
    return found[0], found[1:], grid


def l0_moved(arm: Arm) -> Arm:
    """The arm with each point's L0 moved once more by its last doubling's change (L0 x (1 +
    change); unchanged where there is none). The convergence rule reads CE increase only, so a
    ladder can stop while its L0 still falls; a verdict at matched L0 should survive the move
    the next doubling would likely make."""
    changes = arm.l0_changes or [None] * len(arm.points)
    points = [
        {s: _scaled_l0(rung, 1.0 + (change or 0.0)) for s, rung in point.items()}
        for point, change in zip(arm.points, changes, strict=True)
    ]
    return Arm(arm.name, points, arm.converged, arm.labels, arm.l0_changes)


def _scaled_l0(rung: dict[str, Any], factor: float) -> dict[str, Any]:
    from training.claims_eval import ChunkSums

    l0 = np.asarray(rung["chunks"]["l0"], dtype=float) * factor
    chunks = ChunkSums({**rung["chunks"], "l0": l0})
    return {**rung, "chunks": chunks}


def drift_range(*arms_: Arm) -> str:
    """One line giving the range of the arms' L0 changes over their ladders' last doubling."""
    found = [c for a in arms_ for c in a.l0_changes if c is not None]
    if not found:
        return "no point's L0 moved"
    return f"L0 changes over the last doubling {100 * min(found):+.0f}% to {100 * max(found):+.0f}%"


def paired_point_difference(a: Arm, b: Arm, key: str, n_chunks_: int) -> Interval:
    """B - A of `key` averaged over the arms' points in order (equal sparsities, e.g. equal k)."""

    def stat(weights: np.ndarray, picks: dict[str, np.ndarray]) -> np.ndarray:
        diffs = []
        for pa, pb in zip(a.points, b.points, strict=True):
            va = seed_mean({s: rung_figures(pa[s], weights)[key] for s in a.seeds}, picks["a"])
            vb = seed_mean({s: rung_figures(pb[s], weights)[key] for s in b.seeds}, picks["b"])
            diffs.append(vb - va)
        return np.mean(diffs, axis=0)

    return bootstrap(stat, n_chunks_, {"a": a.seeds, "b": b.seeds})


def baseline_rung(results: dict[str, Any], claim: str, arm: str) -> dict[str, Any] | None:
    """The fitted rung of `claim`'s baseline point `arm` (e.g. the skip claim's `linear`), or
    None when the sweep has not fitted it."""
    for run in results["runs"].values():
        if run["claim"] == claim and run["arm"] == arm and run["stage"] == "baseline":
            entry = run["seeds"].get("0", {})
            if entry.get("rungs"):
                return with_arrays(entry["rungs"][-1])
    return None


def baseline_margin(base: dict[str, Any], arm: Arm, key: str, n_chunks_: int) -> Interval:
    """`arm` minus the baseline rung on `key`, averaged over the arm's points, paired by chunk
    (the baseline has no seeds: the arm's are resampled)."""
    fixed = Arm("baseline", [{0: base}] * len(arm.points), True, arm.labels)
    return paired_point_difference(fixed, arm, key, n_chunks_)


def single_run(rung: dict[str, Any], key: str, n_chunks_: int) -> Interval:
    """`key` of one rung with its chunk-bootstrap interval."""
    return bootstrap(lambda w, _: rung_figures(rung, w)[key], n_chunks_, {"a": [0]})
