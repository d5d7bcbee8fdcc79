"""The source nodes of a prompt: active features, error vectors and token embeddings.

`collect_sources` runs the unspliced model once and encodes each dictionary's input, and
`PromptSources.rows_from_grads` turns gradients at the injection sites into adjacency rows.
Source order: features (dictionary by dictionary, then position, then feature), errors
(dictionary, then positions 1..P-1), tokens (positions 0..P-1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuits.attribution.crosslayer_slices import later_decoders
from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError


@dataclass
class PromptSources:
    """Everything about a prompt's sources that attribution needs."""

    logits: Float[Tensor, "1 vocab"]
    """Logits of the unspliced model at the last position."""
    feat_dict: Int[Tensor, " n_feat"]
    """Index of each active feature's dictionary."""
    feat_pos: Int[Tensor, " n_feat"]
    """Position of each active feature."""
    feat_index: Int[Tensor, " n_feat"]
    """Feature index inside its dictionary."""
    feat_act: Float[Tensor, " n_feat"]
    """Activation of each active feature."""
    errors: list[Tensor]
    """Per dictionary, the error y - y_hat [pos, d_out]."""
    error_norm: Float[Tensor, "n_dict pos_minus_1"]
    """Norm of each error node (positions 1..P-1)."""
    embed: Float[Tensor, "pos d_model"]
    """Token embeddings (the `hook_embed` activation)."""
    decoders: list[Tensor]
    """Per dictionary, W_dec [F, d_out]."""
    later: list[list[tuple[int, Tensor]]]
    """Per dictionary, its writes into later dictionaries' out_hooks (cross-layer transcoders):
    (index of the dictionary written to, W_dec [F, d_out])."""

    @property
    def n_features(self) -> int:
        """Number of active features (positions >= 1)."""
        return int(self.feat_dict.numel())

    @property
    def n_sources(self) -> int:
        """Features + error nodes + token nodes."""
        n_pos = self.embed.shape[0]
        return self.n_features + len(self.errors) * (n_pos - 1) + n_pos

    def rows_from_grads(
        self, grads: list[Tensor | None], grad_embed: Tensor | None, n: int
    ) -> Float[Tensor, "n n_src"]:
        """Adjacency rows (on the model's device) from gradients at each out_hook
        [batch, pos, d] and at the embedding."""
        n_pos = self.embed.shape[0]
        device = self.embed.device
        feature_cols, error_cols = [], []
        for k, (grad, err, w_dec) in enumerate(zip(grads, self.errors, self.decoders, strict=True)):
            if grad is None:
                grad = torch.zeros(n, n_pos, err.shape[-1], device=device)
            g = grad[:n].float()
            mine = self.feat_dict == k
            pos, idx, act = self.feat_pos[mine], self.feat_index[mine], self.feat_act[mine]
            cols = _feature_columns(g, w_dec, pos, idx, act)
            for target, w_later in self.later[k]:
                if grads[target] is not None:
                    cols = cols + _feature_columns(
                        grads[target][:n].float(), w_later, pos, idx, act
                    )
            feature_cols.append(cols)
            error_cols.append((g[:, 1:, :] * err[1:].float().unsqueeze(0)).sum(-1))
        if grad_embed is None:
            token_cols = torch.zeros(n, n_pos, device=device)
        else:
            token_cols = (grad_embed[:n].float() * self.embed.float().unsqueeze(0)).sum(-1)
        return torch.cat([*feature_cols, *error_cols, token_cols], dim=1)


DENSE_DOT_LIMIT = 2**25
"""Largest [rows, pos, F] product formed whole; bigger ones gather decoder rows in chunks."""


def _feature_columns(
    grad: Float[Tensor, "n pos d"],
    w_dec: Float[Tensor, "F d"],
    pos: Int[Tensor, " k"],
    idx: Int[Tensor, " k"],
    act: Float[Tensor, " k"],
) -> Float[Tensor, "n k"]:
    """a_s * (W_dec[s] . grad at the source's position) for the k active features."""
    n, n_pos, d = grad.shape
    w_dec = w_dec.float()
    if n * n_pos * w_dec.shape[0] <= DENSE_DOT_LIMIT:
        # small dictionaries: one matmul over every feature, then a gather (fastest)
        return (grad @ w_dec.T)[:, pos, idx] * act.float()
    # wide dictionaries: only the active features' decoder rows, in chunks of bounded size
    chunk = max(1, DENSE_DOT_LIMIT // max(1, n * d))
    cols = [
        torch.einsum("nkd,kd->nk", grad[:, pos[i : i + chunk]], w_dec[idx[i : i + chunk]])
        for i in range(0, len(pos), chunk)
    ]
    out = torch.cat(cols, dim=1) if cols else grad.new_zeros(n, 0)
    return out * act.float()


@torch.no_grad()
def collect_sources(
    model: Any, dictionaries: list[Dictionary], tokens: Int[Tensor, " pos"]
) -> PromptSources:
    """Run the model once and encode every dictionary's input on the prompt."""
    captured: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: Any, name: str) -> Tensor:
        captured[name] = act[0]
        return act

    names = {"hook_embed"}
    for d in dictionaries:
        names.update((d.in_hook, d.out_hook))
    hooks = [(name, lambda act, hook, name=name: keep(act, hook, name)) for name in names]
    with model.hooks(fwd_hooks=hooks):
        logits = model(tokens.unsqueeze(0))[0]
    feat_dict, feat_pos, feat_index, feat_act, errors, norms, decoders = [], [], [], [], [], [], []
    logits = logits[-1:]  # only the last position's logits are read; [pos, vocab] is large
    later = later_writes(dictionaries)
    # a layer's dense [pos, n_features] activations are kept only while a later layer still
    # reads them (a cross-layer transcoder's writes): a long prompt never holds every layer's
    writers = {j for j, writes in enumerate(later) if writes}
    all_acts: dict[int, Tensor] = {}
    for k, d in enumerate(dictionaries):
        x = captured[d.in_hook].to(d.W_enc.dtype)
        y = captured[d.out_hook]
        acts = d.encode(x)
        acts[0] = 0.0  # position 0 (BOS) holds no feature nodes
        if k in writers:
            all_acts[k] = acts
        y_hat = d.decode(acts) + d.skip(x)
        for j, writes in enumerate(later):  # earlier layers of a cross-layer transcoder
            for target, w_dec in writes:
                if target == k:
                    y_hat = y_hat + all_acts[j] @ w_dec.to(all_acts[j].dtype)
        y_hat[0] = y[0].to(y_hat.dtype)  # nor an error node
        err = (y - y_hat.to(y.dtype)).float()
        pos, idx = acts.nonzero(as_tuple=True)
        feat_dict.append(torch.full_like(pos, k))
        feat_pos.append(pos)
        feat_index.append(idx)
        feat_act.append(acts[pos, idx].float())
        errors.append(err)
        norms.append(err[1:].norm(dim=-1))
        decoders.append(d.W_dec.detach())
    return PromptSources(
        logits=logits,
        feat_dict=torch.cat(feat_dict),
        feat_pos=torch.cat(feat_pos),
        feat_index=torch.cat(feat_index),
        feat_act=torch.cat(feat_act),
        errors=errors,
        error_norm=torch.stack(norms).cpu(),
        embed=captured["hook_embed"].float(),
        decoders=decoders,
        later=later,
    )


def later_writes(dictionaries: list[Dictionary]) -> list[list[tuple[int, Tensor]]]:
    """Per dictionary, (index of the dictionary it also writes to, W_dec) for each later write."""
    index = {d.out_hook: k for k, d in enumerate(dictionaries)}
    out = []
    for d in dictionaries:
        writes = []
        for hook, w_dec in later_decoders(d):
            if hook not in index:
                raise SparseCircuitsError(
                    f"a cross-layer transcoder writes to {hook!r}, which no dictionary slice reads"
                )
            writes.append((index[hook], w_dec.detach()))
        out.append(writes)
    return out
