"""Splice dictionaries into a model: replace each out_hook activation by its reconstruction.

    with splice(model, [tc0, tc1], error_term=False) as state:
        logits = model(tokens)
        state.acts["blocks.0.hook_mlp_out"]      # feature activations, if record=True

With `error_term=True` the reconstruction error `y - y_hat` is added back (detached), so the
forward pass is exact while gradients flow through the dictionary only. Hooks are installed
on entry and always removed on exit, also when the block raises.

Position 0 (BOS) keeps the model's own activation by default (`keep_bos=True`). Dictionaries
are trained with BOS masked out (its activations are huge and constant), so they reconstruct
it badly, and BOS is the attention sink every later position reads: splicing it can cost more
loss than all other positions together (the default model's layer-1 skip transcoder recovers
0.65 of the loss with BOS spliced, 0.95 without). Its activation does not depend on the prompt,
so keeping it adds no information from the original model; attribution graphs likewise give
position 0 no feature nodes.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from replacement.crosslayer import CrossLayerTranscoder
from replacement.dictionary import Dictionary
from replacement.errors import NonFiniteError, ShapeError, SparseCircuitsError
from replacement.formats.model_hooks import unresolved_hooks
from replacement.hook_table import has_residual_width, norm_facts
from replacement.hooks import check_hook
from replacement.model import model_name
from replacement.processing import (
    UNKNOWN,
    ProcessingError,
    model_processing,
    unknown_processing_advice,
)

# names under which one model is known (compared after taking the last path component);
# TransformerLens calls GPT-2 small "gpt2-small", Hugging Face "gpt2"
_ALIASES = {"gpt2-small": "gpt2"}


def _base_name(name: str) -> str:
    base = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].lower()
    return _ALIASES.get(base, base)


def same_model_name(a: str, b: str) -> bool:
    """Whether two recorded model names denote one model: last path component, known aliases.

    `data/tiny-gpt2` (a folder as typed) and `tiny-gpt2` (what SAELens records) match, as do
    `gpt2`, `gpt2-small` and `openai-community/gpt2`.
    """
    return _base_name(a) == _base_name(b)


@dataclass
class SpliceState:
    """What the spliced forward passes saw, keyed by each dictionary's out_hook."""

    record: bool = False
    """Whether to keep inputs, activations, targets and reconstructions of the last pass."""
    inputs: dict[str, Tensor] = field(default_factory=dict)
    acts: dict[str, Tensor] = field(default_factory=dict)
    targets: dict[str, Tensor] = field(default_factory=dict)
    recons: dict[str, Tensor] = field(default_factory=dict)


def as_dict_map(
    dictionaries: Dictionary | Sequence[Dictionary] | Mapping[str, Dictionary],
) -> dict[str, Dictionary]:
    """Dictionaries keyed by out_hook; refuses two dictionaries writing the same hook."""
    if isinstance(dictionaries, Dictionary):
        dictionaries = [dictionaries]
    items = list(dictionaries.values()) if isinstance(dictionaries, Mapping) else list(dictionaries)
    out: dict[str, Dictionary] = {}
    for d in items:
        if d.out_hook in out:
            raise SparseCircuitsError(f"two dictionaries write the same hook {d.out_hook!r}")
        out[d.out_hook] = d
    return out


def check_compatible(model: Any, dictionary: Dictionary, check_model: bool = True) -> None:
    """Raise if the dictionary's hooks, widths or recorded model do not fit `model`."""
    check_hook(model, dictionary.in_hook)
    check_hook(model, dictionary.out_hook)
    name = model_name(model)
    if (
        check_model
        and dictionary.model_name
        and name
        and not same_model_name(dictionary.model_name, name)
    ):
        # a name alone proves nothing (a local folder is named as typed); widths and hooks
        # are checked below, so warn rather than refuse
        warnings.warn(
            f"dictionary at {dictionary.out_hook!r} records model {dictionary.model_name!r}, "
            f"but the model is {name!r}; using it anyway (check_model=False silences this)",
            stacklevel=3,
        )
    problem = unresolved_hooks(dictionary, model)
    if problem:
        raise ProcessingError(
            f"dictionary at {dictionary.out_hook!r} does not read what it was trained on: "
            f"{problem}. Load it with load_dictionaries(path, model=model), which renames them"
        )
    wanted = (getattr(dictionary, "metadata", None) or {}).get("processing")
    have = model_processing(model)
    if wanted and have == UNKNOWN:
        raise ProcessingError(
            f"dictionary at {dictionary.out_hook!r} expects activations of a model with "
            f"processing {wanted!r}, but {unknown_processing_advice(wanted)}"
        )
    if wanted and wanted != have:
        raise ProcessingError(
            f"dictionary at {dictionary.out_hook!r} expects activations of a model with "
            f"processing {wanted!r}, but this model has {have!r}. Load it with "
            "load_dictionaries(path, model=model), which converts it exactly where possible, or "
            f"load the model with load_model(source, processing={wanted!r})"
        )
    if isinstance(dictionary, torch.nn.Module):  # (a cross-layer transcoder's layer views are not)
        check_finite(dictionary)
    d_model = model.cfg.d_model
    for hook, width, label in (
        (dictionary.in_hook, dictionary.d_in, "d_in"),
        (dictionary.out_hook, dictionary.d_out, "d_out"),
    ):
        if has_residual_width(hook, norm_facts(model)) and width != d_model:
            raise ShapeError(
                f"dictionary {label}={width} does not match hook {hook!r}, which has width "
                f"d_model={d_model}"
            )


def check_finite(dictionary: Dictionary | CrossLayerTranscoder) -> None:
    """Raise `NonFiniteError` naming the first tensor of `dictionary` with NaN/inf values.

    NaN weights would give an all-NaN graph or loss; checked once per tensor version (an
    in-place change of the weights is checked again), so a splice in a loop costs nothing.
    """
    tensors = [*dictionary.named_parameters(), *dictionary.named_buffers()]
    stamp = tuple((id(t), t._version) for _, t in tensors)
    if getattr(dictionary, "_finite_stamp", None) == stamp:
        return
    for name, tensor in tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            where = getattr(dictionary, "out_hook", None)
            where = repr(where) if isinstance(where, str) else type(dictionary).__name__
            raise NonFiniteError(
                f"dictionary at {where}: {name} has {bad} NaN/inf values; "
                "expected finite weights (retrain, or reload the file)"
            )
    dictionary._finite_stamp = stamp


def _flat(act: Tensor, width: int, hook: str, label: str) -> Tensor:
    """View an activation as [..., width], folding a head axis (e.g. attn.hook_z) if needed."""
    if act.shape[-1] == width:
        return act
    if act.dim() >= 2 and act.shape[-1] * act.shape[-2] == width:
        return act.flatten(-2)
    raise ShapeError(
        f"hook {hook!r} gives activations of shape {tuple(act.shape)}, but the dictionary "
        f"expects {label}={width}"
    )


def keep_first_position(
    y_hat: Float[Tensor, "batch pos *d"], y: Float[Tensor, "batch pos *d"]
) -> Float[Tensor, "batch pos *d"]:
    """`y_hat` with position 0 (BOS) taken from `y`; gradients reach `y_hat` elsewhere only."""
    if y_hat.dim() < 2 or y_hat.shape[1] == 0:
        return y_hat
    return torch.cat([y[:, :1].to(y_hat), y_hat[:, 1:]], dim=1)


def _cast(x: Tensor, like: Tensor) -> Tensor:
    return x if (x.dtype == like.dtype and x.device == like.device) else x.to(like)


@contextlib.contextmanager
def splice(
    model: Any,
    dictionaries: Dictionary
    | CrossLayerTranscoder
    | Sequence[Dictionary | CrossLayerTranscoder]
    | Mapping[str, Dictionary | CrossLayerTranscoder],
    error_term: bool = False,
    record: bool = False,
    check_model: bool = True,
    sparse: bool = False,
    keep_bos: bool = True,
) -> Iterator[SpliceState]:
    """Context manager that replaces each dictionary's out_hook activation by its output.

    Args:
        model: a `TransformerBridge` from `load_model`.
        dictionaries: one or several dictionaries (any layers, SAEs and transcoders mixed),
            cross-layer transcoders included (each layer's out_hook then receives the sum of
            the decoders of features from layers <= it).
        error_term: add the detached reconstruction error back, making the forward exact.
        record: keep inputs, activations, targets and reconstructions in the yielded state.
        check_model: warn about dictionaries whose recorded model name differs from the model's.
        sparse: compute each (per-site) dictionary through its sparse path (`forward_sparse`),
            which is faster for TopK/JumpReLU dictionaries; recorded acts are then `SparseActs`.
        keep_bos: keep the model's own activation at position 0 (BOS) instead of the
            dictionary's output (see the module docstring); False splices every position.
    """
    by_out, clts = _split_crosslayer(dictionaries)
    for d in by_out.values():
        check_compatible(model, d, check_model)
    for clt in clts:
        check_finite(clt)
        for view in _layer_views(clt):
            check_compatible(model, view, check_model)
    state = SpliceState(record=record)
    inputs: dict[str, Tensor] = {}
    hooks = []

    def make_in_hook(out_hook: str, d: Dictionary):
        def hook(act: Tensor, hook: Any) -> Tensor:
            inputs[out_hook] = _flat(act, d.d_in, d.in_hook, "d_in")
            return act

        return hook

    def make_out_hook(out_hook: str, d: Dictionary):
        def hook(act: Tensor, hook: Any) -> Tensor:
            if d.in_hook == d.out_hook:
                x = _flat(act, d.d_in, d.in_hook, "d_in")
            else:
                x = inputs.pop(out_hook)
            y = _flat(act, d.d_out, d.out_hook, "d_out")
            x_d = _cast(x, d.W_enc)
            if sparse:
                y_hat, acts = d.forward_sparse(x_d.reshape(-1, d.d_in))
                y_hat = y_hat.reshape(y.shape)
            else:
                acts = d.encode(x_d)
                y_hat = d.decode(acts) + (d.skip(x_d) if d.W_skip is not None else 0)
            y_hat = y_hat.to(y)
            if keep_bos:
                y_hat = keep_first_position(y_hat, y)
            if error_term:
                y_hat = y_hat + (y - y_hat).detach()
            if state.record:
                state.inputs[out_hook], state.acts[out_hook] = x, acts
                state.targets[out_hook], state.recons[out_hook] = y, y_hat
            return y_hat.reshape(act.shape)

        return hook

    for out_hook, d in by_out.items():
        if d.in_hook != d.out_hook:
            hooks.append((d.in_hook, make_in_hook(out_hook, d)))
        hooks.append((out_hook, make_out_hook(out_hook, d)))
    for clt in clts:
        hooks.extend(_crosslayer_hooks(clt, state, error_term, keep_bos))
    with model.hooks(fwd_hooks=hooks):
        yield state


def _split_crosslayer(
    dictionaries: Any,
) -> tuple[dict[str, Dictionary], list[CrossLayerTranscoder]]:
    """Per-site dictionaries keyed by out_hook, and the cross-layer transcoders apart."""
    if isinstance(dictionaries, (Dictionary, CrossLayerTranscoder)):
        dictionaries = [dictionaries]
    items = list(dictionaries.values()) if isinstance(dictionaries, Mapping) else list(dictionaries)
    clts = [d for d in items if isinstance(d, CrossLayerTranscoder)]
    by_out = as_dict_map([d for d in items if not isinstance(d, CrossLayerTranscoder)])
    taken = set(by_out)
    for clt in clts:
        for hook in clt.out_hooks:
            if hook in taken:
                raise SparseCircuitsError(f"two dictionaries write the same hook {hook!r}")
            taken.add(hook)
    return by_out, clts


def _layer_views(clt: CrossLayerTranscoder) -> list[Any]:
    """One (in_hook, out_hook, widths, model) record per layer, for `check_compatible`."""
    from types import SimpleNamespace

    return [
        SimpleNamespace(
            in_hook=clt.in_hook(layer),
            out_hook=clt.out_hook(layer),
            d_in=clt.d_model,
            d_out=clt.d_model,
            model_name=clt.model_name,
            # hook names and processing: what the CLT reads must be what this model gives
            metadata={k: v for k, v in clt.metadata.items() if k in ("hook_source", "processing")},
        )
        for layer in range(clt.n_layers)
    ]


def _crosslayer_hooks(
    clt: CrossLayerTranscoder, state: SpliceState, error_term: bool, keep_bos: bool
) -> list:
    """Hooks splicing a CLT: each layer's output becomes the sum of decoders from layers <= it."""
    inputs: dict[int, Tensor] = {}
    acts: dict[int, Tensor] = {}

    def make_in_hook(layer: int):
        def hook(act: Tensor, hook: Any) -> Tensor:
            x = _flat(act, clt.d_model, clt.in_hook(layer), "d_in")
            inputs[layer] = x
            acts[layer] = clt.encode_layer(layer, _cast(x, clt.b_dec))
            return act

        return hook

    def make_out_hook(layer: int):
        out_hook = clt.out_hook(layer)

        def hook(act: Tensor, hook: Any) -> Tensor:
            y = _flat(act, clt.d_model, out_hook, "d_out")
            x = inputs[layer]
            y_hat = clt.decode_to(layer, acts)
            if clt.W_skip is not None:
                y_hat = y_hat + clt.skip(layer, _cast(x, clt.b_dec))
            y_hat = y_hat.to(y)
            if keep_bos:
                y_hat = keep_first_position(y_hat, y)
            if error_term:
                y_hat = y_hat + (y - y_hat).detach()
            if state.record:
                state.inputs[out_hook], state.acts[out_hook] = x, acts[layer]
                state.targets[out_hook], state.recons[out_hook] = y, y_hat
            return y_hat.reshape(act.shape)

        return hook

    hooks = []
    for layer in range(clt.n_layers):
        hooks.append((clt.in_hook(layer), make_in_hook(layer)))
        hooks.append((clt.out_hook(layer), make_out_hook(layer)))
    return hooks


@torch.no_grad()
def move_to_model(dictionary: Dictionary, model: Any) -> Dictionary:
    """Put a dictionary on the model's device (its dtype is kept; activations are cast)."""
    device = torch.device(model.cfg.device)
    return dictionary if dictionary.W_enc.device == device else dictionary.to(device)
