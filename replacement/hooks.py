"""Hook names of a layer, and a check that a hook exists with an error listing valid names."""

from __future__ import annotations

import difflib
from typing import Any, NamedTuple

from replacement.errors import HookError
from replacement.hook_table import (
    block_hook,
    hook_layer,
    is_module_port,
    layer_pattern,
    norm_scale_hook,
)

__all__ = ["LayerHooks", "check_hook", "final_scale_hook", "hook_layer", "layer_hooks"]


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
    return LayerHooks(
        resid_pre=block_hook(layer, "hook_resid_pre"),
        resid_mid=block_hook(layer, "hook_resid_mid"),
        resid_post=block_hook(layer, "hook_resid_post"),
        attn_out=block_hook(layer, "hook_attn_out"),
        attn_pattern=block_hook(layer, "attn.hook_pattern"),
        attn_z=block_hook(layer, "attn.hook_z"),
        attn_scale=block_hook(layer, "ln1.hook_scale"),
        mlp_in=block_hook(layer, "ln2.hook_normalized"),
        mlp_out=block_hook(layer, "hook_mlp_out"),
        mlp_scale=block_hook(layer, "ln2.hook_scale"),
    )


def final_scale_hook() -> str:
    """Hook of the final norm's scale."""
    return norm_scale_hook("ln_final")


def _canonical_names(model: Any) -> list[str]:
    return sorted(name for name in model.hook_dict if not is_module_port(name))


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
    per_layer = sorted({layer_pattern(n) for n in names})
    raise HookError(f"the model has no hook {hook!r}; {hint}. Valid hooks: {', '.join(per_layer)}")
