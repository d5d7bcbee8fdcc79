"""Global (prompt-independent) feature graphs between two dictionaries (e.g. transcoder layers).

Two edge weights, both per pair (i upstream in layer l, j downstream in layer l'):

- virtual: v_ij = d_i T e_j, the input-invariant weight of `circuits.invariant.virtual_weights`;
- data-weighted (expected attribution, TWERA-style), over a token set of T positions:

      w_ij = (1/T) sum_t a_i(t) * v_ij * 1[a_j(t) > 0]  =  v_ij * (1/T) sum_t a_i(t) 1[a_j(t) > 0]

  the prompt-level same-position edge a_i v_ij, counted only where the target is active (as a
  prompt attribution graph has rows only for active features), averaged over every position.
  Activations are the dictionaries' own sparse encodings of the clean model's activations at
  their in_hooks (v_ij carries the norm treatment, "mean" by default); BOS
  positions are left out (they hold no feature nodes in prompt graphs). The co-activation sum
  is a sparse [F_l, F_l'] product of the two sparse activation matrices, and v_ij is computed
  only for the pairs that co-occur, so memory follows the number of co-active pairs.

`global_graph` turns either weight into an `AttributionGraph` (features as nodes at position
0, labels "L{l} F{f}", kind "feature", adjacency rows = targets, columns = sources), so its
JSON / networkx / GraphML / drawing exports work unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from circuits.attribution.crosslayer_slices import expand_crosslayer
from circuits.graph.attribution_graph import AttributionGraph
from circuits.invariant.topk_graph import blocked_topk
from circuits.invariant.virtual_weights import (
    NormSpec,
    SiteKey,
    decoder_paths,
    dictionary_sites,
    resolve_norm,
    resolve_site,
)
from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError
from replacement.sparse import SparseActs


class DataWeighted(NamedTuple):
    """Data-weighted connections between the co-active pairs of two dictionaries (COO)."""

    hook_from: str
    """Out_hook of the upstream dictionary."""
    hook_to: str
    """Out_hook of the downstream dictionary."""
    src: Int[Tensor, " pairs"]
    """Upstream feature of each co-active pair."""
    dst: Int[Tensor, " pairs"]
    """Downstream feature of each pair."""
    weight: Float[Tensor, " pairs"]
    """E_t[a_i(t) v_ij 1[a_j(t) > 0]]."""
    virtual: Float[Tensor, " pairs"]
    """v_ij."""
    coactivation: Float[Tensor, " pairs"]
    """E_t[a_i(t) 1[a_j(t) > 0]]."""
    mean_from: Float[Tensor, " F_from"]
    """Mean activation of every upstream feature over the tokens."""
    mean_to: Float[Tensor, " F_to"]
    """Mean activation of every downstream feature over the tokens."""
    n_tokens: int
    """Number of positions averaged over."""

    def to_dense(self) -> Float[Tensor, "F_from F_to"]:
        """The weights as a dense matrix (small dictionaries only)."""
        out = torch.zeros(len(self.mean_from), len(self.mean_to))
        out[self.src, self.dst] = self.weight
        return out


@torch.no_grad()
def sparse_activations(
    model: Any,
    dictionaries: Sequence[Dictionary],
    tokens: Int[Tensor, "batch pos"],
    keys: Sequence[SiteKey],
    *,
    batch_size: int = 8,
    skip_bos: bool = True,
    verbose: bool = False,
) -> list[SparseActs]:
    """Sparse activations of the dictionaries named by `keys` (layer or hook) on every
    (non-BOS) position of the clean model, one `SparseActs` per key."""
    sites = dictionary_sites(dictionaries, model)
    chosen = [resolve_site(sites, key).dictionary for key in keys]
    tokens = torch.as_tensor(tokens)
    tokens = tokens.unsqueeze(0) if tokens.ndim == 1 else tokens
    names = {d.in_hook for d in chosen}
    parts: list[list[SparseActs]] = [[] for _ in chosen]
    for batch in tqdm(tokens.split(batch_size), desc="activations", disable=not verbose):
        _, cache = model.run_with_cache(
            batch.to(model.cfg.device), names_filter=lambda n: n in names
        )
        for part, d in zip(parts, chosen, strict=True):
            x = cache[d.in_hook][:, 1:] if skip_bos else cache[d.in_hook]
            part.append(d.encode_sparse(x.reshape(-1, x.shape[-1]).to(d.W_enc.dtype)))
    return [SparseActs.concat(p, d.n_features) for p, d in zip(parts, chosen, strict=True)]


def _coo(sp: SparseActs, values: Tensor) -> Tensor:
    idx = torch.stack([sp.token_idx, sp.feature_idx]).cpu()
    return torch.sparse_coo_tensor(idx, values.cpu().double(), (sp.n_tokens, sp.n_features))


def _mean_activation(sp: SparseActs) -> Tensor:
    total = torch.zeros(sp.n_features, dtype=torch.float64)
    total.index_add_(0, sp.feature_idx.cpu(), sp.values.cpu().double())
    return (total / max(sp.n_tokens, 1)).float()


def data_weighted_weights(
    dictionaries: Sequence[Dictionary],
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    layer_from: SiteKey,
    layer_to: SiteKey,
    *,
    norm: NormSpec = "mean",
    include_attention: bool = False,
    cut_at_saes: bool = False,
    skip_bos: bool = True,
    batch_size: int = 8,
    chunk_size: int = 65536,
    verbose: bool = False,
) -> DataWeighted:
    """E_t[a_i(t) v_ij 1[a_j(t) > 0]] for every pair that co-occurs on the tokens.

    Args:
        dictionaries, model: transcoders (one per MLP) / residual SAEs, and their model.
        tokens: the token set [batch, pos] (each row starting with BOS).
        layer_from, layer_to: the two dictionaries (layer or hook name).
        norm: norm treatment of the virtual weights; "mean" measures scales on `tokens`.
        include_attention: add single-head OV paths to v_ij (see `virtual_weights`).
        cut_at_saes: residual SAEs in between block the paths (see `virtual_weights`).
        skip_bos: leave position 0 out of the averages.
        batch_size: sequences per forward pass; chunk_size: pairs per v_ij gather.
    """
    dictionaries = expand_crosslayer(dictionaries)
    sites = dictionary_sites(dictionaries, model)
    site_from, site_to = resolve_site(sites, layer_from), resolve_site(sites, layer_to)
    norm = resolve_norm(norm, model, tokens)
    left = decoder_paths(
        dictionaries,
        model,
        site_from.name,
        site_to.name,
        norm=norm,
        include_attention=include_attention,
        cut_at_saes=cut_at_saes,
    )  # [F_from, d]: every write of the upstream features through the paths to site_to
    up, down = sparse_activations(
        model,
        dictionaries,
        tokens,
        [site_from.name, site_to.name],
        batch_size=batch_size,
        skip_bos=skip_bos,
        verbose=verbose,
    )
    n_tokens = up.n_tokens
    if n_tokens == 0:
        raise SparseCircuitsError("data-weighted weights need at least one token after BOS")
    with warnings.catch_warnings():  # torch flags its sparse kernels as beta
        warnings.simplefilter("ignore", UserWarning)
        co = torch.sparse.mm(
            _coo(up, up.values).t().coalesce(), _coo(down, torch.ones_like(down.values))
        ).coalesce()
    src, dst = co.indices()
    coact = co.values() / n_tokens

    # v_ij only for the co-active pairs: rows of W_dec T against columns of W_enc
    dec = left
    enc_t = site_to.dictionary.W_enc.detach().T.to(dec)  # [F_to, d]
    virtual = torch.empty(len(src), dtype=torch.float64)
    with torch.no_grad():
        for c0 in range(0, len(src), chunk_size):
            s = src[c0 : c0 + chunk_size].to(dec.device)
            t = dst[c0 : c0 + chunk_size].to(dec.device)
            virtual[c0 : c0 + chunk_size] = (left[s] * enc_t[t]).sum(-1).double().cpu()

    return DataWeighted(
        site_from.name,
        site_to.name,
        src,
        dst,
        (virtual * coact).float(),
        virtual.float(),
        coact.float(),
        _mean_activation(up),
        _mean_activation(down),
        n_tokens,
    )


def top_k_per_source(
    src: Int[Tensor, " e"], weight: Float[Tensor, " e"], k: int
) -> Int[Tensor, " kept"]:
    """Indices of the k entries of largest |weight| within each source (COO, any order)."""
    order = weight.abs().argsort(descending=True, stable=True)
    order = order[src[order].argsort(stable=True)]  # grouped by source, strongest first
    grouped = src[order]
    starts = torch.ones_like(grouped, dtype=torch.bool)
    starts[1:] = grouped[1:] != grouped[:-1]
    first = torch.cummax(torch.where(starts, torch.arange(len(grouped)), 0), 0).values
    rank = torch.arange(len(grouped)) - first
    return order[rank < k]


def global_graph(
    dictionaries: Sequence[Dictionary],
    model: Any,
    layer_from: SiteKey,
    layer_to: SiteKey,
    top_k: int,
    *,
    data_weighted: bool = False,
    tokens: Int[Tensor, "batch pos"] | None = None,
    norm: NormSpec = "ignore",
    include_attention: bool = False,
    cut_at_saes: bool = False,
    max_sources: int | None = 256,
    block_size: int | None = None,
    verbose: bool = False,
) -> AttributionGraph:
    """A feature-to-feature `AttributionGraph` between two dictionaries (layer or hook name).

    Each upstream feature keeps its `top_k` downstream partners by |weight| (virtual weight,
    or the data-weighted one with `data_weighted=True`, which needs `tokens`). Then, to keep
    the dense adjacency small, only the `max_sources` upstream features of largest summed
    |weight| are kept (None keeps all). Node activation: the feature's mean activation over
    `tokens` (data-weighted), else 0. Nodes sit at position 0, labelled "L{l} F{f}".
    """
    if top_k < 1:
        raise SparseCircuitsError(f"top_k must be >= 1, got {top_k}")
    dictionaries = expand_crosslayer(dictionaries)
    sites = dictionary_sites(dictionaries, model)
    site_from, site_to = resolve_site(sites, layer_from), resolve_site(sites, layer_to)
    norm_name = norm if isinstance(norm, str) else "explicit scales"
    if data_weighted:
        if tokens is None:
            raise SparseCircuitsError("a data-weighted global graph needs `tokens`")
        dw = data_weighted_weights(
            dictionaries,
            model,
            tokens,
            site_from.name,
            site_to.name,
            norm=norm,
            include_attention=include_attention,
            cut_at_saes=cut_at_saes,
            verbose=verbose,
        )
        keep = top_k_per_source(dw.src, dw.weight, top_k)
        src, dst, weight = dw.src[keep], dw.dst[keep], dw.weight[keep]
        mean_act = (dw.mean_from, dw.mean_to)
        kind = "data-weighted"
    else:
        left = decoder_paths(
            dictionaries,
            model,
            site_from.name,
            site_to.name,
            norm=resolve_norm(norm, model, tokens),
            include_attention=include_attention,
            cut_at_saes=cut_at_saes,
        )
        with torch.no_grad():
            enc = site_to.dictionary.W_enc.detach().to(left)
            values, indices = blocked_topk(left, enc, top_k, block_size)
        n, kk = indices.shape
        src = torch.arange(n).repeat_interleave(kk)
        dst, weight = indices.reshape(-1).cpu(), values.reshape(-1).float().cpu()
        nonzero = weight != 0
        src, dst, weight = src[nonzero], dst[nonzero], weight[nonzero]
        mean_act = None
        kind = "virtual"

    if max_sources is not None:
        strength = torch.zeros(site_from.dictionary.n_features)
        strength.index_add_(0, src, weight.abs())
        chosen = strength.argsort(descending=True)[:max_sources]
        chosen = chosen[strength[chosen] > 0]
        mask = torch.isin(src, chosen)
        src, dst, weight = src[mask], dst[mask], weight[mask]

    up = torch.unique(src)
    down = torch.unique(dst)
    n_up = len(up)
    layer = torch.cat(
        [torch.full((n_up,), site_from.layer), torch.full((len(down),), site_to.layer)]
    )
    feature = torch.cat([up, down])
    row = n_up + torch.searchsorted(down, dst)
    col = torch.searchsorted(up, src)
    n = len(feature)
    adjacency = torch.zeros(n, n)
    adjacency[row, col] = weight.float()
    if mean_act is None:
        activation = torch.zeros(n)
    else:
        activation = torch.cat([mean_act[0][up], mean_act[1][down]])
    names = [
        str(s.dictionary.metadata.get("source", f"{s.dictionary.kind} {s.name}"))
        for s in (site_from, site_to)
    ]
    return AttributionGraph(
        prompt=f"global graph {site_from.name} -> {site_to.name} ({kind})",
        tokens=torch.zeros(1, dtype=torch.long),
        token_strs=["<global>"],
        node_kind=["feature"] * n,
        node_layer=layer.long(),
        node_pos=torch.zeros(n, dtype=torch.long),
        node_feature=feature.long(),
        node_activation=activation.float(),
        node_label=[f"L{int(m)} F{int(f)}" for m, f in zip(layer, feature, strict=True)],
        adjacency=adjacency,
        n_layers=model.cfg.n_layers,
        model_name=str(model.cfg.model_name),
        dictionary_names=names,
        metadata={
            "global": True,
            "weight": kind,
            "hook_from": site_from.name,
            "hook_to": site_to.name,
            "layer_from": site_from.layer,
            "layer_to": site_to.layer,
            "top_k": top_k,
            "norm": norm_name,
            "include_attention": include_attention,
            "cut_at_saes": cut_at_saes,
            "n_tokens": None if tokens is None else int(torch.as_tensor(tokens).numel()),
        },
    )
