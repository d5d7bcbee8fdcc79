"""A claim's closed-form baseline point (the skip claim's affine map, the SAE claims' mean
ablation), fitted, evaluated on the sweep's rows and recorded in its results."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from replacement.hook_table import block_hook
from training.claims_plan import SweepPoint
from training.claims_results import point_record
from training.data import TokenData
from training.sweep_locks import save_entry

if TYPE_CHECKING:
    from training.claims_settings import SweepSettings


def fit_baseline(
    point: SweepPoint,
    settings: SweepSettings,
    model: Any,
    data: TokenData,
    original: Any,
    results: dict[str, Any],
    path: Path,
    log: Any,
) -> None:
    """Fit the point's closed-form baseline (the skip claim's affine map, the SAE claims' mean)
    on the first `start_tokens` training tokens and record it as a one-rung, converged entry (a
    closed-form fit has nothing left to converge)."""
    from replacement.hooks import layer_hooks
    from training.claims_eval import evaluate_dictionary
    from training.closed_form_baselines import fit_linear_transcoder, fit_mean_sae
    from training.config import TrainConfig
    from training.ladder import machine, rung_record

    start = time.perf_counter()
    if point.arm == "linear":
        pair = layer_hooks(settings.layer)
        fitted_dict, seen = fit_linear_transcoder(
            model, data.train, data.special_ids, pair.mlp_in, pair.mlp_out, settings.start_tokens
        )
        how = "least squares"
    elif point.arm == "mean":
        site = block_hook(settings.layer, TrainConfig.site)  # where the claims' SAEs sit
        fitted_dict, seen = fit_mean_sae(
            model, data.train, data.special_ids, site, settings.start_tokens
        )
        how = "the mean"
    else:
        raise ValueError(f"{point.name}: no closed-form baseline named {point.arm!r}")
    fitted = time.perf_counter() - start
    start = time.perf_counter()
    measured = evaluate_dictionary(model, fitted_dict.eval(), original)
    entry = point_record(results, point)["seeds"].setdefault("0", {})
    eval_seconds = time.perf_counter() - start
    entry["rungs"] = [  # no steps, lr or training loss: a closed-form fit
        rung_record(machine(settings.device), seen, 0, 0.0, fitted, eval_seconds, None, measured)
    ]
    entry["converged"] = True
    save_entry(path, results, ("runs", point.name, "seeds", "0"))
    f = entry["rungs"][-1]["figures"]
    log(
        f"{point.name}: {how} of {seen:,} tokens in {fitted:.0f} s, "
        f"CE increase {f['ce_increase']:.4f}, FVU {f['fvu']:.3f}"
    )
