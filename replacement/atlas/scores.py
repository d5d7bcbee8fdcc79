"""Interpretability scores of an atlas's features: `interpretability.json` beside the atlas.

Written by `sparse-circuits interpret --atlas-out` (`analysis.interpretability`); read with
the atlas when present. Per layer (keyed by the dictionary's fingerprint, so scores of other
weights are ignored): per feature the explanation, its held-out detection and fuzzing scores,
the best concept and its held-out F1, and `better_label` where the explanation scored clearly
higher than the tokens the default label names (else null).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from replacement.atomic import atomic_path

SCORES_FILE = "interpretability.json"
SCORE_FIELDS = ("explanation", "detection", "fuzzing", "concept", "concept_f1", "better_label")


def save_scores(
    folder: str | Path, layers: dict[int, dict[str, Any]], info: dict[str, Any]
) -> Path:
    """Write `interpretability.json` (layers: layer -> {fingerprint, SCORE_FIELDS lists})."""
    path = Path(folder) / SCORES_FILE
    data = {"format_version": 1, "info": info, "layers": {str(k): v for k, v in layers.items()}}
    with atomic_path(path) as tmp:  # compact: it ships beside the zoo's atlases
        tmp.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    return path


def load_scores(folder: str | Path, fingerprints: dict[int, str]) -> dict[int, dict[str, Any]]:
    """The scores of layers whose fingerprint matches (empty when the file is absent)."""
    path = Path(folder) / SCORES_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return {}
    out = {}
    for key, entry in data.get("layers", {}).items():
        layer = int(key)
        if fingerprints.get(layer) == entry.get("fingerprint"):
            out[layer] = entry
    return out


def feature_scores(entry: dict[str, Any] | None, feature: int) -> dict[str, Any] | None:
    """One feature's scores (None without scores)."""
    if not entry:
        return None
    return {name: entry[name][feature] for name in SCORE_FIELDS if name in entry}
