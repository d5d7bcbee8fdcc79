"""The recipe check of zoo cards (`training.zoo_cards`): known-good and known-bad cards, every
staged card, and every shipped set that names the recipe."""

from __future__ import annotations

import json

import pytest

from replacement.formats.detect import load_dictionaries
from replacement.hooks import hook_layer
from replacement.zoo import list_dictionary_sets
from training.zoo_baselines import card_baselines
from training.zoo_cards import STAGED, recipe_problems
from training.zoo_recipe import COMMON, RECIPE, ZOO_LR, ZOO_SETS

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
                "baselines": {"mean_ablation": 0.7, "affine_map": 0.4},
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
        (lambda c: c["layers"][2].pop("baselines"), "layer 2: baselines []"),
        (lambda c: c["layers"][1]["baselines"].pop("affine_map"), "layer 1: baselines"),
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


def _staged_cards() -> list[str]:
    return sorted(p.parent.name for p in STAGED.glob("*/card.json"))


@pytest.mark.parametrize("name", _staged_cards())
def test_every_staged_card_follows_the_recipe(name):
    card = json.loads((STAGED / name / "card.json").read_text())
    assert recipe_problems(name, card) == []
    ladders = json.loads((STAGED / "ladders.json").read_text())  # its rows' baselines
    for row in card["layers"]:
        assert row["baselines"] == card_baselines(ladders, row["layer"])
        assert row["convergence"][-1][1] == pytest.approx(
            ladders["sets"][name]["layers"][str(row["layer"])]["rungs"][-1]["figures"][
                "ce_increase"
            ],
            abs=1e-6,
        )


def test_every_shipped_set_that_names_the_recipe_follows_it():
    for entry in list_dictionary_sets():
        if "recipe" not in entry.card:
            continue  # trained before the recipe (docs/claims.md); the e2e build test covers it
        assert recipe_problems(entry.name, entry.card) == []
        dictionaries = load_dictionaries(str(entry.path))
        assert sorted(hook_layer(d.out_hook) for d in dictionaries) == COMMON["layers"]
        spec = ZOO_SETS[entry.name]
        assert all(d.kind == spec["kind"] for d in dictionaries)
