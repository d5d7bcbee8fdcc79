"""Find the atlas of a dictionary set: the zoo ships one beside each of its sets.

Shipped atlases live in `zoo/atlases/<set>/`; a dictionary loaded from the zoo records its set
in `metadata["source"]` ("zoo:<set>/layer_<l>"). An atlas is used only when its fingerprints
match the dictionaries' weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from replacement.atlas.atlas import FeatureAtlas
from replacement.zoo import ATLAS_DIR


def shipped_atlas_path(set_name: str) -> Path:
    """Where the zoo keeps (or would keep) the atlas of a dictionary set."""
    return ATLAS_DIR / set_name


def zoo_set_name(dictionaries: Sequence[Any]) -> str | None:
    """The zoo set all `dictionaries` come from, or None (mixed or not from the zoo)."""
    names = set()
    for d in dictionaries:
        source = str(getattr(d, "metadata", {}).get("source", ""))
        if not source.startswith("zoo:") or "/" not in source:
            return None
        names.add(source.removeprefix("zoo:").split("/")[0])
    return names.pop() if len(names) == 1 else None


def find_atlas(dictionaries: Sequence[Any]) -> FeatureAtlas | None:
    """The shipped atlas describing exactly these dictionaries, or None."""
    name = zoo_set_name(dictionaries)
    if name is None:
        return None
    path = shipped_atlas_path(name)
    if not (path / "atlas.json").is_file():
        return None
    atlas = FeatureAtlas.load(path)
    return atlas if atlas.matches(dictionaries) else None
