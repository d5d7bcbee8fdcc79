"""Concept probing: how well single units and k-sparse probes recover labelled concepts.

- Per unit: its best concept by F1 on the fit split ("fires" predicts the concept), with the
  held-out F1 and AUROC (activation as the score) of that concept on the score split.
- Per concept: the best single unit (fit-split F1) with its held-out F1 / AUROC, and a
  k-sparse probe as SAEBench's sparse probing: the k units with the largest mean activation
  difference between the classes (fit split), a logistic regression on them (fit split),
  its accuracy on a class-balanced sample of the score split, for k = 1, 2, 5.
BOS tokens are left out of every count.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from analysis.interpretability.corpus import LabelledSplit
from analysis.interpretability.units import UnitActs

PROBE_KS = (1, 2, 5)
PROBE_SAMPLE = 2000
"""Tokens per class in each probe's fit and test samples."""


def _unit_by_concept(acts: UnitActs, labels: np.ndarray, weighted: bool) -> np.ndarray:
    """[units, concepts] sums over firing tokens of labels (or activation x labels)."""
    flat = torch.from_numpy(labels.reshape(-1, labels.shape[-1]).astype(np.float32))
    values = acts.value if weighted else np.ones_like(acts.value)
    matrix = torch.sparse_coo_tensor(  # indices are valid by construction
        torch.from_numpy(np.stack([acts.unit.astype(np.int64), acts.token])),
        torch.from_numpy(values.astype(np.float32)),
        (acts.n_units, acts.n_tokens),
        check_invariants=False,
    )
    return torch.sparse.mm(matrix, flat).numpy().astype(np.float64)


def _f1(tp: np.ndarray, predicted: np.ndarray, positive: np.ndarray) -> np.ndarray:
    return 2 * tp / np.maximum(predicted[:, None] + positive[None, :], 1)


def auroc(values: np.ndarray, is_pos: np.ndarray, n_pos: int, n_neg: int) -> float:
    """AUROC of a sparse score: `values` at the unit's firing tokens (labels `is_pos`); every
    other token scores 0 (ties count one half)."""
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    pos_nz, neg_nz = int(is_pos.sum()), int((~is_pos).sum())
    pos_zero, neg_zero = n_pos - pos_nz, n_neg - neg_nz
    ranks = np.empty(values.size)
    ranks[np.argsort(values, kind="stable")] = np.arange(1, values.size + 1)
    wins_nz = ranks[is_pos].sum() - pos_nz * (pos_nz + 1) / 2  # pos > neg among non-zeros
    wins = wins_nz + pos_nz * neg_zero + 0.5 * pos_zero * neg_zero
    return float(wins / (n_pos * n_neg))


def _logistic_accuracy(x_fit, y_fit, x_test, y_test, l2: float = 1e-3) -> float:
    """Held-out accuracy of an L2-regularised logistic regression fitted by Newton steps."""
    mean, std = x_fit.mean(0), x_fit.std(0) + 1e-6
    xf = np.c_[(x_fit - mean) / std, np.ones(len(x_fit))]
    xt = np.c_[(x_test - mean) / std, np.ones(len(x_test))]
    w = np.zeros(xf.shape[1])
    reg = l2 * np.eye(len(w))
    reg[-1, -1] = 0
    for _ in range(25):
        p = 1 / (1 + np.exp(-(xf @ w)))
        grad = xf.T @ (p - y_fit) / len(xf) + reg @ w
        hess = (xf * (p * (1 - p))[:, None]).T @ xf / len(xf) + reg + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return float((((xt @ w) > 0) == y_test.astype(bool)).mean())


def _balanced_sample(labels: np.ndarray, valid: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = np.flatnonzero(labels & valid), np.flatnonzero(~labels & valid)
    n = min(PROBE_SAMPLE, pos.size, neg.size)
    tokens = np.concatenate([rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)])
    return tokens, np.concatenate([np.ones(n), np.zeros(n)])


def probe_concepts(
    fit_acts: UnitActs, score_acts: UnitActs, fit: LabelledSplit, score: LabelledSplit, seed: int
) -> dict[str, Any]:
    """Per-unit best concepts and per-concept best units and k-sparse probes (module doc)."""
    rng = np.random.default_rng(seed)
    concepts = list(fit.concepts)
    fit_valid = np.ones(fit.tokens.shape, bool)
    fit_valid[:, 0] = False
    score_valid = np.ones(score.tokens.shape, bool)
    score_valid[:, 0] = False
    fit_pos = fit.labels[:, 1:].reshape(-1, len(concepts)).sum(0).astype(np.float64)
    score_pos = score.labels[:, 1:].reshape(-1, len(concepts)).sum(0).astype(np.float64)
    n_fit, n_score = fit_valid.sum(), score_valid.sum()
    fit_count = np.bincount(fit_acts.unit, minlength=fit_acts.n_units).astype(np.float64)
    score_count = np.bincount(score_acts.unit, minlength=score_acts.n_units).astype(np.float64)
    fit_f1 = _f1(_unit_by_concept(fit_acts, fit.labels, False), fit_count, fit_pos)
    score_f1 = _f1(_unit_by_concept(score_acts, score.labels, False), score_count, score_pos)
    best = fit_f1.argmax(1)
    score_labels = score.labels.reshape(-1, len(concepts))
    starts = score_acts.starts

    def unit_auroc(u: int, c: int) -> float:
        sl = slice(starts[u], starts[u + 1])
        is_pos = score_labels[score_acts.token[sl], c]
        return auroc(score_acts.value[sl], is_pos, int(score_pos[c]), int(n_score - score_pos[c]))

    alive = fit_count > 0
    unit_auc = [unit_auroc(u, int(best[u])) if alive[u] else float("nan") for u in range(len(best))]
    # per concept
    sums = _unit_by_concept(fit_acts, fit.labels, True)
    total = np.bincount(fit_acts.unit, weights=fit_acts.value, minlength=fit_acts.n_units)
    per_concept = {}
    fit_flat = fit.labels.reshape(-1, len(concepts))
    for c, concept in enumerate(concepts):
        if fit_pos[c] < 10 or score_pos[c] < 10:
            continue
        mean_diff = sums[:, c] / fit_pos[c] - (total - sums[:, c]) / (n_fit - fit_pos[c])
        top = np.argsort(-np.abs(mean_diff), kind="stable")[: max(PROBE_KS)]
        u_best = int(fit_f1[:, c].argmax())
        ft, fy = _balanced_sample(fit_flat[:, c], fit_valid.reshape(-1), rng)
        st, sy = _balanced_sample(score_labels[:, c], score_valid.reshape(-1), rng)
        xf = fit_acts.lookup(top[None, :], ft[:, None])
        xs = score_acts.lookup(top[None, :], st[:, None])
        per_concept[concept] = {
            "best_unit": u_best,
            "f1": float(score_f1[u_best, c]),
            "auroc": unit_auroc(u_best, c),
            "probe_units": top.tolist(),
            "probe_accuracy": {
                str(k): _logistic_accuracy(xf[:, :k], fy, xs[:, :k], sy) for k in PROBE_KS
            },
        }
    return {
        "concepts": concepts,
        "unit_best_concept": best.tolist(),
        "unit_f1": [float(score_f1[u, best[u]]) if alive[u] else None for u in range(len(best))],
        "unit_auroc": [None if np.isnan(a) else a for a in unit_auc],
        "per_concept": per_concept,
    }
