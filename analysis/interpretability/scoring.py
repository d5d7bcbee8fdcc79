"""Detection and fuzzing scores of explanations (delphi's definitions, a deterministic scorer).

Detection: the scorer sees a context and says "activates" when the explanation holds on any
of its tokens; score = balanced accuracy over the activating and non-activating contexts.
Fuzzing: the scorer sees an activating context with some tokens highlighted and says "fits"
when the explanation holds on at least half of them; score = balanced accuracy over contexts
highlighted on the firing tokens and contexts highlighted on as many random other tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from analysis.interpretability.atoms import TokenTable, match_atoms
from analysis.interpretability.sampling import Examples


@dataclass
class Scores:
    """Per-unit scores (NaN for units not scored)."""

    detection: Float[np.ndarray, " units"]
    fuzzing: Float[np.ndarray, " units"]

    @property
    def combined(self) -> Float[np.ndarray, " units"]:
        """Mean of detection and fuzzing."""
        return (self.detection + self.fuzzing) / 2


def balanced(
    holds: Bool[torch.Tensor, "... samples window"],
    ex_act: Bool[torch.Tensor, "units ... samples"],
    ex_valid: Bool[torch.Tensor, "units ... samples"],
    fires: Bool[torch.Tensor, "units ... samples window"],
    wrong: Bool[torch.Tensor, "units ... samples window"],
) -> tuple[Float[torch.Tensor, "units ..."], Float[torch.Tensor, "units ..."]]:
    """Detection and fuzzing balanced accuracies from where an explanation holds.

    `ex_act`: the sample is an activating context (else a non-activating one); `ex_valid`: the
    sample exists; `fires`: where the unit fires in it; `wrong`: randomly highlighted
    non-firing tokens (fuzzing's decoys). `holds` may carry one extra dim (candidate
    explanations) after the unit dim, [u, m, S, W]; the example masks are [u, 1, S(, W)] then,
    and the results [u, m] instead of [u]. Counts go through float einsums (bool sums are slow
    on CPU).
    """
    h = holds.float()
    h4 = h if h.dim() == 4 else h.unsqueeze(1)
    act = (ex_act & ex_valid).float()
    neg = (~ex_act & ex_valid).float()
    act3, neg3 = (t if t.dim() == 3 else t.unsqueeze(1) for t in (act, neg))
    said = h4.amax(-1)  # [u, m, S]
    n_act, n_neg = act3.sum(-1).clamp_min(1), neg3.sum(-1).clamp_min(1)
    tpr = (said * act3).sum(-1) / n_act
    tnr = ((1 - said) * neg3).sum(-1) / n_neg

    def fits(highlight: torch.Tensor) -> torch.Tensor:
        hl = highlight.float()
        hl = hl if hl.dim() == 4 else hl.unsqueeze(1)
        n = hl.sum(-1)  # [u, 1, S]
        hit = torch.einsum("umsw,uxsw->ums", h4, hl)
        return ((2 * hit >= n) & (n > 0)).float()

    has_wrong = (wrong.float() if wrong.dim() == 4 else wrong.float().unsqueeze(1)).amax(-1)
    right_ok = (fits(fires) * act3).sum(-1) / n_act
    wrong_ok = ((1 - fits(wrong)) * has_wrong).sum(-1) / has_wrong.sum(-1).clamp_min(1)
    detection, fuzzing = (tpr + tnr) / 2, (right_ok + wrong_ok) / 2
    if holds.dim() == 3:
        return detection.squeeze(1), fuzzing.squeeze(1)
    return detection, fuzzing


def example_tensors(ex: Examples, units: slice) -> tuple[torch.Tensor, ...]:
    """The example masks of a block of units as tensors."""
    return (
        torch.from_numpy(ex.activating[units]),
        torch.from_numpy(ex.valid[units]),
        torch.from_numpy(ex.fires[units]),
        torch.from_numpy(ex.wrong[units]),
    )


def score_explanations(
    atoms: Int[torch.Tensor, "units atoms 3"], ex: Examples, table: TokenTable, block: int = 256
) -> Scores:
    """Detection and fuzzing of each unit's explanation on its (held-out) examples."""
    n_units, S, W = ex.window_token.shape
    det = np.full(n_units, np.nan)
    fuzz = np.full(n_units, np.nan)
    for start in range(0, n_units, block):
        sl = slice(start, start + block)
        idx = ex.window_token[sl].reshape(-1, S * W)
        holds = match_atoms(atoms[sl], table, idx).any(1).reshape(-1, S, W)
        act, valid, fires, wrong = example_tensors(ex, sl)
        d, f = balanced(holds, act, valid, fires, wrong)
        det[sl], fuzz[sl] = d.numpy(), f.numpy()
    det[~ex.scored] = np.nan
    fuzz[~ex.scored] = np.nan
    return Scores(det, fuzz)
