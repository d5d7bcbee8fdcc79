"""Thresholded adjacency rows, stored sparse, for prompts whose dense adjacency does not fit.

A dense adjacency holds [n_nodes, n_nodes] floats although only feature and logit rows are
non-zero (error and token nodes are sources only), and n_nodes grows with the prompt
(n_layers + 1 nodes per position), so its size grows with the square of the prompt length.
`attribute(..., sparse=True)` instead streams each batch of rows through `sparsify_rows`
(keep the entries with |a| >= `min_abs`, and of those at most the `top_k` largest per row) and
keeps only what survives, as a coalesced COO tensor on the CPU. With the defaults (no top-k,
`min_abs` 0) every non-zero entry is kept and the graph equals the dense one.

`sparse_normalize_rows` and `sparse_vector_product` let `circuits.graph.prune` run its dense sums
over the stored entries: an entry that was not
stored counts as zero, exactly as a zero in the dense matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from replacement.errors import SparseCircuitsError


@dataclass(frozen=True)
class RowSparsity:
    """Which entries of a row are kept: |a| >= min_abs, then at most top_k per row."""

    top_k: int | None = None
    min_abs: float = 0.0

    def __post_init__(self) -> None:
        if self.top_k is not None and self.top_k < 1:
            raise SparseCircuitsError(f"row_top_k must be at least 1 (or None), got {self.top_k}")
        if not self.min_abs >= 0.0:
            raise SparseCircuitsError(f"row_min_abs must be >= 0, got {self.min_abs}")


def sparsify_rows(
    rows: Float[Tensor, "b n"], rule: RowSparsity
) -> tuple[Int[Tensor, " e"], Int[Tensor, " e"], Float[Tensor, " e"]]:
    """The kept entries of a batch of dense rows: (row in batch, column, value), row-major."""
    magnitude = rows.abs()
    if rule.top_k is not None and rule.top_k < rows.shape[1]:
        top = magnitude.topk(rule.top_k, dim=1, sorted=False).indices.sort(dim=1).values
        row = torch.arange(rows.shape[0], device=rows.device)[:, None].expand_as(top)
        row, col = row.reshape(-1), top.reshape(-1)
        value = rows[row, col]
        keep = (value != 0) & (value.abs() >= rule.min_abs)
        return row[keep], col[keep], value[keep]
    row, col = ((magnitude >= rule.min_abs) & (rows != 0)).nonzero(as_tuple=True)
    return row, col, rows[row, col]


class SparseRowStore:
    """Rows appended batch by batch, each kept as its thresholded entries (on the CPU)."""

    def __init__(self, n_cols: int, rule: RowSparsity):
        self.n_cols, self.rule, self.n_rows = n_cols, rule, 0
        self._rows: list[Tensor] = []
        self._cols: list[Tensor] = []
        self._values: list[Tensor] = []

    def append(self, rows: Float[Tensor, "b n"]) -> None:
        """Threshold a batch of dense rows (on any device) and keep what survives."""
        if rows.shape[1] != self.n_cols:
            raise SparseCircuitsError(
                f"rows have {rows.shape[1]} columns; this store holds {self.n_cols}"
            )
        row, col, value = sparsify_rows(rows, self.rule)
        self._rows.append((row + self.n_rows).cpu())
        self._cols.append(col.cpu())
        self._values.append(value.float().cpu())
        self.n_rows += rows.shape[0]

    def entries(self) -> tuple[Int[Tensor, " e"], Int[Tensor, " e"], Float[Tensor, " e"]]:
        """(row, column, value) of every stored entry, in the order appended."""
        if not self._rows:
            empty = torch.empty(0, dtype=torch.long)
            return empty, empty, torch.empty(0)
        self._rows = [torch.cat(self._rows)]
        self._cols = [torch.cat(self._cols)]
        self._values = [torch.cat(self._values)]
        return self._rows[0], self._cols[0], self._values[0]

    @property
    def nnz(self) -> int:
        """Number of stored entries."""
        return sum(len(v) for v in self._values)


def coo(
    index: Int[Tensor, "2 e"], value: Tensor, shape: tuple[int, int], coalesced: bool = False
) -> Tensor:
    """A COO tensor from indices this module built (in range by construction: not re-checked)."""
    return torch.sparse_coo_tensor(
        index, value, shape, is_coalesced=coalesced or None, check_invariants=False
    )


def sparse_normalize_rows(adjacency: Tensor) -> Tensor:
    """`circuits.graph.prune.normalize_rows` of a sparse COO adjacency (result coalesced, sparse)."""
    a = adjacency.coalesce()
    row, value = a.indices()[0], a.values().abs()
    sums = torch.zeros(a.shape[0], dtype=value.dtype).index_add_(0, row, value)
    return coo(a.indices(), value / sums[row].clamp_min(1e-30), a.shape, coalesced=True)


def sparse_vector_product(
    vector: Float[Tensor, " n"], matrix: Tensor, columns: int | None = None
) -> Float[Tensor, " m"]:
    """vector @ matrix for a sparse COO matrix (summed over its stored entries)."""
    m = matrix.coalesce()
    (row, col), value = m.indices(), m.values()
    out = torch.zeros(columns or m.shape[1], dtype=torch.promote_types(vector.dtype, value.dtype))
    return out.index_add_(0, col, vector[row].to(out.dtype) * value.to(out.dtype))


def sparse_adjacency(
    row: Int[Tensor, " e"], col: Int[Tensor, " e"], value: Float[Tensor, " e"], n: int
) -> Tensor:
    """A coalesced [n, n] COO adjacency from its entries."""
    return coo(torch.stack([row, col]), value, (n, n)).coalesce()
