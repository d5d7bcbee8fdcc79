"""Activation collection through a plain Hugging Face twin of the bridge, checked against it.

A TransformerLens 4 bridge runs its own versions of the Hugging Face modules (hook points on
every input and output, its own attention with mask handling): on the default model a
no-grad forward to the last MLP costs about twice the plain Hugging Face forward. For
collecting activations nothing of that is needed. `direct_forward(bridge, hooks)` builds,
once per bridge, a plain Hugging Face model of the same architecture whose parameters ARE the
bridge's processed parameters (shared storage, so later in-place changes carry over), maps
each hook to the input or output of one of its modules, and checks on two rows that it gives
the bridge's activations (to 1e-5 of their scale). Hooks it cannot map, a twin that does not
match (e.g. `ln2.hook_normalized` on an unfolded model, where the norm's affine part sits
between the two), or a bridge with hooks installed (a splice in progress) fall back to the
bridge. Used by `collect_activations`, so the activation buffer and the cache writer get it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from replacement.hook_table import bridge_port, norm_output, split_hook

Capture = tuple[str, torch.nn.Module, str]
"""(hook name, twin module, "in" or "out")."""


class _Stop(Exception):
    """Raised after the last needed module so the rest of the model is skipped."""


class DirectForward:
    """A plain Hugging Face twin of a bridge and the module of each hook it reads."""

    def __init__(self, twin: torch.nn.Module, captures: list[Capture]):
        self.twin, self.captures = twin, captures

    def __call__(self, tokens: Int[Tensor, "batch pos"]) -> dict[str, Float[Tensor, "batch pos d"]]:
        """The hooks' activations for `tokens` (no grad, stopped after the last one)."""
        captured: dict[str, Tensor] = {}
        n = len(self.captures)

        def keep(name: str, act: Any) -> None:
            act = act[0] if isinstance(act, tuple) else act
            captured[name] = act.detach()
            if len(captured) == n:
                raise _Stop

        handles = []
        for name, module, where in self.captures:
            if where == "in":
                handles.append(
                    module.register_forward_pre_hook(
                        lambda m, args, kw, name=name: keep(
                            name, args[0] if args else kw["hidden_states"]
                        ),
                        with_kwargs=True,
                    )
                )
            else:
                handles.append(
                    module.register_forward_hook(lambda m, i, o, name=name: keep(name, o))
                )
        try:
            with torch.no_grad():
                self.twin(input_ids=tokens, use_cache=False)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        return captured


def _twin(bridge: Any) -> torch.nn.Module | None:
    """A plain HF model of the bridge's class sharing its processed parameters, or None."""
    hf = getattr(bridge, "original_model", None)
    if hf is None or not hasattr(hf, "config"):
        return None
    config = copy.deepcopy(hf.config)
    # the bridge asks for eager attention (it reads the pattern); the twin never does
    config._attn_implementation = "sdpa"
    try:
        with torch.device("meta"):
            twin = type(hf)(config)
    except Exception:  # an architecture that cannot be built from its config alone
        return None
    # the bridge nests each HF module as `<name>._original_component`; the HF names are the
    # keys without that part (split q/k/v views and the like have no HF name and drop out)
    have: dict[str, Tensor] = {}
    for key, value in hf.state_dict(keep_vars=True).items():
        have.setdefault(_hf_name(key), value)
    want = twin.state_dict(keep_vars=True)
    missing = [k for k in want if k not in have]
    tied = getattr(hf.config, "tie_word_embeddings", False)
    if missing and not (tied and all(k.endswith("lm_head.weight") for k in missing)):
        return None
    state = {k: have[k].detach() for k in want if k in have}
    state.update(_fused_qkv(hf, want))
    twin.load_state_dict(state, strict=False, assign=True)
    if missing:
        twin.tie_weights()
    # buffers outside the state dict (rotary frequencies, masks) from the bridge's modules
    buffers = {_hf_name(key): b for key, b in hf.named_buffers()}
    for key, b in list(twin.named_buffers()):
        if b.is_meta:
            if key not in buffers:
                return None
            owner, _, leaf = key.rpartition(".")
            module = twin.get_submodule(owner) if owner else twin
            module._buffers[leaf] = buffers[key]
    if any(p.is_meta for p in twin.parameters()):
        return None
    return twin.eval()


def _hf_name(key: str) -> str:
    """A bridge parameter or module name without its `_original_component` levels."""
    return key.replace("._original_component", "").replace("_original_component.", "")


def _fused_qkv(hf: torch.nn.Module, want: dict[str, Tensor]) -> dict[str, Tensor]:
    """GPT-2's fused `c_attn` rebuilt from the bridge's split q, k, v.

    The bridge processes (folds LayerNorm into) its split q/k/v projections and leaves the
    fused HF weight as loaded, so the twin takes the processed ones (a copy: this one weight
    does not follow later changes to the bridge).
    """
    out: dict[str, Tensor] = {}
    for path, module in hf.named_modules(remove_duplicate=False):
        name = _hf_name(path)
        if f"{name}.c_attn.weight" not in want or out.get(f"{name}.c_attn.weight") is not None:
            continue
        parts = [getattr(module, n, None) for n in ("q", "k", "v")]
        inner = [getattr(p, "original_component", None) for p in parts]
        if any(not isinstance(m, torch.nn.Linear) for m in inner):
            continue
        # nn.Linear keeps [out, in]; HF's Conv1D keeps [in, out]
        out[f"{name}.c_attn.weight"] = torch.cat([m.weight.detach().T for m in inner], 1)
        if f"{name}.c_attn.bias" in want:
            out[f"{name}.c_attn.bias"] = torch.cat([m.bias.detach() for m in inner])
    return {k: v.contiguous() for k, v in out.items()}


def _twin_module(
    hf: torch.nn.Module, twin: torch.nn.Module, component: torch.nn.Module
) -> torch.nn.Module | None:
    """The twin's module at an HF name under which the bridge holds `component`."""
    for path, module in hf.named_modules(remove_duplicate=False):
        if module is component:
            try:
                return twin.get_submodule(_hf_name(path))
            except AttributeError:
                continue
    return None


def _plan(bridge: Any, twin: torch.nn.Module, hooks: Sequence[str]) -> list[Capture] | None:
    """Each hook as (name, twin module, in/out), or None if one has no module boundary."""
    captures = []
    for name in hooks:
        prefix, rest, layer = split_hook(name)
        if not prefix:
            return None
        block = bridge.blocks[layer]
        rest = (getattr(block, "hook_aliases", None) or {}).get(rest, rest)
        owner, side = bridge_port(rest)
        read = norm_output(name)
        if read is not None and not read.after_weight:
            side = "out"  # a norm's output once its affine part is folded (checked below)
        if side is None:
            return None
        try:
            component = block.get_submodule(owner) if owner else block
        except AttributeError:
            return None
        module = _twin_module(bridge.original_model, twin, component)
        if module is None:
            return None
        captures.append((name, module, side))
    return captures


def _weights_key(bridge: Any) -> tuple[tuple[int, int], ...]:
    """Storage and in-place version of every parameter and buffer of the bridge."""
    tensors = [*bridge.parameters(), *bridge.buffers()]
    return tuple((t.data_ptr(), t._version) for t in tensors)


def _has_hooks(bridge: Any) -> bool:
    return any(hp._forward_hooks for hp in getattr(bridge, "hook_dict", {}).values())


def _matches(got: dict[str, Tensor], want: dict[str, Tensor], tolerance: float = 1e-5) -> bool:
    for name, w in want.items():
        g = got.get(name)
        if g is None or g.shape != w.shape:
            return False
        if float((g - w).abs().max()) > tolerance * (1.0 + float(w.abs().max())):
            return False
    return True


def direct_forward(
    bridge: Any,
    hooks: Sequence[str],
    reference: Callable[[Tensor], dict[str, Tensor]],
    sample: Int[Tensor, "batch pos"],
) -> DirectForward | None:
    """The checked direct path for `hooks` on `bridge`, or None where the bridge must run.

    `reference(tokens)` computes the hooks through the bridge; it is called once per set of
    hooks, on the first two rows of `sample`, and the verdict is kept on the bridge.
    """
    if _has_hooks(bridge):
        return None
    cache: dict[Any, Any] = bridge.__dict__.setdefault("_sc_direct", {})
    # the twin and its verdicts hold for the weights they were built from: an in-place edit
    # (a head ablated by zeroing W_O) or a swapped tensor starts them again
    weights = _weights_key(bridge)
    if cache.get("weights") != weights:
        cache.clear()
        cache["weights"] = weights
    if "twin" not in cache:
        cache["twin"] = _twin(bridge)
    twin = cache["twin"]
    if twin is None:
        return None
    key = tuple(sorted(hooks))
    if key not in cache:
        plan = _plan(bridge, twin, key)
        runner = None if plan is None else DirectForward(twin, plan)
        if runner is not None:
            rows = sample[:2]
            if not _matches(runner(rows), reference(rows)):
                runner = None
        cache[key] = runner
    return cache[key]
