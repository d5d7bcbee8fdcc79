"""Evaluate the default model: held-out loss, n-gram baselines and an induction test.

All losses are mean cross-entropy in nats per predicted token. The held-out targets are
the tokens of each held-out file's stream segment, cut into ``[BOS] + 255`` sequences as
in training; the baselines are scored on exactly the same (previous token, target) pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int, Int64
from torch import Tensor

from training.default_model.data import SEQ_LEN, chunk_segment
from training.default_model.tokenizer import EOT_ID

LogitsFn = Callable[[Int[Tensor, "batch pos"]], Float[Tensor, "batch pos vocab"]]
"""Maps token ids to logits; wraps a Hugging Face model or a TransformerLens bridge."""


def hf_logits_fn(model: torch.nn.Module) -> LogitsFn:
    """A ``LogitsFn`` for a Hugging Face causal LM."""

    def fn(tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos vocab"]:
        return model(input_ids=tokens).logits

    return fn


@dataclass
class LossSum:
    """Summed loss and target count, so losses of several segments can be pooled."""

    total: float
    """Sum of per-token losses (nats)."""
    n: int
    """Number of predicted tokens."""

    @property
    def mean(self) -> float:
        """Mean loss per token."""
        return self.total / max(1, self.n)


@torch.no_grad()
def sequence_losses(
    logits_fn: LogitsFn, seqs: Sequence[Int64[np.ndarray, " n"]], batch_size: int = 32
) -> LossSum:
    """Summed next-token loss over sequences (each one predicts tokens 1..n-1).

    Sequences of equal length are batched together; no padding is needed.
    """
    by_len: dict[int, list[np.ndarray]] = {}
    for s in seqs:
        if s.size >= 2:
            by_len.setdefault(int(s.size), []).append(s)
    total, n = 0.0, 0
    for length in sorted(by_len):
        group = by_len[length]
        for i in range(0, len(group), batch_size):
            tokens = torch.from_numpy(np.stack(group[i : i + batch_size]))
            logits = logits_fn(tokens).float()
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum"
            )
            total += float(loss)
            n += tokens[:, 1:].numel()
    return LossSum(total, n)


def segment_loss(logits_fn: LogitsFn, segment: np.ndarray, seq_len: int = SEQ_LEN) -> LossSum:
    """Loss on one held-out segment, chunked as in training."""
    return sequence_losses(logits_fn, chunk_segment(segment, seq_len))


def targets_with_context(
    segments: Sequence[np.ndarray], seq_len: int = SEQ_LEN
) -> tuple[Int64[np.ndarray, " n"], Int64[np.ndarray, " n"]]:
    """(previous token, target) for every target the model is scored on.

    Returns:
        ``prev`` and ``target`` arrays; ``prev`` is BOS at the start of each sequence.
    """
    prev, target = [], []
    for seg in segments:
        for seq in chunk_segment(seg, seq_len):
            prev.append(seq[:-1])
            target.append(seq[1:])
    return np.concatenate(prev), np.concatenate(target)


@dataclass
class NgramBaselines:
    """Losses of count-based models fit on the training tokens."""

    unigram: float
    """Add-one (Laplace) smoothed unigram, nats/token."""
    bigram: float
    """Witten-Bell interpolated bigram (backing off to the unigram), nats/token."""


def ngram_baselines(
    train_stream: np.ndarray,
    prev: Int64[np.ndarray, " n"],
    target: Int64[np.ndarray, " n"],
    vocab_size: int,
) -> NgramBaselines:
    """Unigram and bigram losses on the given (prev, target) pairs.

    The bigram is Witten-Bell interpolated: ``p(b|a) = (c(a,b) + T(a) p1(b)) / (c(a) + T(a))``
    with ``T(a)`` the number of distinct successors of ``a``; a strong, standard smoothing,
    so the model has to learn more than token-pair statistics to beat it.

    Args:
        train_stream: training tokens; a BOS is put in front so the first token has context.
        prev: previous token of each target.
        target: the targets.
        vocab_size: vocabulary size.
    """
    stream = np.concatenate([[EOT_ID], np.asarray(train_stream, dtype=np.int64)])
    uni_counts = np.bincount(stream[1:], minlength=vocab_size).astype(np.float64)
    p_uni = (uni_counts + 1.0) / (uni_counts.sum() + vocab_size)
    pair = np.bincount(stream[:-1] * vocab_size + stream[1:], minlength=vocab_size**2)
    pair = pair.reshape(vocab_size, vocab_size)
    c_a = pair.sum(axis=1).astype(np.float64)
    t_a = (pair > 0).sum(axis=1).astype(np.float64)
    c_ab = pair[prev, target].astype(np.float64)
    denom = c_a[prev] + t_a[prev]
    # a context never seen in training has c = T = 0: fall back to the unigram
    p_bi = np.where(
        denom > 0, (c_ab + t_a[prev] * p_uni[target]) / np.maximum(denom, 1), p_uni[target]
    )
    return NgramBaselines(
        unigram=float(-np.log(p_uni[target]).mean()), bigram=float(-np.log(p_bi).mean())
    )


@dataclass
class InductionResult:
    """Loss on repeated random-token sequences."""

    first_copy: float
    """Mean loss on the first copy (unpredictable: about log(vocab) or worse)."""
    second_copy: float
    """Mean loss on the second copy (low if the model copies from context)."""
    n_sequences: int
    length: int
    """Random tokens per copy."""
    seed: int
    pool_size: int
    """Number of distinct tokens the random ones were drawn from."""


def frequent_tokens(train_stream: np.ndarray, vocab_size: int, k: int = 512) -> list[int]:
    """The ``k`` most frequent non-special tokens of the training stream (ties by id)."""
    counts = np.bincount(np.asarray(train_stream, dtype=np.int64), minlength=vocab_size)
    counts[EOT_ID] = -1
    order = np.argsort(-counts, kind="stable")
    return [int(i) for i in order[:k]]


def repeated_tokens(
    vocab_size: int,
    n_sequences: int = 32,
    length: int = 64,
    seed: int = 0,
    pool: Sequence[int] | None = None,
) -> Int[Tensor, "n_sequences seq"]:
    """``[BOS] + r + r`` for random sequences ``r``.

    Tokens of ``r`` are drawn uniformly from ``pool``, or from the whole vocabulary except
    the special token when ``pool`` is ``None``.
    """
    gen = torch.Generator().manual_seed(seed)
    if pool is None:
        rand = torch.randint(1, vocab_size, (n_sequences, length), generator=gen)
    else:
        ids = torch.tensor(list(pool), dtype=torch.long)
        rand = ids[torch.randint(0, ids.numel(), (n_sequences, length), generator=gen)]
    bos = torch.full((n_sequences, 1), EOT_ID, dtype=torch.long)
    return torch.cat([bos, rand, rand], dim=1)


@torch.no_grad()
def induction_test(
    logits_fn: LogitsFn,
    vocab_size: int,
    n_sequences: int = 32,
    length: int = 64,
    seed: int = 0,
    pool: Sequence[int] | None = None,
) -> InductionResult:
    """Mean loss on the first vs second copy of repeated random sequences.

    ``pool`` restricts the random tokens (see ``repeated_tokens``); the default model's
    card uses its 512 most frequent training tokens, because this small model copies
    rarely seen tokens much less well.

    First-copy targets are positions 2..length (the first random token has no context
    beyond BOS and is left out), second-copy targets are all ``length`` repeated tokens.
    """
    tokens = repeated_tokens(vocab_size, n_sequences, length, seed, pool)
    logits = logits_fn(tokens).float()
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none"
    )  # [n, 2*length]; column j predicts token j+1
    first = losses[:, 1:length].mean()
    second = losses[:, length:].mean()
    pool_size = vocab_size - 1 if pool is None else len(set(pool))
    return InductionResult(float(first), float(second), n_sequences, length, seed, pool_size)
