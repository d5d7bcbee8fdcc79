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
DEFAULT_CTX_LEN = 128
"""Row length of text corpora when none is given (the zoo's training context)."""


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


def with_bos(rows: Int[Tensor, "rows ctx"], bos: int, name: str) -> Int[Tensor, "rows ctx"]:
    """`rows` with BOS at position 0, as the model's tokenizer makes them: a BOS column is
    added (saying so in one line) when no row starts with it; some rows with and some without
    is refused (a file of mixed layouts)."""
    if rows.numel() == 0:
        return rows
    starts = rows[:, 0] == bos
    if bool(starts.all()):
        return rows
    if bool(starts.any()):
        raise SparseCircuitsError(
            f"{name}: {int((~starts).sum())} of {rows.shape[0]} rows do not start with BOS "
            f"(id {bos}); expected every row to start with it, or none"
        )
    import sys

    print(
        f"{name}: no row starts with BOS (id {bos}); added it at position 0 of every row, as "
        "the model's tokenizer does",
        file=sys.stderr,
    )
    return torch.cat([torch.full((rows.shape[0], 1), bos, dtype=rows.dtype), rows], dim=1)


def check_corpus(path: str | Path, option: str) -> Path:
    """`path` as a corpus source: an existing token file or a text file or folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SparseCircuitsError(
            f"{option} {str(path)!r} does not exist; expected a token file "
            f"({', '.join(TOKEN_SUFFIXES)}), a text file or a folder of text files"
        )
    if not (path.is_file() and path.suffix in TOKEN_SUFFIXES):
        from replacement.validation import check_text_source

        check_text_source(path, option, SparseCircuitsError)
    return path


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
    model: Any, source: Any = None, ctx_len: int | None = None, max_tokens: int | None = None
) -> tuple[Int[Tensor, "rows ctx"], str]:
    """Rows of `ctx_len` tokens (BOS first) from `source`, and a description of the source.

    Args:
        model: gives the tokenizer, its BOS token and `n_ctx`.
        source: None (the default model's held-out corpus), a token tensor ([rows, ctx]: used
            as is; 1-D: one stream), a token file (.safetensors, .pt, .npy), a text file or a
            folder of text files.
        ctx_len: row length, BOS included (at most the model's n_ctx; default 128 or n_ctx
            if shorter).
        max_tokens: keep only the first rows holding at most this many tokens.
    """
    bos = model.tokenizer.bos_token_id
    if bos is None:
        bos = model.tokenizer.eos_token_id
    if bos is None:
        raise SparseCircuitsError("the tokenizer has neither a BOS nor an EOS token")
    if ctx_len is None:
        ctx_len = min(DEFAULT_CTX_LEN, int(model.cfg.n_ctx))
    if not 3 <= int(ctx_len) <= int(model.cfg.n_ctx):  # never clamp: the user asked for it
        raise SparseCircuitsError(
            f"ctx_len (--ctx-len) {ctx_len} should be in 3..{model.cfg.n_ctx} (BOS and two "
            "tokens, at most the model's context)"
        )
    if max_tokens is not None and int(max_tokens) < 1:
        raise SparseCircuitsError(f"max_tokens (--max-tokens) must be at least 1, got {max_tokens}")
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
            try:
                tokens, texts = _read_token_file(path), None
            except SparseCircuitsError:
                raise
            except Exception as exc:  # each format raises its own types on corrupt files
                raise SparseCircuitsError(f"token file {name!r} cannot be read: {exc}") from exc
            if tokens.is_floating_point() or tokens.is_complex():
                raise SparseCircuitsError(
                    f"token file {name!r} holds {tokens.dtype} values; expected integer token ids"
                )
        else:
            tokens, texts = None, _text_documents(path)
    if tokens is None:
        ids = model.tokenizer(texts, add_special_tokens=False)["input_ids"]
        rows = rows_from_documents(ids, int(bos), ctx_len)
    elif tokens.dim() == 2:
        rows = with_bos(tokens.long(), int(bos), name)
    elif tokens.dim() == 1:
        rows = rows_from_documents([tokens.tolist()], int(bos), ctx_len)
    else:
        raise SparseCircuitsError(f"tokens should be 1-D or 2-D, got shape {tuple(tokens.shape)}")
    if rows.shape[1] > int(model.cfg.n_ctx):
        raise SparseCircuitsError(
            f"{name} has rows of {rows.shape[1]} tokens (BOS included); the model's context "
            f"is {model.cfg.n_ctx}"
        )
    if max_tokens is not None:
        rows = rows[: max(1, int(max_tokens) // rows.shape[1])]
    if rows.shape[0] == 0:
        raise SparseCircuitsError(f"{name} gives no full row of {ctx_len} tokens")
    return rows, name
