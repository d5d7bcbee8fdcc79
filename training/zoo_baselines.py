"""The dictionary-free baselines of each zoo layer, evaluated as the ladders' rungs are.

Per layer, on the ladders' held-out rows and chunks (`training.claims_eval`): mean ablation
of the MLP output (a feature-less SAE whose output is the site's mean: what an SAE with no
features gives) and the best affine map from the MLP input to its output (what a transcoder's
dense path alone carries), both fitted in closed form on training rows
(`training.closed_form_baselines`). A zoo layer's CE increase is read against them, chunk by
chunk, with paired intervals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxtyping import Int
from torch import Tensor

if TYPE_CHECKING:
    from training.claims_eval import OriginalSide

BASELINES = ("mean_ablation", "linear")
"""Names of the baselines recorded under the ladder file's "baselines"/<layer>."""


def fit_layer_baselines(
    results: dict[str, Any],
    path: Path,
    layer: int,
    model: Any,
    train_rows: Int[Tensor, "rows ctx"],
    special_ids: list[int],
    original: OriginalSide,
    fit_tokens: int,
    device: str,
    log: Callable[[str], None],
) -> None:
    """Fit and evaluate the baselines of `layer` missing from `results` (the ladder file at
    `path`), saving each as a rung record (no steps; its fit's tokens) as it ends."""
    from replacement.hooks import layer_hooks
    from training.claims_eval import evaluate_dictionary
    from training.closed_form_baselines import fit_linear_transcoder, fit_mean_sae
    from training.ladder import machine, rung_record
    from training.sweep_locks import save_entry

    pair = layer_hooks(layer)
    fits = {
        "mean_ablation": lambda: fit_mean_sae(
            model, train_rows, special_ids, pair.mlp_out, fit_tokens
        ),
        "linear": lambda: fit_linear_transcoder(
            model, train_rows, special_ids, pair.mlp_in, pair.mlp_out, fit_tokens
        ),
    }
    have = results.setdefault("baselines", {}).setdefault(str(layer), {})
    for name in BASELINES:
        if name in have:
            continue
        start = time.perf_counter()
        dictionary, seen = fits[name]()
        fitted = time.perf_counter() - start
        start = time.perf_counter()
        measured = evaluate_dictionary(model, dictionary.eval(), original)
        seconds = time.perf_counter() - start
        have[name] = rung_record(machine(device), seen, 0, 0.0, fitted, seconds, None, measured)
        save_entry(path, results, ("baselines", str(layer), name))
        f = have[name]["figures"]
        log(f"layer {layer} {name}: fitted on {seen:,} tokens, CE increase {f['ce_increase']:.4f}")


CARD_NAMES = {"mean_ablation": "mean_ablation", "linear": "affine_map"}
"""A baseline's name on a set's card (the ladder file calls the affine map "linear")."""


def card_baselines(results: dict[str, Any], layer: int) -> dict[str, float]:
    """Held-out CE increase of `layer`'s baselines on the ladder's own rows and chunks (those
    of a card's "convergence" curve), keyed by `CARD_NAMES`; the values a layer's dictionary
    must beat, recorded on its card."""
    have = results.get("baselines", {}).get(str(layer), {})
    missing = [name for name in BASELINES if name not in have]
    if missing:
        raise ValueError(
            f"layer {layer} has no {', '.join(missing)} baseline in the ladder file; "
            "run --stage train once to fit it"
        )
    return {CARD_NAMES[n]: round(float(have[n]["figures"]["ce_increase"]), 6) for n in BASELINES}
