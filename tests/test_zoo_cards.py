"""The recipe check of zoo cards (`training.zoo_cards`): known-good and known-bad cards, and
every staged or shipped set that names the recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from replacement.formats.detect import load_dictionaries
from replacement.hooks import hook_layer
from replacement.zoo import list_dictionary_sets
from training.build_zoo import COMMON, RECIPE, ZOO_LR, ZOO_SETS
from training.zoo_cards import STAGED, recipe_problems

M = 1_000_000


def _card(curves: list[list[tuple[int, float]]], converged: list[bool]) -> dict:
    """A local SAE card with the given per-layer curves, as `ship` writes it."""
    return {
        "recipe": RECIPE,
        "ladder": {
            "start_tokens": M,
            "cap_tokens": 8 * M,
            "eval_tokens": M,
            "n_chunks": 64,
            "tolerance": 0.02,
            "floor": 5e-4,
        },  # fmt: skip
        "training": {**COMMON, **ZOO_SETS["sae_local"]},
        "layers": [
            {
                "layer": layer,
                "training_tokens": curve[-1][0],
                "convergence": list(curve),
                "converged": done,
                "lr": ZOO_LR,
                "seed": 0,
                "machine": "x86_64, 2 CPUs",
            }  # fmt: skip
            for layer, curve, done in zip(COMMON["layers"], curves, converged, strict=True)
        ],
    }


SETTLED = [(M, 0.5), (2 * M, 0.3), (4 * M, 0.298)]  # -0.7% over the last doubling
AT_CAP = [(M, 0.5), (2 * M, 0.3), (4 * M, 0.2), (8 * M, 0.15)]  # -25%: still falling at 8M


def test_a_card_that_follows_the_recipe_passes():
    card = _card(
        [SETTLED, AT_CAP, SETTLED, [(M, 0.1), (2 * M, 0.09995)]], [True, False, True, True]
    )
    assert recipe_problems("sae_local", card) == []


@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda c: c["layers"][0].update(converged=False), "layer 0: marked converged=False"),
        (lambda c: c["layers"][1].update(converged=True), "layer 1: marked converged=True"),
        # stopped unconverged below the cap (an interrupted ladder)
        (lambda c: c["layers"][1]["convergence"].pop(), "layer 1: neither converged nor at"),
        # trained past the rung that settled
        (lambda c: c["layers"][0]["convergence"].append((8 * M, 0.29)), "settled at 4,000,000"),
        (lambda c: c["layers"][2]["convergence"].insert(1, (3 * M, 0.4)), "are not the ladder"),
        (lambda c: c["layers"][3].update(lr=8e-4), "layer 3: lr 0.0008"),
        (lambda c: c["layers"][3].update(machine=""), "layer 3: no machine"),
        (lambda c: c["training"].update(objective="e2e"), "training objective is 'e2e'"),
        (lambda c: c.pop("ladder"), "no recipe or no ladder"),
    ],
)
def test_a_card_that_breaks_the_recipe_is_named(edit, says):
    card = _card([SETTLED, AT_CAP, SETTLED, SETTLED], [True, False, True, True])
    edit(card)
    for row in card["layers"]:  # the shipped rung is the curve's last, as ship writes it
        row["training_tokens"] = row["convergence"][-1][0]
    problems = recipe_problems("sae_local", card)
    assert any(says in p for p in problems), problems


def _recipe_sets() -> list[tuple[str, str]]:
    """(name, folder) of every staged set and every shipped set whose card names the recipe."""
    staged = [(p.name, str(p)) for p in sorted(STAGED.glob("*")) if p.is_dir()]
    shipped = [(e.name, str(e.path)) for e in list_dictionary_sets() if "recipe" in e.card]
    return staged + shipped


@pytest.mark.parametrize("name, folder", _recipe_sets())
def test_every_staged_or_shipped_recipe_set_follows_it(name, folder):
    card = json.loads((Path(folder) / "card.json").read_text())
    assert recipe_problems(name, card) == []
    dictionaries = load_dictionaries(folder)
    assert sorted(hook_layer(d.out_hook) for d in dictionaries) == COMMON["layers"]
    spec = ZOO_SETS[name]
    assert all(
        d.kind == spec["kind"] and d.n_features == COMMON["n_features"] for d in dictionaries
    )
