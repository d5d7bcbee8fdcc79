"""Model processing as part of what a dictionary expects, and exact conversions between processings.

A TransformerLens model is loaded either unprocessed (`"none"`: every hook equals the Hugging
Face activation) or with TransformerLens' weight processing: LayerNorm weights folded into the
next linear layer (`fold_ln`, with value biases folded into the output bias) and writing weights
centred (`centre`, LayerNorm models only). Names: "none", "folded" (both, the compatibility mode),
"fold_ln" (folding only), "centred" (centring only).

What changes between processings, in TransformerLens 4 hook meaning:
- `*.hook_normalized` (before the norm's weight and bias) and `*.hook_scale`: nothing;
- `ln*.hook_out` (the norm's output): the affine weight and bias are gone once folded;
- the residual stream and every write into it (`hook_resid_*`, `hook_mlp_out`,
  `hook_attn_out`, embeddings): minus the per-token mean once centred (LayerNorm models);
- `attn.hook_v` / `attn.hook_z`: minus the value bias once folded.

`fit_to_processing(d, model)` converts a dictionary exactly where the algebra allows:
- a read of a norm's output on a folded model becomes a read of `hook_normalized`, with the
  norm's original weight and bias (kept by `load_model` before folding) folded into `W_enc`,
  `b_enc`, `W_skip` and `b_dec`;
- a transcoder trained on uncentred outputs writes into a centred model through a centred
  decoder (the mean of a residual write is invisible to every later LayerNorm);
and otherwise raises `ProcessingError` naming the `load_model` call that fits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import torch

from replacement.errors import SparseCircuitsError
from replacement.hook_table import (
    before_weight,
    from_tl2,
    holds_value_bias,
    is_layernorm,
    is_norm_module,
    is_residual_write,
    norm_output,
    processing_known,
    same_tensor,
)

PROCESSINGS = ("none", "folded", "fold_ln", "centred")


class ProcessingError(SparseCircuitsError):
    """A dictionary that expects other activations than the model's processing gives."""


class Processing(NamedTuple):
    """TransformerLens weight processing as two switches."""

    fold_ln: bool
    """Norm weights (and value biases) folded into the following weights."""
    centre: bool
    """Writing weights centred, so the residual stream has zero mean per token."""

    @property
    def name(self) -> str:
        """ "none", "folded", "fold_ln" or "centred"."""
        return {
            (False, False): "none",
            (True, True): "folded",
            (True, False): "fold_ln",
            (False, True): "centred",
        }[(self.fold_ln, self.centre)]


def parse_processing(name: str) -> Processing:
    """The `Processing` of a name in `PROCESSINGS`."""
    table = {
        "none": Processing(False, False),
        "folded": Processing(True, True),
        "fold_ln": Processing(True, False),
        "centred": Processing(False, True),
    }
    if name not in table:
        raise SparseCircuitsError(f"unknown processing {name!r}; expected one of {PROCESSINGS}")
    return table[name]


def processing_from_tl_kwargs(kwargs: Mapping[str, Any] | None, no_processing: bool) -> str:
    """The processing a TransformerLens 2 `from_pretrained(_no_processing)(**kwargs)` applied.

    `no_processing=True` starts from `from_pretrained_no_processing` (nothing folded or
    centred), False from `from_pretrained` (fold_ln and centre_writing_weights on).
    """
    kwargs = dict(kwargs or {})
    fold = bool(kwargs.get("fold_ln", not no_processing))
    centre = bool(kwargs.get("center_writing_weights", not no_processing))
    return Processing(fold, centre).name


UNKNOWN = "unknown"
"""`model_processing` of a bridge that `load_model` did not make (nothing says how it was built)."""


def model_processing(model: Any) -> str:
    """The processing of a model from `load_model`, or "unknown" for a bridge made elsewhere
    (state it with `model.sc_processing = "none"` etc., see `unknown_processing_advice`)."""
    return str(getattr(model, "sc_processing", None) or UNKNOWN)


def unknown_processing_advice(want: str) -> str:
    """What to do when a dictionary trained under `want` meets a bridge of unknown processing."""
    return (
        "this bridge was not made by replacement.load_model, so its processing is unknown. "
        "State it before splicing: model.sc_processing = 'none' for a bridge whose weights were "
        "not processed (TransformerBridge.boot_transformers as is), or 'folded' after "
        "enable_compatibility_mode() (norms folded, writing weights centred), or "
        f"'fold_ln' / 'centred'; or load it with load_model(source, processing={want!r})"
    )


def uses_layernorm(model: Any) -> bool:
    """True for LayerNorm models (centring matters), False for RMSNorm models."""
    return is_layernorm(model.cfg)


def original_norms(model: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Effective weight and bias of every norm, by module path (e.g. `blocks.1.ln2`).

    Read from a bridge before its weights are processed; `load_model` keeps them as
    `model.sc_original_norms` so that folding stays exact for dictionaries that read a
    norm's output.
    """
    out: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if "original_component" in name:  # the same norms again, under Hugging Face names
            continue
        if not is_norm_module(module):
            continue
        weight = getattr(module, "weight", None)
        if weight is None:
            continue
        weight = weight.detach().clone()
        if getattr(module, "uses_weight_offset", False):
            weight = 1.0 + weight
        component = getattr(module, "original_component", None)
        bias = getattr(component, "bias", None) if not getattr(module, "uses_rms_norm", 0) else None
        out[name] = (weight, bias.detach().clone() if bias is not None else None)
    return out


def norm_output_module(hook: str) -> str | None:
    """`blocks.1.ln2` for a norm's output after its weight (`blocks.1.ln2.hook_out` and its
    aliases such as `blocks.1.mlp.hook_in`: what folding changes), else None."""
    read = norm_output(hook)
    return read.norm if read is not None and read.after_weight else None


def is_centred_site(hook: str) -> bool:
    """Whether centring the writing weights changes the activation at `hook`."""
    return is_residual_write(hook)


def tl2_to_tl4_hook(hook: str, fold_ln: bool, layernorm: bool = True) -> str:
    """A TransformerLens 2 hook name in TransformerLens 4 meaning (`hook_table.from_tl2`).

    Loaders that do not know the model assume LayerNorm and record the TL2 name, so that
    `replacement.formats.model_hooks` can resolve it once the model is known.
    """
    return from_tl2(hook, fold_ln, layernorm)


def _advice(want: str) -> str:
    return (
        f"load the model with load_model(source, processing={want!r}), or let "
        "load_model(source, for_dictionaries=dictionaries) pick the processing"
    )


def fit_problem(
    in_hook: str,
    out_hook: str,
    apply_b_dec_to_input: bool,
    want: str,
    have: str,
    layernorm: bool,
    norms_kept: bool,
) -> str | None:
    """Why a dictionary trained under `want` cannot be converted to `have` (None if it can)."""
    w, h = parse_processing(want), parse_processing(have)
    if w == h:
        return None
    sae = same_tensor(in_hook, out_hook)
    for hook, role in ((in_hook, "reads"), (out_hook, "writes")):
        if role == "writes" and sae:
            continue
        if not processing_known(hook):
            return (
                f"it {role} {hook!r}, for which no exact conversion between processings is "
                "known (replacement.hook_table)"
            )
        if w.fold_ln != h.fold_ln and holds_value_bias(hook):
            return f"it {role} {hook!r}, which holds the value bias only when it is not folded"
        if layernorm and w.centre != h.centre and is_centred_site(hook):
            if sae:
                return (
                    f"it reads and writes {hook!r}, which is "
                    + ("centred" if w.centre else "uncentred")
                    + " in training but "
                    + ("centred" if h.centre else "uncentred")
                    + " in this model (the per-token mean cannot be recovered)"
                )
            if role == "reads" and not (w.centre and not apply_b_dec_to_input):
                return f"it reads {hook!r}, whose per-token mean this model does not keep"
            if role == "writes" and w.centre:
                return f"it writes {hook!r} without the per-token mean this model keeps there"
    norm = norm_output_module(in_hook)
    if norm is not None and w.fold_ln != h.fold_ln:
        if sae or (norm_output_module(out_hook) is not None):
            return f"it writes the norm output {out_hook!r}, which differs between processings"
        if h.fold_ln and not norms_kept:
            return (
                f"it reads the norm output {in_hook!r}, and this model's norm weights were "
                "folded away without being kept (a model not loaded by load_model)"
            )
        if h.fold_ln and apply_b_dec_to_input:
            return f"it subtracts b_dec from the norm output {in_hook!r} before encoding"
    if norm_output_module(out_hook) is not None and w.fold_ln != h.fold_ln and not sae:
        return f"it writes the norm output {out_hook!r}, which differs between processings"
    return None


@torch.no_grad()
def _fold_norm_into_encoder(d: Any, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Encoder (and skip) reading normalized x instead of x * weight + bias; exact."""
    w = weight.to(d.W_enc)
    b = bias.to(d.W_enc) if bias is not None else None
    if b is not None:
        d.b_enc.add_(b @ d.W_enc)
        if getattr(d, "b_mag", None) is not None:  # a gated encoder's magnitude path
            d.b_mag.add_(b @ (d.W_enc * d.r_mag.exp()))
        if getattr(d, "W_skip", None) is not None:
            d.b_dec.add_(b @ d.W_skip)
    d.W_enc.mul_(w[:, None])
    if getattr(d, "W_skip", None) is not None:
        d.W_skip.mul_(w[:, None])


@torch.no_grad()
def _centre_decoder(d: Any) -> None:
    """Decoder (and skip) outputs minus their mean over d_out; exact for LayerNorm readers."""
    d.W_dec.sub_(d.W_dec.mean(-1, keepdim=True))
    d.b_dec.sub_(d.b_dec.mean())
    if getattr(d, "W_skip", None) is not None:
        d.W_skip.sub_(d.W_skip.mean(-1, keepdim=True))


@torch.no_grad()
def _centre_encoder_input(d: Any) -> None:
    """Encoder reading uncentred x as if centred: W_enc <- C W_enc (C the centring projection)."""
    d.W_enc.sub_(d.W_enc.mean(0, keepdim=True))
    if getattr(d, "W_skip", None) is not None:
        d.W_skip.sub_(d.W_skip.mean(0, keepdim=True))


def fit_to_processing(d: Any, model: Any) -> Any:
    """`d` converted in place to read and write `model`'s activations, or `ProcessingError`.

    A dictionary that records no processing (`metadata["processing"]` absent) is left alone.
    """
    want = d.metadata.get("processing")
    have = model_processing(model)
    if not want or want == have:
        return d
    if have == UNKNOWN:
        raise ProcessingError(_message(d, want, have, unknown_processing_advice(want)))
    if callable(getattr(d, "in_hook", None)):  # cross-layer transcoders
        problem = "cross-layer transcoders are not converted between processings"
        raise ProcessingError(_message(d, want, have, problem))
    layernorm = uses_layernorm(model)
    norms = getattr(model, "sc_original_norms", None)
    problem = fit_problem(
        d.in_hook, d.out_hook, d.apply_b_dec_to_input, want, have, layernorm, norms is not None
    )
    if problem:
        raise ProcessingError(_message(d, want, have, problem))
    w, h = parse_processing(want), parse_processing(have)
    norm = norm_output_module(d.in_hook)
    if norm is not None and w.fold_ln != h.fold_ln:
        if h.fold_ln:  # the model's norm output lost its affine: fold it into the encoder
            if norm not in norms:
                raise ProcessingError(_message(d, want, have, f"the model has no norm {norm!r}"))
            _fold_norm_into_encoder(d, *norms[norm])
        # either way the hook to read is the normalized one (a folded norm's output equals it)
        d.in_hook = before_weight(norm_output(d.in_hook))
        # the peer's names no longer describe this hook (replacement.formats.model_hooks)
        d.metadata.pop("hook_source", None)
    if layernorm and w.centre != h.centre:
        sae = same_tensor(d.in_hook, d.out_hook)
        if is_centred_site(d.out_hook) and not sae and h.centre:
            _centre_decoder(d)
        if is_centred_site(d.in_hook) and w.centre and not h.centre:
            _centre_encoder_input(d)
    d.metadata["trained_processing"] = d.metadata.get("trained_processing", want)
    d.metadata["processing"] = have
    return d


def _message(d: Any, want: str, have: str, problem: str) -> str:
    where = getattr(d, "out_hook", None)
    where = where if isinstance(where, str) else d.metadata.get("source", "dictionary")
    return (
        f"the dictionary at {where!r} was trained on a model with processing {want!r}, but "
        f"this model has {have!r}: {problem}. To use it, {_advice(want)}"
    )


def _problem_for(d: Any, have: str, layernorm: bool) -> str | None:
    want = d.metadata["processing"]
    if callable(getattr(d, "in_hook", None)):  # a cross-layer transcoder is not converted
        return None if want == have else "a cross-layer transcoder trained under " + repr(want)
    return fit_problem(
        d.in_hook, d.out_hook, d.apply_b_dec_to_input, want, have, layernorm, norms_kept=True
    )


def choose_processing(dictionaries: Iterable[Any], layernorm: bool = True) -> str | None:
    """The processing that serves every dictionary (None when none records one).

    Prefers the processing most dictionaries were trained with, then any other that all of
    them can be converted to exactly; raises `ProcessingError` when no single one fits.
    """
    items = [d for d in dictionaries if d.metadata.get("processing")]
    if not items:
        return None
    wanted = [d.metadata["processing"] for d in items]
    order = sorted(set(wanted), key=lambda p: (-wanted.count(p), PROCESSINGS.index(p)))
    order += [p for p in PROCESSINGS if p not in order]
    problems = {}
    for have in order:
        found = [_problem_for(d, have, layernorm) for d in items]
        problems[have] = [p for p in found if p]
        if not problems[have]:
            return have
    raise ProcessingError(
        "no single model processing serves these dictionaries: they were trained under "
        f"{sorted(set(wanted))}; " + "; ".join(f"{k}: {v[0]}" for k, v in problems.items())
    )
