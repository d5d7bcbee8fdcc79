"""Whether a zoo set's card follows the recipe it names (`training.zoo_recipe.RECIPE`).

A card written by `build_zoo` ship records, per layer, the ladder's convergence curve, whether
it converged, the lr, seed and machine, and (under "ladder") the rule the curve was read by. The
check reads the rule off the curve again: the rungs are the ladder's budgets in order, the
ladder stopped at the first rung that settled, a layer that did not settle reached the cap, and
the training section is the set's (kind, objective, width, k, lr). The cards of sets whose
ladders ended before the whole zoo can ship are kept under `training/zoo_staged/` (docs/claims.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.convergence import budget_ladder, has_converged
from training.zoo_baselines import CARD_NAMES
from training.zoo_recipe import COMMON, RECIPE, ZOO_SETS

STAGED = Path(__file__).parent / "zoo_staged"
"""The cards (`<set>/card.json`) and ladder record (`ladders.json`) of sets whose ladders ended,
kept until the whole zoo ships. Their weights stay in the training machine's run folders: the
repository's weights keep within the zoo's 40 MB budget, which a second copy of three sets would
break."""


def recipe_problems(name: str, card: dict[str, Any]) -> list[str]:
    """What in set `name`'s card breaks the zoo's recipe, one sentence each ([] if nothing).

    `name` is a `training.zoo_recipe.ZOO_SETS` key; `card` is its card.json as `ship` writes it.
    """
    if name not in ZOO_SETS:
        return [f"{name} is not a zoo set; known: {list(ZOO_SETS)}"]
    if card.get("recipe") != RECIPE or "ladder" not in card:
        return [f"{name}: the card names no recipe or no ladder (trained before the recipe)"]
    problems = []
    training = card["training"]
    want = {**COMMON, **ZOO_SETS[name]}
    for key in ("kind", "objective", "activation", "n_features", "k", "lr", "batch_tokens"):
        if training.get(key) != want[key]:
            problems.append(f"{name}: training {key} is {training.get(key)!r}, not {want[key]!r}")
    rule = card["ladder"]
    budgets = budget_ladder(rule["start_tokens"], rule["cap_tokens"])
    rows = card["layers"]
    if [row["layer"] for row in rows] != COMMON["layers"]:
        problems.append(f"{name}: layers {[row['layer'] for row in rows]}, not {COMMON['layers']}")
    for row in rows:
        where = f"{name} layer {row['layer']}"
        curve = [(int(t), float(ce)) for t, ce in row["convergence"]]
        tokens = [t for t, _ in curve]
        settled = has_converged(curve, rule["tolerance"], rule["floor"])
        if tokens != budgets[: len(tokens)] or not tokens:
            problems.append(f"{where}: rungs {tokens} are not the ladder's {budgets}")
            continue
        if row["training_tokens"] != tokens[-1]:
            problems.append(
                f"{where}: shipped {row['training_tokens']:,} tokens, not the last rung"
            )
        early = [
            tokens[i - 1]
            for i in range(2, len(curve))
            if has_converged(curve[:i], rule["tolerance"], rule["floor"])
        ]
        if early:
            problems.append(f"{where}: settled at {early[0]:,} tokens but trained on")
        if row["converged"] != settled:
            problems.append(
                f"{where}: marked converged={row['converged']}, its curve says {settled}"
            )
        if not settled and tokens[-1] != budgets[-1]:
            problems.append(f"{where}: neither converged nor at the cap ({tokens[-1]:,} tokens)")
        if row.get("lr") != want["lr"] or row.get("seed") != want["seed"]:
            problems.append(f"{where}: lr {row.get('lr')} seed {row.get('seed')}, not the recipe's")
        if not row.get("machine"):
            problems.append(f"{where}: no machine recorded")
        if set(row.get("baselines") or {}) != set(CARD_NAMES.values()):
            problems.append(
                f"{where}: baselines {sorted(row.get('baselines') or {})}, not "
                f"{sorted(CARD_NAMES.values())} (what the layer must beat, on the curve's rows)"
            )
    return problems
