"""Token data for dictionary training: any text source -> BOS-first rows of ctx_len tokens.

Documents are tokenized without special tokens and joined into one stream with BOS between
them; the stream is cut into rows of ctx_len - 1 tokens, each prefixed by BOS. The split into
training and validation rows is deterministic (a fixed-seed permutation, or the default
corpus's held-out files), and which rows make up the batch of a step is a pure function of
(seed, step), so a resumed run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from replacement.errors import SparseCircuitsError
from replacement.validation import check_text_source
from training.token_cache import cached_rows, texts_hash, tokenizer_hash

# Fixed seed of the validation split: the split must not move when the training seed does.
_SPLIT_SEED = 1234


class DataError(SparseCircuitsError):
    """Training data that cannot be read or is too small."""


@dataclass
class TokenData:
    """Training and validation rows, each starting with BOS."""

    train: Int[Tensor, "rows ctx"]
    """Training rows [n_rows, ctx_len]."""
    val: Int[Tensor, "rows ctx"]
    """Validation rows [n_val, ctx_len] (never trained on)."""
    bos: int
    """The BOS token id (also the document separator)."""
    special_ids: list[int]
    """Token ids masked out of every loss (BOS and the tokenizer's other special tokens)."""


# ---- reading sources ----------------------------------------------------------------------------
def _is_hf_dataset(data: Any) -> bool:
    return hasattr(data, "column_names") and hasattr(data, "__iter__") and not isinstance(data, str)


def _read_files(path: Path) -> list[str]:
    if not path.exists():
        raise DataError(f"data path (--data) {str(path)!r} is neither a file nor a folder")
    # every file is checked for binary content first: decoded bytes would train silently
    files = check_text_source(path, "--data", DataError)
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


def iter_documents(data: Any) -> Iterator[str | list[int]]:
    """Documents of a source: each a string or a list of token ids.

    Accepts a file or folder path, a string iterable, a token tensor (1-D: one document;
    2-D: one document per row, a leading BOS is kept as is), lists of token ids, or a
    Hugging Face `datasets` object (its "input_ids" column if any, else "text").
    """
    if isinstance(data, (str, Path)):
        yield from _read_files(Path(data))
    elif isinstance(data, Tensor):
        if data.dim() == 1:
            yield data.tolist()
        elif data.dim() == 2:
            yield from data.tolist()
        else:
            raise DataError(f"token tensor should be 1-D or 2-D, got shape {tuple(data.shape)}")
    elif _is_hf_dataset(data):
        columns = list(data.column_names)
        column = "input_ids" if "input_ids" in columns else "text" if "text" in columns else None
        if column is None:
            raise DataError(f"dataset has columns {columns}; expected 'text' or 'input_ids'")
        for example in data:
            yield example[column]
    elif isinstance(data, Iterable):
        for item in data:
            if isinstance(item, str):
                yield item
            elif isinstance(item, Tensor):
                yield item.reshape(-1).tolist()
            else:
                yield list(item)
    else:
        raise DataError(f"cannot read training data of type {type(data).__name__}")


def tokenize_documents(
    model: Any, docs: Iterable[str | list[int]], batch: int = 256
) -> list[list[int]]:
    """Token ids of each document (no special tokens added)."""
    out: list[list[int]] = []
    texts: list[str] = []

    def flush() -> None:
        if texts:
            out.extend(model.tokenizer(texts, add_special_tokens=False)["input_ids"])
            texts.clear()

    for doc in docs:
        if isinstance(doc, str):
            texts.append(doc)
            if len(texts) >= batch:
                flush()
        else:
            flush()
            out.append([int(t) for t in doc])
    flush()
    return out


def chunk_documents(
    token_docs: Sequence[Sequence[int]], bos: int, ctx_len: int
) -> Int[Tensor, "rows ctx"]:
    """Join documents with BOS between them and cut into rows of [BOS, ctx_len - 1 tokens].

    A leading BOS of a document is dropped (it gets the separator instead, never two). The
    last partial row is dropped.
    """
    stream: list[int] = []
    for doc in token_docs:
        doc = list(doc[1:]) if len(doc) and int(doc[0]) == bos else list(doc)
        if not doc:
            continue
        if stream:
            stream.append(bos)
        stream.extend(int(t) for t in doc)
    width = ctx_len - 1
    n_rows = len(stream) // width
    if n_rows == 0:
        return torch.zeros(0, ctx_len, dtype=torch.long)
    body = torch.tensor(stream[: n_rows * width], dtype=torch.long).view(n_rows, width)
    return torch.cat([torch.full((n_rows, 1), bos, dtype=torch.long), body], dim=1)


def special_token_ids(model: Any) -> tuple[int, list[int]]:
    """(BOS id, all special ids) of the model's tokenizer."""
    tok = model.tokenizer
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if bos is None:
        raise DataError("the tokenizer has neither a BOS nor an EOS token to separate documents")
    specials = sorted({int(bos), *(int(i) for i in (tok.all_special_ids or []))})
    return int(bos), specials


def load_token_data(
    model: Any,
    data: Any = None,
    ctx_len: int = 128,
    val_fraction: float = 0.02,
    log: Callable[[str], None] | None = None,
) -> TokenData:
    """Tokenize and chunk a data source (None: the default model's stdlib corpus).

    The default corpus uses its held-out files as validation; other sources set aside a
    fixed-seed random `val_fraction` of rows (at least one). The default corpus and file or
    folder sources go through the token cache (`training.token_cache`): a second run with
    the same tokenizer, text and chunking reads its rows back instead of tokenizing.
    `log` receives one-line progress messages.
    """
    log = log or (lambda message: None)
    bos, specials = special_token_ids(model)
    if int(ctx_len) > int(model.cfg.n_ctx):
        raise DataError(
            f"ctx_len (--ctx-len) {ctx_len} exceeds the model's context of {model.cfg.n_ctx} tokens"
        )
    if data is None:
        from training.default_model.corpus import collect_corpus

        log("reading the default corpus (Python standard library)")
        corpus = collect_corpus()
        docs = {"train": [d.text for d in corpus.train], "val": [d.text for d in corpus.heldout]}
        key = {"source": texts_hash(docs["train"]) + texts_hash(docs["val"]), "split": "heldout"}

        def build() -> dict[str, Tensor]:
            log(f"tokenizing {len(docs['train']) + len(docs['val'])} documents (cached after)")
            return {
                part: chunk_documents(tokenize_documents(model, texts), bos, ctx_len)
                for part, texts in docs.items()
            }

    elif isinstance(data, (str, Path)):
        texts = _read_files(Path(data))
        key = {"source": texts_hash(texts), "split": [_SPLIT_SEED, float(val_fraction)]}

        def build() -> dict[str, Tensor]:
            log(f"tokenizing {len(texts)} documents of {str(data)!r} (cached after)")
            return _split(
                chunk_documents(tokenize_documents(model, texts), bos, ctx_len),
                ctx_len,
                val_fraction,
            )

    else:
        rows = chunk_documents(tokenize_documents(model, iter_documents(data)), bos, ctx_len)
        parts = _split(rows, ctx_len, val_fraction)
        return _checked(TokenData(parts["train"], parts["val"], bos, specials))
    key.update(tokenizer=tokenizer_hash(model.tokenizer), ctx_len=ctx_len, bos=bos)
    parts = cached_rows(key, build)
    log(f"token data: {parts['train'].shape[0]} training rows of {ctx_len} tokens")
    return _checked(TokenData(parts["train"], parts["val"], bos, specials))


def _split(rows: Int[Tensor, "rows ctx"], ctx_len: int, val_fraction: float) -> dict[str, Tensor]:
    """Fixed-seed random split of rows into training and validation."""
    if rows.shape[0] < 2:
        raise DataError(
            f"training data gives {rows.shape[0]} rows of {ctx_len} tokens; expected at least 2"
        )
    perm = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(_SPLIT_SEED))
    n_val = max(1, int(round(rows.shape[0] * val_fraction)))
    return {"train": rows[perm[n_val:]], "val": rows[perm[:n_val]]}


def _checked(data: TokenData) -> TokenData:
    if data.train.shape[0] == 0:
        raise DataError("training data is empty after chunking")
    return data


# ---- order and masks ----------------------------------------------------------------------------
def rows_per_step(batch_tokens: int, ctx_len: int) -> int:
    """Rows an e2e step reads: `batch_tokens` predicted tokens, ctx_len - 1 per BOS-first row."""
    return max(1, int(batch_tokens) // (int(ctx_len) - 1))


def sample_indices(n_items: int, start: int, count: int, seed: int) -> Int[Tensor, " count"]:
    """Items [start, start + count) of an endless stream of per-epoch permutations of n_items.

    Epoch e is `randperm(n_items)` seeded by (seed, e): a pure function, so any position of
    the stream can be recomputed without replaying the ones before it.
    """
    parts = []
    pos, left = int(start), int(count)
    while left > 0:
        epoch, offset = divmod(pos, n_items)
        take = min(left, n_items - offset)
        parts.append(_epoch_permutation(int(n_items), int(seed), epoch)[offset : offset + take])
        pos, left = pos + take, left - take
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


@functools.lru_cache(maxsize=16)
def _epoch_permutation(n_items: int, seed: int, epoch: int) -> Int[Tensor, " n_items"]:
    # kept: an activation cache's shard of 2M tokens took 50 ms per permutation, drawn again
    # for every batch (most of a cached run's step); read-only by every caller (sliced only)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_items, generator=gen)


def token_mask(
    tokens: Int[Tensor, "batch pos"], special_ids: Sequence[int]
) -> Bool[Tensor, "batch pos"]:
    """True at positions that count for training: not BOS, not any special token."""
    keep = torch.ones_like(tokens, dtype=torch.bool)
    keep[:, 0] = False
    for sid in special_ids:
        keep &= tokens != sid
    return keep
