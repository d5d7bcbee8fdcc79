"""Helpers shared by the loaders of other tools' dictionary layouts: clear errors that name the file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from replacement.errors import DictionaryFileError, SparseCircuitsError


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, with a clear error for a missing or malformed file."""
    if not path.is_file():
        raise DictionaryFileError(f"config file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DictionaryFileError(f"{str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DictionaryFileError(f"{str(path)!r} should hold a JSON object, got {type(data)}")
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from `path`, with a clear error for a missing or malformed file."""
    import yaml

    if not path.is_file():
        raise DictionaryFileError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DictionaryFileError(f"{str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise DictionaryFileError(f"{str(path)!r} should hold a YAML mapping")
    return data


def need(cfg: Mapping[str, Any], key: str, source: Path | str) -> Any:
    """`cfg[key]`, or an error naming the config file and the missing key."""
    if key not in cfg or cfg[key] is None:
        raise DictionaryFileError(f"{str(source)!r} lacks the config key {key!r}")
    return cfg[key]


def take(
    tensors: Mapping[str, Tensor],
    key: str,
    source: Path | str,
    shape: tuple[int, ...] | None = None,
) -> Tensor:
    """Tensor `key` of a file, checking its shape; errors name the file, key and expected shape."""
    if key not in tensors:
        expected = f" (expected shape {list(shape)})" if shape is not None else ""
        raise DictionaryFileError(
            f"{str(source)!r} lacks the tensor {key!r}{expected}; it holds {sorted(tensors)}"
        )
    tensor = tensors[key]
    if shape is not None and tuple(tensor.shape) != tuple(shape):
        raise DictionaryFileError(
            f"{str(source)!r}: tensor {key!r} has shape {list(tensor.shape)}, expected {list(shape)}"
        )
    return tensor


@torch.no_grad()
def fill(module: torch.nn.Module, values: Mapping[str, Tensor], source: Path | str) -> None:
    """Copy `values` (our parameter names) into `module` and refuse NaN/inf, naming the file."""
    params = dict(module.named_parameters()) | dict(module.named_buffers())
    for name, value in values.items():
        target = params[name]
        if tuple(target.shape) != tuple(value.shape):
            raise DictionaryFileError(
                f"{str(source)!r}: tensor for {name!r} has shape {list(value.shape)}, "
                f"expected {list(target.shape)}"
            )
        if value.is_floating_point() and not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise DictionaryFileError(
                f"{str(source)!r}: tensor for {name!r} has {bad} NaN/inf values"
            )
        target.copy_(value.to(target.dtype))


def finish(module: Any, source: Path | str, dtype: torch.dtype | None) -> Any:
    """Final checks and dtype conversion of a freshly loaded dictionary."""
    try:
        module.check_finite(str(source))
    except SparseCircuitsError:
        raise
    except ValueError as exc:
        raise DictionaryFileError(str(exc)) from exc
    return module.to(dtype) if dtype is not None else module


def parse_hooks(hooks: str | tuple[str, str] | None) -> tuple[str, str] | None:
    """Normalise a user's hook override: one name (an SAE) or (in_hook, out_hook)."""
    if hooks is None:
        return None
    if isinstance(hooks, str):
        return hooks, hooks
    if len(hooks) != 2 or not all(isinstance(h, str) for h in hooks):
        raise SparseCircuitsError(f"hooks should be a name or (in_hook, out_hook), got {hooks!r}")
    return hooks[0], hooks[1]
