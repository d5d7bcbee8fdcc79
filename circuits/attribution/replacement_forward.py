"""The frozen "local replacement model" forward used for attribution and interventions.

Inside `frozen_forward(...)`:
- attention patterns (`attn.hook_pattern`) and every norm scale (`*.hook_scale`) are detached,
  so the map from sources to targets is linear;
- each dictionary's out_hook activation is returned detached (the features and the error node
  stand for it), plus, for skip transcoders, the linear skip path `x W_skip` kept live:
  `out = mlp_out.detach() + (x W_skip - (x W_skip).detach())` -- the forward stays exact;
- the token embedding (`hook_embed`) is returned detached, as a leaf that receives gradients.
For an SAE (in_hook == out_hook) the readout is the incoming activation, which still depends on
the layer's own MLP, so edges into SAE features differentiate through that MLP (local linear
estimates, as in attribution patching) while edges out of them do not. Likewise the MLP of a
layer that has no dictionary is differentiated through (a local linear estimate, not a node).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError
from replacement.hook_table import frozen_sites, is_attention_pattern, quiet_norm_edits

FINAL_HOOK = "ln_final.hook_out"
"""Where logit directions are read: the final norm's output, the unembedding's input."""


@dataclass
class FrozenTensors:
    """Tensors of the last frozen forward pass, keyed by each dictionary's out_hook."""

    readouts: dict[str, Tensor] = field(default_factory=dict)
    """Activation at each dictionary's in_hook (what encoders read)."""
    outputs: dict[str, Tensor] = field(default_factory=dict)
    """Tensor returned at each out_hook: where sources inject; gradients are read here."""
    embed: Tensor | None = None
    """The token embedding leaf."""
    final: Tensor | None = None
    """Final norm output after its weight and bias (`ln_final.hook_out`): logits are this @ W_U.

    Read after the affine so that an unprocessed model (ln_f weight not folded into W_U) gets
    exact logit directions; on a folded model the affine is the identity and this equals
    `ln_final.hook_normalized`."""


def _detach(act: Tensor, hook: Any) -> Tensor:
    return act.detach()


@contextlib.contextmanager
def frozen_forward(
    model: Any, dictionaries: list[Dictionary], extra_hooks: list | None = None
) -> Iterator[FrozenTensors]:
    """Install the freezing hooks; yields the tensors captured by each forward pass."""
    state = FrozenTensors()
    # every attention pattern and every norm scale the model has (ln1, ln2, ln_final, and any
    # other norm such as q/k norms), so no nonlinearity outside the MLPs is left live
    frozen = frozen_sites(model)
    if not any(map(is_attention_pattern, frozen)):
        raise SparseCircuitsError("the model has no attn.hook_pattern hooks to freeze")
    hooks: list = [(name, _detach) for name in frozen]

    def embed_hook(act: Tensor, hook: Any) -> Tensor:
        state.embed = act.detach().requires_grad_(True)
        return state.embed

    def final_hook(act: Tensor, hook: Any) -> Tensor:
        state.final = act
        return act

    hooks.append(("hook_embed", embed_hook))
    hooks.append((FINAL_HOOK, final_hook))

    for d in dictionaries:
        key = d.out_hook

        def in_hook(act: Tensor, hook: Any, key: str = key) -> Tensor:
            state.readouts[key] = act
            return act

        def out_hook(act: Tensor, hook: Any, key: str = key, d: Dictionary = d) -> Tensor:
            if d.in_hook == d.out_hook:
                state.readouts[key] = act
            frozen = act.detach()
            if d.W_skip is not None:
                x = state.readouts[key].to(d.W_skip.dtype)
                skip = x @ d.W_skip
                out = frozen + (skip - skip.detach()).to(act.dtype)
            else:
                out = frozen.requires_grad_(True)
            state.outputs[key] = out
            return out

        if d.in_hook != d.out_hook:
            hooks.append((d.in_hook, in_hook))
        hooks.append((d.out_hook, out_hook))
    hooks.extend(extra_hooks or [])
    with model.hooks(fwd_hooks=hooks), quiet_norm_edits():
        yield state
