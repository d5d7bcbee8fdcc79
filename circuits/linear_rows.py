"""Attribution rows as a transposed linear map: no MLPs, no autograd graph.

Under the freezing of the local replacement model (attention patterns, norm scales and every
MLP output but the transcoders' linear skip paths held at their clean values), the map from
the sources (token embeddings and everything injected at the MLP outputs) to the targets
(encoder pre-activations, logit directions) is linear. Its transpose, applied to a batch of
target vectors, walks the residual stream down the layers:

    resid_post[l] -> resid_mid[l]:  g += N2^T (g W_skip[l]^T)     skip path (transcoder input)
    resid_mid[l]  -> resid_pre[l]:  g[k] += N1_k^T sum_h sum_q P_h[q, k] (g[q] W_O,h^T) W_V,h^T

with N the frozen norm at each position: x -> (x - mean x) / scale * w for LayerNorm (the
centring only for LayerNorm), x / scale * w for RMSNorm; `w` is the norm's own weight (the
bias is a constant and drops out), so folded and unfolded models are both handled. A target
enters at its own layer (a feature at its in_hook, a logit direction after the final norm)
and a row reads each source where it was injected: a feature's `a W_dec` (and a cross-layer
transcoder's writes into later layers) at the out_hooks, error vectors there, embeddings at
the bottom. Rows are sorted by target layer so that each layer only touches the rows already
entered, and positions after the last target position are never touched (causal masking).

The path applies when every layer's MLP is replaced by a transcoder (per-layer, skip, or a
cross-layer transcoder's slice) reading the MLP input (`ln2.hook_normalized`, `ln2.hook_out`
or `hook_resid_mid`) and writing `hook_mlp_out`, in a sequential (not parallel
attention/MLP) pre-norm model. Elsewhere (SAEs, whose edges differentiate through MLPs; a layer
whose MLP has no transcoder; other architectures) `linear_path_problem` says why and
`attribute` uses the autograd reference.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuits.sources import PromptSources
from replacement.dictionary import Dictionary
from replacement.hooks import hook_layer

FINAL_READ = "ln_final.hook_normalized"
"""Where logit directions are read (as the autograd reference does)."""

_READS = {"ln2.hook_normalized": "normalized", "ln2.hook_out": "out", "hook_resid_mid": "resid"}


def linear_path_problem(model: Any, dictionaries: list[Dictionary]) -> str | None:
    """Why the linear path cannot compute this replacement model's rows (None if it can)."""
    cfg = model.cfg
    if getattr(cfg, "parallel_attn_mlp", False):
        return "the model runs attention and MLP in parallel"
    arch = str(getattr(cfg, "original_architecture", "") or "")
    if arch.lower().startswith(("gemma", "olmo2")):
        return f"{arch} has norms after attention/MLP, which the linear path does not model"
    norm = str(getattr(cfg, "normalization_type", "") or "")
    if not norm.startswith(("LN", "RMS")):
        return f"normalization {norm!r} is not LayerNorm or RMSNorm"
    needed = [FINAL_READ, "ln_final.hook_scale", "hook_embed"]
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}"
        needed += [f"{b}.attn.hook_pattern", f"{b}.ln1.hook_scale", f"{b}.ln2.hook_scale"]
    missing = [n for n in needed if n not in model.hook_dict]
    if missing:
        return f"the model lacks the hooks {missing[:3]}"
    by_layer: dict[int, Dictionary] = {}
    for d in dictionaries:
        layer = hook_layer(d.out_hook)
        read = d.in_hook.removeprefix(f"blocks.{layer}.")
        if d.out_hook != f"blocks.{layer}.hook_mlp_out" or read not in _READS:
            kind = "an SAE" if d.in_hook == d.out_hook else "a dictionary"
            return f"{kind} at {d.in_hook!r} -> {d.out_hook!r} does not replace an MLP"
        by_layer[layer] = d
    bare = [layer for layer in range(cfg.n_layers) if layer not in by_layer]
    if bare:
        return f"the MLPs of layers {bare} have no transcoder (they would be differentiated through)"
    return None


def _norm_weight(module: Any, dtype: torch.dtype) -> Tensor | None:
    w = getattr(module, "w", None)
    return None if w is None else w.detach().to(dtype)


class LinearRowEngine:
    """Rows of the adjacency for batches of targets, by the transposed frozen linear map.

    A context manager like the autograd `_RowEngine`: frozen patterns and scales are captured
    by one no-grad forward on entry and released on exit.
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
        self._frozen: dict[str, Tensor] | None = None

    # ---- setup ---------------------------------------------------------------------------
    @torch.no_grad()
    def __enter__(self) -> LinearRowEngine:
        model, cfg, dt = self.model, self.model.cfg, self.dtype
        names = ["ln_final.hook_scale"]
        for layer in range(cfg.n_layers):
            names += [f"blocks.{layer}.{n}" for n in ("attn.hook_pattern", "ln1.hook_scale")]
            names.append(f"blocks.{layer}.ln2.hook_scale")
        frozen: dict[str, Tensor] = {}

        def keep(act: Tensor, hook: Any) -> Tensor:
            frozen[hook.name] = act[0].detach().to(dt)
            return act

        with model.hooks(fwd_hooks=[(n, keep) for n in names]):
            model(self.tokens.unsqueeze(0))
        self._frozen = frozen
        # per layer: W_O [h, dh, d], W_V [h, d, dh] with ln1's weight folded in
        W_O, W_V = model.W_O.detach().to(dt), model.W_V.detach().to(dt)
        if W_V.shape[1] != W_O.shape[1]:  # grouped-query attention: each kv head serves a group
            W_V = W_V.repeat_interleave(W_O.shape[1] // W_V.shape[1], dim=1)
        self.W_O, self.W_V = W_O, W_V
        self.ln1_w = [_norm_weight(b.ln1, dt) for b in model.blocks]
        self.ln2_w = [_norm_weight(b.ln2, dt) for b in model.blocks]
        self.lnf_w = _norm_weight(model.ln_final, dt)
        # per layer: the dictionary slice whose MLP it replaces and how it reads
        self.by_layer = {hook_layer(d.out_hook): k for k, d in enumerate(self.dictionaries)}
        self.reads = [
            _READS[d.in_hook.removeprefix(f"blocks.{hook_layer(d.out_hook)}.")]
            for d in self.dictionaries
        ]
        self.skips = [
            None if d.W_skip is None else d.W_skip.detach().to(dt) for d in self.dictionaries
        ]
        self._sources_by_layer()
        return self

    def __exit__(self, *exc: object) -> None:
        self._frozen = None

    def _sources_by_layer(self) -> None:
        """For every out_hook, the feature columns written there, padded per position."""
        src, n_pos = self.sources, self.tokens.numel()
        device = self.tokens.device
        n_feat = src.n_features
        self.writes: dict[int, list[tuple[Tensor, Tensor, Tensor, Tensor]]] = {}
        offset = 0
        starts = []
        for k in range(len(self.dictionaries)):
            n_k = int((src.feat_dict == k).sum())
            starts.append(offset)
            offset += n_k
        for k, d in enumerate(self.dictionaries):
            mine = torch.arange(starts[k], starts[k] + int((src.feat_dict == k).sum()))
            pos = src.feat_pos[mine.to(src.feat_pos.device)].to(device)
            idx = src.feat_index[mine.to(src.feat_pos.device)].to(device)
            act = src.feat_act[mine.to(src.feat_pos.device)].to(device, self.dtype)
            # features of this dictionary grouped by position, padded to the fullest position
            counts = torch.bincount(pos, minlength=n_pos)
            width = int(counts.max()) if len(pos) else 0
            slot = torch.arange(len(pos), device=device) - (counts.cumsum(0) - counts)[pos]
            column = torch.full((n_pos, max(width, 1)), -1, dtype=torch.long, device=device)
            column[pos, slot] = mine.to(device)
            gather = torch.zeros(n_pos, max(width, 1), dtype=torch.long, device=device)
            gather[pos, slot] = idx
            scale = torch.zeros(n_pos, max(width, 1), dtype=self.dtype, device=device)
            scale[pos, slot] = act
            layer_writes = [(d.out_hook, d.W_dec)] + list(getattr(d, "later_decoders", ()))
            for hook, w_dec in layer_writes:
                entry = (column, gather, scale, w_dec.detach())
                self.writes.setdefault(hook_layer(hook), []).append(entry)
        self.n_feat = n_feat
        assert offset == n_feat  # sources are ordered by dictionary

    # ---- the transposed map ----------------------------------------------------------------
    def _norm_t(self, g: Tensor, scale_name: str) -> Tensor:
        """Transpose of the frozen norm (before its weight) applied to g [n, p, d]."""
        scale = self._frozen[scale_name][: g.shape[1]]  # [p, 1]
        if self.layered:
            g = g - g.mean(-1, keepdim=True)
        return g / scale

    def _into_resid(self, g: Tensor, read: str, layer: int) -> Tensor:
        """Gradient at resid_mid of a readout vector given at an MLP-input hook."""
        if read == "resid":
            return g
        if read == "out" and self.ln2_w[layer] is not None:
            g = g * self.ln2_w[layer]
        return self._norm_t(g, f"blocks.{layer}.ln2.hook_scale")

    def _attention_t(self, g: Tensor, layer: int) -> Tensor:
        """g at resid_mid [n, p, d] -> its contribution at resid_pre through frozen OV."""
        p = g.shape[1]
        pattern = self._frozen[f"blocks.{layer}.attn.hook_pattern"][:, :p, :p]  # [h, q, k]
        gz = torch.einsum("npd,hed->nhpe", g, self.W_O[layer])  # [n, h, q, dh]
        gv = pattern.transpose(1, 2).unsqueeze(0) @ gz  # [n, h, k, dh]
        gx = torch.einsum("nhke,hde->nkd", gv, self.W_V[layer])
        if self.ln1_w[layer] is not None:
            gx = gx * self.ln1_w[layer]
        return self._norm_t(gx, f"blocks.{layer}.ln1.hook_scale")

    def _read_sources(self, g: Tensor, layer: int, rows: Tensor) -> None:
        """Add the columns of every source injected at layer `layer`'s out_hook."""
        n, p, _ = g.shape
        for column, gather, scale, w_dec in self.writes.get(layer, ()):
            col, idx, act = column[:p], gather[:p], scale[:p]
            if (col >= 0).sum() == 0:
                continue
            vec = w_dec[idx].to(self.dtype) * act.unsqueeze(-1)  # [p, m, d]
            vals = torch.einsum("npd,pmd->npm", g, vec).reshape(n, -1)
            flat = col.reshape(-1)
            live = flat >= 0
            rows[:n, flat[live]] += vals[:, live].float()
        k = self.by_layer[layer]
        err = self.sources.errors[k][1:p].to(g.device, self.dtype)  # [p-1, d]
        start = self.n_feat + k * (self.tokens.numel() - 1)
        rows[:n, start : start + p - 1] += torch.einsum("npd,pd->np", g[:, 1:], err).float()

    def _run(self, g_top: Tensor | None, inject: list[tuple[int, Tensor]], n: int) -> Tensor:
        """Rows [n, n_src] for targets already at the top (g_top [n_top, p, d]) and targets
        entering at resid_mid of layer l (inject: (l, g [n_l, p, d]) in descending l, the rows
        of each following the previous ones)."""
        src, n_pos = self.sources, self.tokens.numel()
        rows = torch.zeros(n, src.n_sources, device=self.tokens.device)
        g = g_top
        pending = list(inject)
        for layer in range(self.model.cfg.n_layers - 1, -1, -1):
            if g is not None:
                self._read_sources(g, layer, rows)
                k = self.by_layer[layer]
                if self.skips[k] is not None:
                    up = g @ self.skips[k].T
                    g = g + self._into_resid(up, self.reads[k], layer)
            while pending and pending[0][0] == layer:
                _, g_new = pending.pop(0)
                g = g_new if g is None else _stack(g, g_new)
            if g is not None:
                g = g + self._attention_t(g, layer)
        token_cols = torch.einsum("npd,pd->np", g, src.embed[: g.shape[1]].to(self.dtype))
        rows[: g.shape[0], src.n_sources - n_pos : src.n_sources - n_pos + g.shape[1]] = (
            token_cols.float()
        )
        return rows

    # ---- the two kinds of rows ---------------------------------------------------------------
    @torch.no_grad()
    def rows_for_logits(self, directions: Float[Tensor, "n d_model"]) -> Tensor:
        """Rows of logit (or custom direction) targets read after the final norm, last position."""
        out = []
        n_pos, d = self.tokens.numel(), self.model.cfg.d_model
        for start in range(0, len(directions), self.batch_size):
            dirs = directions[start : start + self.batch_size].to(self.tokens.device, self.dtype)
            g = torch.zeros(len(dirs), n_pos, d, dtype=self.dtype, device=dirs.device)
            # directions are read at ln_final.hook_out (the unembedding's input): through
            # ln_f's own weight first, which is 1 on a folded model
            g[:, -1] = dirs if self.lnf_w is None else dirs * self.lnf_w
            g = self._norm_t(g, "ln_final.hook_scale")
            out.append(self._run(g, [], len(dirs)))
        return torch.cat(out)

    @torch.no_grad()
    def rows_for_features(self, chosen: Int[Tensor, " n"]) -> Tensor:
        """Rows of feature targets (indices into the sources' active features)."""
        src, out = self.sources, []
        for start in range(0, len(chosen), self.batch_size):
            idx = chosen[start : start + self.batch_size].to(src.feat_dict.device)
            dict_k = src.feat_dict[idx]
            layers = torch.tensor(
                [hook_layer(self.dictionaries[k].out_hook) for k in dict_k.tolist()]
            )
            order = torch.sort(layers, descending=True, stable=True).indices
            inject = []
            for layer in layers[order].unique_consecutive().tolist():
                mine = order[layers[order] == layer].to(idx.device)
                inject.append((layer, self._feature_targets(idx[mine], layer)))
            rows = self._run(None, inject, len(idx))
            unsorted = torch.empty_like(rows)
            unsorted[order.to(rows.device)] = rows
            out.append(unsorted)
        return torch.cat(out)

    def _feature_targets(self, idx: Tensor, layer: int) -> Tensor:
        """Encoder columns of features (all of layer `layer`) as gradients at resid_mid."""
        src, k = self.sources, self.by_layer[layer]
        d = self.dictionaries[k]
        pos = src.feat_pos[idx].to(self.tokens.device)
        enc = d.W_enc.detach()[:, src.feat_index[idx].to(d.W_enc.device)].T.to(self.dtype)
        p = int(pos.max()) + 1
        g = torch.zeros(len(idx), p, enc.shape[-1], dtype=self.dtype, device=enc.device)
        g[torch.arange(len(idx), device=enc.device), pos] = enc
        return self._into_resid(g, self.reads[k], layer)


def _stack(g: Tensor, g_new: Tensor) -> Tensor:
    """Rows of g then rows of g_new, padded to the longer position span."""
    p = max(g.shape[1], g_new.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, p - t.shape[1]))  # noqa: E731
    return torch.cat([pad(g), pad(g_new)])


ROW_MEMORY_BYTES = 2**30
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
