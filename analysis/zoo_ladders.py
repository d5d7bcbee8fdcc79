"""The zoo's ladder tables, with their baselines and intervals, from the committed ladder files.

    python -m analysis.zoo_ladders training/zoo_staged/ladders.json \\
        [training/zoo_progress/zoo_ladders.json ...] [--draws 2000] [--seed 0]

`training.build_zoo` records every (set, layer) ladder: each rung's held-out figures, per-chunk
sums on its last two rungs, and each layer's dictionary-free baselines on the same rows and
chunks (`training.zoo_baselines`). This writes the tables docs/claims.md quotes, so a reader can
regenerate them from the repository alone:
- the budget each ladder ended at (or has reached, while it still trains), with the change over
  its last doubling when it stopped unsettled;
- each ladder's latest rung's held-out CE increase, with a 95% percentile interval over the
  evaluation chunks;
- the baselines (mean ablation, the affine map), and each set minus the affine map, paired over
  the same chunks (the same chunk weights in every draw);
- each ladder's change of CE increase over its last doubling, paired over the same chunks (the
  same chunk weights for both rungs of a draw), where both rungs have the per-chunk sums: the
  interval says whether a change is beyond the 2% rule or only looks so;
- each ladder's curve: its CE increase at every rung and the change over each doubling;
- where a latest rung has the sums for it, its downstream FVU, plain and normalised as the next
  norm reads the residual, beside the baselines' (normalised where theirs have the sums) (`training.claims_eval.normalised`: blind to a change of the stream's
  scale, which a dictionary at the last block can make freely).
One seed: the intervals cover evaluation noise, not training noise.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float

from analysis.claims_stats import Interval, chunk_weights
from training.claims_eval import figures
from training.convergence import relative_change
from training.ladder import kept_on_merge, ladder_ended

SAME_ROWS = ("start_tokens", "cap_tokens", "eval_tokens", "n_chunks", "rows_sha256")
"""Setup fields that must agree for two ladder files to share a table (their rungs and
baselines were evaluated on the same rows and chunks, under the same ladder)."""
BASELINE_LABELS = {"mean_ablation": "mean ablation", "linear": "affine map"}


@dataclass
class ZooLadders:
    """Ladder entries of several files, merged: (set -> layer -> entry), the layers' baselines
    and the setup they share."""

    setup: dict[str, Any]
    sets: dict[str, dict[str, dict[str, Any]]]
    baselines: dict[str, dict[str, Any]]

    @property
    def layers(self) -> list[str]:
        """Every layer with a ladder or a baseline, in order."""
        found = {layer for per in self.sets.values() for layer in per} | set(self.baselines)
        return sorted(found, key=int)


def read_ladders(paths: Sequence[Path]) -> ZooLadders:
    """Merge ladder files (`build_zoo --stage record` or the run folder's ladder file).

    A ladder in several files keeps the entry that has ended or holds more rungs
    (`training.ladder.kept_on_merge`). Files evaluated on other rows or under another ladder
    are refused before anything is read further.
    """
    if not paths:
        raise ValueError(
            "no ladder files given; pass at least one (e.g. training/zoo_staged/ladders.json)"
        )
    loaded = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a readable ladder file ({err})") from err
        if not isinstance(data, dict) or not {"setup", "sets"} <= data.keys():
            raise ValueError(f"{path}: not a zoo ladder file (expected the keys setup and sets)")
        loaded.append((Path(path), data))
    first_path, first = loaded[0]
    setup = first["setup"]
    for path, data in loaded[1:]:
        other = {k: data["setup"].get(k) for k in SAME_ROWS}
        if other != {k: setup.get(k) for k in SAME_ROWS}:
            differ = [k for k in SAME_ROWS if data["setup"].get(k) != setup.get(k)]
            raise ValueError(
                f"{path} and {first_path} differ in {', '.join(differ)}: their ladders were not "
                "evaluated on the same rows and chunks, so they cannot share a table"
            )
    sets: dict[str, dict[str, dict[str, Any]]] = {}
    baselines: dict[str, dict[str, Any]] = {}
    for _, data in loaded:
        for name, per_set in data["sets"].items():
            mine = sets.setdefault(name, {})
            for layer, entry in per_set.get("layers", {}).items():
                if entry.get("rungs") and not kept_on_merge(mine.get(layer), entry):
                    mine[layer] = entry
        for layer, found in data.get("baselines", {}).items():
            baselines.setdefault(layer, {}).update(found)
    return ZooLadders(setup, {n: per for n, per in sets.items() if per}, baselines)


def _tokens(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1e6 else f"{n:,}"


def ended_at(setup: dict[str, Any], entry: dict[str, Any]) -> str:
    """Where a ladder stands: `16M` (converged there), `64M, at the cap (-2.8%)` (ended
    unsettled, with the change over its last doubling), `4M so far` (still training)."""
    last = _tokens(entry["rungs"][-1]["tokens"])
    if entry["converged"]:
        return last
    if not ladder_ended(setup, entry):
        return f"{last} so far"
    curve = [(r["tokens"], r["figures"]["ce_increase"]) for r in entry["rungs"]]
    change = relative_change(curve)
    if change is None:
        return f"{last}, at the cap"
    sign = np.sign(curve[-1][1] - curve[-2][1])
    return f"{last}, at the cap ({sign * change * 100:+.1f}%)"


Draws = Float[np.ndarray, "draws chunks"]


def _ce_draws(chunks: dict[str, list[float]], weights: Draws) -> Float[np.ndarray, " draws"]:
    return np.asarray(figures(chunks, weights)["ce_increase"], dtype=float)


def _downstream(chunks: dict[str, list[float]] | None, weights: Draws) -> str:
    """`plain / normalised` downstream FVU with intervals ("-" for a figure a record lacks)."""
    found = figures(chunks, weights) if chunks else {}
    cells = [_text(draws_interval(np.asarray(found[k], dtype=float))) if k in found else "-"
             for k in ("downstream_fvu", "downstream_fvu_normed")]  # fmt: skip
    return " / ".join(cells) if chunks else "-"


def _last_doubling(entry: dict[str, Any] | None, weights: Draws) -> Interval | None:
    """The relative change of CE increase over a ladder's last doubling, each draw weighing
    both rungs' chunks alike (None without two rungs that have per-chunk sums)."""
    rungs = entry["rungs"] if entry else []
    if len(rungs) < 2 or not all("chunks" in r for r in rungs[-2:]):
        return None
    before, after = (_ce_draws(r["chunks"], weights) for r in rungs[-2:])
    return draws_interval(after / before - 1)


def draws_interval(values: Float[np.ndarray, " draws"]) -> Interval:
    """Draw 0 (every chunk once) as the estimate, with the 2.5 and 97.5 percentiles of all."""
    low, high = np.percentile(values, [2.5, 97.5])
    return Interval(float(values[0]), float(low), float(high))


def _percent(interval: Interval | None) -> str:
    if interval is None:
        return "-"
    return (
        f"{100 * interval.estimate:+.1f}% [{100 * interval.low:+.1f}%, {100 * interval.high:+.1f}%]"
    )


def _text(interval: Interval | None, signed: bool = False) -> str:
    if interval is None:
        return "-"
    f = "+.4f" if signed else ".4f"
    return f"{interval.estimate:{f}} [{interval.low:{f}}, {interval.high:{f}}]"


@dataclass
class LadderTables:
    """The tables' cells: per (row, layer) an interval or a text; None where nothing is
    recorded (no ladder, or a latest rung without per-chunk sums)."""

    layers: list[str]
    ended: dict[str, dict[str, str]]
    ce_increase: dict[str, dict[str, Interval | None]]
    baselines: dict[str, dict[str, Interval | None]]
    minus_affine: dict[str, dict[str, Interval | None]]
    downstream: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per set and layer `_downstream`'s cell: plain / normalised downstream FVU."""
    last_doubling: dict[str, dict[str, Interval | None]] = field(default_factory=dict)
    """Per set and layer the relative change of CE increase from the second-last rung to the
    last, paired over the chunks (None: fewer than two rungs with per-chunk sums)."""


def ladder_tables(ladders: ZooLadders, n_draws: int = 2000, seed: int = 0) -> LadderTables:
    """Every cell of the tables, on one set of chunk-bootstrap draws (`chunk_weights` of
    `np.random.default_rng(seed)`; draw 0 is every chunk once, the point estimate)."""
    n_chunks = int(ladders.setup["n_chunks"])
    weights = chunk_weights(n_chunks, n_draws, np.random.default_rng(seed))
    layers = ladders.layers

    def per_layer(
        read: Callable[[str], dict[str, list[float]] | None],
    ) -> dict[str, Float[np.ndarray, " draws"] | None]:
        out = {}
        for layer in layers:
            chunks = read(layer)
            out[layer] = None if chunks is None else _ce_draws(chunks, weights)
        return out

    def latest_chunks(name: str) -> Callable[[str], dict[str, list[float]] | None]:
        def read(layer: str) -> dict[str, list[float]] | None:
            entry = ladders.sets[name].get(layer)
            return entry["rungs"][-1].get("chunks") if entry else None

        return read

    def baseline_chunks(kind: str) -> Callable[[str], dict[str, list[float]] | None]:
        def read(layer: str) -> dict[str, list[float]] | None:
            found = ladders.baselines.get(layer, {}).get(kind)
            return found.get("chunks") if found else None

        return read

    affine = per_layer(baseline_chunks("linear"))
    tables = LadderTables(layers, {}, {}, {}, {})
    for kind, label in BASELINE_LABELS.items():
        draws = per_layer(baseline_chunks(kind))
        tables.baselines[label] = {
            k: None if v is None else draws_interval(v) for k, v in draws.items()
        }
        tables.downstream[label] = {
            layer: _downstream(baseline_chunks(kind)(layer), weights) for layer in layers
        }
    for name in ladders.sets:
        draws = per_layer(latest_chunks(name))
        tables.downstream[name] = {
            layer: _downstream(latest_chunks(name)(layer), weights) for layer in layers
        }
        tables.ended[name] = {
            layer: ended_at(ladders.setup, entry)
            if (entry := ladders.sets[name].get(layer))
            else "-"
            for layer in layers
        }
        tables.ce_increase[name] = {
            k: None if v is None else draws_interval(v) for k, v in draws.items()
        }
        tables.minus_affine[name] = {
            k: None if v is None or affine[k] is None else draws_interval(v - affine[k])
            for k, v in draws.items()
        }
        tables.last_doubling[name] = {
            layer: _last_doubling(ladders.sets[name].get(layer), weights) for layer in layers
        }
    return tables


def curves_markdown(ladders: ZooLadders) -> str:
    """Each ladder's held-out CE increase at every rung, with the change over each doubling:
    the curve its convergence (or its cap) was read from."""
    lines = []
    for name, per_set in ladders.sets.items():
        for layer in sorted(per_set, key=int):
            rungs = per_set[layer]["rungs"]
            cells = []
            for i, r in enumerate(rungs):
                ce = r["figures"]["ce_increase"]
                cell = f"{_tokens(r['tokens'])} {ce:.4f}"
                if i:
                    before = rungs[i - 1]["figures"]["ce_increase"]
                    cell += f" ({(ce - before) / max(abs(before), 1e-12) * 100:+.1f}%)"
                cells.append(cell)
            lines.append(f"- `{name}` layer {layer}: " + ", ".join(cells))
    return "\n".join(lines) + "\n"


def tables_markdown(tables: LadderTables) -> str:
    """The tables as markdown (docs/claims.md quotes them)."""
    head = "| set | " + " | ".join(f"layer {x}" for x in tables.layers) + " |"
    rule = "|---|" + "---|" * len(tables.layers)

    def row(label: str, cells: list[str]) -> str:
        return f"| {label} | " + " | ".join(cells) + " |"

    ended = [head, rule] + [
        row(f"`{name}`", [per[x] for x in tables.layers]) for name, per in tables.ended.items()
    ]
    ce = [head, rule] + [
        row(f"`{name}`", [_text(per[x]) for x in tables.layers])
        for name, per in tables.ce_increase.items()
    ]
    base = [head.replace("| set |", "| |", 1), rule]
    base += [
        row(label, [_text(per[x]) for x in tables.layers])
        for label, per in tables.baselines.items()
    ]
    base += [
        row(f"`{name}` - affine", [_text(per[x], signed=True) for x in tables.layers])
        for name, per in tables.minus_affine.items()
    ]
    down = [head, rule] + [
        row(
            name if name in BASELINE_LABELS.values() else f"`{name}`",
            [per[x] for x in tables.layers],
        )
        for name, per in tables.downstream.items()
    ]
    change = [head, rule] + [
        row(f"`{name}`", [_percent(per[x]) for x in tables.layers])
        for name, per in tables.last_doubling.items()
    ]
    if all(not c.endswith("]") for per in tables.downstream.values() for c in per.values()):
        down = []  # no latest rung has the normalised sums yet
    else:
        down = [
            "Downstream FVU at the latest rung, plain / normalised as the next norm reads it, "
            "95% chunk-bootstrap intervals:",
            "",
            *down,
            "",
        ]
    return "\n".join(
        [
            "Budget each ladder ended at (seed 0):",
            "",
            *ended,
            "",
            "Held-out CE increase at the latest rung, 95% chunk-bootstrap interval:",
            "",
            *ce,
            "",
            "Change of the held-out CE increase over the last doubling, paired over the chunks "
            "(95%; the rule's threshold is 2%):",
            "",
            *change,
            "",
            "Baselines on the same rows and chunks, and each set minus the affine map (paired):",
            "",
            *base,
            "",
            *down,
        ]
    )


def read_command_line(
    prog: str, description: str, argv: Sequence[str] | None
) -> tuple[ZooLadders, argparse.Namespace]:
    """The ladder files named on a command line, merged, and its --draws and --seed: shared by
    this module's command and `analysis.zoo_pairs`'. Bad arguments exit 2 naming the problem."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("files", nargs="+", type=Path, help="ladder files, merged in order")
    p.add_argument("--draws", type=int, default=2000, help="bootstrap draws (default: 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    args = p.parse_args(argv)
    if args.draws < 2:
        p.error(f"--draws must be at least 2; got {args.draws}")
    try:
        return read_ladders(args.files), args
    except ValueError as err:
        p.error(str(err))


def main(argv: Sequence[str] | None = None) -> int:
    """Print the tables of the ladder files named on the command line."""
    ladders, args = read_command_line(
        "python -m analysis.zoo_ladders",
        "The zoo's ladder tables (budgets, held-out CE increase, baselines) with "
        "chunk-bootstrap intervals, from build_zoo's ladder files.",
        argv,
    )
    print(tables_markdown(ladder_tables(ladders, args.draws, args.seed)))
    print("Held-out CE increase at every rung (change over the doubling):\n")
    print(curves_markdown(ladders), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
