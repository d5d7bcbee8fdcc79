"""Atlas files: `atlas.safetensors` (compact tensors) and `atlas.json` (labels, vocabulary, how
it was built), written atomically.

Tensors are named `tokens` (the corpus rows contexts point into) and `layer{l}.{field}` with the dtypes of `LAYER_FIELDS` (float16 values, bytes for
context activations, token ids as integers).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from replacement.atlas.atlas import LAYER_FIELDS, OPTIONAL_FIELDS, FeatureAtlas, LayerAtlas
from replacement.atomic import atomic_path, write_json
from replacement.errors import SparseCircuitsError

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


def load_atlas(folder: str | Path) -> FeatureAtlas:
    """Read an atlas folder written by `save_atlas`."""
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
        layers[layer] = LayerAtlas(
            in_hook=info["in_hook"],
            out_hook=info["out_hook"],
            n_features=int(info["n_features"]),
            fingerprint=info["fingerprint"],
            labels=list(info["labels"]),
            tensors=fields,
            source=info.get("source", ""),
        )
    from replacement.atlas.scores import load_scores

    return FeatureAtlas(
        layers=layers,
        tokens=tensors["tokens"].long(),
        vocab=list(meta["vocab"]),
        settings=meta.get("settings", {}),
        scores=load_scores(folder, {layer: e.fingerprint for layer, e in layers.items()}),
    )


def _compact(tensor: torch.Tensor) -> torch.Tensor:
    """int32 tensors as int16 when every value fits (token ids of small vocabularies, rows)."""
    if tensor.dtype != torch.int32 or tensor.numel() == 0:
        return tensor
    fits = int(tensor.min()) >= -32768 and int(tensor.max()) <= 32767
    return tensor.to(torch.int16) if fits else tensor


def _widen(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.is_floating_point() else tensor.long()
