"""Input-invariant (virtual) weights between the features of transcoders at different layers.

Setting. A transcoder at layer l reads the MLP input `blocks.l.ln2.hook_normalized` and writes
`blocks.l.hook_mlp_out`. Feature i of layer l writes a_i d_i (d_i = W_dec[i], a row vector)
into the residual stream; feature j of layer l' > l reads x e_j (e_j = W_enc[:, j]) from the
normalised residual x at layer l'. In the frozen local replacement model (attention patterns
and norm scales held fixed, each transcoder's output depending on its input only through its
linear skip path `x W_skip`), the map from a_i to the pre-activation of j is linear:

    pre_j += a_i * d_i T e_j,        v_ij = d_i T e_j is the virtual weight.

Norm treatment. With `fold_ln` the normalised input is the centred residual divided by the
scale: N = C / s with C = I - 11^T/d for LayerNorm models (`cfg.normalization_type` "LN...")
and N = I / s for RMSNorm. `norm` picks s:
    "ignore"  s = 1 (LayerNorm models are still centred);
    "mean"    s = the average of `blocks.m.ln{1,2}.hook_scale` over a token set (`tokens`,
              BOS positions left out), measured with `run_with_cache` (`mean_norm_scales`);
    mapping   explicit scales: a key `m` (int) gives the ln2 scale of layer m; a hook name
              (`"blocks.m.ln1.hook_scale"` / `"blocks.m.ln2.hook_scale"`) gives that norm's
              scale; values are floats or one-element tensors -- pass a prompt's exact
              per-position scales at one position to reproduce that position's edge exactly.

Residual and skip paths (no attention). With S_m = I + N_m W_skip,m (the residual stream is
the identity path, the skip transcoder the linear one; S_m = I at a layer whose dictionary
has no W_skip or that has no dictionary -- such an MLP is left out of every path):

    T_res = (prod_{m=l+1}^{l'-1} S_m) N_{l'}            (product taken exactly, in order).

Expanding the product gives one term per subset P of the skip layers in between:
d_i (prod_{m in P} N_m W_skip,m) N_{l'} e_j -- the direct term (P = {}), each single W_skip,
each pair, ... `breakdown=True` returns these terms keyed by the tuple P; they sum to the
residual total exactly.

Attention OV paths (`include_attention=True`), per head h of each layer m with l < m <= l'
(layer l' attention sits before its MLP input, so it is in between too):

    T_{m,h} = (prod_{k=l+1}^{m-1} S_k) N1_m W_V[m, h_kv] W_O[m, h] (prod_{k=m}^{l'-1} S_k) N_{l'}

with N1_m the ln1 treatment and, for grouped-query attention, h_kv = h // (H / H_kv). This is
every path through exactly one head, with the skip paths around it; it equals the head's real
contribution up to one input-dependent factor, the attention weight (for the same-position
edge, the weight a query puts on its own position). Paths through two or more heads (products
of attention weights) and the value/output biases (constants) are left out. Then

    T = T_res + sum_{m,h} T_{m,h},       total = W_dec^{(l)} T W_enc^{(l')}   [F_l, F_l'].

Top-k without the full matrix (`top_partners`, `topk_graph`): with D T precomputed ([F, d]),
scores are computed block by block (`block_size` rows x `block_size` columns) and merged into
a running top-k by absolute value, so memory stays O(block_size^2 + F k) for any F.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError
from replacement.hooks import hook_layer, layer_hooks

NormSpec = str | Mapping[int | str, float | Tensor]
_MAX_BREAKDOWN_LAYERS = 16  # 2^16 path terms is already far more than anyone reads


class VirtualWeights(NamedTuple):
    """Virtual weights from the features of one layer to those of a later layer."""

    total: Float[Tensor, "F_from F_to"]
    """All paths: residual and skip paths, plus single-head paths when attention is included."""
    residual: Float[Tensor, "F_from F_to"]
    """Residual-stream and skip-transcoder paths only."""
    paths: dict[tuple[int, ...], Tensor] | None
    """With `breakdown`: the term of each subset of skip layers (() is the direct term)."""
    heads: dict[tuple[int, int], Tensor] | None
    """With `include_attention`: the term of each (layer, head)."""


class PathOperators(NamedTuple):
    """The [d, d] operators T of the module docstring, between two layers."""

    total: Float[Tensor, "d d"]
    """T: residual and (if included) single-head paths."""
    residual: Float[Tensor, "d d"]
    """T_res."""
    paths: dict[tuple[int, ...], Tensor] | None
    """Per subset of skip layers (with `breakdown`)."""
    heads: dict[tuple[int, int], Tensor] | None
    """Per (layer, head) (with `include_attention`)."""


class TopPartners(NamedTuple):
    """The k strongest partners of one feature in one other layer, by |virtual weight|."""

    layer: int
    """Layer of the partners."""
    indices: Int[Tensor, " k"]
    """Partner feature indices, strongest first."""
    values: Float[Tensor, " k"]
    """Signed virtual weights."""


class TopKGraph(NamedTuple):
    """COO edges: each feature's top-k downstream partners in every later layer."""

    src_layer: Int[Tensor, " edges"]
    """Layer of the upstream feature."""
    src_feature: Int[Tensor, " edges"]
    """Upstream feature index."""
    dst_layer: Int[Tensor, " edges"]
    """Layer of the downstream feature."""
    dst_feature: Int[Tensor, " edges"]
    """Downstream feature index."""
    weight: Float[Tensor, " edges"]
    """Signed virtual weight."""
    n_features: dict[int, int]
    """Number of features of each layer."""

    def pair(self, layer_from: int, layer_to: int) -> Tensor:
        """The edges between two layers as a sparse COO tensor [F_from, F_to]."""
        keep = (self.src_layer == layer_from) & (self.dst_layer == layer_to)
        idx = torch.stack([self.src_feature[keep], self.dst_feature[keep]])
        size = (self.n_features[layer_from], self.n_features[layer_to])
        return torch.sparse_coo_tensor(
            idx, self.weight[keep], size, check_invariants=True
        ).coalesce()


# ---- dictionaries and norms ----------------------------------------------------------------
def layer_dictionaries(dictionaries: Sequence[Dictionary], model: Any) -> dict[int, Dictionary]:
    """The transcoders by layer; refuses anything that does not map ln2 input to MLP output."""
    out: dict[int, Dictionary] = {}
    for d in dictionaries:
        layer = hook_layer(getattr(d, "in_hook", ""))
        hooks = layer_hooks(layer)
        if (getattr(d, "in_hook", None), getattr(d, "out_hook", None)) != (
            hooks.mlp_in,
            hooks.mlp_out,
        ) or not isinstance(d, Dictionary):
            raise SparseCircuitsError(
                f"virtual weights need transcoders reading 'blocks.l.ln2.hook_normalized' and "
                f"writing 'blocks.l.hook_mlp_out'; got {d!r}"
            )
        if layer in out:
            raise SparseCircuitsError(f"two dictionaries at layer {layer}; expected one per layer")
        if layer >= model.cfg.n_layers:
            raise SparseCircuitsError(
                f"dictionary at layer {layer} but the model has {model.cfg.n_layers} layers"
            )
        out[layer] = d
    return out


def _token_batches(tokens: Tensor, batch_size: int) -> list[Tensor]:
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    return list(tokens.split(batch_size))


@torch.no_grad()
def mean_norm_scales(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    *,
    batch_size: int = 16,
    skip_bos: bool = True,
) -> dict[str, float]:
    """Average of every `blocks.m.ln{1,2}.hook_scale` over the tokens (BOS left out by default)."""
    names = [
        f"blocks.{m}.{ln}.hook_scale"
        for m in range(model.cfg.n_layers)
        for ln in ("ln1", "ln2")
        if f"blocks.{m}.{ln}.hook_scale" in model.hook_dict
    ]
    sums = dict.fromkeys(names, 0.0)
    count = 0
    for batch in _token_batches(tokens, batch_size):
        batch = batch.to(model.cfg.device)
        _, cache = model.run_with_cache(batch, names_filter=lambda n: n in sums)
        start = 1 if skip_bos else 0
        for name in names:
            sums[name] += float(cache[name][:, start:].double().sum())
        count += batch[:, start:].numel()
    if count == 0:
        raise SparseCircuitsError("mean norm scales need at least one token after BOS")
    return {name: total / count for name, total in sums.items()}


def _resolve_norm(norm: NormSpec, model: Any, tokens: Tensor | None) -> NormSpec:
    if isinstance(norm, str):
        if norm == "mean":
            if tokens is None:
                raise SparseCircuitsError('norm="mean" needs `tokens` to measure the scales on')
            return mean_norm_scales(model, tokens)
        if norm != "ignore":
            raise SparseCircuitsError(
                f'unknown norm {norm!r}; expected "ignore", "mean" or a mapping of scales'
            )
    return norm


def _norm_operator(model: Any, norm: NormSpec, layer: int, which: str) -> Tensor:
    """N = C / s (LayerNorm) or I / s (RMSNorm) at `blocks.layer.{which}`, in float64."""
    d = model.cfg.d_model
    kind = str(model.cfg.normalization_type or "")
    eye = torch.eye(d, dtype=torch.float64)
    if not kind:  # no norm at all
        return eye
    scale: Any = 1.0
    if not isinstance(norm, str):
        name = f"blocks.{layer}.{which}.hook_scale"
        if name in norm:
            scale = norm[name]
        elif which == "ln2" and layer in norm:
            scale = norm[layer]
        else:
            raise SparseCircuitsError(
                f"the norm scales given have no entry for {name!r}"
                + (f" (or layer {layer})" if which == "ln2" else "")
            )
        scale = torch.as_tensor(scale, dtype=torch.float64).reshape(-1)
        if scale.numel() != 1:
            raise SparseCircuitsError(
                f"the scale of {name!r} has {scale.numel()} values; expected one"
            )
        scale = float(scale[0])
    op = eye - 1.0 / d if kind.startswith("LN") else eye
    return op / scale


def _skip_term(model: Any, dicts: dict[int, Dictionary], norm: NormSpec, m: int) -> Tensor | None:
    """N_m W_skip,m, or None where the layer has no linear skip path."""
    d = dicts.get(m)
    if d is None or d.W_skip is None:
        return None
    return _norm_operator(model, norm, m, "ln2") @ d.W_skip.detach().cpu().double()


def _chain(
    model: Any, dicts: dict[int, Dictionary], norm: NormSpec, start: int, stop: int
) -> Tensor:
    """prod_{k=start}^{stop-1} (I + N_k W_skip,k), in layer order."""
    out = torch.eye(model.cfg.d_model, dtype=torch.float64)
    for k in range(start, stop):
        term = _skip_term(model, dicts, norm, k)
        if term is not None:
            out = out + out @ term
    return out


def _check_layers(model: Any, dicts: dict[int, Dictionary], layer_from: int, layer_to: int) -> None:
    for layer in (layer_from, layer_to):
        if layer not in dicts:
            raise SparseCircuitsError(
                f"no transcoder at layer {layer}; the dictionaries cover layers {sorted(dicts)}"
            )
    if not layer_from < layer_to:
        raise SparseCircuitsError(f"layer_from ({layer_from}) must be below layer_to ({layer_to})")


def path_operators(
    dictionaries: Sequence[Dictionary],
    model: Any,
    layer_from: int,
    layer_to: int,
    *,
    norm: NormSpec = "ignore",
    tokens: Int[Tensor, "batch pos"] | None = None,
    include_attention: bool = False,
    breakdown: bool = False,
) -> PathOperators:
    """The [d, d] operators T between two layers (module docstring), in float64 on the CPU."""
    dicts = layer_dictionaries(dictionaries, model)
    _check_layers(model, dicts, layer_from, layer_to)
    norm = _resolve_norm(norm, model, tokens)
    n_to = _norm_operator(model, norm, layer_to, "ln2")
    residual = _chain(model, dicts, norm, layer_from + 1, layer_to) @ n_to

    paths = None
    if breakdown:
        skips = {
            m: t
            for m in range(layer_from + 1, layer_to)
            if (t := _skip_term(model, dicts, norm, m)) is not None
        }
        if len(skips) > _MAX_BREAKDOWN_LAYERS:
            raise SparseCircuitsError(
                f"a breakdown over {len(skips)} skip layers has 2^{len(skips)} terms; "
                f"at most {_MAX_BREAKDOWN_LAYERS} layers are supported"
            )
        paths = {}
        for r in range(len(skips) + 1):
            for subset in itertools.combinations(sorted(skips), r):
                op = torch.eye(model.cfg.d_model, dtype=torch.float64)
                for m in subset:
                    op = op @ skips[m]
                paths[subset] = op @ n_to

    heads = None
    total = residual
    if include_attention:
        heads = {}
        W_V = model.W_V.detach().cpu().double()
        W_O = model.W_O.detach().cpu().double()
        n_heads, n_kv = W_O.shape[1], W_V.shape[1]
        group = n_heads // n_kv
        for m in range(layer_from + 1, layer_to + 1):
            pre = _chain(model, dicts, norm, layer_from + 1, m) @ _norm_operator(
                model, norm, m, "ln1"
            )
            post = _chain(model, dicts, norm, m, layer_to) @ n_to
            for h in range(n_heads):
                heads[(m, h)] = pre @ W_V[m, h // group] @ W_O[m, h] @ post
        total = residual + sum(heads.values())
    return PathOperators(total, residual, paths, heads)


def _decoder(d: Dictionary) -> Tensor:
    return d.W_dec.detach()


def _encoder(d: Dictionary) -> Tensor:
    return d.W_enc.detach()


def _apply(d_from: Dictionary, op: Tensor, d_to: Dictionary) -> Tensor:
    dec = _decoder(d_from)
    return (dec @ op.to(dec.device, dec.dtype)) @ _encoder(d_to).to(dec.dtype)


def virtual_weights(
    dictionaries: Sequence[Dictionary],
    model: Any,
    layer_from: int,
    layer_to: int,
    *,
    norm: NormSpec = "ignore",
    tokens: Int[Tensor, "batch pos"] | None = None,
    include_attention: bool = False,
    breakdown: bool = False,
) -> VirtualWeights:
    """Dense virtual weights [F_from, F_to] from layer `layer_from`'s features to `layer_to`'s.

    Args:
        dictionaries: transcoders (ln2 input -> MLP output), one per layer.
        model: the model they belong to (`replacement.load_model`).
        layer_from, layer_to: the two layers, layer_from < layer_to.
        norm: "ignore", "mean" (needs `tokens`) or explicit scales (module docstring).
        tokens: token ids to measure mean norm scales on.
        include_attention: add the single-head OV paths, reported per head in `heads`.
        breakdown: also return the term of each subset of skip layers in `paths`.
    Builds the full matrix: for large dictionaries use `top_partners` / `topk_graph`.
    """
    dicts = layer_dictionaries(dictionaries, model)
    ops = path_operators(
        dictionaries,
        model,
        layer_from,
        layer_to,
        norm=norm,
        tokens=tokens,
        include_attention=include_attention,
        breakdown=breakdown,
    )
    d_from, d_to = dicts[layer_from], dicts[layer_to]
    with torch.no_grad():
        total = _apply(d_from, ops.total, d_to)
        residual = total if ops.heads is None else _apply(d_from, ops.residual, d_to)
        paths = (
            None
            if ops.paths is None
            else {k: _apply(d_from, v, d_to) for k, v in ops.paths.items()}
        )
        heads = (
            None
            if ops.heads is None
            else {k: _apply(d_from, v, d_to) for k, v in ops.heads.items()}
        )
    return VirtualWeights(total, residual, paths, heads)


# ---- top-k without the full matrix --------------------------------------------------------
def blocked_topk(
    left: Float[Tensor, "rows d"],
    right: Float[Tensor, "d cols"],
    k: int,
    block_size: int = 4096,
) -> tuple[Float[Tensor, "rows k"], Int[Tensor, "rows k"]]:
    """Per row of `left @ right`, the k entries of largest |value| (signed values, column ids).

    Never holds more than a [block_size, block_size] block of the product.
    """
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
            kk = min(k, block.shape[1])
            idx = block.abs().topk(kk, dim=1).indices
            cand_v = torch.cat([best_v, block.gather(1, idx)], dim=1)
            cand_i = torch.cat([best_i, idx + c0], dim=1)
            keep = cand_v.abs().topk(min(k, cand_v.shape[1]), dim=1).indices
            best_v, best_i = cand_v.gather(1, keep), cand_i.gather(1, keep)
        out_v[r0 : r0 + block_size], out_i[r0 : r0 + block_size] = best_v, best_i
    return out_v, out_i


def top_partners(
    dictionaries: Sequence[Dictionary],
    model: Any,
    layer: int,
    feature: int,
    k: int,
    direction: str = "down",
    block_size: int = 4096,
    *,
    norm: NormSpec = "ignore",
    tokens: Int[Tensor, "batch pos"] | None = None,
    include_attention: bool = False,
) -> dict[int, TopPartners]:
    """The k strongest partners of one feature in every later ("down") or earlier ("up") layer.

    Strength is |virtual weight|; the weight matrix is never built, only [d] vectors and
    `block_size` slices of the other layer's encoder/decoder.
    """
    if direction not in ("down", "up"):
        raise SparseCircuitsError(f'direction must be "down" or "up", got {direction!r}')
    dicts = layer_dictionaries(dictionaries, model)
    if layer not in dicts or not 0 <= feature < dicts[layer].n_features:
        raise SparseCircuitsError(
            f"no feature {feature} at layer {layer}; layers with transcoders: {sorted(dicts)}"
        )
    norm = _resolve_norm(norm, model, tokens)
    others = [m for m in sorted(dicts) if (m > layer if direction == "down" else m < layer)]
    out = {}
    for other in others:
        lo, hi = (layer, other) if direction == "down" else (other, layer)
        op = path_operators(
            dictionaries, model, lo, hi, norm=norm, include_attention=include_attention
        ).total
        if direction == "down":
            dec = _decoder(dicts[layer])
            vec = dec[feature : feature + 1] @ op.to(dec.device, dec.dtype)  # [1, d]
            mat = _encoder(dicts[other]).to(dec.dtype)  # [d, F_other]
        else:
            enc = _encoder(dicts[layer])
            vec = (op.to(enc.device, enc.dtype) @ enc[:, feature]).unsqueeze(0)  # [1, d]
            mat = _decoder(dicts[other]).to(enc.dtype).T  # [d, F_other]
        with torch.no_grad():
            values, indices = blocked_topk(vec, mat, k, block_size)
        out[other] = TopPartners(other, indices[0], values[0])
    return out


def topk_graph(
    dictionaries: Sequence[Dictionary],
    model: Any,
    k: int,
    block_size: int = 4096,
    *,
    norm: NormSpec = "ignore",
    tokens: Int[Tensor, "batch pos"] | None = None,
    include_attention: bool = False,
    verbose: bool = True,
) -> TopKGraph:
    """Every feature's k strongest downstream partners in every later layer, as COO edges.

    Memory: [F, d] for D T plus one [block_size, block_size] block and a [block_size, k]
    running top-k -- never [F_l, F_l'].
    """
    dicts = layer_dictionaries(dictionaries, model)
    norm = _resolve_norm(norm, model, tokens)
    layers = sorted(dicts)
    pairs = [(a, b) for a in layers for b in layers if a < b]
    parts: list[tuple[Tensor, ...]] = []
    for a, b in tqdm(pairs, desc="layer pairs", disable=not verbose, leave=False):
        op = path_operators(
            dictionaries, model, a, b, norm=norm, include_attention=include_attention
        )
        dec = _decoder(dicts[a])
        with torch.no_grad():
            left = dec @ op.total.to(dec.device, dec.dtype)
            values, indices = blocked_topk(left, _encoder(dicts[b]).to(dec.dtype), k, block_size)
        n, kk = indices.shape
        src = torch.arange(n, device=indices.device).repeat_interleave(kk)
        parts.append(
            (
                torch.full((n * kk,), a, dtype=torch.long),
                src.cpu(),
                torch.full((n * kk,), b, dtype=torch.long),
                indices.reshape(-1).cpu(),
                values.reshape(-1).cpu(),
            )
        )
    if not parts:
        empty = torch.empty(0, dtype=torch.long)
        return TopKGraph(
            empty, empty, empty, empty, torch.empty(0), {m: dicts[m].n_features for m in layers}
        )
    cols = [torch.cat(c) for c in zip(*parts, strict=True)]
    return TopKGraph(*cols, n_features={m: dicts[m].n_features for m in layers})
