"""The embedded zoo: the default model and its dictionary sets, shipped as package data.

Layout:
    zoo/default_model/                 Hugging Face folder + MODEL_CARD.md + model_card.json
    zoo/dictionaries/<set>/            layer_{l}.safetensors + layer_{l}.json per layer,
                                       card.json with per-layer quality figures
    zoo/atlases/<set>/                 the set's feature atlas (replacement.atlas):
                                       atlas.safetensors + atlas.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from replacement.errors import DictionaryFileError

ZOO_DIR = Path(str(resources.files("replacement") / "zoo"))
DICTIONARY_DIR = ZOO_DIR / "dictionaries"
ATLAS_DIR = ZOO_DIR / "atlases"
DEFAULT_DICTIONARY_SET = "skip_transcoder"
"""The set `sparse-circuits trace` uses when no dictionaries are named."""


@dataclass
class ZooEntry:
    """One shipped item: a model or a dictionary set."""

    name: str
    """Name to pass to `load_model` / `load_dictionary_set`."""
    path: Path
    """Folder on disk."""
    size_bytes: int
    """Bytes of the tensors files in the folder."""
    card: dict[str, Any]
    """The machine-readable card (quality figures, training tokens)."""


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


def _card(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def list_models() -> list[ZooEntry]:
    """Models shipped in the package."""
    folder = ZOO_DIR / "default_model"
    if not (folder / "config.json").is_file():
        return []
    return [ZooEntry("default", folder, _size(folder), _card(folder / "model_card.json"))]


def list_dictionary_sets() -> list[ZooEntry]:
    """Dictionary sets shipped in the package."""
    if not DICTIONARY_DIR.is_dir():
        return []
    return [
        ZooEntry(p.name, p, _size(p), _card(p / "card.json"))
        for p in sorted(DICTIONARY_DIR.iterdir())
        if p.is_dir() and any(p.glob("*.json"))
    ]


def list_atlases() -> list[ZooEntry]:
    """Feature atlases shipped in the package; the card holds how each was built."""
    if not ATLAS_DIR.is_dir():
        return []
    entries = []
    for p in sorted(ATLAS_DIR.iterdir()):
        if (p / "atlas.json").is_file():
            size = sum(f.stat().st_size for f in p.glob("atlas.*"))
            settings = json.loads((p / "atlas.json").read_text()).get("settings", {})
            entries.append(ZooEntry(p.name, p, size, settings))
    return entries


def dictionary_set_path(name: str) -> Path:
    """Folder of a shipped dictionary set, with an error listing the shipped names."""
    path = DICTIONARY_DIR / name
    if not path.is_dir():
        names = [entry.name for entry in list_dictionary_sets()]
        raise DictionaryFileError(f"no shipped dictionary set {name!r}; shipped sets: {names}")
    return path
