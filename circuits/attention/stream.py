"""Each source's contribution to the residual stream feeding every layer, in the frozen model.

With attention patterns and norm scales frozen and every MLP replaced by a transcoder (its
output depends on its input only through the linear skip path), the residual stream at
`blocks.l.hook_resid_pre` is a sum of one [pos, d_model] term per source:

- the graph's own nodes: active features (a W_dec at their out_hook, and a cross-layer
  transcoder's later writes), error nodes, token embeddings;
- position embeddings (one source per position, where the model has them);
- constants: per layer, the attention block's (value/output biases and the norm's bias passed
  through the frozen pattern) and the MLP block's (decoder bias, the BOS position's output,
  the norm's bias through W_skip); and any constant at the embedding.

The contributions are propagated forward, layer by layer (`ResidualStream.sweep`): attention
    x -> M_q sum_h sum_k P_h[q, k] N1_k(x_k) W_V,h W_O,h
(N1 the frozen ln1 without its bias, M the frozen norm after attention where the model has one),
then the skip path x -> R(x) W_skip (R the transcoder's read: identity, the frozen ln2, or the
frozen ln2 with its weight), then the injections at the MLP output. Each constant is what the
block computed minus its linear part applied to its actual input, so the contributions sum to
the actual residual stream exactly; that they are right one by one is checked in the tests
against autograd through the frozen model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuits.attribution.linear_rows import _norm_weight, linear_path_problem
from circuits.attribution.sources import PromptSources
from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError
from replacement.hook_table import (
    block_hook,
    hook_layer,
    mlp_read,
    mlp_replacement,
    norm_facts,
    norm_scale_hook,
)

_CAPTURED = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_attn_out",
    "hook_mlp_out",
    "ln1.hook_scale",
    "ln2.hook_scale",
    "ln1_post.hook_scale",
    "attn.hook_pattern",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_attn_scores",
    "attn.hook_rot_q",
    "attn.hook_rot_k",
    "attn.hook_cos",
    "attn.hook_sin",
    "attn.hook_q_normed",
    "attn.hook_k_normed",
    "attn.q_norm.hook_scale",
    "attn.k_norm.hook_scale",
)
"""What `ResidualStream` freezes in every block (where the model has it)."""


@dataclass
class SourceTable:
    """Every source of the residual stream: the graph's sources first, in their order."""

    labels: list[str] = field(default_factory=list)
    """A readable label per source."""
    node_ids: list[str] = field(default_factory=list)
    """circuit-tracer node id of graph sources ("" for position embeddings and constants)."""
    kinds: list[str] = field(default_factory=list)
    """"feature", "error", "token", "position" or "constant"."""
    positions: list[int] = field(default_factory=list)
    """Position the source is injected at (-1 for constants, which act at every position)."""

    def add(self, label: str, node_id: str, kind: str, pos: int) -> int:
        self.labels.append(label)
        self.node_ids.append(node_id)
        self.kinds.append(kind)
        self.positions.append(pos)
        return len(self.labels) - 1


def _born(born: set[int], rows: Tensor) -> bool:
    """Whether the group of sources `rows` was written before (a later write of a cross-layer
    transcoder's features); records it as written otherwise."""
    if len(rows) == 0 or int(rows[0]) in born:
        return len(rows) > 0
    born.update(rows.tolist())
    return False


def _kept(block: "_Block", keep: Tensor) -> "_Block":
    """The block's rows for the sources in `keep`."""
    mine = torch.isin(block.index, keep)
    return _Block(block.index[mine], block.x[mine])


@dataclass
class _Block:
    """Sources injected at one place, with their current contributions [n, pos, d]."""

    index: Int[Tensor, " n"]
    x: Float[Tensor, "n pos d"]


class ResidualStream:
    """Frozen values of one prompt and the forward sweep of source contributions."""

    def __init__(
        self,
        model: Any,
        dictionaries: list[Dictionary],
        tokens: Int[Tensor, " pos"],
        sources: PromptSources,
    ):
        problem = linear_path_problem(model, dictionaries)
        facts = norm_facts(model)
        if problem is None:  # the stream models MLP outputs as written to the residual stream
            raw = [
                d.out_hook
                for d in dictionaries
                if getattr(mlp_replacement(d.in_hook, d.out_hook, facts), "write", None) == "raw"
            ]
            if raw:
                problem = f"dictionaries at {raw} write the MLP's output before its post-norm"
        if problem is not None:
            raise SparseCircuitsError(
                f"QK attributions need the frozen model to be linear in its sources: {problem}"
            )
        self.model, self.dictionaries, self.tokens, self.sources = (
            model,
            dictionaries,
            tokens,
            sources,
        )
        cfg = model.cfg
        self.dtype = torch.float64 if model.W_E.dtype == torch.float64 else torch.float32
        self.layered = str(cfg.normalization_type).startswith("LN")
        self.n_layers, self.n_pos, self.d = cfg.n_layers, tokens.numel(), cfg.d_model
        self.by_layer = {hook_layer(d.out_hook): k for k, d in enumerate(dictionaries)}
        self.frozen = self._capture()
        self._folded: dict[tuple[int, str], Tensor] = {}
        self.table = self._table()

    # ---- frozen values -------------------------------------------------------------------
    @torch.no_grad()
    def _capture(self) -> dict[str, Tensor]:
        """One forward: patterns, scales, stream and block outputs, queries, keys, scores."""
        model, dt = self.model, self.dtype
        wanted = ["hook_embed", "hook_pos_embed", norm_scale_hook("ln_final")]
        for layer in range(self.n_layers):
            wanted += [block_hook(layer, n) for n in _CAPTURED]
        names = [n for n in wanted if n in model.hook_dict]
        frozen: dict[str, Tensor] = {}

        def keep(act: Tensor, hook: Any, name: str) -> Tensor:
            frozen[name] = act[0].detach().to(dt)
            return act

        hooks = [(n, lambda act, hook, n=n: keep(act, hook, n)) for n in names]
        with model.hooks(fwd_hooks=hooks):
            model(self.tokens.unsqueeze(0))
        return frozen

    def get(self, layer: int, name: str) -> Tensor | None:
        """A frozen value of block `layer` (None where the model has no such hook)."""
        return self.frozen.get(block_hook(layer, name))

    # ---- the linear maps -------------------------------------------------------------------
    def centre(self, x: Tensor) -> Tensor:
        """x - mean(x) over d_model for LayerNorm; x for RMSNorm."""
        return x - x.mean(-1, keepdim=True) if self.layered else x

    def ln1_bias(self, layer: int) -> Float[Tensor, " d"]:
        """ln1's bias (zero for RMSNorm and folded models)."""
        b = getattr(self.model.blocks[layer].ln1, "b", None)
        return torch.zeros(self.d, dtype=self.dtype) if b is None else b.detach().to(self.dtype)

    def _fold(self, m: Tensor, w: Tensor | None) -> Tensor:
        """C diag(w) m for a [d, k] matrix m read after a norm (centring only for LayerNorm):
        the norm's weight and centring folded into what reads it, so a sweep never makes a
        normalised copy of the contributions."""
        m = m if w is None else m * w[:, None]
        return m - m.mean(0, keepdim=True) if self.layered else m

    def ln1_weights(self, layer: int, which: str) -> Tensor:
        """C diag(w_ln1) W_{which} as [d, heads * d_head] (which: "Q", "K" or "V")."""
        key = (layer, which)
        if key not in self._folded:
            W = getattr(self.model, f"W_{which}")[layer].detach().to(self.dtype)  # [h, d, e]
            flat = W.permute(1, 0, 2).reshape(self.d, -1)
            w = _norm_weight(self.model.blocks[layer].ln1, self.dtype)
            self._folded[key] = self._fold(flat, w).contiguous()
        return self._folded[key]

    def project(self, x: Float[Tensor, "n pos d"], layer: int, which: str) -> Tensor:
        """N1(x) W_{which}: [n, pos, heads, d_head] (ln1 without its bias, frozen scale)."""
        n, p, _ = x.shape
        W = self.ln1_weights(layer, which)
        e = self.model.cfg.d_head
        out = (x.reshape(n * p, self.d) @ W).reshape(n, p, W.shape[1] // e, e)
        return out / self.get(layer, "ln1.hook_scale")[:p, :, None]

    def attention(self, x: Float[Tensor, "n pos d"], layer: int, per_head: bool = False) -> Tensor:
        """Layer `layer`'s frozen attention applied to contributions x: [n, pos, d] (or
        [n, pos, head, d] per head, before the sum over heads)."""
        pattern = self.get(layer, "attn.hook_pattern")
        W_O = self.model.W_O[layer].detach().to(self.dtype)  # [h, e, d]
        n_heads = W_O.shape[0]
        v = self.project(x, layer, "V")
        v = v.repeat_interleave(n_heads // v.shape[2], dim=2)
        z = torch.einsum("hqk,nkhe->nqhe", pattern, v)
        if per_head:
            out = torch.einsum("nqhe,hed->nqhd", z, W_O)
            return self._post(out.transpose(1, 2), layer).transpose(1, 2)
        n, p = z.shape[:2]
        out = z.reshape(n * p, W_O.shape[0] * W_O.shape[1]) @ W_O.reshape(-1, self.d)
        return self._post(out.reshape(n, p, self.d), layer)

    def _post(self, y: Tensor, layer: int) -> Tensor:
        """The frozen norm after attention (Gemma's ln1_post), identity without one."""
        scale = self.get(layer, "ln1_post.hook_scale")
        if scale is None:
            return y
        w = _norm_weight(self.model.blocks[layer].ln1_post, self.dtype)
        out = self.centre(y) / scale[: y.shape[-2]]
        return out if w is None else out * w

    def skip(self, x: Float[Tensor, "n pos d"], layer: int) -> Tensor | None:
        """The transcoder's linear skip path from resid_mid (None without W_skip)."""
        d = self.dictionaries[self.by_layer[layer]]
        if d.W_skip is None:
            return None
        key = (layer, "skip")
        read = mlp_read(d.in_hook, layer, norm_facts(self.model))
        if key not in self._folded:
            W = d.W_skip.detach().to(self.dtype)
            if read != "resid":
                w = (
                    _norm_weight(self.model.blocks[layer].ln2, self.dtype)
                    if read == "out"
                    else None
                )
                W = self._fold(W, w)
            self._folded[key] = W.contiguous()
        n, p, _ = x.shape
        W = self._folded[key]
        out = (x.reshape(n * p, W.shape[0]) @ W).reshape(n, p, W.shape[1])
        return out if read == "resid" else out / self.get(layer, "ln2.hook_scale")[:p]

    # ---- the sources -----------------------------------------------------------------------
    def _table(self) -> SourceTable:
        """Labels of the graph's sources, position embeddings and constants; injections."""
        src, P, dt = self.sources, self.n_pos, self.dtype
        model = self.model
        strs = [model.tokenizer.decode([t]) for t in self.tokens.tolist()]
        layers = [hook_layer(d.out_hook) for d in self.dictionaries]
        table = SourceTable()
        # injections at each layer's MLP output: (source indices, positions, vectors)
        self.inject: dict[int, list[tuple[Tensor, Tensor, Tensor]]] = {}
        for k in range(len(self.dictionaries)):
            mine = (src.feat_dict == k).nonzero()[:, 0]
            pos, idx, act = src.feat_pos[mine], src.feat_index[mine], src.feat_act[mine]
            for i, p, f in zip(mine.tolist(), pos.tolist(), idx.tolist(), strict=True):
                assert (
                    table.add(
                        f"L{layers[k]} F{f} @{p} {strs[p]!r}", f"{layers[k]}_{f}_{p}", "feature", p
                    )
                    == i
                )
            vec = src.decoders[k][idx].to(dt) * act[:, None].to(dt)
            self.inject.setdefault(layers[k], []).append((mine, pos, vec))
            for target, w_dec in src.later[k]:  # a cross-layer transcoder's later writes
                vec = w_dec[idx].to(dt) * act[:, None].to(dt)
                self.inject.setdefault(layers[target], []).append((mine, pos, vec))
        for k, layer in enumerate(layers):
            first = len(table.labels)
            for p in range(1, P):
                table.add(f"L{layer} error @{p} {strs[p]!r}", f"{layer}_-1_{p}", "error", p)
            index = torch.arange(first, first + P - 1)
            vec = src.errors[k][1:].to(dt)
            self.inject.setdefault(layer, []).append((index, torch.arange(1, P), vec))
        self.token_index = torch.arange(len(table.labels), len(table.labels) + P)
        for p, t in enumerate(self.tokens.tolist()):
            table.add(f"token {strs[p]!r} @{p}", f"E_{t}_{p}", "token", p)
        assert len(table.labels) == src.n_sources
        pos_embed = self.frozen.get("hook_pos_embed")
        self.pos_index = None
        if pos_embed is not None:
            self.pos_index = torch.arange(len(table.labels), len(table.labels) + P)
            for p in range(P):
                table.add(f"position {p}", "", "position", p)
        self.embed_const = table.add("embedding constant", "", "constant", -1)
        self.attn_const = [
            table.add(f"L{m} attention biases", "", "constant", -1) for m in range(self.n_layers)
        ]
        self.mlp_const = [
            table.add(f"L{m} MLP constant", "", "constant", -1) for m in range(self.n_layers)
        ]
        return table

    @property
    def n_sources(self) -> int:
        """Graph sources + position embeddings + constants."""
        return len(self.table.labels)

    def _injected(self, layer: int) -> Float[Tensor, "pos d"]:
        """Sum of the graph sources' injections at layer `layer`'s MLP output."""
        total = torch.zeros(self.n_pos, self.d, dtype=self.dtype)
        for _, pos, vec in self.inject.get(layer, ()):
            total.index_add_(0, pos, vec)
        return total

    @torch.no_grad()
    def sweep(
        self, keep: Int[Tensor, " k"] | None = None
    ) -> Iterator[tuple[int, Int[Tensor, " n"], Float[Tensor, "n pos d"]]]:
        """For l = 0 .. L-1: (l, indices of the sources injected before layer l's attention,
        their contributions [n, pos, d] to `blocks.l.hook_resid_pre`). The contributions sum
        to the actual residual stream there. `keep`: only these sources (graph sources; no
        constants), for work that needs a few."""
        for layer, blocks in self._sweep_blocks(keep):
            yield layer, torch.cat([b.index for b in blocks]), torch.cat([b.x for b in blocks])

    def _sweep_blocks(self, keep: Tensor | None) -> Iterator[tuple[int, list[_Block]]]:
        P, d, dt = self.n_pos, self.d, self.dtype
        embed = self.frozen["hook_embed"].to(dt)
        start = [(self.token_index, embed)]
        if self.pos_index is not None:
            start.append((self.pos_index, self.frozen["hook_pos_embed"].to(dt)))
        index = torch.cat([i for i, _ in start])
        x = torch.zeros(len(index), P, d, dtype=dt)
        offset = 0
        for _, vec in start:
            x[torch.arange(offset, offset + P), torch.arange(P)] = vec
            offset += P
        resid0 = self.frozen["blocks.0.hook_resid_pre"]
        const = (resid0 - x.sum(0)).unsqueeze(0)
        blocks = [_Block(index, x), _Block(torch.tensor([self.embed_const]), const)]
        if keep is not None:
            blocks = [_kept(b, keep) for b in blocks]
        born: set[int] = set()  # sources whose first write has been made
        for layer in range(self.n_layers):
            yield layer, blocks
            # attention, plus its constant (the block's output minus its linear part)
            for b in blocks:
                b.x = b.x + self.attention(b.x, layer)
            actual_in = self.get(layer, "hook_resid_pre").unsqueeze(0)
            c = self.get(layer, "hook_attn_out") - self.attention(actual_in, layer)[0]
            if keep is None:
                blocks.append(_Block(torch.tensor([self.attn_const[layer]]), c.unsqueeze(0)))
            if layer == self.n_layers - 1:
                break
            # the skip path, the graph sources' injections, and the MLP constant
            for b in blocks:
                up = self.skip(b.x, layer)
                if up is not None:
                    b.x = b.x + up
            self._inject_existing(blocks, layer)
            new = [s for s in self.inject.get(layer, ()) if not _born(born, s[0])]
            if keep is not None:  # only the kept sources' rows are ever made
                new = [(r[m], p[m], v[m]) for r, p, v in new for m in [torch.isin(r, keep)]]
            if new:
                index = torch.cat([s[0] for s in new])
                x = torch.zeros(len(index), P, d, dtype=dt)
                offset = 0
                for rows, pos, vec in new:
                    x[torch.arange(offset, offset + len(rows)), pos] = vec
                    offset += len(rows)
                blocks.append(_Block(index, x))
            if keep is not None:
                continue
            mid = self.get(layer, "hook_resid_mid").unsqueeze(0)
            linear = self.skip(mid, layer)
            linear = 0.0 if linear is None else linear[0]
            c = self.get(layer, "hook_mlp_out") - linear - self._injected(layer)
            blocks.append(_Block(torch.tensor([self.mlp_const[layer]]), c.unsqueeze(0)))

    # ---- the transposed map (gradients of targets) ------------------------------------------
    def _ln_t(self, g: Tensor, scale: Tensor, module: Any) -> Tensor:
        """Transpose of x -> centre(x) / scale * w (centring is symmetric)."""
        w = _norm_weight(module, self.dtype)
        return self.centre(g if w is None else g * w) / scale[: g.shape[-2]]

    def attention_t(self, g: Float[Tensor, "n pos d"], layer: int) -> Tensor:
        """Transpose of `attention` (g at resid_mid -> its path to resid_pre)."""
        model, dt = self.model, self.dtype
        block = model.blocks[layer]
        post = self.get(layer, "ln1_post.hook_scale")
        if post is not None:
            g = self._ln_t(g, post, block.ln1_post)
        W_V = model.W_V[layer].detach().to(dt)
        W_O = model.W_O[layer].detach().to(dt)
        a = torch.einsum("nqd,hed->nqhe", g, W_O)
        a = torch.einsum("hqk,nqhe->nkhe", self.get(layer, "attn.hook_pattern"), a)
        group = W_O.shape[0] // W_V.shape[0]
        a = a.reshape(*a.shape[:2], W_V.shape[0], group, -1).sum(3)  # heads onto kv heads
        y = torch.einsum("nkve,vde->nkd", a, W_V)
        return self._ln_t(y, self.get(layer, "ln1.hook_scale"), block.ln1)

    def _read_t(self, g: Tensor, layer: int, pos: Tensor | None = None) -> Tensor:
        """Transpose of the transcoder's read at layer `layer` (g [n, d] at positions `pos`, or
        [n, pos, d])."""
        d = self.dictionaries[self.by_layer[layer]]
        read = mlp_read(d.in_hook, layer, norm_facts(self.model))
        if read == "resid":
            return g
        scale = self.get(layer, "ln2.hook_scale")
        scale = scale if pos is None else scale[pos]
        w = _norm_weight(self.model.blocks[layer].ln2, self.dtype) if read == "out" else None
        return self.centre(g if w is None else g * w) / scale

    def skip_t(self, g: Float[Tensor, "n pos d"], layer: int) -> Tensor | None:
        """Transpose of `skip` (None without W_skip)."""
        d = self.dictionaries[self.by_layer[layer]]
        if d.W_skip is None:
            return None
        return self._read_t(g @ d.W_skip.detach().to(self.dtype).T, layer)

    @torch.no_grad()
    def backward(
        self,
        feature_targets: Int[Tensor, " f"],
        logit_directions: Float[Tensor, "m d"],
    ) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Gradients of targets (active-feature indices, then logit directions read after the
        final norm at the last position) through the frozen linear map:
        (per layer at resid_post [n, pos, d], per layer at resid_mid, at the embedding)."""
        src, P, dt = self.sources, self.n_pos, self.dtype
        n_f = len(feature_targets)
        g = torch.zeros(n_f + len(logit_directions), P, self.d, dtype=dt)
        if len(logit_directions):
            dirs = logit_directions.to(dt)
            w = _norm_weight(self.model.ln_final, dt)
            dirs = dirs if w is None else dirs * w
            g[n_f:, -1] = self.centre(dirs) / self.frozen["ln_final.hook_scale"][-1]
        layers = torch.tensor(
            [
                hook_layer(self.dictionaries[int(k)].out_hook)
                for k in src.feat_dict[feature_targets]
            ],
            dtype=torch.long,
        )
        post: list[Tensor] = [g] * self.n_layers
        mid: list[Tensor] = [g] * self.n_layers
        for layer in range(self.n_layers - 1, -1, -1):
            post[layer] = g.clone()
            up = self.skip_t(g, layer)
            if up is not None:
                g = g + up
            mine = (layers == layer).nonzero()[:, 0]
            if len(mine):
                idx = feature_targets[mine]
                d = self.dictionaries[self.by_layer[layer]]
                enc = d.W_enc.detach()[:, src.feat_index[idx]].T.to(dt)
                pos = src.feat_pos[idx]
                g[mine, pos] += self._read_t(enc, layer, pos)
            mid[layer] = g.clone()
            g = g + self.attention_t(g, layer)
        return post, mid, g

    def injections_of(self, rows: Tensor) -> dict[int, tuple[Tensor, Tensor, Tensor]]:
        """Per layer (-1: the embedding), the writes of the graph sources `rows`:
        (position in `rows`, position in the prompt, vector)."""
        out: dict[int, list] = {}
        where = {int(s): i for i, s in enumerate(rows.tolist())}
        for layer, groups in [
            (-1, [(self.token_index, torch.arange(self.n_pos), self.frozen["hook_embed"])])
        ] + list(self.inject.items()):
            for index, pos, vec in groups:
                for j, s in enumerate(index.tolist()):
                    if s in where:
                        out.setdefault(layer, []).append((where[s], int(pos[j]), vec[j]))
        return {
            layer: (
                torch.tensor([w[0] for w in items]),
                torch.tensor([w[1] for w in items]),
                torch.stack([w[2] for w in items]).to(self.dtype),
            )
            for layer, items in out.items()
        }

    def _inject_existing(self, blocks: list[_Block], layer: int) -> None:
        """Add later writes of sources already in a block (cross-layer transcoders)."""
        for rows, pos, vec in self.inject.get(layer, ()):
            for b in blocks:
                local = {int(s): i for i, s in enumerate(b.index.tolist())}
                mine = [j for j, s in enumerate(rows.tolist()) if s in local]
                if not mine:
                    continue
                at = torch.tensor([local[int(rows[j])] for j in mine])
                b.x[at, pos[mine]] += vec[mine]
