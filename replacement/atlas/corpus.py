"""Token rows for an atlas: the default model's held-out corpus, a token file, or text.

Every source becomes rows of `ctx_len` tokens that start with BOS: documents are joined with
BOS between them and the stream is cut into rows of [BOS, ctx_len - 1 tokens] (the last
partial row is dropped), the layout the dictionaries were trained on.

The default corpus is the held-out part of the default model's corpus: the standard-library
files named in `zoo/default_model/heldout_files.txt`, read from the running interpreter (they
were never trained on, by the model or its dictionaries).
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from replacement.errors import SparseCircuitsError
from replacement.model import DEFAULT_MODEL_DIR

HELDOUT_LIST = DEFAULT_MODEL_DIR / "heldout_files.txt"
TOKEN_SUFFIXES = (".safetensors", ".pt", ".npy")


def heldout_texts() -> list[str]:
    """Texts of the default model's held-out standard-library files, in list order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    lines = (line.strip() for line in HELDOUT_LIST.read_text(encoding="utf-8").splitlines())
    names = [line for line in lines if line and not line.startswith("#")]
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise SparseCircuitsError(
            f"held-out corpus files missing from the standard library at {root}: {missing}"
        )
    return [(root / name).read_text(encoding="utf-8", errors="replace") for name in names]


def rows_from_documents(
    documents: Iterable[list[int]], bos: int, ctx_len: int
) -> Int[Tensor, "rows ctx"]:
    """Join token documents with BOS between them; cut into [BOS, ctx_len - 1 tokens] rows."""
    parts: list[Tensor] = []
    for doc in documents:
        ids = torch.as_tensor(doc, dtype=torch.long).flatten()
        if ids.numel() and int(ids[0]) == bos:
            ids = ids[1:]
        if ids.numel():
            parts += [torch.tensor([bos]), ids] if parts else [ids]
    stream = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    body = ctx_len - 1
    n_rows = stream.numel() // body
    rows = stream[: n_rows * body].view(n_rows, body)
    return torch.cat([torch.full((n_rows, 1), bos, dtype=torch.long), rows], dim=1)


def _read_token_file(path: Path) -> Tensor:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        if len(tensors) != 1 and "tokens" not in tensors:
            raise SparseCircuitsError(
                f"token file {str(path)!r} holds {sorted(tensors)}; expected one tensor or 'tokens'"
            )
        return tensors.get("tokens", next(iter(tensors.values())))
    if path.suffix == ".npy":
        import numpy as np

        return torch.from_numpy(np.load(path).astype("int64"))
    return torch.as_tensor(torch.load(path, weights_only=True))


def _text_documents(path: Path) -> list[str]:
    """The texts of a text file or folder, checked as every text input is (binary refused)."""
    from replacement.validation import check_text_source

    files = check_text_source(path, "atlas corpus", SparseCircuitsError)
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


def corpus_rows(
    model: Any, source: Any = None, ctx_len: int = 128, max_tokens: int | None = None
) -> tuple[Int[Tensor, "rows ctx"], str]:
    """Rows of `ctx_len` tokens (BOS first) from `source`, and a description of the source.

    Args:
        model: gives the tokenizer, its BOS token and `n_ctx`.
        source: None (the default model's held-out corpus), a token tensor ([rows, ctx]: used
            as is; 1-D: one stream), a token file (.safetensors, .pt, .npy), a text file or a
            folder of text files.
        ctx_len: row length, BOS included (at most the model's n_ctx).
        max_tokens: keep only the first rows holding at most this many tokens.
    """
    bos = model.tokenizer.bos_token_id
    if bos is None:
        bos = model.tokenizer.eos_token_id
    if bos is None:
        raise SparseCircuitsError("the tokenizer has neither a BOS nor an EOS token")
    ctx_len = min(int(ctx_len), int(model.cfg.n_ctx))
    if isinstance(source, Tensor):
        tokens, name = source, f"token tensor {tuple(source.shape)}"
    elif source is None:
        texts, name = heldout_texts(), "default model held-out corpus"
        tokens = None
    else:
        path = Path(source)
        if not path.exists():
            raise SparseCircuitsError(
                f"atlas corpus {str(path)!r} does not exist; expected a token file "
                f"({', '.join(TOKEN_SUFFIXES)}), a text file or a folder of text files"
            )
        name = str(path)
        if path.is_file() and path.suffix in TOKEN_SUFFIXES:
            tokens, texts = _read_token_file(path), None
        else:
            tokens, texts = None, _text_documents(path)
    if tokens is None:
        ids = model.tokenizer(texts, add_special_tokens=False)["input_ids"]
        rows = rows_from_documents(ids, int(bos), ctx_len)
    elif tokens.dim() == 2:
        rows = tokens.long()
    elif tokens.dim() == 1:
        rows = rows_from_documents([tokens.tolist()], int(bos), ctx_len)
    else:
        raise SparseCircuitsError(f"tokens should be 1-D or 2-D, got shape {tuple(tokens.shape)}")
    if max_tokens is not None:
        rows = rows[: max(1, int(max_tokens) // rows.shape[1])]
    if rows.shape[0] == 0:
        raise SparseCircuitsError(f"{name} gives no full row of {ctx_len} tokens")
    return rows, name
