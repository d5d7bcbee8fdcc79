"""Load a language model as a TransformerLens 4 `TransformerBridge`, processed or not.

`processing` (see `replacement.processing`) says what the hooks hold: "none" gives Hugging
Face's activations (what SAELens, circuit-tracer and sparsify dictionaries are trained on),
"folded" TransformerLens' compatibility mode (LayerNorm folded, writing weights centred; what
the embedded model's dictionaries were trained on). The default picks per source, or from the
dictionaries given as `for_dictionaries`.

Every other module talks to the model through TransformerLens hook names and weight
properties, never through Hugging Face internals, so that GPT-2, Pythia, Llama, Gemma and the
embedded default model are handled by one code path.

BOS handling is explicit: `to_tokens(model, text)` prepends the tokenizer's BOS token exactly
once (pass `prepend_bos=False` for text that already starts with it). Position 0 then holds
BOS, and the metrics and attribution graphs of this project leave position 0 out.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from replacement.errors import ModelLoadError
from replacement.fused_gelu import fuse_tanh_gelu
from replacement.processing import (
    PROCESSINGS,
    choose_processing,
    original_norms,
    parse_processing,
)
from replacement.validation import TOKENIZER_FILES, has_tokenizer_files, looks_local

DEFAULT_MODEL_DIR = Path(str(resources.files("replacement") / "zoo" / "default_model"))
"""Folder of the embedded default model (Hugging Face format, shipped as package data)."""

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


def _check_local_folder(path: Path, needs_tokenizer: bool = True) -> None:
    """Raise a clear error if `path` is not a usable Hugging Face model folder."""
    if not path.is_dir():
        raise ModelLoadError(
            f"model folder {str(path)!r} does not exist (a name that is neither a folder nor a "
            "known Hugging Face model is taken as a folder; hub models are 'org/name')"
        )
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"model folder {str(path)!r} has no config.json; expected a Hugging Face model folder "
            "(config.json, model.safetensors, tokenizer files)"
        )
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise ModelLoadError(
            f"model folder {str(path)!r} has no weights; expected one of {list(_WEIGHT_FILES)}"
        )
    if needs_tokenizer and not has_tokenizer_files(path):
        raise ModelLoadError(
            f"model folder {str(path)!r} has no tokenizer files; expected one of "
            f"{list(TOKENIZER_FILES)} (save it with tokenizer.save_pretrained(folder))"
        )
    weights = path / "model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(weights), framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # safetensors raises several types for corrupt files
            raise ModelLoadError(
                f"weights file {str(weights)!r} is not a valid safetensors file: {exc}"
            ) from exc


def _tokenizer_with_path(tokenizer: Any) -> Any:
    """TransformerLens reloads the tokenizer from its `name_or_path`; give an in-memory one a path."""
    if tokenizer is None or tokenizer.init_kwargs.get("name_or_path"):
        return tokenizer
    from transformers import AutoTokenizer

    folder = tempfile.mkdtemp(prefix="sparse_circuits_tok_")
    tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def load_model(
    source: str | Path | torch.nn.Module = "default",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    tokenizer: Any = None,
    processing: str = "auto",
    for_dictionaries: Any = None,
) -> Any:
    """Load a model as a TransformerLens `TransformerBridge` (compatibility-mode hook names).

    Args:
        source: `"default"` (the embedded model), a local Hugging Face folder, a Hugging Face
            model name (downloaded by `transformers` unless cached), or an in-memory Hugging
            Face causal LM (then pass `tokenizer`).
        device: where to put the model; defaults to CPU.
        dtype: parameter dtype; defaults to float32.
        tokenizer: a Hugging Face tokenizer, required with an in-memory model.
        processing: "none" (every hook equals the Hugging Face activation), "folded"
            (LayerNorm weights folded, writing weights centred), "fold_ln", "centred", or
            "auto": the processing `for_dictionaries` were trained with, else "folded" for the
            embedded default model (its dictionaries expect it) and "none" for any other model.
        for_dictionaries: dictionaries (from `load_dictionaries` without a model) the model is
            for; with `processing="auto"` they choose it.

    Returns:
        The bridge, in eval mode. Its processing is `model.sc_processing`; the unembedding is
        never centred, so logits equal the Hugging Face model's. A tanh-GELU (`gelu_new`) runs
        in torch's fused kernel (`replacement.fused_gelu`; an in-memory model's activation
        modules are swapped in place). Norm weights and biases from
        before folding are kept as `model.sc_original_norms` (dictionaries that read a norm's
        output are converted with them).
    """
    from transformer_lens.model_bridge import TransformerBridge

    if processing != "auto" and processing not in PROCESSINGS:
        raise ModelLoadError(
            f"unknown processing {processing!r}; expected 'auto' or one of {list(PROCESSINGS)}"
        )
    if processing == "auto":
        chosen = choose_processing(for_dictionaries) if for_dictionaries is not None else None
        processing = chosen or ("folded" if _is_default(source) else "none")
    device = str(device) if device is not None else "cpu"
    dtype = dtype or torch.float32
    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars on every load
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(source, torch.nn.Module):
            if tokenizer is None:
                raise ModelLoadError(
                    "an in-memory model needs its tokenizer: load_model(model, tokenizer=...)"
                )
            name = getattr(getattr(source, "config", None), "_name_or_path", "") or "in-memory"
            bridge = TransformerBridge.boot_transformers(
                name,
                hf_model=source,
                tokenizer=_tokenizer_with_path(tokenizer),
                device=device,
                dtype=dtype,
            )
        else:
            if str(source) == "default":
                path: Path | None = DEFAULT_MODEL_DIR
            else:
                path = Path(source).expanduser()
                path = path if looks_local(source) else None  # never send a folder to the hub
            if path is not None:
                _check_local_folder(path, needs_tokenizer=tokenizer is None)
            try:
                bridge = TransformerBridge.boot_transformers(
                    str(path) if path is not None else str(source),
                    device=device,
                    dtype=dtype,
                    tokenizer=_tokenizer_with_path(tokenizer),
                )
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"could not load model {str(source)!r}: {exc}") from exc
            if str(source) == "default":
                bridge.cfg.model_name = "sparse-circuits-default"
        bridge.sc_original_norms = original_norms(bridge)
        fuse_tanh_gelu(bridge)  # same function, one kernel instead of five Python ops
        flags = parse_processing(processing)
        bridge.enable_compatibility_mode(
            disable_warnings=True,
            no_processing=not (flags.fold_ln or flags.centre),
            fold_ln=flags.fold_ln,
            fold_value_biases=flags.fold_ln,
            center_writing_weights=flags.centre,
            center_unembed=False,
        )
        bridge.sc_processing = processing
    bridge.eval()
    for param in bridge.parameters():
        param.requires_grad_(False)
    return bridge


def _is_default(source: Any) -> bool:
    if isinstance(source, torch.nn.Module):
        return False
    if str(source) == "default":
        return True
    try:
        return Path(source).expanduser().resolve() == DEFAULT_MODEL_DIR.resolve()
    except OSError:
        return False


def model_name(model: Any) -> str:
    """The name recorded in dictionaries trained on `model` (checked when splicing)."""
    return str(getattr(model.cfg, "model_name", "") or "")


def to_tokens(
    model: Any, text: str | list[str], prepend_bos: bool = True
) -> Int[Tensor, "batch pos"]:
    """Tokenize `text` for `model`, prepending BOS exactly once unless `prepend_bos=False`."""
    texts = [text] if isinstance(text, str) else list(text)
    tokenizer = model.tokenizer
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    bos = tokenizer.bos_token_id
    if prepend_bos:
        if bos is None:
            raise ModelLoadError("the tokenizer has no BOS token; call with prepend_bos=False")
        rows = [[bos, *row] for row in rows]
    width = max(len(row) for row in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out.to(model.cfg.device)
