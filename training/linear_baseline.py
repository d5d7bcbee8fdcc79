"""The linear-only baseline of a transcoder: the best affine map from its input to its output.

A skip transcoder adds a dense `x @ W_skip` path to its features; how much of the MLP that path
can carry alone is the floor any transcoder of the site must beat. The baseline is fitted in
closed form (ordinary least squares with an intercept, in float64, on the training tokens that
count: not BOS, not special) and returned as a skip transcoder whose features never fire
(`W_enc = 0`, ReLU, `W_dec = 0`), so the sweep evaluates it exactly as it does a trained one.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from replacement.dictionary import Dictionary
from training.activations import collect_activations
from training.data import token_mask

FIT_BATCH_ROWS = 64
"""Rows per forward pass while gathering the statistics."""


def affine_least_squares(
    xtx: Float[Tensor, "d_in1 d_in1"], xty: Float[Tensor, "d_in1 d_out"]
) -> tuple[Float[Tensor, "d_in d_out"], Float[Tensor, " d_out"]]:
    """(W, b) minimising sum |x W + b - y|^2 from the normal equations of [x, 1] (float64);
    `xtx` = [x,1]^T [x,1], `xty` = [x,1]^T y. A singular system gets the minimum-norm W."""
    solution = torch.linalg.lstsq(xtx, xty, driver="gelsd").solution
    return solution[:-1], solution[-1]


def fit_linear_transcoder(
    model: Any,
    rows: Int[Tensor, "rows ctx"],
    special_ids: list[int],
    in_hook: str,
    out_hook: str,
    tokens: int,
) -> tuple[Dictionary, int]:
    """The affine least-squares map from `in_hook` to `out_hook` on the first whole rows of
    `rows` that hold at least `tokens` counted tokens, as a feature-less skip transcoder; and
    the tokens it was fitted on."""
    counted = token_mask(rows, special_ids).sum(dim=1).cumsum(0)
    if int(counted[-1]) < tokens:
        raise ValueError(f"the rows hold {int(counted[-1])} counted tokens; the fit needs {tokens}")
    n_rows = int(torch.searchsorted(counted, tokens)) + 1  # the first whole rows enough
    rows, seen = rows[:n_rows], int(counted[n_rows - 1])
    xtx = xty = torch.zeros(0)
    for start in range(0, rows.shape[0], FIT_BATCH_ROWS):
        batch = rows[start : start + FIT_BATCH_ROWS]
        acts = collect_activations(model, batch, [in_hook, out_hook])
        keep = token_mask(batch, special_ids).to(acts[in_hook].device)
        x = acts[in_hook][keep].double()
        y = acts[out_hook][keep].double()
        x1 = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        xtx = x1.T @ x1 if start == 0 else xtx + x1.T @ x1
        xty = x1.T @ y if start == 0 else xty + x1.T @ y
    weight, bias = affine_least_squares(xtx, xty)
    d_in, d_out = weight.shape
    linear = Dictionary(
        d_in,
        d_out,
        1,
        in_hook,
        out_hook,
        "relu",
        skip=True,
        model_name=str(getattr(model.cfg, "model_name", "")),
        metadata={"baseline": "affine least squares", "fit_tokens": seen},
    ).to(weight.device)
    with torch.no_grad():
        linear.W_skip.copy_(weight.float())
        linear.b_dec.copy_(bias.float())
    return linear, seen
