"""The zoo's objectives compared layer by layer: B - A of two ladders' latest rungs, paired over
the held-out chunks, from the committed ladder files alone.

    python -m analysis.zoo_pairs training/zoo_staged/ladders.json \\
        training/zoo_progress/zoo_ladders.json [--draws 2000] [--seed 0]

Every ladder of `training.build_zoo` is evaluated on the same held-out rows and chunks, so two
ladders of one layer are compared with the same chunk weights in each bootstrap draw: chunk to
chunk variation that both share (some text is harder for every dictionary) cancels, and the
interval is that of the difference itself. Each row gives the difference of CE increase,
reconstruction FVU, downstream FVU (plain, and as the next norm reads the residual where both
records have it) and L0, where each ladder stands (`analysis.zoo_ladders.ended_at`) and:
- the direction of the CE difference read from its interval alone (lower / higher /
  unresolved: the interval holds zero);
- where a seed paper claims B reaches the lower CE increase at equal L0 (Braun et al.: e2e
  against local; Paulo et al.: skip against plain transcoders), that claim by the claims
  sweep's rule (`analysis.claims_stats.verdict`): agrees or disagrees only when the interval
  excludes zero and both ladders converged; a ladder ended at the cap or still training makes
  it inconclusive whatever the interval. L0s more than `L0_TOLERANCE` apart settle it only
  where one side dominates (lower CE at no more L0).
One seed each: the intervals cover evaluation noise, not training noise, so a row is a reading
of one layer; the claim's verdict over layers and seeds is the claims sweep's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float

from analysis.claims_stats import Interval, chunk_weights, verdict
from analysis.zoo_ladders import ZooLadders, draws_interval, ended_at, read_command_line
from training.claims_eval import figures

PAIRS: tuple[tuple[str, str, str | None], ...] = (
    ("sae_local", "sae_e2e", "Braun et al."),
    ("sae_local", "sae_e2e_ds", "Braun et al."),
    ("sae_e2e", "sae_e2e_ds", None),
    ("skip_transcoder", "skip_transcoder_e2e", "Braun et al."),
    ("transcoder", "skip_transcoder", "Paulo et al."),
)
"""(A, B, the seed paper that claims B reaches the lower CE increase at equal L0, if one does:
Braun et al. for e2e against local, Paulo et al. for skip against plain transcoders)."""
L0_TOLERANCE = 0.1
"""Relative L0 difference read as equal L0: a TopK dictionary's L0 falls below its k where
fewer than k of its top k are positive, and the zoo trains each set at one k only, so there is
no curve to interpolate along (the claims sweep interpolates; see `analysis.claims_stats`)."""
METRICS = ("ce_increase", "fvu", "downstream_fvu", "downstream_fvu_normed", "l0")


@dataclass
class PairedRow:
    """B - A at one layer: per metric the paired interval (None where a record lacks it), the
    point figures of each side, where each ladder stands and what the CE interval says."""

    layer: str
    a: str
    b: str
    difference: dict[str, Interval | None]
    points: dict[str, tuple[float, float] | None]
    a_state: str
    b_state: str
    direction: str
    claim: str | None
    over_baseline: tuple[Interval, Interval] | None = None
    """A's and B's CE increase minus the layer's affine map (the dictionary-free baseline each
    must beat, `training.zoo_baselines`), paired over the same chunks; None without its sums."""


def paired_rows(
    ladders: ZooLadders,
    pairs: Sequence[tuple[str, str, str | None]] = PAIRS,
    n_draws: int = 2000,
    seed: int = 0,
) -> list[PairedRow]:
    """Every pair of `pairs` at every layer where both latest rungs have per-chunk sums, on one
    set of chunk-bootstrap draws (draw 0 is every chunk once: the point estimate)."""
    n_chunks = int(ladders.setup["n_chunks"])
    weights = chunk_weights(n_chunks, n_draws, np.random.default_rng(seed))
    rows = []
    for a, b, paper in pairs:
        for layer in ladders.layers:
            entries = [ladders.sets.get(name, {}).get(layer) for name in (a, b)]
            if not all(entries):
                continue
            chunks = [e["rungs"][-1].get("chunks") for e in entries]
            if not all(chunks) or any(len(c["tokens"]) != n_chunks for c in chunks):
                continue  # an older record without the sums, or on other chunks: not paired
            draws = [figures(c, weights) for c in chunks]
            difference: dict[str, Interval | None] = {}
            points: dict[str, tuple[float, float] | None] = {}
            for key in METRICS:
                if key not in draws[0] or key not in draws[1]:
                    difference[key] = points[key] = None
                    continue
                da, db = (np.asarray(d[key], dtype=float) for d in draws)
                difference[key] = draws_interval(db - da)
                points[key] = (float(da[0]), float(db[0]))
            ce = difference["ce_increase"]
            assert ce is not None  # every record has the CE sums
            converged = all(bool(e["converged"]) for e in entries)
            claim = f"{paper}: {_claim(ce, points['l0'], converged)}" if paper else None
            rows.append(
                PairedRow(
                    layer,
                    a,
                    b,
                    difference,
                    points,
                    ended_at(ladders.setup, entries[0]),
                    ended_at(ladders.setup, entries[1]),
                    _direction(ce),
                    claim,
                    _over_baseline(ladders, layer, draws, weights),
                )
            )
    return rows


def _claim(ce: Interval, l0: tuple[float, float] | None, converged: bool) -> str:
    """A seed's claim (B has the lower CE increase at equal L0) read from one row. At
    unequal L0 only a dominating side settles it: lower CE at no more L0 agrees, higher CE at
    no less L0 disagrees; otherwise the L0s are named and it stays inconclusive."""
    found = verdict(ce, -1, converged)
    if l0 is None or abs(l0[1] - l0[0]) <= L0_TOLERANCE * max(l0):
        return found
    lower_l0 = l0[1] < l0[0]
    if (found == "agrees" and lower_l0) or (found == "disagrees" and not lower_l0):
        return found
    if found.startswith("inconclusive ("):
        return found  # its reason comes first
    return f"inconclusive (L0 {l0[1]:.1f} against {l0[0]:.1f})"


def _over_baseline(
    ladders: ZooLadders, layer: str, draws: list[dict], weights: Float[np.ndarray, "draws chunks"]
) -> tuple[Interval, Interval] | None:
    """Each side's CE increase minus the affine map's, on the same draws (paired)."""
    chunks = ladders.baselines.get(layer, {}).get("linear", {}).get("chunks")
    if not chunks or len(chunks["tokens"]) != weights.shape[1]:
        return None
    affine = np.asarray(figures(chunks, weights)["ce_increase"], dtype=float)
    a, b = (draws_interval(np.asarray(d["ce_increase"], dtype=float) - affine) for d in draws)
    return a, b


def _direction(ce: Interval) -> str:
    if ce.high < 0:
        return "B lower"
    if ce.low > 0:
        return "B higher"
    return "unresolved"


def _cell(interval: Interval | None) -> str:
    return "-" if interval is None else interval.text(4)


def pairs_markdown(rows: Sequence[PairedRow]) -> str:
    """The rows as a markdown table (docs/claims.md quotes it)."""
    head = (
        "| layer | B - A | A | B | CE increase B - A | CE A / B | FVU B - A | downstream FVU B - A "
        "(plain; normalised) | L0 A / B | CE increase - affine map, A; B | CE reading | seed claim: B "
        "lower at equal L0 |"
    )
    lines = [head, "|---" * 12 + "|"]
    for r in rows:
        ce = r.points["ce_increase"]
        l0 = r.points["l0"]
        down = f"{_cell(r.difference['downstream_fvu'])}; {_cell(r.difference['downstream_fvu_normed'])}"
        cells = [
            r.layer,
            f"`{r.b}` - `{r.a}`",
            r.a_state,
            r.b_state,
            _cell(r.difference["ce_increase"]),
            f"{ce[0]:.4f} / {ce[1]:.4f}" if ce else "-",
            _cell(r.difference["fvu"]),
            down,
            f"{l0[0]:.1f} / {l0[1]:.1f}" if l0 else "-",
            "; ".join(x.text(4) for x in r.over_baseline) if r.over_baseline else "-",
            r.direction,
            r.claim or "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the paired table of the ladder files named on the command line."""
    ladders, args = read_command_line(
        "python -m analysis.zoo_pairs",
        "The zoo's sets compared layer by layer (e2e against local, e2e+ds against e2e, skip "
        "against plain transcoders), paired over the held-out chunks.",
        argv,
    )
    print(pairs_markdown(paired_rows(ladders, PAIRS, args.draws, args.seed)), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
