"""`sparse-circuits info`: list the embedded models and dictionaries with sizes and figures."""

from __future__ import annotations

import argparse

from replacement import zoo


def _figures(card: dict, keys: tuple[str, ...]) -> str:
    parts = []
    for key in keys:
        value = card.get(key)
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        elif isinstance(value, list) and all(isinstance(v, float) for v in value):
            parts.append(f"{key}=[{', '.join(f'{v:.4g}' for v in value)}]")  # an interval
        elif value is not None:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def run_info(args: argparse.Namespace) -> int:
    """Print the zoo."""
    models = zoo.list_models()
    print("Embedded models:")
    if not models:
        print("  (none shipped)")
    for entry in models:
        card = entry.card
        arch, evaluation = card.get("architecture", {}), card.get("evaluation", {})
        induction = evaluation.get("induction", {})
        print(f"  {entry.name:<22} {entry.size_bytes / 1e6:6.2f} MB  {entry.path}")
        print("      " + _figures(arch, ("n_layer", "d_model", "n_head", "d_mlp", "vocab_size")))
        print(
            "      held-out loss "
            + _figures(evaluation, ("heldout_loss", "bigram_loss", "unigram_loss"))
        )
        if induction:
            print("      induction loss " + _figures(induction, ("first_copy", "second_copy")))
        print("      " + _figures(card.get("training", {}), ("tokens", "steps")))
    sets = zoo.list_dictionary_sets()
    print("Embedded dictionary sets:")
    if not sets:
        print("  (none shipped)")
    for entry in sets:
        card = entry.card
        print(f"  {entry.name:<22} {entry.size_bytes / 1e6:6.2f} MB  {card.get('description', '')}")
        for layer in card.get("layers", []):
            print(
                "      "
                + _figures(
                    layer,
                    (
                        "layer",
                        "n_features",
                        "l0",
                        "fvu",
                        "fvu_interval",
                        "ce_increase",
                        "ce_increase_interval",
                        "frac_recovered",
                        "dead_share",
                        "training_tokens",
                    ),
                )
            )
    atlases = zoo.list_atlases()
    print("Embedded feature atlases (labels and top contexts of each set's features):")
    for entry in atlases:
        print(
            f"  {entry.name:<22} {entry.size_bytes / 1e6:6.2f} MB  {entry.card.get('corpus', '')}, "
            f"{entry.card.get('n_tokens', 0):,} tokens"
        )
    total = sum(e.size_bytes for e in models + sets + atlases)
    print(f"Total package data: {total / 1e6:.2f} MB (budget 40 MB)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `info` subcommand."""
    parser = subparsers.add_parser(
        "info",
        help="list the embedded models and dictionaries",
        description="List the model and dictionary sets shipped inside the package, with their "
        "sizes, architecture, held-out loss and per-layer figures (L0, FVU, CE increase, loss "
        "recovered, dead share, training tokens).",
    )
    parser.set_defaults(func=run_info)
