"""This project's own dictionary format: `<name>.safetensors` + `<name>.json`.

The JSON holds `format_version`, the kind, hooks, widths, activation and its parameters,
the model name, dtype, and free-form metadata (training config, metrics).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from replacement.atomic import atomic_path, write_json
from replacement.dictionary import Dictionary, GatedDictionary
from replacement.errors import DictionaryFileError

FORMAT_VERSION = 1
_LEGACY_PROCESSING = "folded"
"""Processing of files that do not record one: they were written when `load_model` always
folded LayerNorm and centred the writing weights (the zoo's files among them)."""
_REQUIRED = ("kind", "activation", "in_hook", "out_hook", "d_in", "d_out", "n_features")


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_dictionary(dictionary: Dictionary, path: str | Path) -> Path:
    """Write `dictionary` to `<path>.safetensors` and `<path>.json`, each atomically.

    Returns the path of the JSON file.
    """
    tensors_path, json_path = _paths(path)
    config = dictionary.config()
    # always present, so that a file without it is known to predate it (see `_LEGACY_PROCESSING`)
    config["metadata"] = {"processing": None, **config["metadata"]}
    tensors = {k: v.detach().contiguous().cpu() for k, v in dictionary.state_dict().items()}
    with atomic_path(tensors_path) as tmp:
        save_file(tensors, str(tmp), metadata={"format_version": str(FORMAT_VERSION)})
    write_json(json_path, {"format_version": FORMAT_VERSION, **config})
    return json_path


def _read_config(json_path: Path) -> dict[str, Any]:
    if not json_path.is_file():
        raise DictionaryFileError(f"dictionary config {str(json_path)!r} does not exist")
    try:
        cfg = json.loads(json_path.read_text())
    except json.JSONDecodeError as exc:
        raise DictionaryFileError(f"{str(json_path)!r} is not valid JSON: {exc}") from exc
    missing = [key for key in _REQUIRED if key not in cfg]
    if missing:
        raise DictionaryFileError(f"{str(json_path)!r} lacks the keys {missing}")
    version = cfg.get("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise DictionaryFileError(
            f"{str(json_path)!r} has format_version {version}; this version of sparse-circuits "
            f"reads up to {FORMAT_VERSION}"
        )
    return cfg


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file with a clear error for a missing or corrupt file."""
    if not path.is_file():
        raise DictionaryFileError(f"tensor file {str(path)!r} does not exist")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several error types for corrupt files
        raise DictionaryFileError(f"{str(path)!r} is not a valid safetensors file: {exc}") from exc


def dictionary_from_config(cfg: dict[str, Any], dtype: torch.dtype) -> Dictionary:
    """An empty dictionary of the shape and kind a config describes."""
    metadata = dict(cfg.get("metadata") or {})
    metadata.setdefault("processing", _LEGACY_PROCESSING)
    common = dict(
        skip=cfg["kind"] == "skip_transcoder",
        apply_b_dec_to_input=cfg.get("apply_b_dec_to_input"),
        model_name=cfg.get("model_name", ""),
        metadata=metadata,
        dtype=dtype,
    )
    shape = (cfg["d_in"], cfg["d_out"], cfg["n_features"], cfg["in_hook"], cfg["out_hook"])
    if cfg["activation"] == "gated":
        return GatedDictionary(*shape, **common)
    return Dictionary(
        *shape,
        activation=cfg["activation"],
        activation_params=cfg.get("activation_params", {}),
        **common,
    )


def load_state(dictionary: Dictionary, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy tensors into a dictionary, naming missing keys and mismatched shapes."""
    expected = dictionary.state_dict()
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise DictionaryFileError(f"{source} lacks the tensors {missing}")
    for name, tensor in tensors.items():
        if name in expected and expected[name].shape != tensor.shape:
            raise DictionaryFileError(
                f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, expected "
                f"{tuple(expected[name].shape)}"
            )
    dictionary.load_state_dict({k: v for k, v in tensors.items() if k in expected})
    dictionary.check_finite(source)


def load_native(path: str | Path, dtype: torch.dtype | None = None) -> Dictionary:
    """Load a dictionary saved by `save_dictionary` (path with or without suffix)."""
    tensors_path, json_path = _paths(path)
    cfg = _read_config(json_path)
    tensors = read_safetensors(tensors_path)
    stored = getattr(torch, cfg.get("dtype", "float32"), torch.float32)
    dictionary = dictionary_from_config(cfg, stored)
    load_state(dictionary, tensors, str(tensors_path))
    return dictionary.to(dtype) if dtype is not None else dictionary
