"""The spliced model as a function of its nodes: features and error nodes at every site.

At each dictionary site the model's output y is rewritten as

    out = decode(acts) + skip + err,   acts = encode(x), skip = x W_skip, err = y - decode(acts) - skip

which equals y exactly. Every feature activation, every error vector and (for skip
transcoders) every skip vector is a node; this module runs the batch while nodes are held at
reference values (ablation), replaced by given values (integrated gradients) or shifted by
zero-valued leaves whose gradients are the metric's derivatives (attribution patching).

The skip path is a node, not an always-live edge, so that a circuit has to pay for it: with
it live, ablating every other node of a skip transcoder leaves nearly all of the metric
(0.98 of it on the default model's bracket task), and faithfulness, normalised by what the
nodes add on top, is then ill-conditioned. With it a node, mean-ablating every node of a
site gives the site's mean output for every kind of dictionary (decode is affine), so the
empty circuit is the same model whichever set is compared. Position 0 (BOS) keeps the
model's own output, as in `splice`, and has no nodes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError
from replacement.hooks import hook_layer
from replacement.splice import _flat, check_compatible


@dataclass
class SiteValues:
    """Feature activations and error vectors of one site over a batch."""

    acts: Float[Tensor, "batch pos F"]
    """Feature activations."""
    err: Float[Tensor, "batch pos d_out"]
    """Reconstruction errors y - y_hat."""
    skip: Float[Tensor, "batch pos d_out"] | None = None
    """Skip-path outputs x W_skip (skip transcoders only)."""

    def parts(self) -> dict[str, Tensor]:
        """The node tensors by name: acts, err and, when present, skip."""
        out = {"acts": self.acts, "err": self.err}
        if self.skip is not None:
            out["skip"] = self.skip
        return out


@dataclass
class SiteControl:
    """What to do with one site's nodes during a forward pass (all fields optional)."""

    keep_features: Bool[Tensor, "pos F"] | None = None
    """Features kept live; the others take `reference` values (None: all live)."""
    keep_errors: Bool[Tensor, " pos"] | None = None
    """Error nodes kept live; the others take `reference` values (None: all live)."""
    keep_skips: Bool[Tensor, " pos"] | None = None
    """Skip nodes kept live (skip transcoders); the others take `reference` values."""
    reference: SiteValues | None = None
    """Values of ablated nodes, broadcastable to the batch (mean, zero or counterfactual)."""
    replace: SiteValues | None = None
    """Values every node of the site takes (integrated gradients), before `delta`."""
    delta: SiteValues | None = None
    """Added to the node values; zero-valued leaves whose grads are d metric / d node."""
    cut: bool = False
    """Build the site's output from detached node values, so that gradients stop at the
    site: what reaches an upstream node then runs only along paths through no other site
    (edge attribution patching)."""


@dataclass
class NodeForwardState:
    """The node values each site computed during the last pass (when recording)."""

    record: bool = False
    """Whether to keep the values."""
    values: dict[str, SiteValues] = field(default_factory=dict)
    """Site out_hook -> live values, before any control was applied."""
    graph: bool = False
    """Record the values with their autograd graph (not detached)."""


def ordered_sites(model: Any, dictionaries: Sequence[Dictionary]) -> list[Dictionary]:
    """Dictionaries in layer order after checking they fit the model; one per out_hook."""
    if not dictionaries:
        raise SparseCircuitsError("circuit analysis needs at least one dictionary")
    seen: set[str] = set()
    for d in dictionaries:
        if not isinstance(d, Dictionary):
            raise SparseCircuitsError(
                f"circuit nodes need per-site dictionaries; got {type(d).__name__}"
            )
        check_compatible(model, d)
        if d.out_hook in seen:
            raise SparseCircuitsError(f"two dictionaries write the same hook {d.out_hook!r}")
        seen.add(d.out_hook)
    return sorted(dictionaries, key=lambda d: (hook_layer(d.out_hook), d.out_hook))


def _apply(live: Tensor, keep: Tensor | None, reference: SiteValues | None, name: str) -> Tensor:
    """`live` where `keep` is true, the reference value elsewhere.

    `keep` is [pos, F] for features and [pos] for errors and skips (the batch's positions)."""
    if keep is None:
        return live
    if reference is None:
        raise SparseCircuitsError("an ablation mask needs reference values")
    ref = getattr(reference, name).to(live)
    mask = keep.to(live.device).unsqueeze(0)
    if name != "acts":
        mask = mask.unsqueeze(-1)
    return torch.where(mask, live, ref)


@contextlib.contextmanager
def node_forward(
    model: Any,
    dictionaries: Sequence[Dictionary],
    controls: dict[str, SiteControl] | None = None,
    record: bool = False,
    graph: bool = False,
) -> Iterator[NodeForwardState]:
    """Context manager: forward passes of `model` run through the dictionaries' nodes.

    Args:
        model: a `TransformerBridge`.
        dictionaries: per-site dictionaries (SAEs, transcoders, skip transcoders).
        controls: out_hook -> `SiteControl`; sites without one run live.
        record: keep each site's live node values in the yielded state.
        graph: record them with their autograd graph instead of detached.
    """
    sites = ordered_sites(model, dictionaries)
    controls = controls or {}
    state = NodeForwardState(record=record, graph=graph)
    inputs: dict[str, Tensor] = {}

    def make_in_hook(d: Dictionary):
        def hook(act: Tensor, hook: Any) -> Tensor:
            inputs[d.out_hook] = _flat(act, d.d_in, d.in_hook, "d_in")
            return act

        return hook

    def make_out_hook(d: Dictionary):
        control = controls.get(d.out_hook, SiteControl())

        def hook(act: Tensor, hook: Any) -> Tensor:
            y = _flat(act, d.d_out, d.out_hook, "d_out")
            x = y if d.in_hook == d.out_hook else inputs.pop(d.out_hook)
            x_d = x.to(d.W_enc)
            acts = d.encode(x_d)
            skip = d.skip(x_d) if d.W_skip is not None else None
            err = y.to(acts) - d.decode(acts) - (0.0 if skip is None else skip)
            if state.record:
                keep = (lambda t: t) if state.graph else (lambda t: t.detach())
                state.values[d.out_hook] = SiteValues(
                    keep(acts), keep(err), None if skip is None else keep(skip)
                )
            if control.cut:
                acts, err = acts.detach(), err.detach()
                skip = None if skip is None else skip.detach()
            acts = _apply(acts, control.keep_features, control.reference, "acts")
            err = _apply(err, control.keep_errors, control.reference, "err")
            if skip is not None:
                skip = _apply(skip, control.keep_skips, control.reference, "skip")
            if control.replace is not None:
                acts = control.replace.acts.to(acts).expand_as(acts)
                err = control.replace.err.to(err).expand_as(err)
                if skip is not None:
                    skip = control.replace.skip.to(skip).expand_as(skip)
            if control.delta is not None:
                acts = acts + control.delta.acts
                err = err + control.delta.err
                if skip is not None:
                    skip = skip + control.delta.skip
            out = (d.decode(acts) + err + (0.0 if skip is None else skip)).to(y)
            out = torch.cat([y[:, :1], out[:, 1:]], dim=1)  # BOS keeps its own value
            return out.reshape(act.shape)

        return hook

    hooks = []
    for d in sites:
        if d.in_hook != d.out_hook:
            hooks.append((d.in_hook, make_in_hook(d)))
        hooks.append((d.out_hook, make_out_hook(d)))
    with model.hooks(fwd_hooks=hooks):
        yield state
