"""A JSON file and a safetensors file written as one pair (graphs, atlases).

Both carry one random `pair_id`, and the JSON holds the sha256 of the safetensors file, so
that a reader refuses a mixed pair (the files of two different saves, as an interrupted
rewrite leaves them) and a tensors file changed since. The safetensors file is written
first and the JSON last; each is replaced atomically.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from replacement.atomic import atomic_path, write_json
from replacement.errors import SparseCircuitsError

_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (read in 1 MB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def save_pair(
    json_path: Path, tensor_path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Write `tensors` and `meta` (with `pair_id` and `tensors_sha256` added after its first key)."""
    pair_id = uuid.uuid4().hex
    with atomic_path(tensor_path) as tmp:
        save_file(tensors, str(tmp), metadata={"pair_id": pair_id})
        digest = file_sha256(tmp)
    items = list(meta.items())
    ids = [("pair_id", pair_id), ("tensors_sha256", digest)]
    write_json(json_path, dict(items[:1] + ids + items[1:]))


def check_pair(json_path: Path, tensor_path: Path, meta: dict[str, Any], again: str) -> None:
    """Refuse a mixed or changed pair; `again` says how to write it anew.

    Pairs written before pair ids (neither file has one) pass.
    """
    try:
        with safe_open(str(tensor_path), "pt") as f:
            pair_id = (f.metadata() or {}).get("pair_id")
    except Exception as exc:  # safetensors raises several types on corrupt files
        raise SparseCircuitsError(f"{str(tensor_path)!r} is not valid safetensors: {exc}") from exc
    if meta.get("pair_id") != pair_id:
        raise SparseCircuitsError(
            f"{str(json_path)!r} and {str(tensor_path)!r} were written by different saves "
            f"(an interrupted or mixed save); {again}"
        )
    digest = meta.get("tensors_sha256")
    if digest is not None and digest != file_sha256(tensor_path):
        raise SparseCircuitsError(
            f"{str(tensor_path)!r} does not match the checksum in {str(json_path)!r} (changed "
            f"or damaged since it was written); {again}"
        )
