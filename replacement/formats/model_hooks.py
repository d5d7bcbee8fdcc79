"""Hooks whose TransformerLens 4 meaning depends on the model's norms, resolved per model.

A peer's hook name does not always say which TL4 hook holds the same activation without knowing
the model:
- TransformerLens 2 (SAELens, circuit-tracer) hooks `ln*.hook_normalized` after a LayerNorm's
  weight and bias (TL4 `ln*.hook_out`) on an unfolded model, but before an RMSNorm's weight
  (TL4 `ln*.hook_normalized`) in every case;
- a Hugging Face module (sparsify) `layers.3.mlp` outputs the raw MLP output, which is
  `hook_mlp_out` in a pre-norm model but `mlp.hook_out` in Gemma, where `hook_mlp_out` follows
  the norm after the MLP (`post_feedforward_layernorm`); likewise `self_attn` and
  `hook_attn_out`.

Loaders assign the hooks of a pre-norm LayerNorm model and record where the names came from in
`metadata["hook_source"]`; `fit_hooks_to_model` rewrites them for the model at hand (an exact
renaming: the activation is the one the dictionary was trained on), and `unresolved_hooks`
says when a dictionary still holds the names for a model with other norms (loaded without a
model, or fitted to another one). Hooks set by hand since loading are left alone.
"""

from __future__ import annotations

from typing import Any

from replacement.formats.sparsify import sparsify_hooks
from replacement.hook_table import (
    PROVISIONAL,
    NormFacts,
    fill_template,
    from_tl2,
    hook_layer,
    is_template,
    module_output,
    norm_facts,
)

__all__ = ["PROVISIONAL", "NormFacts", "norm_facts", "fit_hooks_to_model", "unresolved_hooks"]


def tl2_source(in_hook: str, out_hook: str, fold_ln: bool) -> dict[str, Any]:
    """`metadata["hook_source"]` for TransformerLens 2 hook names (SAELens, circuit-tracer)."""
    return {"kind": "tl2", "hooks": [in_hook, out_hook], "fold_ln": bool(fold_ln)}


def hooks_for(source: dict[str, Any], facts: NormFacts) -> tuple[str, str]:
    """(in_hook, out_hook) in TL4 meaning for a recorded source on a model with `facts`.

    Sources: `{"kind": "tl2", "hooks": [in, out], "fold_ln": bool}` (`tl2_source`) and
    `{"kind": "hf_module", "hookpoint": "layers.3.mlp", "transcode": bool}` (sparsify).
    """
    if source.get("kind") == "tl2":
        fold = bool(source.get("fold_ln"))
        a, b = (from_tl2(h, fold, facts.layernorm) for h in source["hooks"])
        return a, b
    if source.get("kind") == "hf_module":
        in_hook, out_hook = sparsify_hooks(str(source["hookpoint"]), bool(source["transcode"]))
        # the module's own output, before a norm after it
        return module_output(in_hook, facts), module_output(out_hook, facts)
    raise ValueError(f"unknown hook source {source!r}")


def _hooks(d: Any) -> tuple[str, str]:
    if callable(getattr(d, "in_hook", None)):  # a cross-layer transcoder: templates
        return d.in_hook_template, d.out_hook_template
    return d.in_hook, d.out_hook


def _pending(d: Any, facts: NormFacts) -> tuple[str, str] | None:
    """The hooks `d` should have on a model with `facts`, if it holds the names its source
    gives on a model with other norms (the loader's provisional ones, or another model's)."""
    source = (getattr(d, "metadata", None) or {}).get("hook_source")
    if not source:
        return None
    have = _hooks(d)
    kinds = [NormFacts(layernorm, post) for layernorm in (True, False) for post in (False, True)]
    named = {f: hooks_for(source, f) for f in kinds}
    if any(map(is_template, named[PROVISIONAL])) and not any(map(is_template, have)):
        # one layer of a cross-layer transcoder (a slice, or a view when splicing)
        layer = hook_layer(have[1])
        named = {
            f: (fill_template(a, layer), fill_template(b, layer)) for f, (a, b) in named.items()
        }
    wanted = named[facts]
    if have == wanted or have not in named.values():
        return None  # right for this model, or the hooks were set otherwise since loading
    return wanted


def fit_hooks_to_model(d: Any, model: Any) -> Any:
    """`d` with provisional hooks renamed to what they mean on `model` (in place)."""
    wanted = _pending(d, norm_facts(model))
    if wanted is None:
        return d
    if callable(getattr(d, "in_hook", None)):
        d.in_hook_template, d.out_hook_template = wanted
    else:
        d.in_hook, d.out_hook = wanted
    return d


def unresolved_hooks(d: Any, model: Any) -> str | None:
    """Why `d`'s hooks do not mean on `model` what they meant in training (None if they do)."""
    wanted = _pending(d, norm_facts(model))
    if wanted is None:
        return None
    have = _hooks(d)
    return (
        f"its hooks {have[0]!r} -> {have[1]!r} were named for a model with other norms (LayerNorm "
        f"or RMSNorm, with or without norms after attention/MLP); on this model the activations "
        f"it was trained on are at {wanted[0]!r} -> {wanted[1]!r}"
    )
