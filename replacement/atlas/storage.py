"""Atlas files: `atlas.safetensors` (compact tensors) and `atlas.json` (labels, vocabulary, how
it was built), written atomically.

Tensors are named `tokens` (the corpus rows contexts point into) and `layer{l}.{field}` with the dtypes of `LAYER_FIELDS` (float16 values, bytes for
context activations, token ids as integers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from replacement.atomic import atomic_path, write_json
from replacement.errors import SparseCircuitsError

if TYPE_CHECKING:  # `FeatureAtlas.save`/`load` call this module, never the other way round
    from replacement.atlas.atlas import FeatureAtlas

LAYER_FIELDS = {
    # name: dtype on disk (integers are stored as int16 wherever their values fit). [F] stats
    "frequency": torch.float32,  # share of tokens (BOS excluded) where the feature is non-zero
    "mean": torch.float32,  # mean activation over the tokens where it fires
    "max": torch.float32,
    "hist": torch.float16,  # [F, bins] share of firing tokens per bin of (0, max]
    "band_edges": torch.float32,  # [F, bands + 1] quantile edges, 0 first and max last
    # [F, N] top contexts (row -1: empty) and [F, N, window] activations, 255 = max
    "top_value": torch.float16,
    "top_row": torch.int32,
    "top_pos": torch.int16,
    "top_window": torch.uint8,
    # [F, bands, per_band] examples per quantile band
    "band_value": torch.float32,
    "band_row": torch.int32,
    "band_pos": torch.int16,
    "band_window": torch.uint8,
    # [F, k] weight-based lists (token ids; feature indices for neighbours)
    "promoted_ids": torch.int32,
    "promoted_values": torch.float16,
    "suppressed_ids": torch.int32,
    "suppressed_values": torch.float16,
    "input_ids": torch.int32,
    "input_values": torch.float16,
    "neighbour_ids": torch.int32,
    "neighbour_cos": torch.float16,
}
OPTIONAL_FIELDS = (
    "promoted_ids",
    "promoted_values",
    "suppressed_ids",
    "suppressed_values",
    "input_ids",
    "input_values",
)

ATLAS_FORMAT_VERSION = 1
TENSORS_FILE, META_FILE = "atlas.safetensors", "atlas.json"


def save_atlas(atlas: FeatureAtlas, folder: str | Path) -> Path:
    """Write the atlas into `folder`; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"tokens": _compact(atlas.tokens.to(torch.int32)).contiguous()}
    layers = {}
    for layer, entry in sorted(atlas.layers.items()):
        for name, tensor in entry.tensors.items():
            tensors[f"layer{layer}.{name}"] = _compact(tensor.to(LAYER_FIELDS[name])).contiguous()
        layers[str(layer)] = {
            "in_hook": entry.in_hook,
            "out_hook": entry.out_hook,
            "n_features": entry.n_features,
            "fingerprint": entry.fingerprint,
            "source": entry.source,
            "labels": entry.labels,
        }
    with atomic_path(folder / TENSORS_FILE) as tmp:
        save_file(tensors, str(tmp))
    meta = {
        "format_version": ATLAS_FORMAT_VERSION,
        "settings": atlas.settings,
        "layers": layers,
        "vocab": atlas.vocab,
    }
    write_json(folder / META_FILE, meta)
    return folder


def read_atlas(folder: str | Path) -> dict[str, Any]:
    """The parts of an atlas folder written by `save_atlas`: "layers" (layer -> the fields of a
    `LayerAtlas`), "tokens", "vocab" and "settings" (`FeatureAtlas.load` assembles them)."""
    folder = Path(folder)
    meta_path, tensor_path = folder / META_FILE, folder / TENSORS_FILE
    for path in (meta_path, tensor_path):
        if not path.is_file():
            raise SparseCircuitsError(
                f"atlas file {str(path)!r} does not exist; expected a folder written by "
                "`sparse-circuits features` (atlas.json + atlas.safetensors)"
            )
    try:
        meta = json.loads(meta_path.read_text())
        tensors = load_file(str(tensor_path))
    except Exception as exc:  # json and safetensors raise several types on corrupt files
        raise SparseCircuitsError(f"atlas in {str(folder)!r} is corrupt: {exc}") from exc
    if meta.get("format_version") != ATLAS_FORMAT_VERSION:
        raise SparseCircuitsError(
            f"atlas in {str(folder)!r} has format_version {meta.get('format_version')!r}; "
            f"expected {ATLAS_FORMAT_VERSION}"
        )
    layers = {}
    for key, info in meta["layers"].items():
        layer = int(key)
        fields = {}
        for name in LAYER_FIELDS:
            tensor = tensors.get(f"layer{layer}.{name}")
            if tensor is None:
                if name in OPTIONAL_FIELDS:
                    continue
                raise SparseCircuitsError(f"atlas in {str(folder)!r} lacks layer{layer}.{name}")
            fields[name] = tensor if tensor.dtype == torch.uint8 else _widen(tensor)
        layers[layer] = {
            "in_hook": info["in_hook"],
            "out_hook": info["out_hook"],
            "n_features": int(info["n_features"]),
            "fingerprint": info["fingerprint"],
            "labels": list(info["labels"]),
            "tensors": fields,
            "source": info.get("source", ""),
        }
    return {
        "layers": layers,
        "tokens": tensors["tokens"].long(),
        "vocab": list(meta["vocab"]),
        "settings": meta.get("settings", {}),
    }


def _compact(tensor: torch.Tensor) -> torch.Tensor:
    """int32 tensors as int16 when every value fits (token ids of small vocabularies, rows)."""
    if tensor.dtype != torch.int32 or tensor.numel() == 0:
        return tensor
    fits = int(tensor.min()) >= -32768 and int(tensor.max()) <= 32767
    return tensor.to(torch.int16) if fits else tensor


def _widen(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.is_floating_point() else tensor.long()
