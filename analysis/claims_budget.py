"""The Braun TopK comparison read at a stated budget while the e2e ladders still train.

A verdict (`analysis.claims`) reads only ladders that have ended. On a CPU the e2e ladders of
the Braun claim are far from ending (docs/claims.md), yet their CE increase has fallen at every
doubling so far. This reading takes, for each e2e arm, the largest budget T that every planned
(point, seed) of the arm has reached, and compares each e2e ladder's rung at T with the final
rung of the local ladder of the same k (every local ladder must have ended: its figures will
not move). Equal k is equal L0 exactly, and a TopK point's L0 cannot drift with budget, so no
interpolation enters. Intervals are the claims' paired bootstrap over evaluation chunks and
seeds.

It is a reading at T, never a verdict: an e2e interval below local's says e2e at T already
beats local's converged CE increase; one above it or across 0 says nothing about the converged
comparison, because the e2e ladders have not ended.

e2e+ds is also read against e2e (`ds_against_e2e`), on downstream FVU (the paper's claim) and
CE increase, at the largest budget every ladder of both arms reached. Neither arm has ended
there, so that reading compares equal budgets and says nothing of converged runs either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from analysis.claims_arms import (
    Arm,
    baseline_margin,
    baseline_rung,
    finished,
    last_doubling_change,
    paired_point_difference,
    passes,
    sparsity_label,
    with_arrays,
)
from analysis.claims_stats import Interval

FAMILY = "topk"
"""Only TopK points are read: their L0 is k at every budget."""


@dataclass
class Reading:
    """One e2e arm against the local arm at a stated budget."""

    name: str
    tokens: int
    """T: the e2e ladders' budget read."""
    ours: str
    """The differences with their intervals, the baseline margin and the ladders' state."""
    reading: str
    """below / above / not resolved at T (never a verdict)."""
    intervals: dict[str, list[float]]


def rung_at(entry: dict[str, Any], tokens: int, setup: dict[str, Any]) -> dict[str, Any] | None:
    """The ladder's rung at `tokens` (its final rung when it ended below `tokens`), or None when
    it has not reached `tokens` or that rung kept no per-chunk sums."""
    rungs = entry.get("rungs") or []
    found = next((r for r in rungs if r["tokens"] == tokens), None)
    if found is None and rungs and finished(entry, setup) and rungs[-1]["tokens"] < tokens:
        found = rungs[-1]
    return found if found is not None and "chunks" in found else None


def _planned(results: dict[str, Any], arm: str) -> dict[str, dict[str, Any]] | None:
    """Name -> run of `arm`'s sweep points as the sweep plans them, or None when a planned
    point has no run in `results` yet."""
    setup = results.get("setup", {})
    present = {
        name: run
        for name, run in results["runs"].items()
        if run["claim"] == "braun" and run["arm"] == arm and run["stage"] == "sweep"
    }
    if "layer" not in setup:
        return present or None
    from training.claims_plan import claim_points

    names = [
        p.name
        for p in claim_points(("braun",), int(setup["layer"]))
        if p.stage == "sweep" and p.arm == arm
    ]
    if not names or any(n not in present for n in names):
        return None
    return {n: present[n] for n in names}


def _seeds(results: dict[str, Any], run: dict[str, Any]) -> list[str]:
    wanted = results.get("setup", {}).get("seeds")
    return [str(s) for s in range(int(wanted))] if wanted else sorted(run["seeds"])


def common_budget(results: dict[str, Any], *arms: str) -> int | None:
    """The largest budget every planned (point, seed) of `arms` can be read at, or None."""
    setup = results.get("setup", {})
    entries = []
    for arm in arms:
        runs = _planned(results, arm)
        if not runs:
            return None
        for run in runs.values():
            for seed in _seeds(results, run):
                if seed not in run["seeds"]:
                    return None
                entries.append(run["seeds"][seed])
    budgets = sorted({r["tokens"] for e in entries for r in e.get("rungs") or []}, reverse=True)
    for tokens in budgets:
        if all(rung_at(e, tokens, setup) is not None for e in entries):
            return tokens
    return None


def _arm_at(results: dict[str, Any], arm: str, tokens: int | None) -> Arm | None:
    """`arm` with each point's rung at `tokens` (None: each ladder's final rung, every ladder
    ended), labelled by sparsity; None when a planned (point, seed) cannot be read so."""
    runs = _planned(results, arm)
    if not runs:
        return None
    setup = results.get("setup", {})
    points, labels = [], []
    for name, run in runs.items():
        point = {}
        for seed in _seeds(results, run):
            entry = run["seeds"].get(seed)
            if entry is None or not entry.get("rungs"):
                return None
            if tokens is None:
                if not finished(entry, setup) or "chunks" not in entry["rungs"][-1]:
                    return None
                rung = entry["rungs"][-1]
            else:
                rung = rung_at(entry, tokens, setup)
                if rung is None:
                    return None
            point[int(seed)] = with_arrays(rung)
        points.append(point)
        labels.append(sparsity_label(run.get("fields", {}), name))
    converged = all(
        e.get("converged", False) for run in runs.values() for e in run["seeds"].values()
    )
    return Arm(arm, points, converged, labels)


def ce_changes(results: dict[str, Any], arm: str, tokens: int) -> list[float]:
    """Each ladder's relative change of CE increase over its last doubling up to `tokens`."""
    found = []
    for run in (_planned(results, arm) or {}).values():
        for entry in run["seeds"].values():
            upto = [r for r in entry.get("rungs") or [] if r["tokens"] <= tokens]
            change = last_doubling_change(upto, "ce_increase")
            if change is not None:
                found.append(change)
    return found


def _ended(results: dict[str, Any], arm: str) -> tuple[int, int]:
    """(ladders of `arm` that have ended, ladders it has)."""
    setup = results.get("setup", {})
    entries = [
        e
        for run in (_planned(results, arm) or {}).values()
        for e in run["seeds"].values()
        if e.get("rungs")
    ]
    return sum(finished(e, setup) for e in entries), len(entries)


def reading_word(interval: Interval, tokens: int, ours: str = "e2e", theirs: str = "local") -> str:
    """What an interval of ours - theirs says at budget `tokens`."""
    if interval.high < 0:
        return f"{ours} below {theirs} at {tokens:,} tokens"
    if interval.low > 0:
        return f"{ours} above {theirs} at {tokens:,} tokens"
    return f"no difference resolved at {tokens:,} tokens"


def per_k_words(per_k: dict[str, Interval]) -> str:
    """ "below at k = 4, 8; not resolved at k = 16; above at k = 32": an average over k can
    hide a sign that changes with k."""
    groups: dict[str, list[str]] = {}
    for label, interval in per_k.items():
        word = "below" if interval.high < 0 else "above" if interval.low > 0 else "not resolved"
        groups.setdefault(word, []).append(label.removeprefix("k="))
    return "; ".join(f"{w} at k = {', '.join(ks)}" for w, ks in groups.items())


def braun_readings(results: dict[str, Any], chunks: int) -> list[Reading]:
    """e2e and e2e+ds TopK SAEs at their common budget against the ended local ones, per k
    and averaged over k, with the mean-ablation baseline each must beat."""
    ds = ds_against_e2e(results, chunks)  # needs no local arm
    extra = [ds] if ds else []
    local = _arm_at(results, f"local:{FAMILY}", None)
    if local is None or not chunks:
        return extra
    out = []
    for objective, title in (("e2e", "e2e"), ("e2e_ds", "e2e+ds")):
        arm = f"{objective}:{FAMILY}"
        tokens = common_budget(results, arm)
        e2e = _arm_at(results, arm, tokens) if tokens else None
        if e2e is None or tokens is None:
            continue
        common = [x for x in local.labels if x in e2e.labels]
        a, b = local.only(common), e2e.only(common)
        found = {"ce_increase": paired_point_difference(a, b, "ce_increase", chunks)}
        per_k = []
        for label in common:
            one = paired_point_difference(a.only([label]), b.only([label]), "ce_increase", chunks)
            found[f"ce_increase@{label}"] = one
            per_k.append(f"{label}: {one.text()}")
        found["alive"] = paired_point_difference(a, b, "alive", chunks)
        base = baseline_rung(results, "braun", "mean")
        margin = ""
        if base is not None:
            found["ce_increase_minus_baseline"] = baseline_margin(base, b, "ce_increase", chunks)
            margin = (
                f"; {title} minus the mean-ablation baseline (no dictionary): "
                f"{found['ce_increase_minus_baseline'].text()}"
            )
        ended, total = _ended(results, arm)
        moved = ce_changes(results, arm, tokens)
        falling = (
            f"CE increase changed {100 * min(moved):+.0f}% to {100 * max(moved):+.0f}% over the "
            "last doubling up to it"
            if moved
            else "no doubling up to it"
        )
        ks = ", ".join(x.removeprefix("k=") for x in common)
        out.append(
            Reading(
                f"{title} TopK SAEs at {tokens:,} tokens against ended local ones",
                tokens,
                f"At {tokens:,} tokens{passes(tokens, results.get('setup', {}))}: {title} - "
                "local ended, CE increase averaged over k = "
                f"{ks}: {found['ce_increase'].text()} nats; per k: {'; '.join(per_k)}; alive "
                f"features {found['alive'].text(0)}{margin}. {ended} of {total} {title} "
                f"ladders ended; at {tokens:,} tokens their {falling}.",
                f"{reading_word(found['ce_increase'], tokens, title)} on average over k (per k: "
                f"{per_k_words({x: found[f'ce_increase@{x}'] for x in common})})",
                {k: [v.estimate, v.low, v.high] for k, v in found.items()},
            )
        )
    return out + extra


def ds_against_e2e(results: dict[str, Any], chunks: int) -> Reading | None:
    """e2e+ds against e2e TopK SAEs of the same k at the largest budget every ladder of both
    arms has reached: downstream FVU (the paper's claim) and CE increase. Both arms still
    train, so this compares equal budgets, not converged runs, in either direction."""
    tokens = common_budget(results, f"e2e:{FAMILY}", f"e2e_ds:{FAMILY}")
    if tokens is None or not chunks:
        return None
    e2e = _arm_at(results, f"e2e:{FAMILY}", tokens)
    ds = _arm_at(results, f"e2e_ds:{FAMILY}", tokens)
    if e2e is None or ds is None:
        return None
    common = [x for x in e2e.labels if x in ds.labels]
    a, b = e2e.only(common), ds.only(common)
    found, parts = {}, []
    for key, what in (("downstream_fvu", "downstream FVU"), ("ce_increase", "CE increase")):
        found[key] = paired_point_difference(a, b, key, chunks)
        per_k = {}
        for label in common:
            per_k[label] = paired_point_difference(a.only([label]), b.only([label]), key, chunks)
            found[f"{key}@{label}"] = per_k[label]
        parts.append(
            f"{what} {found[key].text()} (per k: "
            f"{'; '.join(f'{x}: {v.text()}' for x, v in per_k.items())})"
        )
    base = baseline_rung(results, "braun", "mean")
    margin = ""
    if base is not None:
        found["downstream_fvu_minus_baseline"] = baseline_margin(base, b, "downstream_fvu", chunks)
        margin = (
            "; e2e+ds minus the mean-ablation baseline (no dictionary), downstream FVU: "
            f"{found['downstream_fvu_minus_baseline'].text()}"
        )
    ended = [_ended(results, f"{o}:{FAMILY}") for o in ("e2e", "e2e_ds")]
    ks = ", ".join(x.removeprefix("k=") for x in common)
    word = reading_word(found["downstream_fvu"], tokens, "e2e+ds", "e2e")
    moving = sum(t - e for e, t in ended)
    why = (
        f"{moving} of their ladders still train, so this compares budgets, not converged runs"
        if moving
        else "every ladder has ended: the verdict reads them"
    )
    return Reading(
        f"e2e+ds against e2e TopK SAEs, both at {tokens:,} tokens",
        tokens,
        f"At {tokens:,} tokens each{passes(tokens, results.get('setup', {}))}: e2e+ds - e2e, "
        f"averaged over k = {ks}: "
        f"{'; '.join(parts)}{margin}. Ladders ended: e2e {ended[0][0]} of {ended[0][1]}, "
        f"e2e+ds {ended[1][0]} of {ended[1][1]}.",
        f"{word} in downstream FVU on average over k (per k: "
        f"{per_k_words({x: found[f'downstream_fvu@{x}'] for x in common})}); {why}",
        {k: [v.estimate, v.low, v.high] for k, v in found.items()},
    )


def readings_markdown(items: list[Reading]) -> str:
    """The readings as a markdown section body ("" when there are none)."""
    if not items:
        return ""
    lines = [
        "Each e2e ladder read at the largest budget every one of its arm's ladders has reached,",
        "against the local ladder of the same k at its end, on the same held-out chunks (95%",
        "paired bootstrap over chunks and seeds; alive features over seeds only). A reading at",
        "that budget, not a verdict: below local says e2e already beats local's converged",
        "figure there; above or across 0 says nothing about the converged comparison while the",
        "e2e ladders still train. e2e+ds is also read against e2e at the largest budget both",
        "arms' ladders reached: neither has ended, so that compares equal budgets only.",
        "",
    ]
    for r in items:
        lines += [f"**{r.name}** — {r.reading}.", "", f"- {r.ours}", ""]
    return "\n".join(lines)
