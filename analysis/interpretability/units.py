"""Units to score: the features of a dictionary set, of its random control, or MLP neurons.

Every source becomes one `UnitActs` per split: the non-zero activations of all its units
(features of every layer, numbered layer by layer) on every token, BOS excluded, sorted by
(unit, token). One forward pass per batch of rows feeds every source at once and stops after
the deepest hook any source reads.

Controls:
- `random_like(dictionary)`: the same kind, shape and activation (TopK k stays k; a ReLU keeps
  its encoder bias, so its sparsity stays near the trained one's), encoder directions drawn
  at random with the trained column norms. The encoder bias of a TopK dictionary is zeroed.
- `NeuronSource`: the MLP's hidden units (`blocks.{l}.mlp.hook_post`) of every layer, each
  token keeping its `k` largest, so that neurons have the L0 of the dictionaries they face.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError
from replacement.hook_table import block_hook, hook_layer


@dataclass
class NeuronSource:
    """MLP neurons of the given layers, sparsified per token to the `k` largest."""

    layers: Sequence[int]
    k: int
    """Neurons kept per token and layer (the L0 matched to the dictionaries)."""


Source = Sequence[Dictionary] | NeuronSource


@dataclass
class UnitActs:
    """Non-zero activations of a source's units on a split, sorted by (unit, token)."""

    unit: Int[np.ndarray, " nnz"]
    token: Int[np.ndarray, " nnz"]
    """Flat token index into the split's rows (row * ctx + pos)."""
    value: Float[np.ndarray, " nnz"]
    n_units: int
    n_tokens: int
    unit_layer: Int[np.ndarray, " units"]
    unit_index: Int[np.ndarray, " units"]
    """The unit's feature (or neuron) index within its layer."""

    @property
    def starts(self) -> Int[np.ndarray, " units_plus_1"]:
        """Start of each unit's run in the sorted arrays (CSR offsets)."""
        return np.searchsorted(self.unit, np.arange(self.n_units + 1))

    @property
    def frequency(self) -> Float[np.ndarray, " units"]:
        """Share of (non-BOS) tokens where each unit is non-zero."""
        return np.bincount(self.unit, minlength=self.n_units) / max(self.n_tokens, 1)

    def keys(self) -> Int[np.ndarray, " nnz"]:
        """unit * n_tokens + token, ascending: for membership look-ups."""
        return self.unit.astype(np.int64) * self.n_tokens + self.token

    def lookup(self, unit: Int[np.ndarray, "..."], token: Int[np.ndarray, "..."]) -> np.ndarray:
        """Activation of `unit` at `token` (0 where it does not fire); any matching shapes."""
        keys = self.keys()
        query = unit.astype(np.int64) * self.n_tokens + token
        pos = np.searchsorted(keys, query).clip(max=len(keys) - 1)
        hit = keys[pos] == query
        return np.where(hit, self.value[pos], 0.0).astype(np.float32)


def random_like(dictionary: Dictionary, seed: int) -> Dictionary:
    """A control of the same kind, shape and activation with random encoder directions."""
    d = copy.deepcopy(dictionary)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = torch.randn(d.W_enc.shape, generator=gen, dtype=torch.float32)
        norms = dictionary.W_enc.detach().float().norm(dim=0).clamp_min(1e-8)
        w = w / w.norm(dim=0) * norms
        d.W_enc.copy_(w.to(d.W_enc.dtype))
        d.W_dec.copy_(torch.randn(d.W_dec.shape, generator=gen).to(d.W_dec.dtype) * 0.02)
        if d.activation_name in ("topk", "batchtopk"):
            d.b_enc.zero_()
    d.metadata = {**d.metadata, "source": f"random control of {d.metadata.get('source', '?')}"}
    return d


def _hooks(source: Source) -> list[str]:
    if isinstance(source, NeuronSource):
        return [block_hook(layer, "mlp.hook_post") for layer in source.layers]
    return [d.in_hook for d in source]


def _n_units(source: Source) -> list[tuple[int, int]]:
    """(layer, units) per part of the source, in unit order."""
    if isinstance(source, NeuronSource):
        return [(layer, -1) for layer in source.layers]
    return [(hook_layer(d.out_hook), d.n_features) for d in source]


class _Stop(Exception):
    pass


def source_hooks(sources: Mapping[str, Source]) -> list[str]:
    """Every hook the sources read."""
    for name, source in sources.items():
        if not isinstance(source, NeuronSource) and not all(
            isinstance(d, Dictionary) for d in source
        ):
            raise SparseCircuitsError(
                f"source {name!r}: interpretability scoring takes per-layer dictionaries "
                "(a cross-layer transcoder is not supported yet)"
            )
    return sorted({h for s in sources.values() for h in _hooks(s)})


@torch.no_grad()
def capture(
    model: Any,
    hooks: Sequence[str],
    rows: Int[Tensor, "rows ctx"],
    batch_rows: int = 64,
    verbose: bool = True,
) -> dict[str, Float[Tensor, "tokens d"]]:
    """The activations at `hooks` on every token of `rows` (float16, to hold a whole split);
    each forward stops once every hook has been read."""
    captured: dict[str, Tensor] = {}
    out: dict[str, list[Tensor]] = {h: [] for h in hooks}

    def make_hook(name: str):
        def hook(act: Tensor, hook: Any) -> Tensor:
            captured[name] = act.detach()
            if len(captured) == len(hooks):  # nothing later is needed
                raise _Stop
            return act

        return hook

    device = model.cfg.device
    bar = tqdm(total=rows.numel(), unit="tok", unit_scale=True, disable=not verbose, desc="forward")
    with model.hooks(fwd_hooks=[(h, make_hook(h)) for h in hooks]):
        for start in range(0, rows.shape[0], batch_rows):
            batch = rows[start : start + batch_rows]
            captured.clear()
            try:
                model(batch.to(device))
            except _Stop:
                pass
            for h in hooks:
                out[h].append(
                    captured[h].reshape(-1, captured[h].shape[-1]).to("cpu", torch.float16)
                )
            bar.update(batch.numel())
    bar.close()
    return {h: torch.cat(parts) for h, parts in out.items()}


@torch.no_grad()
def encode_sources(
    sources: Mapping[str, Source], captured: Mapping[str, Tensor], ctx: int, chunk: int = 8192
) -> dict[str, UnitActs]:
    """Each source's `UnitActs` from captured activations (BOS positions, every `ctx`-th
    token, left out)."""
    out = {}
    for name, source in sources.items():
        units, tokens, values, widths = [], [], [], []
        offset = 0
        for (layer, n), hook in zip(_n_units(source), _hooks(source), strict=True):
            x_all = captured[hook]
            d = (
                None
                if isinstance(source, NeuronSource)
                else next(d for d in source if hook_layer(d.out_hook) == layer)
            )
            n = x_all.shape[-1] if d is None else d.n_features
            for start in range(0, x_all.shape[0], chunk):
                x = x_all[start : start + chunk]
                if d is None:
                    vals, idx = x.float().topk(min(source.k, n), dim=-1)
                    tok = torch.arange(x.shape[0]).unsqueeze(1).expand_as(idx)
                    keep = vals > 0
                    tok, feat, val = tok[keep], idx[keep], vals[keep]
                else:
                    acts = d.encode_sparse(x.to(d.W_enc.dtype))
                    tok, feat, val = acts.token_idx, acts.feature_idx, acts.values.float()
                tok = tok + start
                not_bos = (tok % ctx) != 0
                units.append((feat[not_bos] + offset).numpy().astype(np.int32))
                tokens.append(tok[not_bos].numpy().astype(np.int64))
                values.append(val[not_bos].numpy().astype(np.float32))
            widths.append(n)
            offset += n
        unit, token, value = (np.concatenate(a) for a in (units, tokens, values))
        order = np.lexsort((token, unit))
        layers = [layer for layer, _ in _n_units(source)]
        out[name] = UnitActs(
            unit[order],
            token[order],
            value[order],
            int(offset),
            int(next(iter(captured.values())).shape[0]),
            np.concatenate([np.full(n, layer) for layer, n in zip(layers, widths, strict=True)]),
            np.concatenate([np.arange(n) for n in widths]),
        )
    return out


def collect_units(
    model: Any,
    sources: Mapping[str, Source],
    rows: Int[Tensor, "rows ctx"],
    batch_rows: int = 64,
    verbose: bool = True,
) -> dict[str, UnitActs]:
    """Non-zero activations of every source's units on `rows` (one forward per batch)."""
    captured = capture(model, source_hooks(sources), rows, batch_rows, verbose)
    return encode_sources(sources, captured, rows.shape[1])
