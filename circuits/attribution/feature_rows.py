"""Which features' adjacency rows a prompt attribution graph computes, and in what order.

Every active feature's row (`all_feature_rows`), or, under a budget, the features of largest
estimated influence on the logits given the rows computed so far, a batch at a time
(`budgeted_feature_rows`; `sparse_feature_rows` thresholds each batch of rows as it comes and
builds a sparse adjacency). The influence estimate follows paths through at most 64 feature
hops of the row-normalised absolute adjacency, rows not yet computed counting as zero.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuits.graph.sparse_rows import (
    RowSparsity,
    SparseRowStore,
    coo,
    sparse_adjacency,
    sparse_normalize_rows,
    sparse_vector_product,
)


def all_feature_rows(
    engine: Any, logit_rows: Tensor, n_feat: int, batch_size: int, bar: Any
) -> tuple[Int[Tensor, " n_feat"], Float[Tensor, "n n"]]:
    """Adjacency with the row of every active feature, written in place batch by batch."""
    n_logit, n_src = logit_rows.shape
    n_nodes = n_src + n_logit
    adjacency = torch.zeros(n_nodes, n_nodes)
    adjacency[n_src:, :n_src] = logit_rows.cpu()
    for start in range(0, n_feat, batch_size):
        chosen = torch.arange(start, min(start + batch_size, n_feat))
        device = engine.sources.feat_dict.device
        adjacency[start : start + len(chosen), :n_src] = engine.rows_for_features(
            chosen.to(device)
        ).cpu()
        bar.update(len(chosen))
    return torch.arange(n_feat), adjacency


def budgeted_feature_rows(
    engine: Any,
    logit_rows: Tensor,
    logit_weights: Tensor,
    n_feat: int,
    budget: int,
    batch_size: int,
    row_device: torch.device,
    bar: Any,
) -> tuple[Int[Tensor, " budget"], Float[Tensor, "n n"]]:
    """Rows of the `budget` features of largest estimated influence, and the adjacency over
    the features kept (assembled a block of rows at a time, never a second full copy)."""
    n_logit, n_src = logit_rows.shape
    logit_weights_dev = logit_weights.to(row_device)
    # only the rows of visited features are stored: [budget, n_src], never [n_feat, n_src]
    feature_rows = torch.zeros(budget, n_src, device=row_device)
    order = torch.empty(0, dtype=torch.long, device=row_device)  # feature of each row

    def influence(order: Tensor) -> Tensor:
        rows = feature_rows[: len(order)]
        return _estimated_influence(logit_rows, rows, order, logit_weights_dev, n_feat)

    for chosen in _greedy_batches(influence, budget, batch_size, row_device):
        rows = engine.rows_for_features(chosen.to(engine.sources.feat_dict.device))
        feature_rows[len(order) : len(order) + len(chosen)] = rows.to(row_device)
        order = torch.cat([order, chosen])
        bar.update(len(chosen))
    keep, perm = order.cpu().sort()  # feature nodes kept, in source order
    src_keep = torch.cat([keep, torch.arange(n_feat, n_src)])
    n_keep = len(keep)
    n_nodes = n_keep + (n_src - n_feat) + n_logit
    adjacency = torch.zeros(n_nodes, n_nodes)
    n_cols = n_keep + n_src - n_feat
    for start in range(0, n_keep, 1024):
        block = perm[start : start + 1024].to(feature_rows.device)
        rows = feature_rows[block][:, src_keep.to(feature_rows.device)]
        adjacency[start : start + len(block), :n_cols] = rows.cpu()
    adjacency[n_nodes - n_logit :, :n_cols] = logit_rows.cpu()[:, src_keep]
    return keep, adjacency


def _greedy_batches(
    influence: Callable[[Tensor], Tensor] | None,
    budget: int,
    batch_size: int,
    device: torch.device,
) -> Iterator[Int[Tensor, " batch"]]:
    """Batches of features to compute rows for, `budget` in all: each time the unvisited
    features of largest estimated influence given the rows visited so far (`influence(order)`
    is called after the caller has stored the previous batch's rows); in index order when
    `influence` is None."""
    order = torch.empty(0, dtype=torch.long, device=device)
    while len(order) < budget:
        take = min(batch_size, budget - len(order))
        if influence is None:
            chosen = torch.arange(len(order), len(order) + take, device=device)
        else:
            infl = influence(order)
            infl[order] = -1.0
            chosen = infl.argsort(descending=True)[:take]
        yield chosen
        order = torch.cat([order, chosen])


def sparse_feature_rows(
    engine: Any,
    logit_rows: Tensor,
    logit_weights: Tensor,
    n_feat: int,
    budget: int,
    batch_size: int,
    rule: RowSparsity,
    bar: Any,
) -> tuple[Int[Tensor, " budget"], Tensor]:
    """`budgeted_feature_rows` (or every feature's row when budget == n_feat) with each batch
    of rows thresholded as it is computed: no dense row buffer and a sparse adjacency."""
    n_logit, n_src = logit_rows.shape
    logits = SparseRowStore(n_src, rule)
    logits.append(logit_rows)
    store = SparseRowStore(n_src, rule)
    order = torch.empty(0, dtype=torch.long)  # feature of each stored row

    def influence(order: Tensor) -> Tensor:
        return _sparse_estimated_influence(logits, store, order, logit_weights, n_feat)

    # every feature kept: no ordering needed
    estimate = None if budget == n_feat else influence
    for chosen in _greedy_batches(estimate, budget, batch_size, order.device):
        store.append(engine.rows_for_features(chosen.to(engine.sources.feat_dict.device)))
        order = torch.cat([order, chosen])
        bar.update(len(chosen))
    keep, perm = order.sort()  # feature nodes kept, in source order
    n_keep = len(keep)
    n_nodes = n_keep + (n_src - n_feat) + n_logit
    # sources -> node columns (features not kept have no node: -1), stored rows -> node rows
    column = torch.full((n_src,), -1, dtype=torch.long)
    column[keep] = torch.arange(n_keep)
    column[n_feat:] = torch.arange(n_keep, n_keep + n_src - n_feat)
    node_row = torch.empty(n_keep, dtype=torch.long)
    node_row[perm] = torch.arange(n_keep)
    row, col, value = store.entries()
    lrow, lcol, lvalue = logits.entries()
    row = torch.cat([node_row[row], lrow + n_nodes - n_logit])
    col = column[torch.cat([col, lcol])]
    value = torch.cat([value, lvalue])
    kept = col >= 0
    return keep, sparse_adjacency(row[kept], col[kept], value[kept], n_nodes)


def _sparse_estimated_influence(
    logits: SparseRowStore, store: SparseRowStore, order: Tensor, weights: Tensor, n_feat: int
) -> Float[Tensor, " n_feat"]:
    """`_estimated_influence` over thresholded rows (entries not stored count as zero)."""

    def normalised(rows: SparseRowStore) -> Tensor:
        r, c, v = rows.entries()
        a = sparse_normalize_rows(coo(torch.stack([r, c]), v, (rows.n_rows, rows.n_cols)))
        (r, c), v = a.indices(), a.values()
        is_feature = c < n_feat
        return coo(
            torch.stack([r[is_feature], c[is_feature]]), v[is_feature], (rows.n_rows, n_feat)
        )

    term = sparse_vector_product(weights.float(), normalised(logits))
    total = term.clone()
    if len(order) == 0:
        return total
    a_feat = normalised(store).coalesce()
    for _ in range(64):  # paths through at most 64 feature hops
        term = sparse_vector_product(term[order], a_feat)
        if not term.abs().max() > 1e-12:
            break
        total += term
    return total


def _estimated_influence(
    logit_rows: Tensor, feature_rows: Tensor, order: Tensor, weights: Tensor, n_feat: int
) -> Float[Tensor, " n_feat"]:
    """Influence of every feature on the logits through the rows computed so far.

    `feature_rows[i]` is the row of feature `order[i]`; rows not computed yet count as zero.
    """

    def normalise(rows: Tensor) -> Tensor:
        return rows[:, :n_feat].abs() / rows.abs().sum(1, keepdim=True).clamp_min(1e-30)

    a_logit, a_feat = normalise(logit_rows), normalise(feature_rows)
    term = weights.float() @ a_logit
    total = term.clone()
    for _ in range(64):  # paths through at most 64 feature hops
        if len(order) == 0:
            break
        term = term[order] @ a_feat
        if not term.abs().max() > 1e-12:
            break
        total += term
    return total
