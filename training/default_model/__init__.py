"""The embedded default language model: corpus, tokenizer, training, evaluation, card.

Retrain with ``python -m training.default_model --seed 0 --out DIR [--device cuda]``.
Submodules import torch and transformers only; they never import TransformerLens, so the
training stage runs on a bare accelerator machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.default_model.pipeline import train_default_model

__all__ = ["train_default_model"]


def __getattr__(name: str) -> Any:
    # Lazy so `python -m training.default_model` and the corpus tests stay light.
    if name == "train_default_model":
        from training.default_model.pipeline import train_default_model

        return train_default_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
