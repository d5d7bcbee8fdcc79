"""The seed papers' claims, judged from the claims sweep (`sparse-circuits claims`).

`claims(results)` returns one `Claim` per comparison a paper makes: its statement, our figures
with 95% intervals (paired chunk bootstrap and seeds: the arms' comparisons in
`analysis.claims_arms`, the statistics in `analysis.claims_stats`), the budget, and
a verdict that follows from the interval alone. The shipped `analysis/claims_sweep.json` is the
sweep in its shipped form (`shipped_form`): the skip claim converged; the others continue from
it (`sparse-circuits claims --merge`). Results of the old one-seed pilot sweep (format 1) can
settle nothing: every claim read from them is inconclusive, with the pilot's figures quoted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from analysis.claims_arms import (
    Arm,
    arms,
    baseline_margin,
    baseline_rung,
    collapsed_text,
    drift_range,
    finished,
    l0_moved,
    live,
    matched_l0_difference,
    matched_l0_profile,
    n_chunks,
    paired_point_difference,
    passes,
    progress,
    rung_figures,
    single_run,
)
from analysis.claims_stats import Interval, verdict
from training.claims_plan import GATED_TUNE_L1

SHIPPED_SWEEP = Path(str(resources.files("analysis") / "claims_sweep.json"))
"""The claims sweep shipped with the package (layer 1 of the default model, 2 seeds)."""


@dataclass
class Claim:
    """One claim and what our sweep says about it."""

    name: str
    """Short title."""
    paper: str
    """What the paper states."""
    ours: str
    """Our figures, each with its interval."""
    verdict: str
    """agrees, disagrees or inconclusive (with the reason)."""
    intervals: dict[str, list[float]] = field(default_factory=dict)
    """Each compared quantity: [estimate, low, high] of B - A."""


def load_sweep(path: str | Path | None = None) -> dict[str, Any] | None:
    """The sweep results (None when the file does not exist)."""
    path = Path(path) if path is not None else SHIPPED_SWEEP
    return json.loads(path.read_text()) if path.is_file() else None


def shipped_form(results: dict[str, Any]) -> dict[str, Any]:
    """The results as shipped: per-chunk sums only on each ended ladder's last rung (the one the
    claims read, with its intervals) and on every rung of a ladder still training (a reading
    at a stated budget, `analysis.claims_budget`, reads one of them); other rungs keep their
    figures, which the convergence curves draw. About a twentieth of the size; `claims` reads
    both alike."""
    out = json.loads(json.dumps(results))
    setup = out.get("setup", {})
    for run in out["runs"].values():
        for entry in run["seeds"].values():
            if entry["rungs"] and not finished(entry, setup):
                continue
            for rung in entry["rungs"][:-1]:
                rung.pop("chunks", None)
    return out


def _budget(results: dict[str, Any], claim: str) -> str:
    tokens, seconds, evaluating, total, done, machines = [], 0.0, 0.0, 0, 0, set()
    training, shared, setup = 0, 0, results.get("setup", {})
    for run in results["runs"].values():
        if run["claim"] != claim:
            continue
        for entry in run["seeds"].values():
            twin = "same_run_as" in entry  # another claim's run: its time is counted there
            shared += twin
            # tuning runs and closed-form baselines cost time but are no ladders of the claim
            if run["stage"] == "sweep":
                total += 1
                done += bool(entry["converged"])
                if entry["rungs"] and finished(entry, setup):
                    tokens.append(entry["rungs"][-1]["tokens"])
                training += bool(entry["rungs"]) and not finished(entry, setup)
            if twin:
                continue
            seconds += sum(r["train_seconds"] for r in entry["rungs"])
            evaluating += sum(r.get("eval_seconds", 0.0) for r in entry["rungs"])
            machines |= {r.get("machine", "unrecorded machine") for r in entry["rungs"]}
    if not tokens:
        return "no runs"
    still = f" ({training} still training)" if training else ""
    if shared:
        still += f" ({shared} the same runs as another claim's, whose time is counted there)"
    return (
        f"{done}/{total} ladders converged{still}; final budgets {min(tokens):,}-"
        f"{max(tokens):,} tokens{passes(tokens, setup)}; "
        f"{seconds / 3600:.1f} h of training (tuning and baselines included) and "
        f"{evaluating / 3600:.1f} h of held-out evaluation on {', '.join(sorted(machines))}"
    )


def _pack(items: dict[str, Interval]) -> dict[str, list[float]]:
    return {k: [v.estimate, v.low, v.high] for k, v in items.items()}


def _settled(results: dict[str, Any], claim: str, verdict_so_far: str) -> str:
    """The verdict, or inconclusive while the claim's sweep has not ended (the finished runs'
    reading quoted)."""
    done, planned = progress(results, claim)
    if done < planned:
        return (
            f"inconclusive (sweep incomplete: {done} of {planned} runs finished; "
            f"the finished ones so far: {verdict_so_far})"
        )
    return verdict_so_far


def _not_yet(results: dict[str, Any], claim: str, title: str, paper: str) -> Claim | None:
    """A claim the sweep plans but cannot compare yet (None when it plans none)."""
    done, planned = progress(results, claim)
    if not planned:
        return None
    return Claim(
        title,
        paper,
        f"not measured yet: {done} of {planned} runs finished, no comparison possible",
        f"inconclusive (sweep incomplete: {done} of {planned} runs finished)",
    )


def _skip_claim(results: dict[str, Any], chunks: int) -> Claim | None:
    groups = arms(results, "skip")
    title = "Skip vs plain transcoders at equal k"
    paper = (
        "Paulo et al. 2025: skip transcoders reach lower reconstruction error (FVU) and lower CE "
        "increase than plain transcoders of the same sparsity."
    )
    a, b = groups.get("transcoder"), groups.get("skip_transcoder")
    common = [x for x in (a.labels if a else []) if b and x in b.labels]
    if a and b and common:
        a, b = a.only(common), b.only(common)
    if not a or not b or not common or not a.seeds or not b.seeds:
        return _not_yet(results, "skip", title, paper)
    found = {k: paired_point_difference(a, b, k, chunks) for k in ("fvu", "ce_increase", "l0")}
    converged = a.converged and b.converged
    verdicts = [verdict(found[k], -1, converged) for k in ("fvu", "ce_increase")]
    ks = ", ".join(x.removeprefix("k=") for x in common)
    # each k on its own too: an average can hide a gap that opens or closes with sparsity
    per_k = []
    for label in common:
        one = {
            f"{key}@{label}": paired_point_difference(a.only([label]), b.only([label]), key, chunks)
            for key in ("fvu", "ce_increase")
        }
        found |= one
        per_k.append(
            f"{label}: FVU {one[f'fvu@{label}'].text()}, CE {one[f'ce_increase@{label}'].text()}"
        )
    return Claim(
        title,
        paper,
        f"skip - plain, averaged over k = {ks}: FVU {found['fvu'].text()}, "
        f"CE increase {found['ce_increase'].text()} nats (L0 {found['l0'].text(2)}); "
        f"per k: {'; '.join(per_k)}; "
        f"{_floor(results, 'skip', {'plain': a, 'skip': b}, _FVU_CE, chunks, found)}"
        f"{_budget(results, 'skip')}.",
        _settled(results, "skip", _combine(verdicts)),
        _pack(found),
    )


BASELINES = {
    "skip": ("linear", "linear-only baseline (affine least squares on {tokens:,} tokens, no features)"),
    "gated": ("mean", "mean-ablation baseline (the SAEs' site replaced by its mean over {tokens:,} training tokens, no dictionary)"),
    "braun": ("mean", "mean-ablation baseline (the SAEs' site replaced by its mean over {tokens:,} training tokens, no dictionary)"),
}  # fmt: skip
"""Each claim's closed-form baseline point (its arm name) and how the claim describes it."""
_FVU_CE = (("fvu", "FVU"), ("ce_increase", "CE increase"))
_CE = (("ce_increase", "CE increase"),)


def worst_point(arm: Arm, key: str) -> str:
    """The label of the arm's point with the highest seed-mean `key`: where it comes nearest a
    baseline it must beat."""
    own = arm.labels or [str(i) for i in range(len(arm.points))]
    values = [float(np.mean([rung_figures(p[s])[key] for s in p])) for p in arm.points]
    return own[int(np.argmax(values))]


def _floor(
    results: dict[str, Any],
    claim: str,
    compared: dict[str, Arm],
    keys: tuple[tuple[str, str], ...],
    chunks: int,
    found: dict[str, Interval],
) -> str:
    """The claim's baseline figures and each arm's margin over it, averaged over the arm's
    points and at its worst point (filled into `found`); an empty string while the sweep has
    not fitted it."""
    name, described = BASELINES[claim]
    base = baseline_rung(results, claim, name)
    if base is None:
        return ""
    parts = []
    for key, title in keys:
        found[f"{name}_{key}"] = single_run(base, key, chunks)
        margins = []
        for label, arm in compared.items():
            found[f"{label}_minus_{name}_{key}"] = baseline_margin(base, arm, key, chunks)
            worst = worst_point(arm, key)
            at = baseline_margin(base, arm.only([worst]), key, chunks)
            found[f"{label}_minus_{name}_{key}@{worst}"] = at
            margins.append(
                f"{label} - {name} {found[f'{label}_minus_{name}_{key}'].text()} over its "
                f"points, {at.text()} at its worst ({worst})"
            )
        parts.append(f"{title} {found[f'{name}_{key}'].text()} ({'; '.join(margins)})")
    return f"{described.format(tokens=int(base['tokens']))}: {', '.join(parts)}; "


def widest_gap(arm: Arm, grid: np.ndarray) -> str:
    """The widest step between an arm's neighbouring points (seed-mean L0) within the grid's
    range, as "7.8-52.9 (6.8x)": what a matched-L0 figure there interpolates across."""
    l0 = sorted(
        float(np.mean([rung_figures(point[s])["l0"] for s in point])) for point in arm.points
    )
    steps = [
        (lo, hi)
        for lo, hi in zip(l0[:-1], l0[1:], strict=True)
        if hi > grid[0] and lo < grid[-1] and lo > 0
    ]
    if not steps:
        return ""
    lo, hi = max(steps, key=lambda pair: pair[1] / pair[0])
    return f"{lo:.3g}-{hi:.3g} ({hi / lo:.1f}x)"


def _matched_range(grid: np.ndarray, compared: dict[str, Arm], chunks: int) -> str:
    """Where the curves were compared, or, when their L0 ranges do not overlap, each range (the
    differences are then undefined, and the verdict inconclusive)."""
    if grid.size:
        gaps = ", ".join(
            f"{name} {gap}" for name, arm in compared.items() if (gap := widest_gap(arm, grid))
        )
        widest = f"; widest L0 gap interpolated across: {gaps}" if gaps else ""
        return f"{grid.size} L0 values in [{grid[0]:.1f}, {grid[-1]:.1f}]{widest}"
    ranges = []
    for name, arm in compared.items():
        l0 = np.concatenate([arm.curve(s, np.ones(chunks), "l0")[0] for s in arm.seeds])
        ranges.append(f"{name} L0 {l0.min():.1f}-{l0.max():.1f}")
    return f"no common L0 range: {', '.join(ranges)}"


def _lr_tuning(results: dict[str, Any], claim: str, arm: str) -> str:
    """Which lr won `arm`'s tuning and the final training loss of every candidate."""
    tried = sorted(
        (run["fields"]["lr"], *(run["seeds"]["0"]["rungs"][-1][k] for k in ("final_loss", "tokens")))
        for run in results["runs"].values()
        if run["claim"] == claim and run["arm"] == arm and run["stage"] == "tune"
        and run["seeds"].get("0", {}).get("rungs")
    )  # fmt: skip
    from training.claims_sweep import tuned_lr  # the rule the sweep trained with

    best = tuned_lr(results, claim, arm)
    if best is None:
        return "untuned"
    losses = ", ".join(f"{lr:g}: {loss:.3f}" for lr, loss, _ in tried)
    return f"{best:g} won at {tried[0][2]:,} tokens ({losses})"


def _gated_claim(results: dict[str, Any], chunks: int) -> Claim | None:
    groups = arms(results, "gated")
    title = "Gated vs ReLU SAEs at equal L0"
    paper = (
        "Rajamanoharan et al. 2024: at equal L0 gated SAEs lose less CE than ReLU SAEs, and "
        "their relative reconstruction bias gamma is nearer 1 (ReLU SAEs shrink)."
    )
    a, b = groups.get("relu"), groups.get("gated")
    if not a or not b or not a.seeds or not b.seeds:
        return _not_yet(results, "gated", title, paper)
    (a, dead_a), (b, dead_b) = live(a), live(b)
    if not a.seeds or not b.seeds:
        return _not_yet(results, "gated", title, paper)
    ce, each, grid = matched_l0_profile(a, b, "ce_increase", chunks)
    shrink, _ = matched_l0_difference(a, b, "shrinkage", chunks, transform=lambda x: np.abs(1 - x))
    moved, _ = matched_l0_difference(l0_moved(a), l0_moved(b), "ce_increase", chunks)
    profile = "; ".join(f"{g:.3g}: {iv.text()}" for g, iv in zip(grid, each, strict=True))
    converged = a.converged and b.converged
    lrs = {arm: _lr_tuning(results, "gated", arm) for arm in ("relu", "gated")}
    where = _matched_range(grid, {"relu": a, "gated": b}, chunks)
    where += collapsed_text({"relu": dead_a, "gated": dead_b})
    floors: dict[str, Interval] = {}
    floor = _floor(results, "gated", {"relu": a, "gated": b}, _CE, chunks, floors)
    return Claim(
        title,
        paper,
        f"gated - ReLU at matched L0 ({where}): CE increase {ce.text()} nats (at each L0: "
        f"{profile or 'none'}), |1 - gamma| {shrink.text()}; CE increase with every point's L0 moved once more by its last "
        f"doubling's change ({drift_range(a, b)}): {moved.text()}; lr tuned per "
        f"architecture by final training loss at L1 {GATED_TUNE_L1:g}: relu {lrs['relu']}, "
        f"gated {lrs['gated']}; {floor}{_budget(results, 'gated')}.",
        _settled(
            results,
            "gated",
            _combine(
                [
                    verdict(ce, -1, converged),
                    verdict(shrink, -1, converged),
                    verdict(moved, -1, converged),
                ]
            ),
        ),
        _pack(
            {
                "ce_increase": ce,
                "abs_one_minus_gamma": shrink,
                "ce_increase_l0_moved": moved,
                **{f"ce_increase@L0={g:.3g}": iv for g, iv in zip(grid, each, strict=True)},
                **floors,
            }
        ),
    )


BRAUN_PAPER = (
    "Braun et al. 2024: at equal L0, e2e SAEs increase CE less than local SAEs and keep fewer "
    "alive features; e2e+ds reconstructs the downstream activations better than e2e."
)


def _braun_claims(results: dict[str, Any], chunks: int) -> list[Claim]:
    groups = arms(results, "braun")
    out = []
    for family in ("relu", "topk"):
        title = f"e2e vs local SAEs, each layer trained alone ({family})"
        found_arms = {o: groups.get(f"{o}:{family}") for o in ("local", "e2e", "e2e_ds")}
        dead: dict[str, list[str]] = {}
        for objective, arm in found_arms.items():
            if arm is not None:
                found_arms[objective], dead[objective] = live(arm)
        local, e2e, ds = found_arms.values()
        if not local or not e2e or not local.seeds or not e2e.seeds:
            waiting = _not_yet(results, "braun", title, BRAUN_PAPER)
            out += [waiting] if waiting else []
            continue
        ce, grid = matched_l0_difference(local, e2e, "ce_increase", chunks)
        alive, _ = matched_l0_difference(local, e2e, "alive", chunks)
        moved, _ = matched_l0_difference(l0_moved(local), l0_moved(e2e), "ce_increase", chunks)
        found = {"e2e_ce_increase": ce, "e2e_alive": alive, "e2e_ce_increase_l0_moved": moved}
        converged = local.converged and e2e.converged
        verdicts = [verdict(c, -1, converged) for c in (ce, alive, moved)]
        text = (
            f"e2e - local at matched L0: CE increase {ce.text()} nats, alive features "
            f"{alive.text(0)}; CE increase with every point's L0 moved once more by its last "
            f"doubling's change ({drift_range(local, e2e)}): {moved.text()}"
        )
        if ds and ds.seeds:
            down, _ = matched_l0_difference(e2e, ds, "downstream_fvu", chunks)
            ds_ce, _ = matched_l0_difference(e2e, ds, "ce_increase", chunks)
            found |= {"ds_minus_e2e_downstream_fvu": down, "ds_minus_e2e_ce_increase": ds_ce}
            verdicts.append(verdict(down, -1, converged and ds.converged))
            text += f"; e2e+ds - e2e: downstream FVU {down.text()}, CE increase {ds_ce.text()}"
        where = _matched_range(grid, {"local": local, "e2e": e2e}, chunks)
        where += collapsed_text(dead)
        present = {o: arm for o, arm in found_arms.items() if arm is not None and arm.seeds}
        floor = _floor(results, "braun", present, _CE, chunks, found)
        out.append(
            Claim(
                title,
                BRAUN_PAPER,
                f"{text} ({where}); {floor}{_budget(results, 'braun')}.",
                _settled(results, "braun", _combine(verdicts)),
                _pack(found),
            )
        )
    return out


def _combine(verdicts: list[str]) -> str:
    """One verdict for a claim with several parts: all agree -> agrees, all disagree ->
    disagrees, else the parts listed."""
    if all(v == "agrees" for v in verdicts):
        return "agrees"
    if all(v == "disagrees" for v in verdicts):
        return "disagrees"
    if all(v.startswith("inconclusive") for v in verdicts):
        return verdicts[0]
    return "mixed: " + ", ".join(verdicts)


def _pilot_claims(results: dict[str, Any]) -> list[Claim]:
    """The format-1 pilot sweep: one seed, fixed small budgets, no intervals: nothing settles."""
    runs = results["runs"]
    setup = results.get("setup", {})
    budget = (
        f"one seed, {setup.get('tokens_local', 0):,} tokens per local run and "
        f"{setup.get('tokens_e2e', 0):,} per e2e run, far from converged, no intervals"
    )
    out = []
    for group, title in (
        ("skip", "Skip vs plain transcoders at equal k"),
        ("gated", "Gated vs ReLU SAEs at equal L0"),
        ("e2e", "e2e vs local SAEs, each layer trained alone"),
    ):
        rows = [
            f"{name}: L0 {r['l0']:.1f}, CE increase {r['ce_increase']:.3f}"
            for name, r in runs.items()
            if r.get("group") == group
        ]
        if rows:
            out.append(
                Claim(
                    title,
                    "see `sparse-circuits claims`",
                    f"pilot ({budget}): " + "; ".join(rows),
                    "inconclusive (pilot sweep: cannot settle)",
                )
            )
    return out


def claims(results: dict[str, Any] | None = None) -> list[Claim]:
    """Every claim the sweep results can speak to (the shipped pilot by default)."""
    results = results if results is not None else load_sweep()
    if not results:
        return []
    if results.get("version", 1) < 2:
        return _pilot_claims(results)
    chunks = n_chunks(results)
    if not chunks:
        return []
    found = [_skip_claim(results, chunks), _gated_claim(results, chunks)]
    return [c for c in found if c is not None] + _braun_claims(results, chunks)


def claims_markdown(items: list[Claim], setup: dict[str, Any] | None = None) -> str:
    """The claims as a markdown section body."""
    lines = []
    if setup and "start_tokens" in setup:
        lines.append(
            f"Sweep: layer {setup['layer']} of the default model, F={setup['n_features']}, "
            f"{setup['seeds']} seeds per point, budgets doubling from {setup['start_tokens']:,} "
            f"tokens until CE increase changes by < {setup['tolerance']:.0%} (or < "
            f"{setup.get('floor', 0.0):g} nats) over a doubling (cap "
            f"{setup['cap_tokens']:,}{passes(setup['cap_tokens'], setup)}), evaluated on >= "
            f"{setup['eval_tokens']:,} held-out tokens in "
            f"{setup['n_chunks']} chunks; intervals are 95% paired bootstraps over chunks and "
            "seeds; a verdict follows from its interval alone.\n"
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
