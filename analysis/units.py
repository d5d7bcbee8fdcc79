"""Node systems: what a circuit is made of, in one of three currencies, with attention heads.

A node system is a list of *sources*, each a hook of the model whose activation is split into
*parts* of nodes. Every part's value over a batch is a tensor [rows, pos, K, w]: K nodes per
position, each a vector of width w (1 for a scalar such as a feature activation).

- `DictionarySource` (a dictionary site, as in `analysis.node_forward`): the site's output is
  rewritten as decode(features) + error + skip, which equals it exactly; parts `features`
  (F scalars), `error` (one d_out vector) and, for skip transcoders, `skip` (one d_out vector).
- `HeadSource`: the heads of one attention layer at `attn.hook_z` (H vectors of d_head); a
  head's output is z W_O, so ablating its z ablates its whole contribution.
- `NeuronSource`: the MLP neurons of one layer at `mlp.hook_post` (d_mlp scalars): the classic
  basis, with no error term.
- `MlpSource`: the whole MLP output of one layer at `hook_mlp_out` (one d_model vector).

Currencies (which nodes a circuit pays for; attention heads, neurons and MLP outputs always count):

- `all`: features, error terms and skip paths all count.
- `features`: only dictionary features count; error terms and skip paths are held at their
  ablated value (what the features carry alone).
- `features-dense-live`: only features count; error terms and skip paths keep their live value
  and are not counted (what the features add on top of the dense paths).

Position 0 (BOS) has no nodes and keeps its live value, as in `splice`.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from analysis.choices import CURRENCIES
from analysis.node_forward import ordered_sites
from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError
from replacement.hook_table import block_hook, hook_layer, is_attention_output, norm_facts
from replacement.splice import _flat

DENSE_PARTS = ("error", "skip")
"""Parts that only the `all` currency counts."""

Values = dict[str, Tensor]
"""Part key ("<hook>|<part>") -> value [rows or 1, pos, K, w]."""


@dataclass
class Part:
    """K nodes per position of one source, each a vector of `width`."""

    key: str
    """Unique name: "<hook>|<name>"."""
    name: str
    """features, error, skip, heads, neurons or mlp."""
    layer: int
    """Block index."""
    k: int
    """Nodes per position."""
    width: int
    """Width of each node's value (1 for scalars)."""


@dataclass
class PartControl:
    """What one forward pass does to a part (rows = groups x prompts, group-major)."""

    keep: Bool[Tensor, "g pos K"] | None = None
    """Nodes kept live; others take `reference` (None: all live). One mask per row group."""
    reference: Tensor | None = None
    """Values of ablated nodes, [1 or prompts, pos, K, w]."""
    replace: Tensor | None = None
    """Values every node takes (integrated gradients), [rows, pos, K, w], before `delta`."""
    delta: Tensor | None = None
    """Added to the values: zero leaves whose gradients are d metric / d node."""
    weight: Tensor | None = None
    """A soft keep mask [rows, pos, K] (joint integrated gradients): values become
    reference + weight x (value - reference), so 1 keeps a node and 0 ablates it."""


def _rows(t: Tensor, rows: int) -> Tensor:
    """A [1, ...] or [n, ...] tensor for `rows` = g * n rows (group-major)."""
    if t.shape[0] in (1, rows):
        return t
    return t.repeat(rows // t.shape[0], *([1] * (t.dim() - 1)))


def control_part(value: Tensor, c: PartControl | None) -> Tensor:
    """The part's value after ablation, replacement and delta."""
    if c is None:
        return value
    rows = value.shape[0]
    if c.keep is not None:
        if c.reference is None:
            raise SparseCircuitsError("an ablation mask needs reference values")
        keep = c.keep.to(value.device)
        keep = keep.repeat_interleave(rows // keep.shape[0], 0) if keep.shape[0] != rows else keep
        value = torch.where(keep[..., None], value, _rows(c.reference.to(value), rows))
    if c.weight is not None:
        if c.reference is None:
            raise SparseCircuitsError("a soft keep mask needs reference values")
        reference = _rows(c.reference.to(value), rows)
        value = reference + c.weight.to(value)[..., None] * (value - reference)
    if c.replace is not None:
        value = c.replace.to(value).expand_as(value)
    if c.delta is not None:
        value = value + c.delta
    return value


@dataclass
class Source(ABC):
    """A hook whose activation is split into parts of nodes."""

    parts: list[Part]

    @abstractmethod
    def hooks(self, controls: dict[str, PartControl], record: Values | None) -> list:
        """The (hook name, function) pairs that record and control this source's parts."""


class _Simple(Source):
    """A source whose activation at one hook is a single part."""

    def __init__(self, hook: str, name: str, layer: int, k: int, width: int, scalar: bool):
        super().__init__([Part(f"{hook}|{name}", name, layer, k, width)])
        self.hook, self.scalar = hook, scalar

    def hooks(self, controls, record):
        part = self.parts[0]

        def fn(act: Tensor, hook: Any) -> Tensor:
            v = act[..., None] if self.scalar else act.reshape(*act.shape[:2], part.k, part.width)
            if record is not None:
                record[part.key] = v.detach()
            v = control_part(v, controls.get(part.key))
            return (v[..., 0] if self.scalar else v.reshape(act.shape)).to(act.dtype)

        return [(self.hook, fn)]


def head_source(model: Any, layer: int) -> Source:
    """Attention heads of `layer` (hook_z)."""
    c = model.cfg
    return _Simple(block_hook(layer, "attn.hook_z"), "heads", layer, c.n_heads, c.d_head, False)


def neuron_source(model: Any, layer: int) -> Source:
    """MLP neurons of `layer` (hook_post)."""
    return _Simple(block_hook(layer, "mlp.hook_post"), "neurons", layer, model.cfg.d_mlp, 1, True)


def mlp_source(model: Any, layer: int) -> Source:
    """The whole MLP output of `layer` as one node per position (hook_mlp_out)."""
    d = model.cfg.d_model
    return _Simple(block_hook(layer, "hook_mlp_out"), "mlp", layer, 1, d, False)


class DictionarySource(Source):
    """A dictionary site: features, error and skip parts; output = decode + error + skip."""

    def __init__(self, d: Dictionary):
        layer = hook_layer(d.out_hook)
        parts = [
            Part(f"{d.out_hook}|features", "features", layer, d.n_features, 1),
            Part(f"{d.out_hook}|error", "error", layer, 1, d.d_out),
        ]
        if d.W_skip is not None:
            parts.append(Part(f"{d.out_hook}|skip", "skip", layer, 1, d.d_out))
        super().__init__(parts)
        self.d = d

    def hooks(self, controls, record):
        d, inputs = self.d, {}
        feat_key, err_key = self.parts[0].key, self.parts[1].key
        skip_key = self.parts[2].key if len(self.parts) > 2 else None

        def in_fn(act: Tensor, hook: Any) -> Tensor:
            inputs["x"] = _flat(act, d.d_in, d.in_hook, "d_in")
            return act

        def out_fn(act: Tensor, hook: Any) -> Tensor:
            y = _flat(act, d.d_out, d.out_hook, "d_out")
            x = y if d.in_hook == d.out_hook else inputs.pop("x")
            x = x.to(d.W_enc)
            acts = d.encode(x)[..., None]
            skip = d.skip(x)[:, :, None] if skip_key else None
            err = (y.to(acts) - d.decode(acts[..., 0]))[:, :, None]
            if skip is not None:
                err = err - skip
            if record is not None:
                record[feat_key], record[err_key] = acts.detach(), err.detach()
                if skip_key:
                    record[skip_key] = skip.detach()
            acts = control_part(acts, controls.get(feat_key))
            err = control_part(err, controls.get(err_key))
            out = d.decode(acts[..., 0]) + err[:, :, 0]
            if skip_key:
                out = out + control_part(skip, controls.get(skip_key))[:, :, 0]
            out = torch.cat([y[:, :1], out.to(y)[:, 1:]], dim=1)  # BOS keeps its own value
            return out.reshape(act.shape)

        hooks = [] if d.in_hook == d.out_hook else [(d.in_hook, in_fn)]
        return [*hooks, (d.out_hook, out_fn)]


@dataclass
class NodeSystem:
    """Sources and the currency that says which of their parts are nodes."""

    name: str
    """Label in reports (a set name, or a baseline's)."""
    sources: list[Source]
    """In layer order (heads of a layer before its MLP)."""
    currency: str = "all"
    """One of `CURRENCIES`."""
    kind: str = "dictionary"
    """dictionary, random, neurons or mlp."""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.currency not in CURRENCIES:
            raise SparseCircuitsError(
                f"currency {self.currency!r} is unknown; expected one of {CURRENCIES}"
            )

    @property
    def parts(self) -> list[Part]:
        return [p for s in self.sources for p in s.parts]

    @property
    def counted(self) -> list[Part]:
        """Parts whose nodes a circuit pays for, in source order."""
        if self.currency == "all":
            return self.parts
        return [p for p in self.parts if p.name not in DENSE_PARTS]

    @property
    def held_ablated(self) -> list[Part]:
        """Parts held at their reference value whatever the circuit (`features` currency)."""
        if self.currency != "features":
            return []
        return [p for p in self.parts if p.name in DENSE_PARTS]

    @contextlib.contextmanager
    def forward(
        self,
        model: Any,
        controls: dict[str, PartControl] | None = None,
        record: Values | None = None,
    ) -> Iterator[None]:
        """Context: forward passes of `model` run through the sources with `controls`; live
        part values are written to `record` if given."""
        hooks = [h for s in self.sources for h in s.hooks(controls or {}, record)]
        with model.hooks(fwd_hooks=hooks):
            yield


def system_for(
    model: Any,
    dictionaries: Sequence[Dictionary] | None,
    name: str,
    currency: str = "all",
    heads: bool = True,
    baseline: str | None = None,
    kind: str = "dictionary",
) -> NodeSystem:
    """The node system of a dictionary set (or of a baseline: "neurons" or "mlp") with attention
    heads as nodes in every layer (unless `heads` is False, or an attention-output dictionary
    sits on that layer's hook_z or hook_attn_out: its features are then the attention nodes)."""
    n_layers = model.cfg.n_layers
    per_layer: dict[int, list[Source]] = {i: [] for i in range(n_layers)}
    taken: set[str] = set()
    if baseline is None:
        for d in ordered_sites(model, dictionaries):  # checked: fit the model, one per hook
            taken.add(d.out_hook)
            per_layer[hook_layer(d.out_hook)].append(DictionarySource(d))
    elif baseline in ("neurons", "mlp"):
        make = neuron_source if baseline == "neurons" else mlp_source
        for layer in range(n_layers):
            per_layer[layer].append(make(model, layer))
        kind = baseline
    else:
        raise SparseCircuitsError(f"baseline {baseline!r} is unknown; expected neurons or mlp")
    sources: list[Source] = []
    facts = norm_facts(model)
    for layer in range(n_layers):
        attention_sae = any(is_attention_output(h, layer, facts) for h in taken)
        if heads and not attention_sae:
            sources.append(head_source(model, layer))
        sources.extend(sorted(per_layer[layer], key=lambda s: s.parts[0].key))
    return NodeSystem(name, sources, currency, kind)


@dataclass
class Layout:
    """Flat node index of a system's counted parts: part by part, position-major."""

    parts: list[Part]
    """Counted parts."""
    n_pos: int
    """Positions of the task's prompts, BOS included."""
    per_position: bool = True
    """Nodes per position, or one node per (part, k) ablated at every position."""

    @property
    def node_positions(self) -> int:
        return self.n_pos - 1 if self.per_position else 1

    def sizes(self) -> list[int]:
        return [self.node_positions * p.k for p in self.parts]

    @property
    def n_nodes(self) -> int:
        return sum(self.sizes())

    def describe(self, index: int) -> tuple[str, int, int, int]:
        """(part name, layer, position, k) of a node (position -1: all positions)."""
        for part, size in zip(self.parts, self.sizes(), strict=True):
            if index < size:
                row, k = divmod(index, part.k)
                return part.name, part.layer, row + 1 if self.per_position else -1, k
            index -= size
        raise IndexError(f"node {index} is beyond the {self.n_nodes} nodes")

    def masks(self, keep: Bool[Tensor, "g n_nodes"]) -> dict[str, Bool[Tensor, "g pos K"]]:
        """Per counted part: keep masks over all positions (BOS kept)."""
        out, start = {}, 0
        g = keep.shape[0]
        for part, size in zip(self.parts, self.sizes(), strict=True):
            m = keep[:, start : start + size].reshape(g, self.node_positions, part.k)
            if self.per_position:
                m = torch.cat([torch.ones_like(m[:, :1]), m], 1)
            else:
                m = m.expand(g, self.n_pos, part.k).clone()
                m[:, 0] = True
            out[part.key] = m
            start += size
        return out

    def flatten(self, per_part: dict[str, Float[Tensor, "pos K"]]) -> Float[Tensor, " n_nodes"]:
        """Per-part node values over positions 1.. (or summed) as one flat vector."""
        chunks = []
        for part in self.parts:
            v = per_part[part.key]
            v = v[1:] if self.per_position else v[1:].sum(0, keepdim=True)
            chunks.append(v.reshape(-1))
        return torch.cat(chunks)
