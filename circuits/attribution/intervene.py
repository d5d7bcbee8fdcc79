"""Feature interventions: set or scale features and see what the model does.

Two modes:
- constrained (the local replacement model of attribution): attention patterns, norm scales
  and every dictionary's output other than the intervened features' contributions are held
  at their clean values (skip paths stay live), so a logit changes by exactly what the
  attribution graph predicts;
- free-running: the spliced model recomputes everything downstream; each dictionary's
  output is its reconstruction plus its clean error, so with no change the run is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuits.attribution.attribute import prompt_tokens
from circuits.attribution.crosslayer_slices import expand_crosslayer, later_decoders
from replacement.crosslayer import CrossLayerTranscoder
from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError
from replacement.hooks import hook_layer


class Intervention(NamedTuple):
    """Set (`value`) or scale (`scale`) one feature at one position."""

    layer: int
    """Layer of the dictionary (the block index of its out_hook)."""
    pos: int
    """Position in the prompt (BOS is position 0)."""
    feature: int
    """Feature index."""
    value: float | None = None
    """New activation (takes precedence over `scale`)."""
    scale: float | None = None
    """Factor applied to the clean activation."""


class InterventionResult(NamedTuple):
    """Logits and feature activations of a run with interventions."""

    logits: Float[Tensor, "pos vocab"]
    """Logits with the interventions."""
    clean_logits: Float[Tensor, "pos vocab"]
    """Logits of the clean run."""
    activations: dict[int, Tensor]
    """Per layer, feature activations [pos, F] of the run with interventions."""


def _new_value(clean: Tensor, iv: Intervention) -> Tensor:
    if iv.value is not None:
        return torch.as_tensor(iv.value, dtype=clean.dtype)
    if iv.scale is not None:
        return clean * iv.scale
    raise SparseCircuitsError(f"intervention {iv} sets neither value nor scale")


@torch.no_grad()
def intervene(
    model: Any,
    dictionaries: Sequence[Dictionary | CrossLayerTranscoder],
    prompt: str | Int[Tensor, " pos"],
    interventions: Sequence[Intervention],
    constrained: bool = True,
) -> InterventionResult:
    """Run `prompt` with features set or scaled; see the module docstring for the modes.

    Args:
        model: a `TransformerBridge` from `replacement.load_model`.
        dictionaries: the dictionaries of the replacement (one per out_hook); a cross-layer
            transcoder counts as one per layer, and a feature set at layer l changes what it
            writes to every layer from l on.
        prompt: text or token ids (BOS prepended when missing, as in `attribute`).
        interventions: features to set or scale, each at one (layer, position).
        constrained: True for the local replacement model (attention patterns, norm scales
            and everything but the intervened features' decoder outputs and the skip paths
            held at clean values), False for a free-running spliced model.

    Returns:
        InterventionResult(logits [pos, vocab], clean_logits [pos, vocab], activations
        {layer: [pos, F]}).
    """
    tokens = prompt_tokens(model, prompt).unsqueeze(0)
    dictionaries = expand_crosslayer(
        [dictionaries] if isinstance(dictionaries, CrossLayerTranscoder) else dictionaries
    )
    by_layer = {hook_layer(d.out_hook): d for d in dictionaries}
    # writes of cross-layer features into later out_hooks: out_hook -> [(source layer, W_dec)]
    writes_into: dict[str, list[tuple[int, Tensor]]] = {}
    for layer, d in by_layer.items():
        for hook, w_dec in later_decoders(d):
            writes_into.setdefault(hook, []).append((layer, w_dec))
    for iv in interventions:
        if iv.layer not in by_layer:
            raise SparseCircuitsError(
                f"no dictionary at layer {iv.layer}; dictionaries are at layers {sorted(by_layer)}"
            )
        if not 0 <= iv.feature < by_layer[iv.layer].n_features:
            raise SparseCircuitsError(
                f"feature {iv.feature} out of range for layer {iv.layer} "
                f"(n_features={by_layer[iv.layer].n_features})"
            )
        if not 0 <= iv.pos < tokens.shape[1]:
            raise SparseCircuitsError(
                f"position {iv.pos} outside the prompt (0..{tokens.shape[1] - 1})"
            )

    clean: dict[str, Tensor] = {}
    names = [n for n in model.hook_dict if n.endswith(("hook_pattern", "hook_scale"))]
    for d in dictionaries:
        names += [d.in_hook, d.out_hook]

    def record(act: Tensor, hook: Any, name: str) -> Tensor:
        clean[name] = act
        return act

    with model.hooks(fwd_hooks=[(n, lambda a, hook, n=n: record(a, hook, n)) for n in set(names)]):
        clean_logits = model(tokens)[0]

    acts_out: dict[int, Tensor] = {}
    seen: dict[str, Tensor] = {}
    clean_acts = {
        layer: d.encode(clean[d.in_hook].to(d.W_enc.dtype)) for layer, d in by_layer.items()
    }

    def cross(out_hook: str, acts: dict[int, Tensor]) -> Tensor | float:
        """What earlier layers' cross-layer features write into `out_hook`."""
        total: Tensor | float = 0.0
        for src, w_dec in writes_into.get(out_hook, ()):
            total = total + acts[src] @ w_dec
        return total

    def patched_acts(layer: int, acts: Tensor) -> Tensor:
        acts = acts.clone()
        for iv in interventions:
            if iv.layer == layer:
                acts[0, iv.pos, iv.feature] = _new_value(acts[0, iv.pos, iv.feature], iv)
        return acts

    def make_in(name: str):
        def hook(act: Tensor, hook: Any) -> Tensor:
            seen[name] = act
            return act

        return hook

    def make_out(layer: int, d: Dictionary):
        def hook(act: Tensor, hook: Any) -> Tensor:
            x_now = act if d.in_hook == d.out_hook else seen[d.in_hook]
            x_clean = clean[d.in_hook]
            if constrained:
                new_acts = patched_acts(layer, clean_acts[layer])
                acts_out[layer] = new_acts
                delta = (new_acts - clean_acts[layer]) @ d.W_dec
                changes = {
                    k: acts_out[k] - clean_acts[k] for k, _ in writes_into.get(d.out_hook, ())
                }
                delta = delta + cross(d.out_hook, changes)
                out = clean[d.out_hook] - d.skip(x_clean) + d.skip(x_now) + delta.to(act.dtype)
            else:
                x = x_now.to(d.W_enc.dtype)
                clean_recon = d(x_clean.to(d.W_enc.dtype)) + cross(d.out_hook, clean_acts)
                clean_err = clean[d.out_hook] - clean_recon
                new_acts = patched_acts(layer, d.encode(x))
                acts_out[layer] = new_acts
                out = d.decode(new_acts) + d.skip(x) + clean_err + cross(d.out_hook, acts_out)
            return out.to(act.dtype)

        return hook

    hooks: list = []
    if constrained:
        hooks += [
            (n, lambda a, hook, n=n: clean[n])
            for n in names
            if n.endswith(("hook_pattern", "hook_scale"))
        ]
    for layer, d in by_layer.items():
        if d.in_hook != d.out_hook:
            hooks.append((d.in_hook, make_in(d.in_hook)))
        hooks.append((d.out_hook, make_out(layer, d)))
    with model.hooks(fwd_hooks=hooks):
        logits = model(tokens)[0]
    activations = {layer: acts[0] for layer, acts in acts_out.items()}
    return InterventionResult(logits=logits, clean_logits=clean_logits, activations=activations)
