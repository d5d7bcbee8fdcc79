"""Attribution rows as a transposed linear map: no MLPs, no autograd graph.

Under the freezing of the local replacement model (attention patterns, norm scales and every
MLP output but the transcoders' linear skip paths held at their clean values), the map from
the sources (token embeddings and everything injected at the MLP outputs) to the targets
(encoder pre-activations, logit directions) is linear. Its transpose, applied to a batch of
target vectors, walks the residual stream down the layers:

    resid_post[l] -> resid_mid[l]:  g += N2^T (g W_skip[l]^T)     skip path (transcoder input)
    resid_mid[l]  -> resid_pre[l]:  g[k] += N1_k^T sum_h sum_q P_h[q, k] (M_q^T g[q] W_O,h^T) W_V,h^T

with N the frozen norm at each position: x -> (x - mean x) / scale * w for LayerNorm (the
centring only for LayerNorm), x / scale * w for RMSNorm; `w` is the norm's own weight (the
bias is a constant and drops out; Gemma's `1 + weight` counted), so folded and unfolded models
are both handled. M is the frozen norm after attention in post-norm blocks (Gemma-2/3's
`ln1_post`, a per-position diagonal scaling once its scale is frozen; the identity elsewhere).
Transcoders that write `hook_mlp_out` (after the norm after the MLP, `ln2_post`, where there
is one) inject their features, errors and skip paths there; those that write the MLP's own
output (`mlp.hook_out`, before `ln2_post`) inject through that norm's frozen linear part. A
target enters at its own layer (a feature at its in_hook, a logit direction after the final norm)
and a row reads each source where it was injected: a feature's `a W_dec` (and a cross-layer
transcoder's writes into later layers) at the out_hooks, error vectors there, embeddings at
the bottom. Rows are sorted by target layer so that each layer only touches the rows already
entered, and positions after the last target position are never touched (causal masking).

The path applies when every layer's MLP is replaced by a transcoder (per-layer, skip, or a
cross-layer transcoder's slice) reading the MLP's input and writing its output under any of
their names (`replacement.hook_table`: `hook_resid_mid`, `ln2.hook_normalized`, `ln2.hook_out`
or `mlp.hook_in`; `hook_mlp_out` or `mlp.hook_out`), in a sequential (not parallel
attention/MLP) model with norms before attention and MLP (and optionally after them, as in
Gemma). Elsewhere (SAEs, whose edges differentiate through MLPs; a layer
whose MLP has no transcoder; other architectures) `linear_path_problem` says why and
`attribute` uses the autograd reference.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuits.attribution.sources import PromptSources
from replacement.dictionary import Dictionary
from replacement.hook_table import (
    NormFacts,
    block_hook,
    has_post_attention_norm,
    hook_layer,
    is_attention_pattern,
    mlp_read,
    mlp_replacement,
    mlp_write,
    norm_facts,
    norm_scale_hook,
    post_norm_mismatch,
    same_tensor,
    split_hook,
)

FINAL_READ = "ln_final.hook_normalized"
"""Where logit directions are read (as the autograd reference does)."""
_NORM_SCALES = ("ln1.hook_scale", "ln2.hook_scale")
_POST_NORM_SCALES = ("ln1_post.hook_scale", "ln2_post.hook_scale")


PATTERN_BLOCK = 256
"""Key positions per stored block of a transposed pattern. A causal pattern is zero above its
diagonal, so block b keeps only the queries from its first key on: about (1 + B / pos) / 2 of
the dense [heads, pos, pos] (53% at 4096 tokens, where the dense patterns of a GPT-2-size
model take 9.7 GB)."""


def _causal_blocks(
    pattern: Float[Tensor, "head query key"], key_scale: Float[Tensor, " key"], block: int
) -> list[tuple[int, Float[Tensor, "head b rest"]]]:
    """(k0, P^T[:, k0:k0+block, k0:] scaled per key) for each block of keys: the non-zero part
    of each band, made band by band so that no second dense pattern is ever held."""
    n = pattern.shape[-1]
    return [
        (
            k0,
            (
                pattern[:, k0:, k0 : k0 + block].transpose(1, 2)
                * key_scale[None, k0 : k0 + block, None]
            ).contiguous(),
        )
        for k0 in range(0, n, block)
    ]


def linear_path_problem(model: Any, dictionaries: list[Dictionary]) -> str | None:
    """Why the linear path cannot compute this replacement model's rows (None if it can)."""
    cfg = model.cfg
    if getattr(cfg, "parallel_attn_mlp", False):
        return "the model runs attention and MLP in parallel"
    # a TransformerBridge names its architecture in `architecture` (original_architecture is None)
    arch = str(getattr(cfg, "original_architecture", "") or getattr(cfg, "architecture", "") or "")
    if arch.lower().startswith("olmo2"):
        return f"{arch} has norms only after attention/MLP, which the linear path does not model"
    norm = str(getattr(cfg, "normalization_type", "") or "")
    if not norm.startswith(("LN", "RMS")):
        return f"normalization {norm!r} is not LayerNorm or RMSNorm"
    needed = [FINAL_READ, norm_scale_hook("ln_final"), "hook_embed"]
    for layer in range(cfg.n_layers):
        needed += [block_hook(layer, s) for s in ("attn.hook_pattern", *_NORM_SCALES)]
    missing = [n for n in needed if n not in model.hook_dict]
    if missing:
        return f"the model lacks the hooks {missing[:3]}"
    # norms after attention/MLP are modelled where their outputs are what enters the stream
    mismatch = post_norm_mismatch(model)
    if mismatch is not None:
        post, written = mismatch
        return f"the norm {post!r} does not write {written!r}, which the linear path assumes"
    # hooks a caller installed (e.g. ablations) change the model in ways the map cannot see
    hooked = [n for n, h in model.hook_dict.items() if getattr(h, "_forward_hooks", None)]
    if hooked:
        return f"hooks are installed on the model (at {hooked[:2]})"
    facts = norm_facts(model)
    by_layer: dict[int, Dictionary] = {}
    for d in dictionaries:
        problem = _not_an_mlp(d, facts)
        if problem:
            return problem
        replaced = mlp_replacement(d.in_hook, d.out_hook, facts)
        if replaced.layer in by_layer:
            return f"two dictionaries replace the MLP of layer {replaced.layer}"
        by_layer[replaced.layer] = d
        for hook, _ in getattr(d, "later_decoders", ()):
            later = split_hook(hook).layer
            if mlp_write(hook, later, facts) != replaced.write:
                return (
                    f"a cross-layer decoder writes {hook!r}, not where layer {later}'s MLP writes"
                )
    bare = [layer for layer in range(cfg.n_layers) if layer not in by_layer]
    if bare:
        return (
            f"the MLPs of layers {bare} have no transcoder (they would be differentiated through)"
        )
    return None


def _not_an_mlp(d: Dictionary, facts: NormFacts) -> str | None:
    """Why `d` does not replace one MLP (the linear path needs it to), or None if it does."""
    layer = split_hook(d.out_hook).layer
    if same_tensor(d.in_hook, d.out_hook, facts):
        return (
            f"an SAE at {d.out_hook!r} is differentiated through the MLPs (the linear path "
            "needs transcoders)"
        )
    if mlp_write(d.out_hook, layer, facts) is None:
        return (
            f"a dictionary writing {d.out_hook!r} does not write an MLP's output "
            f"('blocks.{{l}}.hook_mlp_out' or 'blocks.{{l}}.mlp.hook_out')"
        )
    if mlp_read(d.in_hook, layer, facts) is None:
        return (
            f"a transcoder writing {d.out_hook!r} reads {d.in_hook!r}, not the input of layer "
            f"{layer}'s MLP ('hook_resid_mid', 'ln2.hook_normalized', 'ln2.hook_out' or "
            "'mlp.hook_in')"
        )
    return None


def _norm_weight(module: Any, dtype: torch.dtype) -> Tensor | None:
    """The norm's effective weight: Gemma's RMSNorm stores `weight` and multiplies by 1 + weight."""
    w = getattr(module, "w", None)
    if w is None:
        return None
    w = w.detach().to(dtype)
    return 1.0 + w if getattr(module, "uses_weight_offset", False) else w


class LinearRowEngine:
    """Rows of the adjacency for batches of targets, by the transposed frozen linear map.

    A context manager like the autograd `RowEngine`: frozen patterns and scales are captured
    by one no-grad forward on entry (and folded into per-layer matrices) and released on exit.
    Gradients are laid out positions first, [pos, rows, d_model], so that the causal
    truncation to the first p positions is a contiguous slice and every per-position product
    is one batched matmul.
    """

    def __init__(
        self,
        model: Any,
        dictionaries: list[Dictionary],
        tokens: Int[Tensor, " pos"],
        sources: PromptSources,
        batch_size: int,
    ):
        self.model, self.dictionaries, self.sources = model, dictionaries, sources
        self.tokens, self.batch_size = tokens, batch_size
        dtype = model.W_E.dtype
        self.dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self.layered = norm_type_is_layernorm(model)
        self.device = tokens.device

    # ---- setup ---------------------------------------------------------------------------
    @torch.no_grad()
    def __enter__(self) -> LinearRowEngine:
        model, cfg, dt = self.model, self.model.cfg, self.dtype
        names = [norm_scale_hook("ln_final")]
        post = has_post_attention_norm(model)
        for layer in range(cfg.n_layers):
            names += [block_hook(layer, s) for s in ("attn.hook_pattern", *_NORM_SCALES)]
            names += [block_hook(layer, s) for s in _POST_NORM_SCALES] if post else []
        frozen: dict[str, Tensor] = {}

        def keep(act: Tensor, hook: Any) -> Tensor:
            value = act[0].detach().to(dt)
            if is_attention_pattern(hook.name):
                # P^T[h, k, q] with ln1's frozen 1/scale of the key position folded in, made
                # here (ln1 runs first) so that a long prompt never holds a second copy of
                # every layer's [heads, pos, pos] pattern; only its causal bands are kept
                inv_ln1 = 1.0 / frozen[block_hook(hook_layer(hook.name), "ln1.hook_scale")]
                value = _causal_blocks(value, inv_ln1[:, 0], PATTERN_BLOCK)
            frozen[hook.name] = value
            return act

        with model.hooks(fwd_hooks=[(n, keep) for n in names]):
            model(self.tokens.unsqueeze(0))
        self.inv_final = 1.0 / frozen[norm_scale_hook("ln_final")]  # [pos, 1]
        # logit directions are read at ln_final.hook_out (the unembedding's input), so through
        # ln_f's own weight first (1 on a folded model)
        self.lnf_w = _norm_weight(model.ln_final, dt)
        self.inv_ln2 = [1.0 / frozen[block_hook(i, "ln2.hook_scale")] for i in range(cfg.n_layers)]
        W_O, W_V = model.W_O.detach().to(dt), model.W_V.detach().to(dt)
        n_heads, d_head = W_O.shape[1], W_O.shape[2]
        if W_V.shape[1] != n_heads:  # grouped-query attention: each kv head serves a group
            W_V = W_V.repeat_interleave(n_heads // W_V.shape[1], dim=1)
        self.n_heads, self.d_head = n_heads, d_head
        self.patterns, self.W_O_T, self.W_V_T = [], [], []
        # the post-attention norm's frozen 1/scale per position (None without one)
        self.inv_ln1_post: list[Tensor | None] = [
            1.0 / frozen[block_hook(i, "ln1_post.hook_scale")] if post else None
            for i in range(cfg.n_layers)
        ]
        for layer, block in enumerate(model.blocks):
            self.patterns.append(frozen.pop(block_hook(layer, "attn.hook_pattern")))
            w_o = W_O[layer].reshape(n_heads * d_head, -1).T  # [d, h * e]
            if post:  # rows of diag(w1_post) C W_O^T: the post-norm's weight and centring
                w_o = self._centre(_scaled_rows(w_o, _norm_weight(block.ln1_post, dt)), dim=0)
            self.W_O_T.append(w_o.contiguous())
            # rows of W_V^T diag(w1) C: ln1's weight and centring folded in
            w_v = self._centre(_scaled_rows(W_V[layer], _norm_weight(block.ln1, dt)), dim=1)
            self.W_V_T.append(w_v.permute(0, 2, 1).reshape(n_heads * d_head, -1).contiguous())
        facts = norm_facts(model)
        replaced = [mlp_replacement(d.in_hook, d.out_hook, facts) for d in self.dictionaries]
        self.by_layer = {r.layer: k for k, r in enumerate(replaced)}
        self.reads = [r.read for r in replaced]
        # writes before the post-MLP norm (`mlp.hook_out` in Gemma): diag(w) C / scale there
        self.raw_write: list[tuple[Tensor, Tensor | None] | None] = [None] * cfg.n_layers
        for r in replaced:
            if r.write == "raw":
                inv = 1.0 / frozen[block_hook(r.layer, "ln2_post.hook_scale")]
                self.raw_write[r.layer] = (inv, _norm_weight(model.blocks[r.layer].ln2_post, dt))
        self.read_t = [self._read_matrix(k) for k in range(len(self.dictionaries))]
        self.skip_t = [self._skip_matrix(k) for k in range(len(self.dictionaries))]
        self._sources_by_layer()
        return self

    def __exit__(self, *exc: object) -> None:
        self.patterns = []

    def _centre(self, m: Tensor, dim: int) -> Tensor:
        """C m along `dim` for LayerNorm (the transposed centring), m for RMSNorm."""
        return m - m.mean(dim, keepdim=True) if self.layered else m

    def _read_matrix(self, k: int) -> Tensor | None:
        """[d, d] taking a readout vector at dictionary k's in_hook to resid_mid (before 1/scale)."""
        d = self.dictionaries[k]
        layer, read = hook_layer(d.out_hook), self.reads[k]
        if read == "resid":
            return None
        eye = torch.eye(d.d_in, dtype=self.dtype, device=self.device)
        w2 = _norm_weight(self.model.blocks[layer].ln2, self.dtype) if read == "out" else None
        return self._centre(_scaled_rows(eye, w2), dim=1)  # v -> C (w2 * v) as v @ diag(w2) C

    def _skip_matrix(self, k: int) -> Tensor | None:
        """W_skip^T followed by the read map: g_post [.., d_out] -> g_mid (before 1/scale)."""
        d = self.dictionaries[k]
        if d.W_skip is None:
            return None
        m = d.W_skip.detach().to(self.device, self.dtype).T  # [d_out, d_in]
        read = self.read_t[k]
        return (m if read is None else m @ read).contiguous()

    def _sources_by_layer(self) -> None:
        """For every out_hook, the feature sources written there, grouped by position.

        Each write is (column [pos, m], vectors [pos, m, d] or None): the adjacency column of
        the m-th feature at a position (padding points at a spare row, `n_sources`) and its
        injected vector a W_dec (kept when small, else gathered per batch from `recipe`).
        """
        src, n_pos, device = self.sources, self.tokens.numel(), self.device
        self.writes: dict[int, list[tuple[Tensor, Tensor | None, tuple]]] = {}
        starts, offset = [], 0
        for k in range(len(self.dictionaries)):  # sources are ordered by dictionary
            starts.append(offset)
            offset += int((src.feat_dict == k).sum())
        self.n_feat = offset
        kept = 0
        for k, d in enumerate(self.dictionaries):
            mine = torch.arange(starts[k], starts[k + 1] if k + 1 < len(starts) else offset)
            sel = mine.to(src.feat_pos.device)
            pos, idx = src.feat_pos[sel].to(device), src.feat_index[sel].to(device)
            act = src.feat_act[sel].to(device, self.dtype)
            counts = torch.bincount(pos, minlength=n_pos)
            width = max(int(counts.max()) if len(pos) else 0, 1)
            slot = torch.arange(len(pos), device=device) - (counts.cumsum(0) - counts)[pos]
            column = torch.full((n_pos, width), src.n_sources, dtype=torch.long, device=device)
            column[pos, slot] = mine.to(device)
            gather = torch.zeros(n_pos, width, dtype=torch.long, device=device)
            gather[pos, slot] = idx
            scale = torch.zeros(n_pos, width, dtype=self.dtype, device=device)
            scale[pos, slot] = act
            for hook, w_dec in [(d.out_hook, d.W_dec), *getattr(d, "later_decoders", ())]:
                recipe = (gather, scale, w_dec.detach().to(device))
                size = n_pos * width * d.d_out
                vectors = _vectors(*recipe) if kept + size <= KEPT_VECTORS else None
                kept += size if vectors is not None else 0
                self.writes.setdefault(hook_layer(hook), []).append((column, vectors, recipe))

    # ---- the transposed map ----------------------------------------------------------------
    def _read_sources(self, g: Tensor, layer: int, rows: Tensor) -> None:
        """Add the columns of every source injected at layer `layer`'s out_hook.

        g: [n, p, d] gradients at the out_hook; rows: [n_sources + 1, n] (transposed rows).
        """
        n, p, _ = g.shape
        g_pos = None
        for column, vectors, recipe in self.writes.get(layer, ()):
            vec = (
                vectors[:p]
                if vectors is not None
                else _vectors(*(r[:p] for r in recipe[:2]), recipe[2])
            )
            if g_pos is None:
                g_pos = g.transpose(0, 1).transpose(1, 2)  # [p, d, n]
            vals = torch.bmm(vec, g_pos).reshape(-1, n)  # [p * m, n]
            rows.index_add_(0, column[:p].reshape(-1), vals.to(rows.dtype))
        k = self.by_layer[layer]
        err = self.sources.errors[k][1:p].to(self.device, self.dtype)  # [p-1, d]
        start = self.n_feat + k * (self.tokens.numel() - 1)
        rows[start : start + p - 1] += torch.einsum("npd,pd->pn", g[:, 1:], err).to(rows.dtype)

    def _attention_t(self, g: Tensor, layer: int) -> None:
        """g at resid_mid [n, p, d] += its path back to resid_pre through frozen OV (in place)."""
        n, p, d = g.shape
        h, e = self.n_heads, self.d_head
        g_out = g if self.inv_ln1_post[layer] is None else g * self.inv_ln1_post[layer][:p]
        gz = (g_out.reshape(n * p, d) @ self.W_O_T[layer]).reshape(n, p, h, e)
        gz = gz.permute(2, 1, 0, 3).reshape(h, p, n * e)
        gv = gz.new_empty(h, p, n * e)  # [h, k, n * e]: gv[:, k] = sum_q P^T[:, k, q] gz[:, q]
        for k0, band in self.patterns[layer]:  # band: keys k0.., queries k0.. (causal)
            if k0 >= p:
                break
            k1 = min(k0 + band.shape[1], p)
            gv[:, k0:k1] = torch.bmm(band[:, : k1 - k0, : p - k0], gz[:, k0:p])
        gv = gv.reshape(h, p, n, e).permute(2, 1, 0, 3).reshape(n * p, h * e)
        g.view(n * p, d).addmm_(gv, self.W_V_T[layer])

    def _run(self, g: Tensor, entered: list[int]) -> Tensor:
        """Rows [n, n_src] of targets whose gradients g [n, p, d] are already in place at
        their entry points; rows are sorted by entry, highest first: `entered[l]` rows enter
        at layer l or above (`entered[n_layers]`: the logits, after the last layer)."""
        src, n_pos = self.sources, self.tokens.numel()
        n, p, _ = g.shape
        rows = torch.zeros(src.n_sources + 1, n, device=self.device)  # last: padding
        for layer in range(self.model.cfg.n_layers - 1, -1, -1):
            k, above = self.by_layer[layer], entered[layer + 1]
            if above:
                top = g[:above]
                if self.raw_write[layer] is not None:  # through the frozen post-MLP norm
                    inv, w = self.raw_write[layer]
                    top = self._centre(top if w is None else top * w, dim=-1) * inv[:p]
                self._read_sources(top, layer, rows[:, :above])
                if self.skip_t[k] is not None:
                    up = top @ self.skip_t[k]
                    if self.reads[k] == "resid":
                        g[:above] += up
                    else:
                        g[:above].addcmul_(up, self.inv_ln2[layer][:p])
            if entered[layer]:
                self._attention_t(g[: entered[layer]], layer)
        token_cols = torch.einsum("npd,pd->pn", g, src.embed[:p].to(self.dtype))
        rows[src.n_sources - n_pos : src.n_sources - n_pos + p] = token_cols.to(rows.dtype)
        return rows[: src.n_sources].T

    # ---- the two kinds of rows ---------------------------------------------------------------
    @torch.no_grad()
    def rows_for_logits(self, directions: Float[Tensor, "n d_model"]) -> Tensor:
        """Rows of logit (or custom direction) targets read after the final norm, last position."""
        out = []
        n_pos, d, n_layers = self.tokens.numel(), self.model.cfg.d_model, self.model.cfg.n_layers
        for start in range(0, len(directions), self.batch_size):
            dirs = directions[start : start + self.batch_size].to(self.device, self.dtype)
            g = torch.zeros(len(dirs), n_pos, d, dtype=self.dtype, device=self.device)
            if self.lnf_w is not None:
                dirs = dirs * self.lnf_w
            g[:, -1] = self._centre(dirs, dim=-1) * self.inv_final[-1]
            out.append(self._run(g, [len(dirs)] * (n_layers + 1)))
        return torch.cat(out)

    @torch.no_grad()
    def rows_for_features(self, chosen: Int[Tensor, " n"]) -> Tensor:
        """Rows of feature targets (indices into the sources' active features).

        Each batch is split by target position into a few groups, each run only over the
        positions up to its last target (the rest of its gradient is zero, causally).
        """
        src, out = self.sources, []
        for start in range(0, len(chosen), self.batch_size):
            idx = chosen[start : start + self.batch_size].to(src.feat_dict.device)
            by_pos = src.feat_pos[idx].argsort(stable=True)
            group = max(POSITION_GROUP_MIN, -(-len(idx) // POSITION_GROUPS))
            rows = torch.empty(len(idx), src.n_sources, device=self.device)
            for g0 in range(0, len(idx), group):
                part = by_pos[g0 : g0 + group]
                rows[part.to(self.device)] = self._feature_group(idx[part])
            out.append(rows)
        return torch.cat(out)

    def _feature_group(self, idx: Tensor) -> Tensor:
        """Rows of one group of feature targets, each entering at its own layer."""
        src, n_layers = self.sources, self.model.cfg.n_layers
        layers = torch.tensor(
            [hook_layer(self.dictionaries[k].out_hook) for k in src.feat_dict[idx].tolist()]
        )
        order = torch.sort(layers, descending=True, stable=True).indices
        idx, layers = idx[order.to(idx.device)], layers[order]
        pos = src.feat_pos[idx].to(self.device)
        g = torch.zeros(len(idx), int(pos.max()) + 1, self.model.cfg.d_model, dtype=self.dtype)
        g = g.to(self.device)
        rows_at = torch.arange(len(idx), device=self.device)
        for layer in layers.unique().tolist():
            mine = (layers == layer).nonzero()[:, 0].to(self.device)
            g[rows_at[mine], pos[mine]] = self._feature_targets(idx[mine.to(idx.device)], layer)
        entered = [int((layers >= layer).sum()) for layer in range(n_layers + 1)]
        rows = self._run(g, entered)
        unsorted = torch.empty_like(rows)
        unsorted[order.to(rows.device)] = rows
        return unsorted

    def _feature_targets(self, idx: Tensor, layer: int) -> Tensor:
        """Encoder columns of features (all of layer `layer`) as gradients at resid_mid [n, d]."""
        src, k = self.sources, self.by_layer[layer]
        d = self.dictionaries[k]
        enc = d.W_enc.detach()[:, src.feat_index[idx].to(d.W_enc.device)].T
        enc = enc.to(self.device, self.dtype)
        read = self.read_t[k]
        if read is None:
            return enc
        return (enc @ read) * self.inv_ln2[layer][src.feat_pos[idx].to(self.device)]


def _vectors(gather: Tensor, scale: Tensor, w_dec: Tensor) -> Tensor:
    """Injected vectors a W_dec [pos, m, d] of the features laid out by position."""
    return w_dec[gather].to(scale.dtype) * scale.unsqueeze(-1)


KEPT_VECTORS = 2**27
"""Most elements of injected source vectors kept between batches (beyond: gathered per batch)."""
POSITION_GROUPS = 4
"""Groups a batch of feature rows is split into by target position."""
POSITION_GROUP_MIN = 64
"""Fewest rows in a position group (smaller groups cost more in overhead than they save)."""


def _scaled_rows(m: Tensor, w: Tensor | None) -> Tensor:
    """diag(w) m along m's second-to-last dimension (m unchanged when w is None)."""
    return m if w is None else m * w[:, None]


ROW_MEMORY_BYTES = 2**28
"""Working memory a batch of rows may take on the CPU (on CUDA: a quarter of what is free)."""


def auto_batch_size(n_pos: int, d_model: int, n_sources: int, device: torch.device) -> int:
    """Rows per batch from the prompt length and the memory at hand.

    A row holds its gradient through the residual stream and the head space ([pos, d_model]
    several times over) and its adjacency row ([n_sources]); wider batches amortise the
    per-layer work, so take as many rows as the budget allows, between 16 and 4096.
    """
    budget = ROW_MEMORY_BYTES
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = max(budget, free // 4)
    per_row = 4 * (6 * n_pos * d_model + 2 * n_sources)
    return int(min(4096, max(16, budget // per_row)))


def norm_type_is_layernorm(model: Any) -> bool:
    """True for LayerNorm (centring), False for RMSNorm."""
    return str(model.cfg.normalization_type).startswith("LN")
