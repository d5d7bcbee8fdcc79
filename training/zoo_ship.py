"""Ship the zoo's sets: each layer's final rung in float16 under the zoo, with its card.

`ship` stores a set once every layer's ladder has ended (converged, or at the cap), new then
swapped, replacing only folders that hold a set; its card (`trained_card`, measured by
`measure_card` on the float16 weights) records the recipe, the ladder's rule and, per layer,
the training and the convergence curve with its baselines. `remeasure` measures the cards of
the shipped sets again without touching their weights. Called by `training.build_zoo`
(`--stage ship`, `--stage card`).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from replacement.atomic import write_json
from training.zoo_recipe import COMMON, LADDER_FILE, MACHINE_PATHS, RECIPE, RECIPE_FIELDS


def trained_card(
    name: str, results: dict[str, Any], runs: Path
) -> tuple[dict[str, Any], list[Path]]:
    """A set's card from its ladders (training section, the ladder's rule, per-layer recipe
    fields) and the folder of each layer's final rung."""
    from training.convergence import DEFAULT_FLOOR, DEFAULT_TOLERANCE
    from training.zoo_baselines import card_baselines

    per_layer = results["sets"][name]["layers"]
    rows, folders, training = [], [], None
    for layer in COMMON["layers"]:
        entry = per_layer[str(layer)]
        last = entry["rungs"][-1]
        # a ladder taken from the claims sweep lives in its run folder there
        home = Path(entry.get("same_run_as", runs / name / f"layer{layer}"))
        folder = home / f"t{last['tokens']}"
        training = training or json.loads((folder / "card.json").read_text())["training"]
        rows.append(
            {
                "layer": layer,
                "training_tokens": last["tokens"],
                "steps": last["steps"],
                "lr": last["lr"],
                "seed": COMMON["seed"],
                "converged": entry["converged"],
                "convergence": [
                    [r["tokens"], round(r["figures"]["ce_increase"], 6)] for r in entry["rungs"]
                ],
                # on the rows of "convergence": what the layer's dictionary must beat
                "baselines": card_baselines(results, layer),
                "machine": last["machine"],
                **({"trained_as": entry["trained_as"]} if "trained_as" in entry else {}),
            }
        )
        folders.append(folder)
    # each layer's budget is its row's training_tokens
    per_run = ("total_tokens", *MACHINE_PATHS)
    training = {
        **{k: v for k, v in training.items() if k not in per_run},
        "layers": COMMON["layers"],
    }
    tokens = sum(r["training_tokens"] for r in rows)
    setup = results["setup"]
    card = {
        "description": f"{name} ({COMMON['activation']}, F={COMMON['n_features']}, "
        f"k={COMMON['k']}) on default, {tokens:,} tokens over {len(rows)} layers",
        "recipe": RECIPE,
        # the rule each layer's convergence curve was read by (training.zoo_cards checks it)
        "ladder": {
            **{k: setup[k] for k in ("start_tokens", "cap_tokens", "eval_tokens", "n_chunks")},
            "tolerance": DEFAULT_TOLERANCE,
            "floor": DEFAULT_FLOOR,
        },
        "training": training,
        "layers": rows,
    }
    return card, folders


def ship(args: argparse.Namespace) -> None:
    """Store each set's final rungs in float16 under --zoo and measure its card on those
    weights."""
    from replacement.formats.native import load_native, save_dictionary

    runs = Path(args.runs)
    results = json.loads((runs / LADDER_FILE).read_text())
    unended = unended_ladders(results, args.sets)
    if unended:  # before any work: a set ships whole, each layer at the end of its ladder
        raise SystemExit(
            f"{'; '.join(unended)}: a set ships once every layer's ladder has converged or "
            "reached the cap; train them to the end first (--stage train)"
        )
    for name in args.sets:  # before any work: replace only folders that hold a set of ours
        dest = Path(args.zoo) / name
        for place in (dest, *_beside(dest)):
            if place.exists() and not is_set_folder(place):
                raise SystemExit(
                    f"{place} holds files that are not a zoo set's (card.json, layer_*); "
                    "move them or choose another --zoo"
                )
    model, val = _card_model_and_tokens(args)
    for name in args.sets:
        dest = Path(args.zoo) / name
        run_card, folders = trained_card(name, results, runs)
        tmp, old = _beside(dest)
        shutil.rmtree(tmp, ignore_errors=True)  # a killed ship's half-written set
        dictionaries = []
        for layer, folder in zip(COMMON["layers"], folders, strict=True):
            d = load_native(folder / f"layer_{layer}").half()
            d.metadata["source"] = f"zoo:{name}/layer_{layer}"
            run = d.metadata.get("training", {})
            d.metadata["training"] = {k: v for k, v in run.items() if k not in MACHINE_PATHS}
            save_dictionary(d, tmp / f"layer_{layer}")
            dictionaries.append(d.float().eval())
        card = measure_card(model, val, dictionaries, run_card)
        card["description"] = run_card["description"] + "; shipped in float16"
        write_json(tmp / "card.json", card)
        shutil.rmtree(old, ignore_errors=True)  # checked above: a set folder, or absent
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)  # new then swapped: a kill leaves the old set or the new one
        shutil.rmtree(old, ignore_errors=True)
        _print_card(name, card)


def unended_ladders(results: dict[str, Any], sets: list[str]) -> list[str]:
    """The (set, layer) ladders in `results` (the ladder file) that have neither converged nor
    reached the recorded cap, each as "<set> layer <l>: <why>"."""
    from training.convergence import budget_ladder
    from training.ladder import ladder_ended

    setup = results["setup"]
    budgets = budget_ladder(setup["start_tokens"], setup["cap_tokens"])
    unended = []
    for name in sets:
        for layer in COMMON["layers"]:
            entry = results["sets"].get(name, {}).get("layers", {}).get(str(layer))
            rungs = len(entry["rungs"]) if entry else 0
            if not ladder_ended(setup, entry):
                unended.append(
                    f"{name} layer {layer}: {rungs} of {len(budgets)} rungs, not converged"
                )
    return unended


_SET_FILE = re.compile(r"(card\.json|layer_\d+\.(json|safetensors))")
_SET_TEMPORARY = re.compile(r"\.(card\.json|layer_\d+\.(json|safetensors))\.[a-z0-9_]{8}\.tmp")


def _beside(dest: Path) -> tuple[Path, Path]:
    """The folders `ship` writes the new set into and moves the old one to."""
    return dest.with_name(dest.name + ".tmp"), dest.with_name(dest.name + ".old")


def is_set_folder(folder: Path) -> bool:
    """Whether `folder` holds only what `ship` writes: card.json and layer_<n> files (or their
    temporaries, left by a kill)."""
    return folder.is_dir() and all(
        p.is_file() and (_SET_FILE.fullmatch(p.name) or _SET_TEMPORARY.fullmatch(p.name))
        for p in folder.iterdir()
    )


def remeasure(args: argparse.Namespace) -> None:
    """Measure the cards again on the sets already shipped under --zoo; the weights stay as they are."""
    from replacement.formats.native import load_native

    model, val = _card_model_and_tokens(args)
    for name in args.sets:
        dest = Path(args.zoo) / name
        old = json.loads((dest / "card.json").read_text())
        dictionaries = [
            load_native(dest / f"layer_{layer}").float().eval() for layer in COMMON["layers"]
        ]
        card = measure_card(model, val, dictionaries, old)
        card["description"] = old["description"]
        write_json(dest / "card.json", card)
        _print_card(name, card)


def _card_model_and_tokens(args: argparse.Namespace) -> tuple[Any, torch.Tensor]:
    from replacement.model import load_model
    from training.data import load_token_data
    from training.token_rows import read_rows

    model = load_model("default")
    if args.rows:
        return model, read_rows(args.rows).val[: args.eval_rows]
    return model, load_token_data(model, None, ctx_len=COMMON["ctx_len"]).val[: args.eval_rows]


def measure_card(
    model: Any, val: torch.Tensor, dictionaries: list, trained: dict[str, Any]
) -> dict[str, Any]:
    """A set's card: `spliced_loss` figures per layer (alone) and all layers together.

    `trained` is the run's card (or the previous zoo card): its "training" section and each
    layer's training tokens are carried over.
    """
    from replacement.loss import spliced_loss

    report = spliced_loss(model, dictionaries, val, verbose=False)
    layers = []
    for d, row_trained in zip(dictionaries, trained["layers"], strict=True):
        row = report.row(d.out_hook)
        layers.append(
            {
                "layer": row_trained["layer"],
                "n_features": d.n_features,
                "l0": row.l0,
                "l0_interval": row.l0_interval,
                "fvu": row.fvu,
                "fvu_interval": row.fvu_interval,
                "ce_increase": row.ce_increase,
                "ce_increase_interval": row.ce_increase_interval,
                "kl": row.kl,
                "frac_recovered": row.recovered_zero,
                "frac_recovered_interval": row.recovered_zero_interval,
                "frac_recovered_mean": row.recovered_mean,
                "dead_share": row.dead_share,
                "shrinkage": row.shrinkage,
                "training_tokens": row_trained["training_tokens"],
                **{k: row_trained[k] for k in RECIPE_FIELDS if k in row_trained},
            }
        )
    every = report.all
    return {
        "description": trained.get("description", ""),
        **{k: trained[k] for k in ("recipe", "ladder") if k in trained},
        "training": trained["training"],
        "evaluated_on": f"{val.numel():,} held-out tokens of the default model's corpus; "
        "position 0 (BOS) keeps the model's own activation in spliced and ablated passes",
        "layers": layers,
        "all_layers": {
            "ce_original": report.ce_original,
            "ce_increase": every.ce_increase,
            "ce_increase_interval": every.ce_increase_interval,
            "kl": every.kl,
            "frac_recovered": every.recovered_zero,
            "frac_recovered_interval": every.recovered_zero_interval,
            "intervals": "95% bootstrap over the evaluated sequences",
        },
    }


def _print_card(name: str, card: dict[str, Any]) -> None:
    rows = card["layers"]
    print(
        f"{name}: "
        + ", ".join(
            f"L{r['layer']} fvu={r['fvu']:.3f} l0={r['l0']:.1f} rec={r['frac_recovered']:.3f}"
            for r in rows
        )
        + f"; all rec={card['all_layers']['frac_recovered']:.3f}",
        flush=True,
    )
