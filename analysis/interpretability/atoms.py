"""Explanation atoms and their evaluation on tokens.

An explanation is a disjunction of at most K atoms; each atom is (type, a, b):

    TOKEN        the token is a                         'return'
    PREV         the previous token is a                after '('
    BIGRAM       previous token a, token b              '(' 'self'
    CONCEPT      the token has concept a                [string]
    CONCEPT_TOK  concept a and token b                  'x' in [string]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Int

NONE, TOKEN, PREV, BIGRAM, CONCEPT, CONCEPT_TOK = -1, 0, 1, 2, 3, 4
ATOM_TYPES = {
    TOKEN: "token",
    PREV: "previous token",
    BIGRAM: "bigram",
    CONCEPT: "concept",
    CONCEPT_TOK: "concept x token",
}


@dataclass
class TokenTable:
    """What atoms read about every token of a split."""

    tok: Int[np.ndarray, " tokens"]
    prev: Int[np.ndarray, " tokens"]
    """Previous token id (-1 at a row's start)."""
    labels: Bool[np.ndarray, "tokens concepts"]
    concepts: tuple[str, ...]

    @property
    def bits(self) -> Int[np.ndarray, " tokens"]:
        """The labels packed as one int64 bit mask per token (bit c: concept c)."""
        if not hasattr(self, "_bits"):
            if self.labels.shape[1] > 62:
                raise ValueError(f"at most 62 concepts are supported; got {self.labels.shape[1]}")
            weights = 1 << np.arange(self.labels.shape[1], dtype=np.int64)
            self._bits = (self.labels.astype(np.int64) * weights).sum(1)
        return self._bits


def token_table(tokens: torch.Tensor, labels: np.ndarray, concepts: Sequence[str]) -> TokenTable:
    """The table of a split's rows ([rows, ctx] tokens, [rows, ctx, concepts] labels)."""
    rows = tokens.numpy().astype(np.int64)
    prev = np.concatenate([np.full((rows.shape[0], 1), -1), rows[:, :-1]], axis=1)
    return TokenTable(
        rows.reshape(-1), prev.reshape(-1), labels.reshape(-1, labels.shape[-1]), tuple(concepts)
    )


def match_atoms(
    atoms: Int[torch.Tensor, "units atoms 3"],
    table: TokenTable,
    token_index: Int[np.ndarray, "units positions"],
) -> Bool[torch.Tensor, "units atoms positions"]:
    """Whether each unit's atoms hold at each of its positions."""
    idx = torch.from_numpy(token_index)
    tok = torch.from_numpy(table.tok)[idx].unsqueeze(1)  # [U, 1, T]
    prev = torch.from_numpy(table.prev)[idx].unsqueeze(1)
    bits = torch.from_numpy(table.bits)[idx].unsqueeze(1)
    kind, a, b = (atoms[..., i].unsqueeze(-1) for i in range(3))  # [U, M, 1]
    is_concept = (kind == CONCEPT) | (kind == CONCEPT_TOK)
    mask = torch.where(is_concept, torch.ones_like(a) << a.clamp(0, 62), torch.zeros_like(a))
    has = (bits & mask) != 0
    return (
        ((kind == TOKEN) & (tok == a))
        | ((kind == PREV) & (prev == a))
        | ((kind == BIGRAM) & (prev == a) & (tok == b))
        | ((kind == CONCEPT) & has)
        | ((kind == CONCEPT_TOK) & has & (tok == b))
    )


def render(atoms: Sequence[Sequence[int]], vocab: Sequence[str], concepts: Sequence[str]) -> str:
    """An explanation as text: atoms joined by ' | '."""
    from replacement.atlas.labels import token_text

    parts = []
    for kind, a, b in atoms:
        if kind == TOKEN:
            parts.append(f"'{token_text(vocab[a])}'")
        elif kind == PREV:
            parts.append(f"after '{token_text(vocab[a])}'")
        elif kind == BIGRAM:
            parts.append(f"'{token_text(vocab[a])}' '{token_text(vocab[b])}'")
        elif kind == CONCEPT:
            parts.append(f"[{concepts[a]}]")
        elif kind == CONCEPT_TOK:
            parts.append(f"'{token_text(vocab[b])}' in [{concepts[a]}]")
    return " | ".join(parts) if parts else "(none)"
