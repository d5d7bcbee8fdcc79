"""`interpret`: score every unit of dictionary sets, their random controls and MLP neurons.

For each source: activations on the fit and score splits (`units`), examples drawn on both
(`sampling`), explanations fitted on the fit split (`explainer`), detection and fuzzing on
the score split (`scoring`), and concept probing (`probing`). The baseline explanation is the
unit's one or two most frequent firing tokens (what the atlas label names): an explanation
replaces the label only where it scores clearly better on held-out contexts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from tqdm.auto import tqdm

from analysis.interpretability.atoms import NONE, TOKEN, TokenTable, render, token_table
from analysis.interpretability.corpus import LabelledSplit, vocabulary
from analysis.interpretability.explainer import ExplainerSettings, explain
from analysis.interpretability.probing import probe_concepts
from analysis.interpretability.sampling import SampleSettings, sample_examples
from analysis.interpretability.scoring import score_explanations
from analysis.interpretability.units import (
    NeuronSource,
    Source,
    UnitActs,
    capture,
    encode_sources,
    random_like,
    source_hooks,
)

BETTER_LABEL_MARGIN = 0.05
"""An explanation replaces the token label when its combined score is this much higher."""


@dataclass
class InterpretSettings:
    """Settings of an interpretability run."""

    sample: SampleSettings = field(default_factory=SampleSettings)
    explainer: ExplainerSettings = field(default_factory=ExplainerSettings)
    seed: int = 0
    batch_rows: int = 64
    """Rows per forward pass."""


@dataclass
class SourceResult:
    """Per-unit results of one source (a set, a control or neurons)."""

    name: str
    kind: str
    """"trained", "random" or "neurons"."""
    control_of: str
    layer: np.ndarray
    index: np.ndarray
    frequency: np.ndarray
    """Firing share on the score split."""
    scored: np.ndarray
    detection: np.ndarray
    fuzzing: np.ndarray
    baseline_detection: np.ndarray
    baseline_fuzzing: np.ndarray
    explanation: list[str]
    atoms: np.ndarray
    probing: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as None)."""

        def clean(a):
            return [None if (isinstance(x, float) and np.isnan(x)) else x for x in a.tolist()]

        return {
            "name": self.name,
            "kind": self.kind,
            "control_of": self.control_of,
            "layer": self.layer.tolist(),
            "index": self.index.tolist(),
            "frequency": clean(self.frequency),
            "scored": self.scored.tolist(),
            "detection": clean(self.detection),
            "fuzzing": clean(self.fuzzing),
            "baseline_detection": clean(self.baseline_detection),
            "baseline_fuzzing": clean(self.baseline_fuzzing),
            "explanation": self.explanation,
            "atoms": self.atoms.tolist(),
            "probing": self.probing,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SourceResult:
        """Inverse of `to_dict`."""

        def arr(key, dtype=float):
            return np.array([np.nan if x is None else x for x in data[key]], dtype=dtype)

        return cls(
            data["name"],
            data["kind"],
            data["control_of"],
            arr("layer", int),
            arr("index", int),
            arr("frequency"),
            np.array(data["scored"], bool),
            arr("detection"),
            arr("fuzzing"),
            arr("baseline_detection"),
            arr("baseline_fuzzing"),
            list(data["explanation"]),
            np.array(data["atoms"], dtype=np.int64),
            dict(data["probing"]),
        )


def baseline_atoms(acts: UnitActs, table: TokenTable) -> Int[torch.Tensor, "units 2 3"]:
    """The label's explanation: the most frequent firing token, or the two most frequent
    when the first carries less than half of the firing (fit split)."""
    out = torch.full((acts.n_units, 2, 3), NONE, dtype=torch.long)
    starts = acts.starts
    for u in range(acts.n_units):
        t = table.tok[acts.token[starts[u] : starts[u + 1]]]
        if t.size == 0:
            continue
        keys, counts = np.unique(t, return_counts=True)
        order = np.lexsort((keys, -counts))
        out[u, 0] = torch.tensor([TOKEN, int(keys[order[0]]), 0])
        if counts[order[0]] < t.size / 2 and order.size > 1:
            out[u, 1] = torch.tensor([TOKEN, int(keys[order[1]]), 0])
    return out


def score_source(
    name: str,
    kind: str,
    control_of: str,
    fit_acts: UnitActs,
    score_acts: UnitActs,
    fit: LabelledSplit,
    score: LabelledSplit,
    vocab: Sequence[str],
    settings: InterpretSettings,
) -> SourceResult:
    """Explain on `fit`, score on `score`, probe concepts; one source."""
    fit_table = token_table(fit.tokens, fit.labels, fit.concepts)
    score_table = token_table(score.tokens, score.labels, score.concepts)
    fit_ex = sample_examples(fit_acts, settings.sample, settings.seed)
    score_ex = sample_examples(score_acts, settings.sample, settings.seed + 1)
    atoms = explain(fit_acts, fit_table, fit_ex, settings.explainer)
    scores = score_explanations(atoms, score_ex, score_table)
    base = score_explanations(baseline_atoms(fit_acts, fit_table), score_ex, score_table)
    scored = score_ex.scored & fit_ex.scored
    for arr in (scores.detection, scores.fuzzing, base.detection, base.fuzzing):
        arr[~scored] = np.nan
    texts = [render(a, vocab, fit.concepts) for a in atoms.tolist()]
    probing = probe_concepts(fit_acts, score_acts, fit, score, settings.seed)
    return SourceResult(
        name,
        kind,
        control_of,
        score_acts.unit_layer,
        score_acts.unit_index,
        score_acts.frequency,
        scored,
        scores.detection,
        scores.fuzzing,
        base.detection,
        base.fuzzing,
        texts,
        atoms.numpy(),
        probing,
    )


def interpret(
    model: Any,
    sets: Mapping[str, Sequence[Any]],
    fit: LabelledSplit,
    score: LabelledSplit,
    settings: InterpretSettings | None = None,
    controls: bool = True,
    neurons: bool = True,
    verbose: bool = True,
    on_result: Any = None,
) -> dict[str, SourceResult]:
    """Score every set, and (by default) a random control per set and the MLP neurons.

    Args:
        model: the model the sets were trained on.
        sets: name -> per-layer dictionaries.
        fit: the split explanations are fitted on (`corpus.default_splits`).
        score: the disjoint split they are scored on.
        on_result: called with each `SourceResult` as soon as it is done (to save progress).
    """
    from analysis.interpretability.corpus import check_disjoint

    settings = settings or InterpretSettings()
    check_disjoint(fit, score)
    vocab = vocabulary(model.tokenizer, model.cfg.d_vocab)
    groups: list[dict[str, tuple[str, str, Source]]] = []
    for name, dictionaries in sets.items():
        group = {name: ("trained", "", list(dictionaries))}
        if controls:
            group[f"{name}:random"] = (
                "random",
                name,
                [random_like(d, settings.seed + 1000 + i) for i, d in enumerate(dictionaries)],
            )
        groups.append(group)
    if neurons and sets:
        from replacement.hooks import hook_layer

        first = next(iter(sets.values()))
        k = int(first[0].activation.params().get("k", 16)) if first else 16
        layers = sorted({hook_layer(d.out_hook) for ds in sets.values() for d in ds})
        # second, so that a run cut short still has the neuron control
        groups.insert(1, {"neurons": ("neurons", "", NeuronSource(layers, k))})
    hooks = source_hooks({n: src for g in groups for n, (_, _, src) in g.items()})
    fit_cache = capture(model, hooks, fit.tokens, settings.batch_rows, verbose)
    score_cache = capture(model, hooks, score.tokens, settings.batch_rows, verbose)
    results: dict[str, SourceResult] = {}
    for group in tqdm(groups, desc="sets", disable=not verbose):
        sources = {n: src for n, (_, _, src) in group.items()}
        fit_acts = encode_sources(sources, fit_cache, fit.tokens.shape[1])
        score_acts = encode_sources(sources, score_cache, score.tokens.shape[1])
        for n, (kind, control_of, _) in group.items():
            results[n] = score_source(
                n, kind, control_of, fit_acts[n], score_acts[n], fit, score, vocab, settings
            )
            if on_result is not None:
                on_result(results[n])
    return results


def settings_dict(settings: InterpretSettings) -> dict[str, Any]:
    """The settings as JSON-ready data."""
    return asdict(settings)
