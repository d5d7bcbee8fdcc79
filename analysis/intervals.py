"""Discovery / held-out splits, faithfulness from per-prompt metrics, nodes for a threshold on a
log grid, and bootstrap intervals over prompt pairs and over tasks.

For a task with per-prompt metrics m_b(C) of circuits C of growing size (row 0: the empty
circuit) and m_b(M) of the model, over a set of prompts P:

    faithfulness(C) = (mean_P m(C) - mean_P m(empty)) / (mean_P m(M) - mean_P m(empty)).

Nodes for a level: the first crossing of the level by the curve, interpolated linearly in
log(size) between the two evaluated sizes around it (linearly between 0 and the first size);
a curve that never reaches it gives NaN. Over tasks, nodes are combined by their geometric
mean, a task that never reaches the level counting all its nodes (then marked as a lower bound).

Bootstrap: B resamples of the prompt pairs of each task (percentile intervals); over tasks,
each resample draws tasks with replacement and takes each drawn task's own pair resample, so
the interval covers both sources of variation. The same resample indices serve every node
system of a task, so differences between systems are paired.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from jaxtyping import Float

from analysis.choices import BOOTSTRAP
from replacement.errors import SparseCircuitsError


def split_pairs(n: int, heldout: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (discovery, held-out) pair indices: a seeded permutation cut at 1 - `heldout`.

    `heldout` 0 uses every pair for both (in-sample only).
    """
    if not 0 <= heldout < 1:
        raise SparseCircuitsError(f"the held-out share must be in [0, 1), got {heldout}")
    perm = np.random.default_rng(seed).permutation(n)
    if heldout == 0:
        return np.sort(perm), np.sort(perm)
    cut = n - max(1, int(round(heldout * n)))
    if cut < 1:
        raise SparseCircuitsError(f"{n} pairs cannot be split into discovery and held-out")
    return np.sort(perm[:cut]), np.sort(perm[cut:])


def faithfulness_rows(
    metric: Float[np.ndarray, "sizes n"], model: Float[np.ndarray, " n"], idx: np.ndarray
) -> Float[np.ndarray, "B sizes"]:
    """Faithfulness curves for resamples `idx` [B, k] (or one sample [k]) of the prompts."""
    idx = np.atleast_2d(idx)
    m = metric[:, idx].mean(-1).T  # [B, sizes]
    full = model[idx].mean(-1)[:, None]
    empty = m[:, :1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return (m - empty) / (full - empty)


def nodes_for(
    sizes: Sequence[int], faith: Float[np.ndarray, "... sizes"], level: float
) -> Float[np.ndarray, "..."]:
    """Nodes where each curve first reaches `level`, interpolated in log(size); NaN if never."""
    faith = np.asarray(faith, float)
    sizes = np.asarray(sizes, float)
    flat = faith.reshape(-1, faith.shape[-1])
    out = np.full(flat.shape[0], np.nan)
    for r, f in enumerate(flat):
        hit = np.nonzero(f >= level)[0]
        if hit.size == 0:
            continue
        i = int(hit[0])
        if i == 0:
            out[r] = sizes[0]
            continue
        lo, hi, f_lo, f_hi = sizes[i - 1], sizes[i], f[i - 1], f[i]
        t = (level - f_lo) / (f_hi - f_lo) if f_hi != f_lo else 1.0
        if lo <= 0:
            out[r] = lo + t * (hi - lo)
        else:
            out[r] = math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo)))
    return out.reshape(faith.shape[:-1])


def interval(samples: np.ndarray, axis: int = 0) -> tuple[float, float]:
    """2.5 and 97.5 percentiles, NaNs ignored (NaN, NaN when every sample is NaN)."""
    samples = np.asarray(samples, dtype=float)
    if not np.isfinite(samples).any():  # e.g. a threshold no resample reaches
        return float("nan"), float("nan")
    lo, hi = np.nanpercentile(samples, [2.5, 97.5], axis=axis)
    return float(lo), float(hi)


def pair_resamples(n: int, b: int = BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """[b, n] indices into n prompts, drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(b, n))


def task_resamples(n_tasks: int, b: int = BOOTSTRAP, seed: int = 1) -> np.ndarray:
    """[b, n_tasks] task indices, drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n_tasks, size=(b, n_tasks))


def task_prompt_mean(
    per_task: Sequence[Sequence[float]], b: int = BOOTSTRAP
) -> tuple[float, tuple[float, float] | None]:
    """Mean over tasks of each task's mean over its prompts, and its 95% interval: each
    resample draws tasks (`task_resamples`) and, within each drawn task j, its prompts
    (`pair_resamples(n_j, b, seed=j)`), as the faithfulness figures are resampled. No interval
    from a single prompt in all (nothing varies)."""
    values = [np.asarray(v, dtype=float) for v in per_task]
    point = float(np.mean([v.mean() for v in values]))
    if sum(len(v) for v in values) < 2:
        return point, None
    within = np.stack(
        [v[pair_resamples(len(v), b, seed=j)].mean(-1) for j, v in enumerate(values)], 1
    )  # [b, tasks]
    drawn = within[np.arange(b)[:, None], task_resamples(len(values), b)]
    return point, interval(drawn.mean(-1))


def geometric_nodes(
    nodes: Float[np.ndarray, "... tasks"], caps: Float[np.ndarray, " tasks"]
) -> Float[np.ndarray, "..."]:
    """Geometric mean over tasks of nodes for a level, a NaN (never reached) counting `caps`;
    sizes below one node count as one."""
    filled = np.where(np.isnan(nodes), caps, nodes)
    return np.exp(np.log(np.maximum(filled, 1.0)).mean(-1))
