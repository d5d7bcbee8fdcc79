"""`FeatureAtlas`: what each feature of a dictionary set responds to and promotes.

    atlas = build_atlas(model, dictionaries)      # or FeatureAtlas.load(folder)
    atlas[2, 148]                                 # in Jupyter: the feature's card
    atlas.label(2, 148)                           # "'return' -> self"

Per layer it holds [F, ...] tensors (names in `storage.LAYER_FIELDS`), the labels and the dictionary's
fingerprint; the corpus rows its contexts point into; and the vocabulary as strings, so that
cards render without the model or its tokenizer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

# the on-disk fields live with the file format; re-exported here where they were defined before
from replacement.atlas.storage import LAYER_FIELDS, OPTIONAL_FIELDS, read_atlas, save_atlas
from replacement.errors import SparseCircuitsError

__all__ = [
    "LAYER_FIELDS",
    "OPTIONAL_FIELDS",
    "FeatureAtlas",
    "FeatureView",
    "LayerAtlas",
    "dictionary_fingerprint",
]


def dictionary_fingerprint(dictionary: Any) -> str:
    """A short digest of a dictionary's encoder and decoder (float16 bytes), to match atlases."""
    digest = hashlib.sha256()
    for tensor in (dictionary.W_enc, dictionary.W_dec):
        digest.update(tensor.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class LayerAtlas:
    """The atlas of one dictionary (one layer)."""

    in_hook: str
    out_hook: str
    n_features: int
    fingerprint: str
    """`dictionary_fingerprint` of the dictionary described."""
    labels: list[str]
    tensors: dict[str, Tensor]
    """The `LAYER_FIELDS` present (weight-based lists may be missing where no path exists)."""
    source: str = ""
    """Where the dictionary came from (its `metadata["source"]`)."""


@dataclass
class FeatureAtlas:
    """Per-feature data of a dictionary set, keyed by (layer, feature)."""

    layers: dict[int, LayerAtlas]
    tokens: Int[Tensor, "rows ctx"]
    """The corpus rows the contexts point into (only those referenced)."""
    vocab: list[str]
    """Token id -> string."""
    settings: dict[str, Any] = field(default_factory=dict)
    """How the atlas was built (window, counts, corpus, n_tokens, model name)."""

    # ---- lookup ----------------------------------------------------------------------------
    def _layer(self, layer: int) -> LayerAtlas:
        if layer not in self.layers:
            raise SparseCircuitsError(
                f"the atlas has no layer {layer}; it has layers {sorted(self.layers)}"
            )
        return self.layers[layer]

    def _check(self, layer: int, feature: int) -> LayerAtlas:
        entry = self._layer(layer)
        if not 0 <= feature < entry.n_features:
            raise SparseCircuitsError(
                f"layer {layer} has {entry.n_features} features; got feature {feature}"
            )
        return entry

    def label(self, layer: int, feature: int) -> str:
        """The feature's short label."""
        return self._check(layer, feature).labels[feature]

    def __getitem__(self, key: tuple[int, int]) -> FeatureView:
        layer, feature = key
        self._check(int(layer), int(feature))
        return FeatureView(self, int(layer), int(feature))

    def __contains__(self, key: tuple[int, int]) -> bool:
        layer, feature = key
        return layer in self.layers and 0 <= feature < self.layers[layer].n_features

    def matches(self, dictionaries: Sequence[Any]) -> bool:
        """True when every dictionary is described by this atlas (same weights, same layer)."""
        from replacement.hooks import hook_layer

        for d in dictionaries:
            entry = self.layers.get(hook_layer(d.out_hook))
            if entry is None or entry.fingerprint != dictionary_fingerprint(d):
                return False
        return True

    # ---- one feature as data -----------------------------------------------------------------
    def _context(self, row: int, pos: int, window: Tensor) -> dict[str, Any]:
        before = int(self.settings["window_before"])
        start = pos - before
        lo, hi = max(start, 0), min(start + window.numel(), self.tokens.shape[1])
        return {
            "tokens": self.tokens[row, lo:hi].tolist(),
            "acts": window[lo - start : hi - start].tolist(),
            "centre": pos - lo,
        }

    def _contexts(self, value, row, pos, window) -> list[dict[str, Any]]:
        out = []
        for v, r, p, w in zip(value.tolist(), row.tolist(), pos.tolist(), window, strict=True):
            if r < 0:
                continue
            out.append({"value": v, **self._context(r, p, w)})
        return out

    def record(self, layer: int, feature: int) -> dict[str, Any]:
        """Everything a card shows, as JSON-ready data (token ids; window bytes, 255 = max)."""
        entry = self._check(layer, feature)
        t = {name: tensor[feature] for name, tensor in entry.tensors.items()}
        max_act = float(t["max"])

        def pairs(ids: str, values: str) -> list | None:
            if ids not in t:
                return None
            return [[int(i), round(float(v), 4)] for i, v in zip(t[ids], t[values], strict=True)]

        neighbours = [
            [int(i), round(float(c), 4), entry.labels[int(i)]]
            for i, c in zip(t["neighbour_ids"], t["neighbour_cos"], strict=True)
        ]
        bands = [
            self._contexts(
                t["band_value"][b], t["band_row"][b], t["band_pos"][b], t["band_window"][b]
            )
            for b in range(t["band_value"].shape[0])
        ]
        return {
            "layer": layer,
            "feature": feature,
            "label": entry.labels[feature],
            "frequency": float(t["frequency"]),
            "mean": float(t["mean"]),
            "max": max_act,
            "hist": [round(float(h), 5) for h in t["hist"]],
            "band_edges": [round(float(e), 5) for e in t["band_edges"]],
            "top": self._contexts(t["top_value"], t["top_row"], t["top_pos"], t["top_window"]),
            "bands": bands,
            "promoted": pairs("promoted_ids", "promoted_values"),
            "suppressed": pairs("suppressed_ids", "suppressed_values"),
            "inputs": pairs("input_ids", "input_values"),
            "neighbours": neighbours,
        }

    # ---- files -------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write `atlas.safetensors` + `atlas.json` into `folder` (atomically)."""
        return save_atlas(self, folder)

    @classmethod
    def load(cls, folder: str | Path) -> FeatureAtlas:
        """Read an atlas written by `save`."""
        parts = read_atlas(folder)
        return cls(
            layers={layer: LayerAtlas(**entry) for layer, entry in parts["layers"].items()},
            tokens=parts["tokens"],
            vocab=parts["vocab"],
            settings=parts["settings"],
        )

    def __repr__(self) -> str:
        sizes = {layer: entry.n_features for layer, entry in sorted(self.layers.items())}
        return (
            f"FeatureAtlas(layers={sizes}, corpus={self.settings.get('corpus', '?')!r}, "
            f"tokens={self.settings.get('n_tokens', '?')})"
        )


@dataclass
class FeatureView:
    """One feature of an atlas; shows as its card in Jupyter."""

    atlas: FeatureAtlas
    layer: int
    feature: int

    @property
    def label(self) -> str:
        """The feature's short label."""
        return self.atlas.label(self.layer, self.feature)

    def record(self) -> dict[str, Any]:
        """The card's data (see `FeatureAtlas.record`)."""
        return self.atlas.record(self.layer, self.feature)

    def contexts(self) -> list[tuple[str, float]]:
        """The top contexts as (text, activation at the maximum), best first."""
        rec = self.record()
        return [("".join(self.atlas.vocab[t] for t in c["tokens"]), c["value"]) for c in rec["top"]]

    def to_html(self) -> str:
        """The card as a self-contained HTML fragment."""
        from replacement.atlas.card import feature_card_html

        return feature_card_html(self.record(), self.atlas.vocab)

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        return f"FeatureView(L{self.layer} F{self.feature}: {self.label})"
