"""Hook names of a layer, and a check that a hook exists with an error listing valid names."""

from __future__ import annotations

import difflib
import re
from typing import Any, NamedTuple

from replacement.errors import HookError


class LayerHooks(NamedTuple):
    """TransformerLens hook names of one transformer block."""

    resid_pre: str
    """Residual stream entering the block."""
    resid_mid: str
    """Residual stream after attention, before the MLP."""
    resid_post: str
    """Residual stream leaving the block."""
    attn_out: str
    """Output of the attention layer."""
    attn_pattern: str
    """Attention probabilities [batch, head, query, key]."""
    attn_z: str
    """Per-head attention output before W_O [batch, pos, head, d_head]."""
    attn_scale: str
    """Scale of the norm in front of attention (ln1)."""
    mlp_in: str
    """Normalised MLP input (`ln2.hook_normalized`, before the norm's weight and bias in
    TransformerLens 4; the MLP's own input is `ln2.hook_out`): where our transcoders read."""
    mlp_out: str
    """MLP output: where transcoders write."""
    mlp_scale: str
    """Scale of the norm in front of the MLP (ln2)."""


def layer_hooks(layer: int) -> LayerHooks:
    """Hook names of block `layer` (no check against a model; see `check_hook`)."""
    b = f"blocks.{layer}"
    return LayerHooks(
        resid_pre=f"{b}.hook_resid_pre",
        resid_mid=f"{b}.hook_resid_mid",
        resid_post=f"{b}.hook_resid_post",
        attn_out=f"{b}.hook_attn_out",
        attn_pattern=f"{b}.attn.hook_pattern",
        attn_z=f"{b}.attn.hook_z",
        attn_scale=f"{b}.ln1.hook_scale",
        mlp_in=f"{b}.ln2.hook_normalized",
        mlp_out=f"{b}.hook_mlp_out",
        mlp_scale=f"{b}.ln2.hook_scale",
    )


def final_scale_hook() -> str:
    """Hook of the final norm's scale."""
    return "ln_final.hook_scale"


def hook_layer(hook: str) -> int:
    """The block index in a hook name such as `blocks.3.hook_mlp_out` (-1 for embeddings)."""
    match = re.match(r"blocks\.(\d+)\.", hook)
    return int(match.group(1)) if match else -1


def _canonical_names(model: Any) -> list[str]:
    return sorted(name for name in model.hook_dict if not re.search(r"\.(hook_in|hook_out)$", name))


def check_hook(model: Any, hook: str) -> str:
    """Return `hook` if `model` has it, else raise `HookError` naming the valid hooks."""
    if hook in model.hook_dict:
        return hook
    names = _canonical_names(model)
    close = difflib.get_close_matches(hook, names, n=3)
    layer = hook_layer(hook)
    if layer >= model.cfg.n_layers:
        hint = f"the model has {model.cfg.n_layers} layers (0..{model.cfg.n_layers - 1})"
    else:
        hint = "did you mean " + ", ".join(repr(c) for c in close) if close else ""
    per_layer = sorted({re.sub(r"^blocks\.\d+\.", "blocks.{l}.", n) for n in names})
    raise HookError(f"the model has no hook {hook!r}; {hint}. Valid hooks: {', '.join(per_layer)}")
