"""The deterministic explainer: for each unit, the disjunction of at most `max_atoms` atoms
(tokens, previous tokens, bigrams, concepts, concept x token) that best predicts its
contexts on the fit split.

Candidates come from the unit's firing tokens on the fit split, ranked by count x precision
per family; the explanation is grown greedily, each step adding the candidate that most
raises the mean of detection and fuzzing on fit-split examples (drawn as the scorer draws
them), and stops when no candidate adds `min_gain`. The budget on atoms is what makes the
score specific: an explanation must name few things, so a unit that fires on an arbitrary
scatter of tokens (a random direction) cannot be covered by listing them all.

Only the fit split reaches this module: `explain` takes the fit split's acts, table and
examples and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Int

from analysis.interpretability.atoms import (
    BIGRAM,
    CONCEPT,
    CONCEPT_TOK,
    NONE,
    PREV,
    TOKEN,
    TokenTable,
    match_atoms,
)
from analysis.interpretability.sampling import Examples
from analysis.interpretability.scoring import balanced, example_tensors
from analysis.interpretability.units import UnitActs


@dataclass
class ExplainerSettings:
    """The explainer's budget."""

    max_atoms: int = 3
    """Atoms per explanation (the specificity budget)."""
    per_family: tuple[int, int, int, int, int] = (8, 4, 4, 4, 4)
    """Candidates per family: tokens, previous tokens, bigrams, concepts, concept x token."""
    min_gain: float = 0.005
    """Smallest rise of the fit objective that earns another atom."""


def _top(keys: np.ndarray, tp: np.ndarray, total: np.ndarray, k: int) -> np.ndarray:
    score = tp * (tp / np.maximum(total, 1))
    order = np.lexsort((keys, -score))[:k]
    return keys[order]


def candidates(
    acts: UnitActs, table: TokenTable, settings: ExplainerSettings
) -> Int[torch.Tensor, "units candidates 3"]:
    """Each unit's candidate atoms on the fit split (padded with NONE)."""
    n_vocab = int(max(table.tok.max(), table.prev.max())) + 1
    tok_count = np.bincount(table.tok, minlength=n_vocab)
    prev_count = np.bincount(table.prev[table.prev >= 0], minlength=n_vocab)
    bigram_keys, bigram_count = np.unique(
        table.prev[table.prev >= 0] * n_vocab + table.tok[table.prev >= 0], return_counts=True
    )
    concept_count = table.labels.sum(0)
    # [vocab, concepts] counts of (token, concept)
    tok_concept = np.zeros((n_vocab, table.labels.shape[1]), dtype=np.int64)
    np.add.at(tok_concept, table.tok, table.labels.astype(np.int64))
    n_tok, n_prev, n_bigram, n_concept, n_ct = settings.per_family
    M = sum(settings.per_family)
    out = np.full((acts.n_units, M, 3), NONE, dtype=np.int64)
    starts = acts.starts
    for u in range(acts.n_units):
        p = acts.token[starts[u] : starts[u + 1]]
        if p.size == 0:
            continue
        rows = []
        t = table.tok[p]
        keys, tp = np.unique(t, return_counts=True)
        top_tokens = _top(keys, tp, tok_count[keys], n_tok)
        rows += [(TOKEN, k, 0) for k in top_tokens]
        pr = table.prev[p]
        pr = pr[pr >= 0]
        if pr.size:
            keys, tp = np.unique(pr, return_counts=True)
            rows += [(PREV, k, 0) for k in _top(keys, tp, prev_count[keys], n_prev)]
            bk = table.prev[p] * n_vocab + t
            keys, tp = np.unique(bk[table.prev[p] >= 0], return_counts=True)
            total = bigram_count[np.searchsorted(bigram_keys, keys)]
            rows += [(BIGRAM, k // n_vocab, k % n_vocab) for k in _top(keys, tp, total, n_bigram)]
        lab = table.labels[p]
        tp = lab.sum(0)
        keys = np.flatnonzero(tp)
        rows += [(CONCEPT, k, 0) for k in _top(keys, tp[keys], concept_count[keys], n_concept)]
        ct_keys, ct_tp, ct_total = [], [], []
        for tk in top_tokens[:3]:
            c_tp = lab[t == tk].sum(0)
            for c in np.flatnonzero(c_tp):
                ct_keys.append(c * n_vocab + tk)
                ct_tp.append(c_tp[c])
                ct_total.append(tok_concept[tk, c])
        if ct_keys:
            chosen = _top(np.array(ct_keys), np.array(ct_tp), np.array(ct_total), n_ct)
            rows += [(CONCEPT_TOK, k // n_vocab, k % n_vocab) for k in chosen]
        out[u, : len(rows)] = rows
    return torch.from_numpy(out)


def explain(
    acts: UnitActs,
    table: TokenTable,
    examples: Examples,
    settings: ExplainerSettings | None = None,
    block: int = 128,
) -> Int[torch.Tensor, "units atoms 3"]:
    """Each unit's explanation (atoms, NONE-padded), chosen on the fit split only."""
    settings = settings or ExplainerSettings()
    cand = candidates(acts, table, settings)
    n_units, S, W = examples.window_token.shape
    out = torch.full((n_units, settings.max_atoms, 3), NONE, dtype=torch.long)
    for start in range(0, n_units, block):
        sl = slice(start, start + block)
        c = cand[sl]
        match = match_atoms(c, table, examples.window_token[sl].reshape(-1, S * W))
        match = match.reshape(*match.shape[:2], S, W)  # [u, M, S, W]
        act, valid, fires, wrong = (t.unsqueeze(1) for t in example_tensors(examples, sl))
        union = torch.zeros(match.shape[0], 1, S, W, dtype=torch.bool)
        best_so_far = torch.zeros(match.shape[0])
        usable = c[..., 0] != NONE
        for step in range(settings.max_atoms):
            trial = union | match
            det, fuzz = balanced(trial, act, valid, fires, wrong)
            objective = ((det + fuzz) / 2).masked_fill(~usable, -1.0)
            value, pick = objective.max(1)
            gain = value - best_so_far
            take = gain >= settings.min_gain if step else value > 0
            rows = torch.nonzero(take).squeeze(1)
            out[start + rows, step] = c[rows, pick[rows]]
            union[rows, 0] |= match[rows, pick[rows]]
            usable[rows, pick[rows]] = False
            best_so_far = torch.where(take, value, best_so_far)
            usable &= take.unsqueeze(1)
    return out
