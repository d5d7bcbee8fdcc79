"""Sparse feature activations as (token, feature, value) triples sorted by token."""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor


class SparseActs(NamedTuple):
    """Non-zero activations of `n_tokens` tokens over `n_features` features, sorted by token."""

    token_idx: Int[Tensor, " nnz"]
    """Row (token) of each non-zero, ascending."""
    feature_idx: Int[Tensor, " nnz"]
    """Feature of each non-zero."""
    values: Float[Tensor, " nnz"]
    """Activation of each non-zero."""
    n_tokens: int
    """Number of tokens (rows)."""
    n_features: int
    """Number of features (columns)."""

    def to_dense(self) -> Float[Tensor, "tokens features"]:
        """The dense [tokens, features] matrix (for tests and small inputs)."""
        out = self.values.new_zeros(self.n_tokens, self.n_features)
        out[self.token_idx, self.feature_idx] = self.values
        return out

    def offsets(self) -> Int[Tensor, " tokens"]:
        """Start of each token's run of non-zeros, the layout `embedding_bag` expects."""
        counts = torch.bincount(self.token_idx, minlength=self.n_tokens)
        return torch.cumsum(counts, 0) - counts

    def l0(self) -> Float[Tensor, " tokens"]:
        """Number of active features per token."""
        return torch.bincount(self.token_idx, minlength=self.n_tokens).to(self.values.dtype)

    @staticmethod
    def from_dense(acts: Float[Tensor, "tokens features"]) -> SparseActs:
        """Sparse triples of a dense activation matrix (row-major order is token-sorted)."""
        token_idx, feature_idx = acts.nonzero(as_tuple=True)
        return SparseActs(
            token_idx, feature_idx, acts[token_idx, feature_idx], acts.shape[0], acts.shape[1]
        )

    @staticmethod
    def concat(parts: list[SparseActs], n_features: int) -> SparseActs:
        """Stack chunks of consecutive tokens into one."""
        shift, tokens, feats, vals = 0, [], [], []
        for part in parts:
            tokens.append(part.token_idx + shift)
            feats.append(part.feature_idx)
            vals.append(part.values)
            shift += part.n_tokens
        return SparseActs(torch.cat(tokens), torch.cat(feats), torch.cat(vals), shift, n_features)
