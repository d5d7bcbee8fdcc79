"""Offline interpretability scores of dictionary features (and controls).

    from analysis.interpretability import default_splits, interpret
    fit, score = default_splits(model)
    results = interpret(model, {"transcoder": load_dictionaries("transcoder", model=model)}, fit, score)

Modules: `concepts` (Python-syntax labellers), `corpus` (labelled fit / score splits),
`units` (activations of sets, random controls, neurons), `sampling` (delphi-style examples),
`atoms` / `explainer` (the deterministic explainer), `scoring` (detection, fuzzing),
`probing` (concept probing, k-sparse probes), `stats` (intervals, density bins), `llm`
(optional OpenAI-compatible explainer / scorer), `run`, `report`, `cli`.
"""

from typing import TYPE_CHECKING

from replacement.lazy import lazy_package

# public names load on first use, so the command line builds its parser without torch
_HOMES = {
    "PYTHON_CONCEPTS": "analysis.interpretability.concepts",
    "callable_labeller": "analysis.interpretability.concepts",
    "python_syntax": "analysis.interpretability.concepts",
    "default_splits": "analysis.interpretability.corpus",
    "labels_from_file": "analysis.interpretability.corpus",
    "text_split": "analysis.interpretability.corpus",
    "InterpretSettings": "analysis.interpretability.run",
    "SourceResult": "analysis.interpretability.run",
    "interpret": "analysis.interpretability.run",
}

if TYPE_CHECKING:
    from analysis.interpretability.concepts import (
        PYTHON_CONCEPTS,
        callable_labeller,
        python_syntax,
    )
    from analysis.interpretability.corpus import default_splits, labels_from_file, text_split
    from analysis.interpretability.run import InterpretSettings, SourceResult, interpret

lazy_package(__name__, _HOMES)

__all__ = [
    "PYTHON_CONCEPTS",
    "InterpretSettings",
    "SourceResult",
    "callable_labeller",
    "default_splits",
    "interpret",
    "labels_from_file",
    "python_syntax",
    "text_split",
]
