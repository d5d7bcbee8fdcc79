"""Input-invariant (virtual) weights between the features of dictionaries at different sites.

Setting. Every dictionary reads at its in_hook and writes at its out_hook:
- a transcoder / skip transcoder at layer l reads the MLP input `blocks.l.ln2.hook_normalized`
  (or the raw `blocks.l.hook_resid_mid`) and writes `blocks.l.hook_mlp_out`;
- an SAE reads and writes one residual hook `blocks.l.hook_resid_{pre,mid,post}`.
Feature i of an upstream dictionary writes a_i d_i (d_i = W_dec[i], a row vector) into the
residual stream; feature j of a downstream dictionary reads x e_j (e_j = W_enc[:, j]) from
what arrives at its in_hook. In the frozen local replacement model of prompt attribution
(attention patterns and norm scales held fixed, each transcoder's output depending on its input
only through its linear skip path `x W_skip`, MLPs without a transcoder left out), the map from
a_i to the pre-activation of j is linear:

    pre_j += a_i * d_i T e_j,        v_ij = d_i T e_j is the virtual weight,

T a [d_model, d_model] operator (row-vector convention: operators multiply on the right, in
stream order). Stream order of a block l: resid_pre, attention, resid_mid, ln2 read, MLP,
mlp_out write, resid_post; `resid_post` of block l comes before `resid_pre` of block l + 1.
A pair (upstream, downstream) is valid when the upstream write comes before the downstream read.

Norm treatment. With `fold_ln` the normalised input is the centred residual divided by the
scale: N = C / s with C = I - 11^T/d (the centring projection x - mean(x)) for LayerNorm models
(`cfg.normalization_type` starting with "LN") and N = I / s for RMSNorm. `norm` picks s:
    "ignore"  s = 1 (LayerNorm models are still centred);
    "mean"    a dataset average folded in: 1/s = the mean of 1/`blocks.m.ln{1,2}.hook_scale`
              over a token set (`tokens`, BOS positions left out), measured with
              `run_with_cache` (`mean_norm_scales`; it returns s = 1 / mean(1/scale));
    mapping   explicit scales: a key `m` (int) gives the ln2 scale of layer m; a hook name
              (`"blocks.m.ln1.hook_scale"` / `"blocks.m.ln2.hook_scale"`) gives that norm's
              scale; values are floats or one-element tensors -- pass a prompt's exact scales
              at one position to reproduce that position's edge exactly.
The downstream read is R = N_{l'} for a transcoder reading ln2, R = I for raw residual reads.
A read of the norm's output (`ln2.hook_out`, what circuit-tracer and sparsify transcoders read
on an unprocessed model) is R = N_{l'} diag(w_ln2), and attention reads N1_m diag(w_ln1), with
w the model's current norm weight: on a folded model it is 1 (folded into the next weights),
on an unprocessed one it is the norm's own weight (its bias is a constant and drops out).

Residual and skip paths. Each skip transcoder at a layer m whose MLP lies between the two
sites contributes the factor S_m = I + R_m W_skip,m (identity: the residual stream; the other
term: the linear skip path). An SAE between the two sites is, by default, transparent (its
reconstruction plus error is the identity in the forward pass); with `cut_at_saes=True` it
blocks every path (T = 0) -- that is what a prompt attribution graph does, where everything
crossing a spliced residual SAE is routed through its feature and error nodes. Then

    T_res = (prod_{m between, in order} S_m) R          (the product taken exactly).

Expanding the product gives one term per subset P of the skip layers in between,
d_i (prod_{m in P} R_m W_skip,m) R e_j: the direct term (P = {}), each single W_skip, each
pair, ... `breakdown=True` returns these terms keyed by the tuple P; they sum to T_res.

Attention OV paths (`include_attention=True`), per head h of every layer m whose attention
lies between the two sites (for a transcoder target, layer l' attention is before its read):

    T_{m,h} = S(up..m) N1_m W_V[m, h_kv] W_O[m, h] P1_m S(m..down) R

with S(.. ..) the skip-path products on either side of the head, N1_m the ln1 treatment, P1_m
the norm after attention where the model has one (Gemma's `ln1_post`: C / s diag(w), its scale
from `norm` like the others, key `blocks.m.ln1_post.hook_scale`; the identity elsewhere) and,
for grouped-query attention, h_kv = h // (H / H_kv). These are the paths through exactly one
head with the skip paths around it; each equals the head's real contribution up to one
input-dependent factor, the attention weight (for a same-position edge, the weight the query
puts on its own position). Paths through two or more heads (products of attention weights)
and the value/output biases (constants) are left out. Then

    T = T_res + sum_{m,h} T_{m,h},       total = W_dec^{up} T W_enc^{down}   [F_up, F_down].

Top-k without the full matrix is in `circuits.invariant.topk_graph`; data-weighted (expected)
attribution in `circuits.invariant.global_graph`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuits.attribution.crosslayer_slices import expand_crosslayer, later_decoders
from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError
from replacement.hook_table import (
    block_hook,
    hook_layer,
    mlp_replacement,
    norm_facts,
    norm_scale_hook,
    same_tensor,
    stream_point,
)
from replacement.splice import check_compatible

NormSpec = str | Mapping[int | str, float | Tensor]
SiteKey = int | str
"""A dictionary named by its layer (when that layer has only one) or by its in/out hook."""
_MAX_BREAKDOWN_LAYERS = 16  # 2^16 path terms is already far more than anyone reads

# positions along the residual stream of block l: 4 l + offset
_RESID_OFFSET = {"pre": 0.0, "mid": 2.0, "post": 3.75}  # by `hook_table.stream_point`
_ATTN_OFFSET, _LN2_READ_OFFSET, _MLP_OFFSET, _MLP_WRITE_OFFSET = 1.0, 2.5, 3.0, 3.5


class Site(NamedTuple):
    """Where one dictionary reads and writes along the residual stream."""

    index: int
    """Position of the dictionary in the list given."""
    name: str
    """Its out_hook."""
    layer: int
    """Block index of its out_hook."""
    kind: str
    """"transcoder" (MLP replacement) or "sae" (residual hook)."""
    read_at: float
    """Stream position of the encoder's read."""
    write_at: float
    """Stream position of the decoder's write."""
    reads_ln2: bool
    """Whether the read is `ln2.hook_normalized` (so the ln2 norm treatment applies)."""
    dictionary: Dictionary
    """The dictionary itself."""
    reads_norm_output: bool = False
    """Whether the read is `ln2.hook_out`, after the norm's weight (and bias)."""


class VirtualWeights(NamedTuple):
    """Virtual weights from the features of one dictionary to those of a later one."""

    total: Float[Tensor, "F_from F_to"]
    """All paths: residual and skip paths, plus single-head paths when attention is included."""
    residual: Float[Tensor, "F_from F_to"]
    """Residual-stream and skip-transcoder paths only."""
    paths: dict[tuple[int, ...], Tensor] | None
    """With `breakdown`: the term of each subset of skip layers (() is the direct term)."""
    heads: dict[tuple[int, int], Tensor] | None
    """With `include_attention`: the term of each (layer, head)."""


class PathOperators(NamedTuple):
    """The [d, d] operators T of the module docstring, between two sites."""

    total: Float[Tensor, "d d"]
    """T: residual and (if included) single-head paths."""
    residual: Float[Tensor, "d d"]
    """T_res."""
    paths: dict[tuple[int, ...], Tensor] | None
    """Per subset of skip layers (with `breakdown`)."""
    heads: dict[tuple[int, int], Tensor] | None
    """Per (layer, head) (with `include_attention` and `per_head`)."""


# ---- dictionaries and their sites ---------------------------------------------------------
def _site(index: int, d: Any, model: Any) -> Site:
    in_hook, out_hook = getattr(d, "in_hook", ""), getattr(d, "out_hook", "")
    layer = hook_layer(out_hook or "")
    expected = (
        "transcoders reading 'blocks.l.ln2.hook_normalized' (or 'blocks.l.ln2.hook_out', "
        "'blocks.l.hook_resid_mid') and "
        "writing 'blocks.l.hook_mlp_out', or SAEs at 'blocks.l.hook_resid_{pre,mid,post}'"
    )
    if not isinstance(d, Dictionary) or layer < 0:
        raise SparseCircuitsError(f"virtual weights need {expected}; got {d!r}")
    if layer >= model.cfg.n_layers:
        raise SparseCircuitsError(
            f"dictionary at {out_hook!r} but the model has {model.cfg.n_layers} layers"
        )
    facts = norm_facts(model)
    base = 4.0 * layer
    if same_tensor(in_hook, out_hook, facts):
        point = stream_point(out_hook, facts)
        if point is None:
            raise SparseCircuitsError(
                f"an SAE at {out_hook!r} has no input-invariant path to other features; "
                f"virtual weights need {expected}"
            )
        pos = base + _RESID_OFFSET[point]
        return Site(index, out_hook, layer, "sae", pos, pos, False, d)
    replaced = mlp_replacement(in_hook, out_hook, facts)
    if replaced is not None and replaced.write == "written":
        read = base + (_RESID_OFFSET["mid"] if replaced.read == "resid" else _LN2_READ_OFFSET)
        return Site(
            index=index,
            name=out_hook,
            layer=layer,
            kind="transcoder",
            read_at=read,
            write_at=base + _MLP_WRITE_OFFSET,
            reads_ln2=replaced.read != "resid",
            dictionary=d,
            reads_norm_output=replaced.read == "out",
        )
    raise SparseCircuitsError(
        f"virtual weights need {expected}; got in_hook={in_hook!r}, out_hook={out_hook!r}"
    )


def dictionary_sites(dictionaries: Sequence[Dictionary], model: Any) -> list[Site]:
    """The site of every dictionary (refuses kinds without input-invariant paths, duplicates)."""
    sites = [_site(k, d, model) for k, d in enumerate(dictionaries)]
    for s in sites:  # hooks, widths and processing, as `splice` checks them
        check_compatible(model, s.dictionary)
    seen: set[str] = set()
    for s in sites:
        if s.name in seen:
            raise SparseCircuitsError(f"two dictionaries write {s.name!r}; expected one per hook")
        seen.add(s.name)
    return sites


def resolve_site(sites: Sequence[Site], key: SiteKey) -> Site:
    """The site named by a layer (if only one dictionary sits there) or by an in/out hook."""
    if isinstance(key, str):
        found = [s for s in sites if key in (s.name, s.dictionary.in_hook)]
    else:
        found = [s for s in sites if s.layer == int(key)]
    if len(found) == 1:
        return found[0]
    names = [s.name for s in sites]
    if not found:
        raise SparseCircuitsError(f"no dictionary at {key!r}; the dictionaries write {names}")
    raise SparseCircuitsError(
        f"layer {key} has several dictionaries ({[s.name for s in found]}); name one by its hook"
    )


def _check_pair(up: Site, down: Site) -> None:
    if not up.write_at < down.read_at:
        raise SparseCircuitsError(
            f"{up.name!r} (layer {up.layer}) does not write before {down.name!r} "
            f"(layer {down.layer}) reads; the upstream dictionary must come first"
        )


# ---- norms -------------------------------------------------------------------------------
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
    """Per `blocks.m.ln{1,2}.hook_scale` (and Gemma's `ln1_post`), the scale s with 1/s = mean
    of 1/scale over the tokens.

    The inverse is averaged because the normalised input is x / scale: folding the mean
    inverse in makes the operator the dataset-average one. BOS is left out by default.
    """
    every = [
        norm_scale_hook(block_hook(m, ln))
        for m in range(model.cfg.n_layers)
        for ln in ("ln1", "ln2", "ln1_post")
    ]
    names = [name for name in every if name in model.hook_dict]
    sums = dict.fromkeys(names, 0.0)
    count = 0
    start = 1 if skip_bos else 0
    for batch in _token_batches(tokens, batch_size):
        _, cache = model.run_with_cache(
            batch.to(model.cfg.device), names_filter=lambda n: n in sums
        )
        for name in names:
            sums[name] += float(cache[name][:, start:].double().reciprocal().sum())
        count += batch[:, start:].numel()
    if count == 0:
        raise SparseCircuitsError("mean norm scales need at least one token after BOS")
    return {name: count / total for name, total in sums.items()}


def resolve_norm(norm: NormSpec, model: Any, tokens: Tensor | None) -> NormSpec:
    """Measure the scales of `norm="mean"` on `tokens`; check the other forms."""
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


def _norm_weight(model: Any, layer: int, which: str) -> Tensor | None:
    """The current effective weight of `blocks.layer.{which}` (None without one), float64."""
    module = getattr(model.blocks[layer], which, None)
    weight = getattr(module, "weight", None)
    if weight is None:
        return None
    weight = weight.detach().cpu().double()
    return 1.0 + weight if getattr(module, "uses_weight_offset", False) else weight


def _norm_operator(
    model: Any, norm: NormSpec, layer: int, which: str, affine: bool = False
) -> Tensor:
    """N = C / s (LayerNorm) or I / s (RMSNorm) at `blocks.layer.{which}`, in float64.

    `affine`: the read is the norm's output, so its current weight follows (N diag(w)).
    """
    d = model.cfg.d_model
    kind = str(model.cfg.normalization_type or "")
    eye = torch.eye(d, dtype=torch.float64)
    if not kind:  # no norm at all
        return eye
    scale: Any = 1.0
    if not isinstance(norm, str):
        name = norm_scale_hook(block_hook(layer, which))
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
    weight = _norm_weight(model, layer, which) if affine else None
    if weight is not None:
        op = op * weight[None, :]
    return op / scale


# ---- path operators ----------------------------------------------------------------------
class _Stream:
    """The linear pieces of the frozen model between sites, in float64 on the CPU."""

    def __init__(self, model: Any, sites: Sequence[Site], norm: NormSpec, cut_at_saes: bool):
        self.model, self.sites, self.norm, self.cut = model, sites, norm, cut_at_saes
        self.d = model.cfg.d_model

    def read(self, site: Site) -> Tensor:
        if site.reads_ln2:
            return _norm_operator(
                self.model, self.norm, site.layer, "ln2", affine=site.reads_norm_output
            )
        return torch.eye(self.d, dtype=torch.float64)

    def skips(self, start: float, stop: float) -> dict[int, Tensor]:
        """R_m W_skip,m of every skip transcoder whose MLP lies in (start, stop)."""
        out = {}
        for s in sorted(self.sites, key=lambda s: s.layer):
            mlp = 4.0 * s.layer + _MLP_OFFSET
            w_skip = s.dictionary.W_skip
            if s.kind == "transcoder" and w_skip is not None and start < mlp < stop:
                out[s.layer] = self.read(s) @ w_skip.detach().cpu().double()
        return out

    def blocked(self, start: float, stop: float) -> bool:
        """Whether a (cutting) SAE sits strictly between the two stream positions."""
        return self.cut and any(s.kind == "sae" and start < s.read_at < stop for s in self.sites)

    def chain(self, start: float, stop: float) -> Tensor:
        """prod (I + R_m W_skip,m) over the MLPs in (start, stop), in order (0 if cut)."""
        out = torch.eye(self.d, dtype=torch.float64)
        if self.blocked(start, stop):
            return out * 0.0
        for term in self.skips(start, stop).values():
            out = out + out @ term
        return out


def path_operators(
    dictionaries: Sequence[Dictionary],
    model: Any,
    layer_from: SiteKey,
    layer_to: SiteKey,
    *,
    norm: NormSpec = "ignore",
    tokens: Int[Tensor, "batch pos"] | None = None,
    include_attention: bool = False,
    breakdown: bool = False,
    cut_at_saes: bool = False,
    per_head: bool = True,
) -> PathOperators:
    """The [d, d] operators T between two dictionaries (module docstring), float64 on the CPU.

    `per_head=False` sums each layer's heads into one OV matrix first (cheaper; `heads` None).
    """
    sites = dictionary_sites(dictionaries, model)
    up, down = resolve_site(sites, layer_from), resolve_site(sites, layer_to)
    _check_pair(up, down)
    stream = _Stream(model, sites, resolve_norm(norm, model, tokens), cut_at_saes)
    w, r = up.write_at, down.read_at
    read = stream.read(down)
    residual = stream.chain(w, r) @ read

    paths = None
    if breakdown:
        skips = stream.skips(w, r)
        if len(skips) > _MAX_BREAKDOWN_LAYERS:
            raise SparseCircuitsError(
                f"a breakdown over {len(skips)} skip layers has 2^{len(skips)} terms; "
                f"at most {_MAX_BREAKDOWN_LAYERS} layers are supported"
            )
        gate = 0.0 if stream.blocked(w, r) else 1.0
        paths = {}
        for n in range(len(skips) + 1):
            for subset in itertools.combinations(sorted(skips), n):
                op = torch.eye(model.cfg.d_model, dtype=torch.float64) * gate
                for m in subset:
                    op = op @ skips[m]
                paths[subset] = op @ read

    heads = None
    total = residual
    if include_attention:
        heads = {} if per_head else None
        W_V = model.W_V.detach().cpu().double()
        W_O = model.W_O.detach().cpu().double()
        n_heads, n_kv = W_O.shape[1], W_V.shape[1]
        group = n_heads // n_kv  # GQA: query head h reads kv head h // group
        for m in range(model.cfg.n_layers):
            at = 4.0 * m + _ATTN_OFFSET
            if not w < at < r:
                continue
            # attention reads ln1's output: its weight is part of the path (1 once folded)
            pre = stream.chain(w, at) @ _norm_operator(model, stream.norm, m, "ln1", affine=True)
            post = stream.chain(at, r) @ read
            if norm_scale_hook(block_hook(m, "ln1_post")) in model.hook_dict:
                # Gemma normalises the attention output before adding it (never folded)
                post = _norm_operator(model, stream.norm, m, "ln1_post", affine=True) @ post
            if per_head:
                for h in range(n_heads):
                    # (pre W_V) (W_O post): d x d_head products, never a d^3 one per head
                    heads[(m, h)] = (pre @ W_V[m, h // group]) @ (W_O[m, h] @ post)
                    total = total + heads[(m, h)]
            else:
                ov = sum(W_V[m, h // group] @ W_O[m, h] for h in range(n_heads))
                total = total + pre @ ov @ post
    return PathOperators(total, residual, paths, heads)


def decoder_paths(
    dictionaries: Sequence[Dictionary],
    model: Any,
    layer_from: SiteKey,
    layer_to: SiteKey,
    **path_options: Any,
) -> Float[Tensor, "F_from d"]:
    """W_dec T summed over every write of the upstream dictionary: its own decoder and, for a
    cross-layer transcoder's slice, its decoders into later layers that write before the
    downstream dictionary reads (each through the paths from where it writes).

    path_options: passed to `path_operators` (norm already resolved, include_attention,
    cut_at_saes).
    """
    sites = dictionary_sites(dictionaries, model)
    up, down = resolve_site(sites, layer_from), resolve_site(sites, layer_to)
    dec = up.dictionary.W_dec.detach()
    op = path_operators(dictionaries, model, up.name, down.name, per_head=False, **path_options)
    with torch.no_grad():
        left = dec @ op.total.to(dec)
        for hook, w_dec in later_decoders(up.dictionary):
            writer = resolve_site(sites, hook)
            if writer.write_at < down.read_at:
                op = path_operators(
                    dictionaries, model, writer.name, down.name, per_head=False, **path_options
                )
                left = left + w_dec.detach().to(dec) @ op.total.to(dec)
    return left


def apply_operator(
    d_from: Dictionary, op: Float[Tensor, "d d"], d_to: Dictionary
) -> Float[Tensor, "F_from F_to"]:
    """W_dec^{from} T W_enc^{to}, in the upstream dictionary's dtype and device."""
    dec = d_from.W_dec.detach()
    with torch.no_grad():
        return (dec @ op.to(dec.device, dec.dtype)) @ d_to.W_enc.detach().to(dec)


def virtual_weights(
    dictionaries: Sequence[Dictionary],
    model: Any,
    layer_from: SiteKey,
    layer_to: SiteKey,
    *,
    norm: NormSpec = "ignore",
    tokens: Int[Tensor, "batch pos"] | None = None,
    include_attention: bool = False,
    breakdown: bool = False,
    cut_at_saes: bool = False,
) -> VirtualWeights:
    """Dense virtual weights [F_from, F_to] from one dictionary's features to a later one's.

    Args:
        dictionaries: transcoders / skip transcoders (one per MLP) and residual SAEs.
        model: the model they belong to (`replacement.load_model`).
        layer_from, layer_to: the two dictionaries, by layer (if only one dictionary sits
            there) or by hook name; the upstream one must write before the downstream reads.
        norm: "ignore", "mean" (needs `tokens`) or explicit scales (module docstring).
        tokens: token ids to measure mean norm scales on.
        include_attention: add the single-head OV paths, reported per head in `heads`.
        breakdown: also return the term of each subset of skip layers in `paths`.
        cut_at_saes: residual SAEs in between block every path (as in prompt graphs).
    A cross-layer transcoder counts as one dictionary per layer; `total` sums every write of
    an upstream layer (to its own and to later layers), `residual`, `paths` and `heads` break
    down the write to its own layer.
    Builds the full matrix: for large dictionaries use `circuits.invariant.topk_graph`.
    """
    dictionaries = expand_crosslayer(dictionaries)
    sites = dictionary_sites(dictionaries, model)
    d_from = resolve_site(sites, layer_from).dictionary
    d_to = resolve_site(sites, layer_to).dictionary
    ops = path_operators(
        dictionaries,
        model,
        layer_from,
        layer_to,
        norm=norm,
        tokens=tokens,
        include_attention=include_attention,
        breakdown=breakdown,
        cut_at_saes=cut_at_saes,
    )
    total = apply_operator(d_from, ops.total, d_to)
    if later_decoders(d_from):  # a cross-layer transcoder: add its writes to later layers
        norm = resolve_norm(norm, model, tokens)
        left = decoder_paths(
            dictionaries,
            model,
            layer_from,
            layer_to,
            norm=norm,
            include_attention=include_attention,
            cut_at_saes=cut_at_saes,
        )
        with torch.no_grad():
            total = left @ d_to.W_enc.detach().to(left)
    residual = total if ops.heads is None else apply_operator(d_from, ops.residual, d_to)
    paths = heads = None
    if ops.paths is not None:
        paths = {k: apply_operator(d_from, v, d_to) for k, v in ops.paths.items()}
    if ops.heads is not None:
        heads = {k: apply_operator(d_from, v, d_to) for k, v in ops.heads.items()}
    return VirtualWeights(total, residual, paths, heads)
