"""Token rows to evaluate on: a token tensor as given, or text tokenized, chunked to a context
length and BOS-prefixed, with each row's length (shorter rows are padded and masked)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from replacement.errors import ShapeError, SparseCircuitsError
from replacement.model import to_tokens


def prepare_tokens(
    model: Any,
    tokens_or_text: Int[Tensor, "batch pos"] | str | Sequence[str],
    ctx_len: int | None = None,
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, " batch"]]:
    """Token rows and their lengths: text is tokenized, chunked to ctx_len and BOS-prefixed.

    A LongTensor is used as given (each row its full length); it must fit in n_ctx.
    """
    n_ctx = int(model.cfg.n_ctx)
    ctx = int(ctx_len or n_ctx)
    if ctx > n_ctx:  # never clamp silently: the user asked for a length the model cannot see
        raise ShapeError(
            f"ctx_len (--ctx-len) {ctx} exceeds the model's context of {n_ctx} tokens; "
            f"use {n_ctx} or less"
        )
    if ctx < 3:
        raise SparseCircuitsError(f"ctx_len must be at least 3 (BOS + two tokens), got {ctx}")
    if isinstance(tokens_or_text, Tensor):
        tokens = tokens_or_text
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int32, torch.int64):
            raise ShapeError(
                f"tokens should be an integer tensor [batch, pos], got {tuple(tokens.shape)} "
                f"{tokens.dtype}"
            )
        if tokens.shape[1] > n_ctx:
            raise ShapeError(
                f"tokens have {tokens.shape[1]} positions, the model's n_ctx is {n_ctx}"
            )
        lengths = torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long)
        return tokens.long(), lengths
    texts = [tokens_or_text] if isinstance(tokens_or_text, str) else list(tokens_or_text)
    bos = model.tokenizer.bos_token_id
    if bos is None:
        raise SparseCircuitsError("the tokenizer has no BOS token; pass a token tensor instead")
    rows: list[list[int]] = []
    for text in texts:
        ids = to_tokens(model, text, prepend_bos=False)[0].tolist() if text else []
        for start in range(0, len(ids), ctx - 1):
            rows.append([bos, *ids[start : start + ctx - 1]])
    rows = [r for r in rows if len(r) >= 3]
    if not rows:
        raise SparseCircuitsError("the text gives no sequence of at least 3 tokens to evaluate")
    width = max(len(r) for r in rows)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else bos
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return tokens, torch.tensor([len(r) for r in rows], dtype=torch.long)
