"""A tiny e2e training setup on the default model: rows of 32 tokens, 4 rows a step."""

from __future__ import annotations

from pathlib import Path

from training.config import TrainConfig
from training.data import TokenData, load_token_data

CTX = 32
STEP_TOKENS = 4 * (CTX - 1)
"""Predicted tokens of one step (4 rows)."""


def json_package_rows(model) -> TokenData:
    """Rows of the standard library's json package, tokenized by `model`."""
    from training.default_model.corpus import stdlib_dir

    texts = [p.read_text() for p in sorted((stdlib_dir() / "json").glob("*.py"))]
    return load_token_data(model, texts, CTX)


def e2e_config(folder: str | Path, steps: int = 8, **overrides) -> TrainConfig:
    """A TopK k = 4 e2e SAE of 64 features at layer 1, trained for `steps` steps."""
    base = dict(
        objective="e2e",
        activation="topk",
        layers=[1],
        n_features=64,
        k=4,
        batch_tokens=STEP_TOKENS,
        total_tokens=STEP_TOKENS * steps,
        ctx_len=CTX,
        warmup_steps=2,
        lr=3e-3,
        checkpoint_every=0,
        log_every=1,
        dead_after_tokens=4 * STEP_TOKENS,
        evaluate=False,
        verbose=False,
        out_dir=str(folder),
    )
    return TrainConfig(**{**base, **overrides})
