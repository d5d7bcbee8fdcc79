"""The dictionary-free baselines a claim's dictionaries must beat, fitted in closed form.

- The linear-only baseline of a transcoder: the best affine map from its input to its output
  (ordinary least squares with an intercept). A skip transcoder adds a dense `x @ W_skip` path
  to its features; how much of the MLP that path carries alone is the floor any transcoder of
  the site must beat. Returned as a skip transcoder whose features never fire.
- The mean baseline of an SAE: its site replaced by the site's mean (mean ablation), the
  reconstruction an SAE with no features gives. Returned as an SAE whose features never fire
  (`W_enc = 0`, ReLU, `b_dec` the mean).

Both are fitted in float64 on the first whole training rows holding enough tokens that count
(not BOS, not special), and the sweep evaluates them exactly as it does a trained dictionary.
"""

from __future__ import annotations

from collections.abc import Iterator
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


def fit_rows(
    rows: Int[Tensor, "rows ctx"], special_ids: list[int], tokens: int
) -> tuple[Int[Tensor, "fit ctx"], int]:
    """The first whole rows of `rows` that hold at least `tokens` counted tokens, and how many
    counted tokens they hold."""
    counted = token_mask(rows, special_ids).sum(dim=1).cumsum(0)
    if int(counted[-1]) < tokens:
        raise ValueError(f"the rows hold {int(counted[-1])} counted tokens; the fit needs {tokens}")
    n_rows = int(torch.searchsorted(counted, tokens)) + 1
    return rows[:n_rows], int(counted[n_rows - 1])


def _counted_batches(
    model: Any, rows: Int[Tensor, "rows ctx"], special_ids: list[int], hooks: list[str]
) -> Iterator[dict[str, Float[Tensor, "n d"]]]:
    """The hooks' activations at the counted tokens of `rows`, batch by batch, in float64."""
    for start in range(0, rows.shape[0], FIT_BATCH_ROWS):
        batch = rows[start : start + FIT_BATCH_ROWS]
        acts = collect_activations(model, batch, hooks)
        keep = token_mask(batch, special_ids).to(acts[hooks[0]].device)
        yield {h: acts[h][keep].double() for h in hooks}


def _model_name(model: Any) -> str:
    return str(getattr(model.cfg, "model_name", ""))


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
    rows, seen = fit_rows(rows, special_ids, tokens)
    xtx = xty = None
    for acts in _counted_batches(model, rows, special_ids, [in_hook, out_hook]):
        x, y = acts[in_hook], acts[out_hook]
        x1 = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        xtx = x1.T @ x1 if xtx is None else xtx + x1.T @ x1
        xty = x1.T @ y if xty is None else xty + x1.T @ y
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
        model_name=_model_name(model),
        metadata={"baseline": "affine least squares", "fit_tokens": seen},
    ).to(weight.device)
    with torch.no_grad():
        linear.W_skip.copy_(weight.float())
        linear.b_dec.copy_(bias.float())
    return linear, seen


def fit_mean_sae(
    model: Any, rows: Int[Tensor, "rows ctx"], special_ids: list[int], hook: str, tokens: int
) -> tuple[Dictionary, int]:
    """The mean of `hook` over the counted tokens of the first whole rows of `rows` that hold at
    least `tokens` of them, as a feature-less SAE (its output is that mean at every token:
    mean ablation); and the tokens it was fitted on."""
    rows, seen = fit_rows(rows, special_ids, tokens)
    total = None
    for acts in _counted_batches(model, rows, special_ids, [hook]):
        part = acts[hook].sum(dim=0)
        total = part if total is None else total + part
    mean = total / seen
    sae = Dictionary(
        mean.shape[0],
        mean.shape[0],
        1,
        hook,
        hook,
        "relu",
        model_name=_model_name(model),
        metadata={"baseline": "mean ablation", "fit_tokens": seen},
    ).to(mean.device)
    with torch.no_grad():
        sae.b_dec.copy_(mean.float())  # W_enc = 0 and b_enc = 0: no feature ever fires
    return sae, seen
