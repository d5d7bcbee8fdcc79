"""Labelled token splits: rows of token ids with per-token concept labels.

Two disjoint splits are used: the explainer is fitted on `fit` and scored on `score`. By
default `score` is the default model's held-out corpus (standard-library files no model or
dictionary was trained on) and `fit` is a sample of the other standard-library files, so no
row of the scoring split can reach the explainer (`check_disjoint` refuses a run where one does).

Documents are labelled whole (tokenize needs whole files), then joined with BOS between them
and cut into [BOS, ctx_len - 1 tokens] rows, the layout of `replacement.atlas.corpus`.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from analysis.interpretability.concepts import Labeller, python_syntax
from replacement.errors import SparseCircuitsError


@dataclass
class LabelledSplit:
    """Token rows with concept labels."""

    name: str
    """"fit" or "score"."""
    tokens: Int[Tensor, "rows ctx"]
    labels: Bool[np.ndarray, "rows ctx concepts"]
    """Per-token labels; BOS tokens are labelled False everywhere."""
    concepts: tuple[str, ...]
    description: str
    """Where the text came from."""

    @property
    def n_tokens(self) -> int:
        """Tokens in the split, BOS included."""
        return int(self.tokens.numel())


def vocabulary(tokenizer: Any, n_vocab: int) -> list[str]:
    """Token id -> its string (each id decoded alone)."""
    n = max(int(n_vocab), len(tokenizer))
    return [tokenizer.decode([i]) for i in range(n)]


def labelled_split(
    name: str,
    texts: Sequence[str],
    tokenizer: Any,
    vocab: Sequence[str],
    bos: int,
    ctx_len: int = 128,
    labeller: Labeller = python_syntax,
    max_tokens: int | None = None,
    description: str = "",
) -> LabelledSplit:
    """Tokenise and label each text, join with BOS, cut into rows of `ctx_len` tokens."""
    ids_parts, label_parts, concepts = [], [], None
    total = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            continue
        out = labeller([vocab[i] for i in ids])
        if concepts is None:
            concepts = out.concepts
        elif out.concepts != concepts:
            raise SparseCircuitsError(
                f"the labeller returned concepts {out.concepts} for one document and {concepts} "
                "for another; it must return the same concepts for every document"
            )
        if ids_parts:
            ids_parts.append(np.array([bos]))
            label_parts.append(np.zeros((1, len(concepts)), dtype=bool))
        ids_parts.append(np.asarray(ids, dtype=np.int64))
        label_parts.append(out.labels)
        total += len(ids) + 1
        if max_tokens is not None and total >= max_tokens * (ctx_len / (ctx_len - 1)) + ctx_len:
            break
    if concepts is None:
        raise SparseCircuitsError(f"the {name} split has no text")
    stream, labels = np.concatenate(ids_parts), np.concatenate(label_parts)
    body = ctx_len - 1
    n_rows = len(stream) // body
    if max_tokens is not None:
        n_rows = min(n_rows, max(1, max_tokens // ctx_len))
    if n_rows == 0:
        raise SparseCircuitsError(f"the {name} split gives no full row of {ctx_len} tokens")
    rows = np.concatenate(
        [np.full((n_rows, 1), bos), stream[: n_rows * body].reshape(n_rows, body)], axis=1
    )
    row_labels = np.concatenate(
        [
            np.zeros((n_rows, 1, len(concepts)), dtype=bool),
            labels[: n_rows * body].reshape(n_rows, body, len(concepts)),
        ],
        axis=1,
    )
    return LabelledSplit(name, torch.from_numpy(rows), row_labels, tuple(concepts), description)


def fit_texts(heldout_names: Sequence[str], max_chars: int) -> list[str]:
    """Standard-library files other than the held-out ones (sorted; tests and data skipped),
    read until `max_chars` characters: text the explainer may be fitted on."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = set(heldout_names)
    texts, total = [], 0
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in skip or rel.startswith(("test", "idlelib", "lib2to3", "site-packages")):
            continue
        texts.append(path.read_text(encoding="utf-8", errors="replace"))
        total += len(texts[-1])
        if total >= max_chars:
            break
    return texts


def default_splits(
    model: Any,
    fit_tokens: int = 200_000,
    score_tokens: int | None = None,
    ctx_len: int = 128,
    labeller: Labeller = python_syntax,
) -> tuple[LabelledSplit, LabelledSplit]:
    """The default model's splits: `fit` from other stdlib files, `score` the held-out corpus."""
    from replacement.atlas.corpus import HELDOUT_LIST, heldout_texts

    tokenizer = model.tokenizer
    vocab = vocabulary(tokenizer, model.cfg.d_vocab)
    bos = _bos(tokenizer)
    names = [
        line.strip()
        for line in HELDOUT_LIST.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    score = labelled_split(
        "score",
        heldout_texts(),
        tokenizer,
        vocab,
        bos,
        ctx_len,
        labeller,
        score_tokens,
        "the default model's held-out standard-library files",
    )
    fit = labelled_split(
        "fit",
        fit_texts(names, fit_tokens * 6),
        tokenizer,
        vocab,
        bos,
        ctx_len,
        labeller,
        fit_tokens,
        "standard-library files outside the held-out list",
    )
    check_disjoint(fit, score)
    return fit, score


def text_split(
    name: str,
    source: str | Path,
    model: Any,
    ctx_len: int = 128,
    labeller: Labeller = python_syntax,
    max_tokens: int | None = None,
) -> LabelledSplit:
    """A split from a text file or a folder of text files."""
    from replacement.validation import check_text_source

    files = check_text_source(Path(source), f"{name} corpus", SparseCircuitsError)
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    vocab = vocabulary(model.tokenizer, model.cfg.d_vocab)
    return labelled_split(
        name,
        texts,
        model.tokenizer,
        vocab,
        _bos(model.tokenizer),
        ctx_len,
        labeller,
        max_tokens,
        str(source),
    )


def labels_from_file(path: str | Path, split: LabelledSplit) -> LabelledSplit:
    """Replace a split's labels by per-token labels from a `.npz` file of arrays named by
    concept, each shaped like the split's token rows ([rows, ctx]) or flat ([rows * ctx])."""
    path = Path(path)
    if not path.is_file() or path.suffix != ".npz":
        raise SparseCircuitsError(
            f"concept label file {str(path)!r} must be an existing .npz file of arrays named by "
            f"concept, each of shape {tuple(split.tokens.shape)} (the {split.name} split's rows)"
        )
    data = np.load(path)
    names = tuple(sorted(data.files))
    if not names:
        raise SparseCircuitsError(f"concept label file {str(path)!r} holds no arrays")
    cols = []
    for concept in names:
        arr = np.asarray(data[concept]).astype(bool)
        if arr.size != split.n_tokens:
            raise SparseCircuitsError(
                f"concept {concept!r} in {str(path)!r} has {arr.size} labels; the {split.name} "
                f"split has {split.n_tokens} tokens (shape {tuple(split.tokens.shape)})"
            )
        cols.append(arr.reshape(split.tokens.shape))
    labels = np.stack(cols, axis=-1)
    labels[:, 0] = False
    return LabelledSplit(split.name, split.tokens, labels, names, split.description)


def check_disjoint(fit: LabelledSplit, score: LabelledSplit) -> None:
    """Refuse splits that share a row: the explainer must never see a scoring context."""
    seen = {bytes(row.numpy().astype(np.int32).tobytes()) for row in fit.tokens}
    shared = sum(bytes(row.numpy().astype(np.int32).tobytes()) in seen for row in score.tokens)
    if shared:
        raise SparseCircuitsError(
            f"the fit and score splits share {shared} token rows; the explainer must be fitted "
            "on text disjoint from the scoring text"
        )


def _bos(tokenizer: Any) -> int:
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise SparseCircuitsError("the tokenizer has neither a BOS nor an EOS token")
    return int(bos)
