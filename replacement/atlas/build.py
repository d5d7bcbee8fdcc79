"""`build_atlas`: one streaming pass over a corpus plus the weight-based lists, for every
dictionary of a set.

The pass runs the original model (no splice): each dictionary encodes the activation at its
in_hook, which is what it sees inside the exact replacement model used for attribution (the
error terms make every later activation the model's own). The forward stops as soon as the
last dictionary has read its input.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from replacement.atlas.atlas import FeatureAtlas, LayerAtlas, dictionary_fingerprint
from replacement.atlas.corpus import corpus_rows
from replacement.atlas.labels import feature_label
from replacement.atlas.stream import FeatureStream, StreamSettings
from replacement.atlas.summarize import (
    band_examples,
    display_histogram,
    quantile_edges,
    quantise_windows,
    top_examples,
)
from replacement.atlas.weights import input_tokens, logit_effects, nearest_features
from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError
from replacement.hooks import hook_layer
from replacement.splice import check_compatible


@dataclass
class AtlasSettings(StreamSettings):
    """Settings of `build_atlas` (the stream's plus what is derived at the end)."""

    n_bands: int = 4
    """Quantile bands of the non-zero activations."""
    per_band: int = 2
    """Examples kept per band."""
    hist_bins: int = 24
    """Bars of the display histogram."""
    n_logit_tokens: int = 10
    """Promoted, suppressed and input tokens kept per feature."""
    n_neighbours: int = 5
    """Nearest features by decoder cosine."""
    batch_rows: int = 32
    """Corpus rows per forward pass."""


class _StopForward(Exception):
    """Raised by the last input hook: nothing after it is needed."""


def _by_layer(dictionaries: Sequence[Dictionary]) -> dict[int, Dictionary]:
    out: dict[int, Dictionary] = {}
    for d in dictionaries:
        if not isinstance(d, Dictionary):
            raise SparseCircuitsError(
                f"build_atlas takes per-layer dictionaries; got {type(d).__name__}"
            )
        layer = hook_layer(d.out_hook)
        if layer in out:
            raise SparseCircuitsError(f"two dictionaries write layer {layer}; give one per layer")
        out[layer] = d
    return dict(sorted(out.items()))


@torch.no_grad()
def stream_features(
    model: Any,
    dictionaries: dict[int, Dictionary],
    rows: Int[Tensor, "rows ctx"],
    settings: StreamSettings,
    batch_rows: int = 32,
    verbose: bool = True,
    streams: dict[int, FeatureStream] | None = None,
    first_row: int = 0,
) -> dict[int, FeatureStream]:
    """The streaming pass: feed `rows` through the model, `batch_rows` at a time.

    Pass the `streams` of an earlier call (and the corpus index of `rows[0]` as `first_row`)
    to continue accumulating over another part of the corpus.
    """
    if streams is None:
        streams = {
            layer: FeatureStream(d.n_features, settings, seed_offset=layer)
            for layer, d in dictionaries.items()
        }
    n_rows, n_pos = rows.shape
    state = {"first": 0, "rows": 0}

    def make_hook(layer: int, d: Dictionary, stop: bool):
        def hook(act: Tensor, hook: Any) -> Tensor:
            x = act.reshape(-1, d.d_in).to(d.W_enc.dtype)
            acts = d.encode_sparse(x)
            streams[layer].update(
                acts.token_idx.cpu(),
                acts.feature_idx.cpu(),
                acts.values.cpu(),
                state["rows"],
                n_pos,
                state["first"],
            )
            if stop:
                raise _StopForward
            return act

        return hook

    # the dictionary reading the deepest hook stops the forward (its hook is registered last);
    # when several read different hooks of the deepest block, the forward runs to the end
    order = sorted(dictionaries, key=lambda layer: hook_layer(dictionaries[layer].in_hook))
    deepest = {
        d.in_hook
        for d in dictionaries.values()
        if hook_layer(d.in_hook) == hook_layer(dictionaries[order[-1]].in_hook)
    }
    stopper = order[-1] if len(deepest) == 1 else None
    hooks = [
        (dictionaries[layer].in_hook, make_hook(layer, dictionaries[layer], layer == stopper))
        for layer in [x for x in order if x != stopper] + [stopper] * (stopper is not None)
    ]
    device = model.cfg.device
    bar = tqdm(total=n_rows * n_pos, unit="tok", unit_scale=True, disable=not verbose, desc="atlas")
    with model.hooks(fwd_hooks=hooks):
        for start in range(0, n_rows, batch_rows):
            batch = rows[start : start + batch_rows]
            state["first"], state["rows"] = first_row + start, batch.shape[0]
            try:
                model(batch.to(device))
            except _StopForward:
                pass
            bar.update(batch.numel())
    bar.close()
    return streams


def _layer_atlas(
    d: Dictionary,
    stream: FeatureStream,
    model: Any,
    settings: AtlasSettings,
    vocab: list[str],
    rows: Tensor,
) -> LayerAtlas:
    count = stream.count.clamp_min(1).double()
    edges = quantile_edges(stream, settings.n_bands)
    bands = band_examples(stream, edges, settings.per_band)
    top = top_examples(stream)
    tensors = {
        "frequency": stream.count.double() / max(stream.n_tokens, 1),
        "mean": stream.total / count,
        "max": stream.max,
        "hist": display_histogram(stream, settings.hist_bins),
        "band_edges": edges,
        "top_value": top.value,
        "top_row": top.row,
        "top_pos": top.pos,
        "top_window": quantise_windows(top.window, stream.max),
        "band_value": bands.value,
        "band_row": bands.row,
        "band_pos": bands.pos,
        "band_window": quantise_windows(bands.window, stream.max),
    }
    # token lists only over tokens the corpus holds (never-seen tokens keep random weights)
    n_vocab = int(model.cfg.d_vocab)
    seen = torch.bincount(rows.flatten().cpu(), minlength=n_vocab)[:n_vocab] > 0
    effects = logit_effects(d, model, settings.n_logit_tokens, seen)
    if effects is not None:
        tensors["promoted_ids"], tensors["promoted_values"] = effects[0]
        tensors["suppressed_ids"], tensors["suppressed_values"] = effects[1]
    inputs = input_tokens(d, model, settings.n_logit_tokens, seen)
    if inputs is not None:
        tensors["input_ids"], tensors["input_values"] = inputs
    tensors["neighbour_ids"], tensors["neighbour_cos"] = nearest_features(d, settings.n_neighbours)

    peak_rows = top.row.clamp_min(0)
    peak_tokens = rows[peak_rows, top.pos]  # [F, N]
    labels = []
    promoted = tensors.get("promoted_ids")
    for f in range(d.n_features):
        live = top.row[f] >= 0
        labels.append(
            feature_label(
                peak_tokens[f][live].tolist(),
                top.value[f][live].tolist(),
                [] if promoted is None else promoted[f].tolist(),
                vocab,
            )
        )
    return LayerAtlas(
        in_hook=d.in_hook,
        out_hook=d.out_hook,
        n_features=d.n_features,
        fingerprint=dictionary_fingerprint(d),
        labels=labels,
        tensors=tensors,
        source=str(d.metadata.get("source", "")),
    )


def _keep_referenced_rows(layers: dict[int, LayerAtlas], rows: Tensor) -> Tensor:
    """Only the corpus rows some context points into; row references renumbered in place."""
    refs = [entry.tensors[name] for entry in layers.values() for name in ("top_row", "band_row")]
    used = torch.cat([r[r >= 0].flatten() for r in refs]).unique()
    new_index = torch.full((rows.shape[0],), -1, dtype=torch.long)
    new_index[used] = torch.arange(used.numel())
    for entry in layers.values():
        for name in ("top_row", "band_row"):
            old = entry.tensors[name]
            entry.tensors[name] = torch.where(old >= 0, new_index[old.clamp_min(0)], -1)
    return rows[used]


def vocabulary(model: Any) -> list[str]:
    """Every token id of the model's tokenizer decoded alone."""
    tokenizer = model.tokenizer
    n = max(int(model.cfg.d_vocab), len(tokenizer))
    return [tokenizer.decode([i]) for i in range(n)]


def _in_model_dtype(d: Dictionary, model: Any) -> Dictionary:
    """`d` in the model's dtype: a copy when it differs (float16 files loaded without `model=`
    would otherwise run every encode in half precision, 17x slower on a CPU)."""
    dtype = getattr(model.cfg, "dtype", None) or torch.float32
    if d.W_enc.dtype == dtype:
        return d
    return copy.deepcopy(d).to(dtype)


def build_atlas(
    model: Any,
    dictionaries: Dictionary | Sequence[Dictionary],
    tokens: Any = None,
    settings: AtlasSettings | None = None,
    *,
    ctx_len: int | None = None,
    max_tokens: int | None = None,
    verbose: bool = True,
) -> FeatureAtlas:
    """Build the feature atlas of a dictionary set over a corpus.

    Args:
        model: the model the dictionaries were trained on (`load_model`).
        dictionaries: one dictionary per layer (a set from `load_dictionaries`).
        tokens: the corpus: None (the default model's held-out corpus), a token tensor
            ([rows, ctx] BOS-first rows, or a 1-D stream), a token file or a text file/folder
            (see `replacement.atlas.corpus.corpus_rows`).
        settings: what to keep per feature (`AtlasSettings()` by default).
        ctx_len: row length for sources that are not already rows (default 128, or n_ctx
            if shorter).
        max_tokens: use only the first rows holding at most this many tokens.
        verbose: show a progress bar.
    """
    settings = settings or AtlasSettings()
    if isinstance(dictionaries, Dictionary):
        dictionaries = [dictionaries]
    by_layer = _by_layer(dictionaries)
    if not by_layer:
        raise SparseCircuitsError("build_atlas needs at least one dictionary")
    for d in by_layer.values():
        check_compatible(model, d)
    by_layer = {layer: _in_model_dtype(d, model) for layer, d in by_layer.items()}
    rows, corpus = corpus_rows(model, tokens, ctx_len, max_tokens)
    if int(rows.max()) >= model.cfg.d_vocab or int(rows.min()) < 0:
        raise SparseCircuitsError(
            f"corpus token ids span {int(rows.min())}..{int(rows.max())}; the model's "
            f"vocabulary has {model.cfg.d_vocab} tokens"
        )
    was_training = {layer: d.training for layer, d in by_layer.items()}
    for d in by_layer.values():
        d.eval()
    try:
        streams = stream_features(model, by_layer, rows, settings, settings.batch_rows, verbose)
    finally:
        for layer, d in by_layer.items():
            d.train(was_training[layer])
    vocab = vocabulary(model)
    layers = {
        layer: _layer_atlas(d, streams[layer], model, settings, vocab, rows)
        for layer, d in by_layer.items()
    }
    kept_rows = _keep_referenced_rows(layers, rows)
    info = {
        **asdict(settings),
        "corpus": corpus,
        "n_tokens": int(rows.numel()),
        "n_rows": int(rows.shape[0]),
        "ctx_len": int(rows.shape[1]),
        "model_name": str(getattr(model.cfg, "model_name", "") or ""),
    }
    return FeatureAtlas(layers=layers, tokens=kept_rows, vocab=vocab, settings=info)
