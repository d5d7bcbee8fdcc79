"""Prepare the default model's token data: tokenizer files plus train and held-out streams.

Preparation runs where the corpus lives (the interpreter whose stdlib is the text); the
arrays it writes can then travel to another machine for training.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from jaxtyping import Int64, UInt16

from training.default_model.corpus import collect_corpus
from training.default_model.tokenizer import (
    EOT_ID,
    encode_documents,
    save_tokenizer,
    to_stream,
    train_tokenizer,
)

SEQ_LEN = 256
"""Tokens per sequence, BOS included (the model's ``n_positions``)."""
TRAIN_TOKENS_FILE = "train_tokens.npy"
HELDOUT_TOKENS_FILE = "heldout_tokens.npy"
DATA_META_FILE = "data_meta.json"


@dataclass
class HeldoutFile:
    """One held-out file's place in the held-out stream."""

    path: str
    """Path relative to the stdlib folder."""
    sha256: str
    """Digest of its text, to tell whether another interpreter's copy is the same file."""
    n_tokens: int
    """Tokens in its stream segment (its tokens plus the closing ``EOT``)."""


@dataclass
class DataMeta:
    """What the token data was made from; saved as ``data_meta.json``."""

    python_version: str
    """Version of the interpreter whose stdlib is the corpus."""
    stdlib_dir: str
    """Folder the corpus was read from."""
    vocab_size: int
    """Tokenizer vocabulary size."""
    n_train_documents: int
    """Training documents (files plus help topics)."""
    n_train_tokens: int
    """Length of the training stream."""
    n_heldout_tokens: int
    """Length of the held-out stream."""
    heldout_files: list[HeldoutFile]
    """The held-out files in stream order."""

    @classmethod
    def from_json(cls, data: dict) -> DataMeta:
        """Inverse of ``dataclasses.asdict``."""
        files = [HeldoutFile(**f) for f in data["heldout_files"]]
        return cls(**{**data, "heldout_files": files})


@dataclass
class PreparedData:
    """Token streams and their description."""

    train: UInt16[np.ndarray, " n_train"]
    """Training stream: documents each followed by ``EOT``."""
    heldout: UInt16[np.ndarray, " n_heldout"]
    """Held-out stream, same layout."""
    meta: DataMeta
    """Provenance."""

    def heldout_segments(self) -> list[UInt16[np.ndarray, " n"]]:
        """The held-out stream cut back into one segment per file."""
        bounds = np.cumsum([0] + [f.n_tokens for f in self.meta.heldout_files])
        return [self.heldout[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def prepare_data(
    data_dir: Path, tokenizer_dir: Path, vocab_size: int = 4096, verbose: bool = True
) -> PreparedData:
    """Collect the corpus, train the tokenizer, tokenize, and save everything.

    Args:
        data_dir: where the token arrays and ``data_meta.json`` go.
        tokenizer_dir: where the Hugging Face tokenizer files go (the model folder).
        vocab_size: BPE vocabulary size.
        verbose: print progress lines.
    """
    corpus = collect_corpus()
    if verbose:
        print(f"corpus: {len(corpus.train)} training documents, {len(corpus.heldout)} held out")
    tok = train_tokenizer([d.text for d in corpus.train], vocab_size=vocab_size)
    save_tokenizer(tok, tokenizer_dir, model_max_length=SEQ_LEN)
    train_ids = encode_documents(tok, corpus.train)
    heldout_ids = encode_documents(tok, corpus.heldout)
    train = to_stream(train_ids)
    heldout = to_stream(heldout_ids)
    files = [
        HeldoutFile(path=d.name, sha256=d.sha256, n_tokens=len(ids) + 1)
        for d, ids in zip(corpus.heldout, heldout_ids, strict=True)
    ]
    meta = DataMeta(
        python_version=platform.python_version(),
        stdlib_dir=str(corpus.stdlib_dir),
        vocab_size=tok.get_vocab_size(),
        n_train_documents=len(corpus.train),
        n_train_tokens=int(train.size),
        n_heldout_tokens=int(heldout.size),
        heldout_files=files,
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    np.save(data_dir / TRAIN_TOKENS_FILE, train)
    np.save(data_dir / HELDOUT_TOKENS_FILE, heldout)
    (data_dir / DATA_META_FILE).write_text(json.dumps(asdict(meta), indent=2) + "\n")
    if verbose:
        print(f"tokens: {train.size:,} train, {heldout.size:,} held out ({sys.version.split()[0]})")
    return PreparedData(train=train, heldout=heldout, meta=meta)


def load_prepared(data_dir: Path) -> PreparedData:
    """Load what ``prepare_data`` saved.

    Raises:
        FileNotFoundError: a file of the prepared data is missing.
    """
    for name in (TRAIN_TOKENS_FILE, HELDOUT_TOKENS_FILE, DATA_META_FILE):
        if not (data_dir / name).is_file():
            raise FileNotFoundError(f"prepared data incomplete: expected {data_dir / name}")
    meta = DataMeta.from_json(json.loads((data_dir / DATA_META_FILE).read_text()))
    return PreparedData(
        train=np.load(data_dir / TRAIN_TOKENS_FILE),
        heldout=np.load(data_dir / HELDOUT_TOKENS_FILE),
        meta=meta,
    )


def chunk_segment(
    segment: Sequence[int] | np.ndarray, seq_len: int = SEQ_LEN
) -> list[Int64[np.ndarray, " n"]]:
    """Cut a stream segment into sequences of at most ``seq_len`` tokens that begin with BOS.

    Each sequence is ``[BOS] + the next seq_len - 1 tokens``, as in training; the last one
    may be shorter. Every token of the segment is a prediction target exactly once.
    """
    seg = np.asarray(segment, dtype=np.int64)
    step = seq_len - 1
    return [
        np.concatenate([np.array([EOT_ID], dtype=np.int64), seg[i : i + step]])
        for i in range(0, seg.size, step)
    ]
