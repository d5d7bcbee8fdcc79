"""Tokenized corpora kept on disk, keyed by the tokenizer and the content of the source.

Tokenizing the default corpus (9M tokens) takes a minute or more on a CPU; every run on the
same source with the same tokenizer and chunking reads the rows back in well under a second.
The key hashes the tokenizer's full definition, the source's text, ctx_len and the split, so
any change to one of them makes a new entry. The folder is `$SPARSE_CIRCUITS_CACHE/tokens`
(default `~/.cache/sparse-circuits/tokens`); entries are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from replacement.atomic import atomic_path

FORMAT_VERSION = 1


def cache_root() -> Path:
    """`$SPARSE_CIRCUITS_CACHE`, or `~/.cache/sparse-circuits`."""
    env = os.environ.get("SPARSE_CIRCUITS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sparse-circuits"


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of the tokenizer's full definition (vocabulary, merges, normaliser, specials)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = (
        backend.to_str()
        if backend is not None
        else json.dumps(sorted(tokenizer.get_vocab().items()))
    )
    specials = json.dumps(sorted(str(t) for t in (tokenizer.all_special_tokens or [])))
    return hashlib.sha256((text + specials).encode()).hexdigest()


def texts_hash(texts: Iterable[str]) -> str:
    """sha256 over the texts in order (each length-prefixed, so boundaries count)."""
    digest = hashlib.sha256()
    for text in texts:
        raw = text.encode("utf-8", errors="replace")
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.hexdigest()


def cached_rows(
    key: dict[str, Any], build: Callable[[], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """The tensors stored under `key`, built by `build()` and stored on a miss.

    An unreadable entry is rebuilt; a cache folder that cannot be written is skipped.
    """
    digest = hashlib.sha256(
        json.dumps({**key, "format": FORMAT_VERSION}, sort_keys=True).encode()
    ).hexdigest()
    path = cache_root() / "tokens" / f"{digest[:32]}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # a truncated or foreign file: rebuild it
            pass
    tensors = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(tensors, tmp)
    except OSError:
        pass
    return tensors
