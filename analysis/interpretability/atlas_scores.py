"""Per-feature scores of one set into the atlas's `interpretability.json`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from analysis.interpretability.run import BETTER_LABEL_MARGIN, SourceResult
from replacement.atlas.atlas import dictionary_fingerprint
from replacement.atlas.scores import save_scores
from replacement.hooks import hook_layer


def _round(x: float) -> float | None:
    return None if x is None or np.isnan(x) else round(float(x), 3)


def write_atlas_scores(
    result: SourceResult, dictionaries: Sequence[Any], folder: str | Path, info: dict[str, Any]
) -> Path:
    """Write `folder/interpretability.json` for the set scored in `result`."""
    concepts = result.probing["concepts"]
    best = result.probing["unit_best_concept"]
    f1 = result.probing["unit_f1"]
    score = (result.detection + result.fuzzing) / 2
    base = (result.baseline_detection + result.baseline_fuzzing) / 2
    layers = {}
    for d in dictionaries:
        layer = hook_layer(d.out_hook)
        units = np.flatnonzero(result.layer == layer)
        units = units[np.argsort(result.index[units])]
        better = [
            result.explanation[u]
            if not np.isnan(score[u]) and score[u] >= base[u] + BETTER_LABEL_MARGIN
            else None
            for u in units
        ]
        layers[layer] = {
            "fingerprint": dictionary_fingerprint(d),
            "explanation": [result.explanation[u] if result.scored[u] else None for u in units],
            "detection": [_round(result.detection[u]) for u in units],
            "fuzzing": [_round(result.fuzzing[u]) for u in units],
            "concept": [concepts[best[u]] if f1[u] is not None else None for u in units],
            "concept_f1": [_round(f1[u]) if f1[u] is not None else None for u in units],
            "better_label": better,
        }
    keep = {k: info[k] for k in ("fit", "score", "max_atoms") if k in info}
    return save_scores(folder, layers, keep)
