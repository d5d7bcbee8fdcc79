"""Strongest virtual-weight partners without the full [F_l, F_l'] matrix.

The virtual weights between two dictionaries are W_dec T W_enc (`circuits.invariant.virtual_weights`).
With L = W_dec T precomputed ([F_from, d], the size of a decoder), the scores are computed block
by block -- `block_size` rows of L against `block_size` columns of W_enc -- and each block's
top-k by |value| is merged into a running top-k, so memory stays
O(F d + block_size^2 + block_size k) however many features there are (block_size: 4096 on the
CPU, 16384 on accelerators, by default). Within a block, each row's top-k is searched only in
the k column chunks of largest max |value| (exact; one min/max pass instead of a full top-k).

- `blocked_topk(left, right, k)`: per row of left @ right, the k entries of largest |value|.
- `top_partners(...)`: one feature's k strongest partners in every later ("down") or earlier
  ("up") dictionary.
- `topk_graph(...)`: every feature's k strongest downstream partners in every later
  dictionary, as COO edges (`TopKGraph`, `.pair(a, b)` gives one pair as a sparse tensor).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from circuits.invariant.virtual_weights import (
    NormSpec,
    SiteKey,
    dictionary_sites,
    path_operators,
    resolve_norm,
    resolve_site,
)
from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError


class TopPartners(NamedTuple):
    """The k strongest partners of one feature in one other dictionary, by |virtual weight|."""

    layer: int
    """Layer of the partners' dictionary."""
    hook: str
    """Out_hook of the partners' dictionary."""
    indices: Int[Tensor, " k"]
    """Partner feature indices, strongest first."""
    values: Float[Tensor, " k"]
    """Signed virtual weights."""


class TopKGraph(NamedTuple):
    """COO edges: each feature's top-k downstream partners in every later dictionary.

    Dictionaries are numbered as in the list given (`hooks[k]`, `layers[k]`).
    """

    src_dict: Int[Tensor, " edges"]
    """Dictionary of the upstream feature."""
    src_feature: Int[Tensor, " edges"]
    """Upstream feature index."""
    dst_dict: Int[Tensor, " edges"]
    """Dictionary of the downstream feature."""
    dst_feature: Int[Tensor, " edges"]
    """Downstream feature index."""
    weight: Float[Tensor, " edges"]
    """Signed virtual weight."""
    hooks: list[str]
    """Out_hook of each dictionary."""
    layers: list[int]
    """Layer of each dictionary."""
    n_features: list[int]
    """Number of features of each dictionary."""

    @property
    def src_layer(self) -> Int[Tensor, " edges"]:
        """Layer of each edge's upstream feature."""
        return torch.tensor(self.layers, dtype=torch.long)[self.src_dict]

    @property
    def dst_layer(self) -> Int[Tensor, " edges"]:
        """Layer of each edge's downstream feature."""
        return torch.tensor(self.layers, dtype=torch.long)[self.dst_dict]

    def _index(self, key: SiteKey) -> int:
        found = [
            k
            for k, (h, layer) in enumerate(zip(self.hooks, self.layers, strict=True))
            if (h == key if isinstance(key, str) else layer == key)
        ]
        if len(found) != 1:
            raise SparseCircuitsError(
                f"{key!r} names {len(found)} of the graph's dictionaries {self.hooks}; "
                "expected exactly one (name it by its hook)"
            )
        return found[0]

    def pair(self, layer_from: SiteKey, layer_to: SiteKey) -> Tensor:
        """The edges between two dictionaries (layer or hook) as a sparse COO [F_from, F_to]."""
        a, b = self._index(layer_from), self._index(layer_to)
        keep = (self.src_dict == a) & (self.dst_dict == b)
        idx = torch.stack([self.src_feature[keep], self.dst_feature[keep]])
        size = (self.n_features[a], self.n_features[b])
        return torch.sparse_coo_tensor(
            idx, self.weight[keep], size, check_invariants=True
        ).coalesce()


def _topk_abs_columns(block: Float[Tensor, "rows cols"], k: int) -> Tensor:
    """Column ids of each row's k entries of largest |value|, exact (up to ties).

    Wide blocks are first split into chunks of up to 128 columns: a top-k entry always lies in
    one of the k chunks of largest max |value| (at most k - 1 chunks can hold a larger
    maximum), so only those k chunks are searched -- one min/max pass over the block instead
    of a full top-k over every column.
    """
    n, c = block.shape
    chunk = min(128, c // (8 * k))
    if chunk < 16:  # narrow block: the plain top-k is as cheap
        return block.abs().topk(k, dim=1).indices
    full = c // chunk * chunk
    low, high = torch.aminmax(block[:, :full].reshape(n, full // chunk, chunk), dim=-1)
    chunks = torch.maximum(high, -low).topk(k, dim=1).indices  # [n, k]
    offsets = torch.arange(chunk, device=block.device)
    cols = (chunks.unsqueeze(-1) * chunk + offsets).reshape(n, k * chunk)
    if full < c:  # the ragged tail is always searched
        tail = torch.arange(full, c, device=block.device).expand(n, c - full)
        cols = torch.cat([cols, tail], dim=1)
    best = block.gather(1, cols).abs().topk(k, dim=1).indices
    return cols.gather(1, best)


def blocked_topk(
    left: Float[Tensor, "rows d"],
    right: Float[Tensor, "d cols"],
    k: int,
    block_size: int | None = None,
) -> tuple[Float[Tensor, "rows k"], Int[Tensor, "rows k"]]:
    """Per row of `left @ right`, the k entries of largest |value| (signed values, column ids).

    Never holds more than a [block_size, block_size] block of the product (plus the running
    [block_size, 2k] candidates). Default block size: 4096 on the CPU (64 MiB blocks),
    16384 on an accelerator (1 GiB blocks; fewer, larger kernels run about 2x faster there).
    """
    if block_size is None:
        block_size = 4096 if left.device.type == "cpu" else 16384
    if k < 1 or block_size < 1:
        raise SparseCircuitsError(f"k and block_size must be >= 1, got k={k}, {block_size=}")
    n_rows, n_cols = left.shape[0], right.shape[1]
    k = min(k, n_cols)
    out_v = left.new_empty(n_rows, k)
    out_i = torch.empty(n_rows, k, dtype=torch.long, device=left.device)
    for r0 in range(0, n_rows, block_size):
        rows = left[r0 : r0 + block_size]
        best_v = rows.new_empty(rows.shape[0], 0)
        best_i = torch.empty(rows.shape[0], 0, dtype=torch.long, device=left.device)
        for c0 in range(0, n_cols, block_size):
            block = rows @ right[:, c0 : c0 + block_size]
            idx = _topk_abs_columns(block, min(k, block.shape[1]))
            cand_v = torch.cat([best_v, block.gather(1, idx)], dim=1)
            cand_i = torch.cat([best_i, idx + c0], dim=1)
            keep = cand_v.abs().topk(min(k, cand_v.shape[1]), dim=1).indices
            best_v, best_i = cand_v.gather(1, keep), cand_i.gather(1, keep)
        out_v[r0 : r0 + block_size], out_i[r0 : r0 + block_size] = best_v, best_i
    return out_v, out_i


def top_partners(
    dictionaries: Sequence[Dictionary],
    model: Any,
    layer: SiteKey,
    feature: int,
    k: int,
    direction: str = "down",
    block_size: int | None = None,
    *,
    norm: NormSpec = "ignore",
    tokens: Int[Tensor, "batch pos"] | None = None,
    include_attention: bool = False,
    cut_at_saes: bool = False,
) -> dict[str, TopPartners]:
    """The k strongest partners of one feature in every later ("down") or earlier ("up")
    dictionary, keyed by that dictionary's out_hook.

    Strength is |virtual weight|; the weight matrix is never built, only [d] vectors and
    `block_size` slices of the other dictionary's encoder/decoder.
    """
    if direction not in ("down", "up"):
        raise SparseCircuitsError(f'direction must be "down" or "up", got {direction!r}')
    sites = dictionary_sites(dictionaries, model)
    me = resolve_site(sites, layer)
    if not 0 <= feature < me.dictionary.n_features:
        raise SparseCircuitsError(
            f"no feature {feature} in {me.name!r} ({me.dictionary.n_features} features)"
        )
    norm = resolve_norm(norm, model, tokens)
    if direction == "down":
        others = [s for s in sites if me.write_at < s.read_at]
    else:
        others = [s for s in sites if s.write_at < me.read_at]
    out = {}
    for other in sorted(others, key=lambda s: s.read_at):
        up, down = (me, other) if direction == "down" else (other, me)
        op = path_operators(
            dictionaries,
            model,
            up.name,
            down.name,
            norm=norm,
            include_attention=include_attention,
            cut_at_saes=cut_at_saes,
            per_head=False,
        ).total
        with torch.no_grad():
            if direction == "down":
                dec = me.dictionary.W_dec.detach()
                vec = dec[feature : feature + 1] @ op.to(dec)  # [1, d]
                mat = other.dictionary.W_enc.detach().to(dec)  # [d, F_other]
            else:
                enc = me.dictionary.W_enc.detach()
                vec = (op.to(enc) @ enc[:, feature]).unsqueeze(0)  # [1, d]
                mat = other.dictionary.W_dec.detach().to(enc).T  # [d, F_other]
            values, indices = blocked_topk(vec, mat, k, block_size)
        out[other.name] = TopPartners(other.layer, other.name, indices[0], values[0])
    return out


def topk_graph(
    dictionaries: Sequence[Dictionary],
    model: Any,
    k: int,
    block_size: int | None = None,
    *,
    norm: NormSpec = "ignore",
    tokens: Int[Tensor, "batch pos"] | None = None,
    include_attention: bool = False,
    cut_at_saes: bool = False,
    verbose: bool = True,
) -> TopKGraph:
    """Every feature's k strongest downstream partners in every later dictionary (COO edges).

    Memory: [F, d] for W_dec T plus one [block_size, block_size] block and a
    [block_size, 2k] running top-k -- never [F_l, F_l']. Exact zeros (pairs cut by an SAE)
    are dropped.
    """
    sites = dictionary_sites(dictionaries, model)
    norm = resolve_norm(norm, model, tokens)
    pairs = [(a, b) for a in sites for b in sites if a.write_at < b.read_at]
    parts: list[tuple[Tensor, ...]] = []
    for a, b in tqdm(pairs, desc="dictionary pairs", disable=not verbose, leave=False):
        op = path_operators(
            dictionaries,
            model,
            a.name,
            b.name,
            norm=norm,
            include_attention=include_attention,
            cut_at_saes=cut_at_saes,
            per_head=False,
        ).total
        dec = a.dictionary.W_dec.detach()
        with torch.no_grad():
            left = dec @ op.to(dec)
            values, indices = blocked_topk(left, b.dictionary.W_enc.detach().to(dec), k, block_size)
        n, kk = indices.shape
        values, indices = values.reshape(-1).cpu(), indices.reshape(-1).cpu()
        nonzero = values != 0
        src = torch.arange(n).repeat_interleave(kk)[nonzero]
        count = len(src)
        parts.append(
            (
                torch.full((count,), a.index, dtype=torch.long),
                src,
                torch.full((count,), b.index, dtype=torch.long),
                indices[nonzero],
                values[nonzero],
            )
        )
    meta = (
        [s.name for s in sites],
        [s.layer for s in sites],
        [s.dictionary.n_features for s in sites],
    )
    if not parts:
        empty = torch.empty(0, dtype=torch.long)
        return TopKGraph(empty, empty, empty, empty, torch.empty(0), *meta)
    cols = [torch.cat(c) for c in zip(*parts, strict=True)]
    return TopKGraph(*cols, *meta)
