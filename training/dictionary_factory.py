"""An untrained dictionary of a training run's kind at one layer, and the hooks it reads and
writes."""

from __future__ import annotations

from typing import Any

from replacement.dictionary import Dictionary, GatedDictionary
from replacement.hook_table import block_hook
from replacement.hooks import layer_hooks
from replacement.processing import UNKNOWN, model_processing
from training.config import TrainConfig


def dictionary_hooks(config: TrainConfig, layer: int) -> tuple[str, str]:
    """(in_hook, out_hook) of the configured kind's dictionary at `layer`."""
    if config.kind == "sae":
        return block_hook(layer, config.site), block_hook(layer, config.site)
    hooks = layer_hooks(layer)
    return hooks.mlp_in, hooks.mlp_out


def build_dictionary(
    model: Any,
    config: TrainConfig,
    layer: int,
    d_model: int | None = None,
    model_name: str | None = None,
    processing: str | None = None,
) -> Dictionary:
    """An untrained dictionary of the configured kind at `layer` (weights not initialised).

    `d_model`, `model_name` and `processing` default to the model's; pass them (and
    model=None) to build without a model, e.g. from an activation cache's manifest.
    """
    d_model = int(model.cfg.d_model) if d_model is None else int(d_model)
    if model_name is None:
        model_name = str(getattr(model.cfg, "model_name", "") or "")
    in_hook, out_hook = dictionary_hooks(config, layer)
    if processing is None:
        processing = model_processing(model)
    kw: dict[str, Any] = {
        "skip": config.kind == "skip_transcoder",
        "model_name": model_name,
        # the activations it is trained on: the model's processing (replacement.processing)
        "metadata": {} if processing == UNKNOWN else {"processing": processing},
    }
    if config.activation == "gated":
        return GatedDictionary(d_model, d_model, config.n_features, in_hook, out_hook, **kw)
    params = {"k": config.k} if config.activation in ("topk", "batchtopk") else {}
    return Dictionary(
        d_model,
        d_model,
        config.n_features,
        in_hook,
        out_hook,
        config.activation,
        activation_params=params,
        **kw,
    )
