"""Rank a node system's nodes and measure circuits of many sizes, per prompt pair.

- `record`: one forward of the unablated model through the sources: every part's live values
  and each prompt's metric m(M) (the error terms make the sources exact).
- `references`: values ablated nodes take: the mean over the given (discovery) prompts per
  position, zero, or each prompt's counterfactual values.
- `node_effects`: per-part scores by attribution patching (one forward and backward) or
  integrated gradients (per source, `steps` points of the straight path from the reference to
  the live values, the other sources running live; all steps of a source in one batched pass),
  or joint integrated gradients (all counted nodes move together from ablated to live: one
  batched pass of `steps` points in all).
- `measure`: the metric of every prompt with the top-n nodes kept and the rest ablated, for
  many n at once (circuit sizes are stacked as row groups of one batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from analysis.choices import ABLATIONS, RANKINGS
from analysis.tasks import TaskBatch, prompt_metric
from analysis.units import Layout, NodeSystem, PartControl, Values
from replacement.errors import SparseCircuitsError

GRID = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 20000)
"""Circuit sizes evaluated (those below the node count), besides 0 and all nodes: 1-2-5 per
decade (and 3) up to 2000 nodes, where the faithfulness thresholds fall, coarser above. Each
size is a row group of a batched forward over every pair; the 5-minute budget of the default
run sets the count."""
MAX_TOKENS = 4096
"""Tokens per batched forward when circuit sizes are stacked. Larger batches are slower on CPU
(24576 tokens: 30 s against 26 s for one set's 24 task-currency runs; 1024-8192 all within
4%): their [tokens, features] activations leave the caches."""


def grid_sizes(n_nodes: int, extra: Sequence[int] = ()) -> list[int]:
    """0, the grid points below `n_nodes`, `extra` sizes that fit, and `n_nodes`."""
    return sorted({0, n_nodes, *(s for s in (*GRID, *extra) if 0 < s < n_nodes)})


def repeat_batch(batch: TaskBatch, g: int) -> TaskBatch:
    """`g` copies of the batch stacked group-major."""
    if g == 1:
        return batch
    rep = lambda t: t.repeat(g, *([1] * (t.dim() - 1)))  # noqa: E731
    return TaskBatch(
        rep(batch.clean), rep(batch.corrupt), rep(batch.last), rep(batch.answer),
        rep(batch.wrong), batch.metric,
    )  # fmt: skip


def valid_mask(batch: TaskBatch) -> Bool[Tensor, "n pos"]:
    """Positions 1..last of each prompt (no BOS, no padding)."""
    pos = torch.arange(batch.clean.shape[1], device=batch.last.device)
    return (pos[None] >= 1) & (pos[None] <= batch.last[:, None])


@torch.no_grad()
def record(
    system: NodeSystem, model: Any, batch: TaskBatch, counterfactual: bool = False
) -> tuple[Values, Float[Tensor, " n"]]:
    """Live values of every part and each prompt's metric of the unablated model."""
    values: Values = {}
    with system.forward(model, record=values):
        metric = prompt_metric(model, batch, counterfactual=counterfactual)
    return values, metric.float().cpu()


def references(
    clean: Values,
    batch: TaskBatch,
    ablation: str,
    per_position: bool = True,
    corrupt: Values | None = None,
) -> Values:
    """Values of ablated nodes from the clean values of the prompts in `batch` (the discovery
    prompts): their per-position mean (or mean over all non-BOS positions), zero, or the
    counterfactual values (`corrupt`, one row per prompt)."""
    if ablation not in ABLATIONS:
        raise SparseCircuitsError(f"ablation {ablation!r} is unknown; expected one of {ABLATIONS}")
    if ablation == "counterfactual":
        if corrupt is None:
            raise SparseCircuitsError("counterfactual ablation needs the counterfactual values")
        return corrupt
    out = {}
    for key, v in clean.items():
        if ablation == "zero":
            out[key] = torch.zeros_like(v[:1])
        elif per_position:
            out[key] = v.mean(0, keepdim=True)
        else:
            mask = valid_mask(batch).to(v.device)[..., None, None].to(v)
            mean = (v * mask).sum((0, 1), keepdim=True) / mask.sum()
            out[key] = mean.expand(1, v.shape[1], *v.shape[2:])
    return out


def _rows_of(values: Values, rows: Tensor) -> Values:
    """Rows of per-prompt values; broadcast (batch 1) values stay."""
    return {k: v if v.shape[0] == 1 else v[rows] for k, v in values.items()}


def base_controls(system: NodeSystem, reference: Values, n_pos: int) -> dict[str, PartControl]:
    """Parts the currency holds at their reference value in every pass (BOS stays live)."""
    out = {}
    for p in system.held_ablated:
        keep = torch.zeros(1, n_pos, p.k, dtype=torch.bool)
        keep[:, 0] = True
        out[p.key] = PartControl(keep=keep, reference=reference[p.key])
    return out


def _effects(
    grads: dict[str, Tensor], live: Values, reference: Values, batch: TaskBatch
) -> dict[str, Float[Tensor, "pos K"]]:
    """Sum over prompts of grad . (live - reference), per part, position and node."""
    mask = valid_mask(batch)
    out = {}
    for key, g in grads.items():
        e = (g * (live[key] - reference[key].to(g))).sum(-1)  # [n, pos, K]
        out[key] = (e * mask.to(e)[..., None]).sum(0).cpu()
    return out


def _gradients(system, model, batch, controls, leaves: dict[str, Tensor], live: Values | None):
    with torch.enable_grad(), system.forward(model, controls, record=live):
        metric = prompt_metric(model, batch).sum()
    keys = list(leaves)
    grads = torch.autograd.grad(metric, [leaves[k] for k in keys], allow_unused=True)
    return {
        k: torch.zeros_like(leaves[k]) if g is None else g for k, g in zip(keys, grads, strict=True)
    }


def node_effects(
    system: NodeSystem,
    model: Any,
    batch: TaskBatch,
    reference: Values,
    method: str = "attribution_patching",
    steps: int = 4,
) -> dict[str, Float[Tensor, "pos K"]]:
    """Mean effect on the metric of ablating each node of the counted parts, over `batch`.

    attribution_patching: dm/d(node) x (live - reference) at the currency's base state (all
    counted nodes live, held parts at their reference). integrated_gradients: the gradient
    averaged over `steps` midpoints of the path from the reference to the live values of one
    source's counted parts, the other sources at the base state. joint_integrated_gradients:
    d metric / d (keep weight) of each node averaged over `steps` midpoints of the path on
    which every counted node's keep weight rises together from 0 to 1 (the scores add up to
    m(all nodes) - m(no nodes)).
    """
    if method not in RANKINGS:
        raise SparseCircuitsError(f"ranking {method!r} is unknown; expected one of {RANKINGS}")
    n, n_pos = batch.clean.shape
    base = base_controls(system, reference, n_pos)
    counted = system.counted
    shape = {}
    live: Values = {}
    leaves = {}
    with torch.no_grad(), system.forward(model, base, record=live):
        prompt_metric(model, batch)
    for p in counted:
        shape[p.key] = live[p.key].shape
        leaves[p.key] = torch.zeros(shape[p.key], requires_grad=True)
    if method == "attribution_patching":
        controls = {**base, **{k: PartControl(delta=t) for k, t in leaves.items()}}
        grads = _gradients(system, model, batch, controls, leaves, None)
        return {k: v / n for k, v in _effects(grads, live, reference, batch).items()}
    if steps < 1:
        raise SparseCircuitsError(f"integrated gradients need steps >= 1, got {steps}")
    alphas = (torch.arange(steps) + 0.5) / steps
    big = repeat_batch(batch, steps)
    if method == "joint_integrated_gradients":
        return _joint_integrated_gradients(system, model, big, base, reference, shape, alphas)
    grads: dict[str, Tensor] = {}
    counted_keys = {p.key for p in counted}
    for source in system.sources:
        keys = [p.key for p in source.parts if p.key in counted_keys]
        if not keys:
            continue
        controls = dict(base)
        src_leaves = {}
        for k in keys:
            c, r = live[k], reference[k].to(live[k])
            a = alphas.to(c).repeat_interleave(n).reshape(-1, *([1] * (c.dim() - 1)))
            point = r.repeat(steps * n // r.shape[0], *([1] * (r.dim() - 1))) + a * (c - r).repeat(
                steps, *([1] * (c.dim() - 1))
            )
            src_leaves[k] = torch.zeros_like(point, requires_grad=True)
            controls[k] = PartControl(replace=point, delta=src_leaves[k])
        g = _gradients(system, model, big, controls, src_leaves, None)
        for k in keys:
            grads[k] = g[k].reshape(steps, n, *g[k].shape[1:]).mean(0)
    return {k: v / n for k, v in _effects(grads, live, reference, batch).items()}


def _joint_integrated_gradients(
    system: NodeSystem,
    model: Any,
    big: TaskBatch,
    base: dict[str, PartControl],
    reference: Values,
    shape: dict[str, torch.Size],
    alphas: Float[Tensor, " steps"],
) -> dict[str, Float[Tensor, "pos K"]]:
    """Integrated gradients of the circuit's own function: every counted node is
    reference + w x (live - reference), each w rising together from 0 (the empty circuit) to
    1 (all nodes); a node's score is d metric / d w averaged over the `steps` midpoints. The
    scores of all nodes add up to m(all nodes) - m(no nodes), and the path's points are the
    soft versions of the circuits `measure` evaluates. `big`: the batch repeated per step."""
    steps = alphas.numel()
    n = big.clean.shape[0] // steps
    leaves, controls = {}, dict(base)
    for key, (_, n_pos, k, _w) in shape.items():
        a = alphas.repeat_interleave(n)[:, None, None].expand(steps * n, n_pos, k)
        leaves[key] = a.clone().requires_grad_(True)
        live_bos = torch.zeros(1, n_pos, 1)
        live_bos[:, 0] = 1.0  # BOS keeps its live value, as in every circuit
        weight = leaves[key] * (1 - live_bos) + live_bos
        controls[key] = PartControl(reference=reference[key], weight=weight)
    grads = _gradients(system, model, big, controls, leaves, None)
    mask = valid_mask(big).to(torch.float32)[..., None]
    return {
        k: (g * mask.to(g)).reshape(steps, n, *g.shape[1:]).mean(0).sum(0).cpu() / n
        for k, g in grads.items()
    }


def order_of(scores: Float[Tensor, " n_nodes"]) -> Int[Tensor, " n_nodes"]:
    """Node indices by decreasing |score| (ties in index order)."""
    return torch.sort(scores.abs(), descending=True, stable=True).indices


@torch.no_grad()
def measure(
    system: NodeSystem,
    model: Any,
    batch: TaskBatch,
    reference: Values,
    layout: Layout,
    order: Tensor,
    sizes: Sequence[int],
    max_tokens: int = MAX_TOKENS,
    full_row: Float[Tensor, " n"] | None = None,
) -> Float[Tensor, "sizes n"]:
    """Each prompt's metric with the top-`size` nodes of `order` kept, for every size.

    `full_row`: the metric with every node kept, when known (the unablated model, for a
    currency that holds nothing ablated): that size is then not run again."""
    n, n_pos = batch.clean.shape
    base = base_controls(system, reference, n_pos)
    per_pass = max(1, max_tokens // (n * n_pos))
    known = {layout.n_nodes: full_row} if full_row is not None else {}
    run = [s for s in sizes if s not in known]
    out = []
    for start in range(0, len(run), per_pass):
        chunk = run[start : start + per_pass]
        keep = torch.zeros(len(chunk), layout.n_nodes, dtype=torch.bool)
        for i, s in enumerate(chunk):
            keep[i, order[:s]] = True
        controls = dict(base)
        for key, mask in layout.masks(keep).items():
            controls[key] = PartControl(keep=mask, reference=reference[key])
        with system.forward(model, controls):
            metric = prompt_metric(model, repeat_batch(batch, len(chunk)))
        out.append(metric.float().cpu().reshape(len(chunk), n))
    measured = dict(zip(run, torch.cat(out) if out else [], strict=True))
    return torch.stack([measured[s] if s in measured else known[s].float() for s in sizes])
