"""Losses, initialisation and decoder rules of dictionary training.

Every loss here is a SUM over the tokens given, divided by a `LossScale` computed over the
whole (global) batch: the reconstruction term is ||y - y_hat||^2 / (n * var) (so its value
is the FVU and coefficients do not depend on the activation scale of the site), penalties
in units of y are divided by n * sqrt(var). Because every term is a sum over tokens with a
shared denominator, data-parallel ranks can add their gradients and get exactly the
single-process gradient.

Sparsity per activation:
- relu: l1 * sum_i a_i ||W_dec,i||.
- gated: l1 * sum_i ReLU(pi_gate)_i ||W_dec,i|| + ||y - (ReLU(pi_gate) W_dec.detach() + b_dec.detach())||^2
  (the auxiliary reconstruction of Rajamanoharan et al., decoder frozen as the paper says).
- jumprelu: l0 * sum_i H(z_i - theta_i), with d/dtheta H(z - theta) = -(1/bw) rect((z - theta)/bw)
  and no gradient to z (straight-through estimator of the step).
- topk, batchtopk: no penalty (k fixes L0; BatchTopK's threshold updates in training mode);
  AuxK on dead latents instead: the top k_aux = d_in // 2 dead pre-activations reconstruct the
  detached residual y - y_hat, weighted by min(n_dead / k_aux, 1) and aux_k_coefficient.

Decoder rule: SAEs of every activation keep unit-norm decoder rows (renormalised after each
step, with the gradient component parallel to each row removed before it), as sparsify does;
for relu/gated SAEs the norm weighting of the L1 is then the constant 1. Transcoders start
with W_dec = 0 and have no norm constraint: their L1 is weighted by the decoder norm instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from replacement.dictionary import Dictionary, GatedDictionary

Reduce = Callable[[Tensor], Tensor]
"""Sums a tensor over data-parallel ranks (identity in a single process)."""


def _identity(t: Tensor) -> Tensor:
    return t


@dataclass
class LossScale:
    """Denominators shared by all ranks: global token count and total variance of y."""

    n_tokens: float
    """Tokens in the global batch."""
    var: float
    """Mean over tokens of ||y - mean(y)||^2 (the FVU denominator per token)."""

    @classmethod
    def of(cls, y: Float[Tensor, "tokens d"], reduce: Reduce = _identity) -> LossScale:
        """Global count and variance from per-rank sums (sum y, sum ||y||^2, count)."""
        y = y.detach().double()
        stats = reduce(torch.cat([y.sum(0), y.pow(2).sum().reshape(1), y.new_tensor([y.shape[0]])]))
        n = float(stats[-1])
        mean = stats[:-2] / n
        var = float(stats[-2] / n - mean.pow(2).sum())
        return cls(n, max(var, 1e-12))


def reconstruction_loss(
    y: Float[Tensor, "tokens d"], y_hat: Float[Tensor, "tokens d"], scale: LossScale
) -> Tensor:
    """sum ||y - y_hat||^2 / (n * var): this rank's share of the batch FVU."""
    return (y - y_hat).pow(2).sum() / (scale.n_tokens * scale.var)


def fvu(y: Float[Tensor, "tokens d"], y_hat: Float[Tensor, "tokens d"]) -> float:
    """Fraction of variance unexplained, sum (y - y_hat)^2 / sum (y - mean y)^2."""
    y, y_hat = y.detach().double(), y_hat.detach().double()
    return float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum().clamp_min(1e-12))


class _StepSTE(torch.autograd.Function):
    """H(z - theta) with a rectangle-kernel pseudo-gradient for log theta only."""

    @staticmethod
    def forward(ctx, pre, log_threshold, bandwidth):
        threshold = log_threshold.exp()
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        near = ((pre - threshold).abs() < bw / 2).to(pre.dtype)
        grad_theta = -(1.0 / bw) * near * grad_out
        grad_log = (grad_theta * threshold).reshape(-1, threshold.shape[-1]).sum(0)
        return None, grad_log, None


def step_l0(
    pre: Float[Tensor, "tokens F"], log_threshold: Float[Tensor, " F"], bandwidth: float
) -> Tensor:
    """Sum over tokens and features of H(pre - theta), differentiable in log theta."""
    return _StepSTE.apply(pre, log_threshold, bandwidth).sum()


def decoder_norms(d: Dictionary) -> Float[Tensor, " F"]:
    """||W_dec,i|| per feature."""
    return d.W_dec.norm(dim=-1)


def auxk_loss(
    d: Dictionary,
    pre: Float[Tensor, "tokens F"],
    y: Float[Tensor, "tokens d"],
    y_hat: Float[Tensor, "tokens d"],
    dead: Bool[Tensor, " F"],
    scale: LossScale,
) -> Tensor:
    """AuxK: the top k_aux dead latents reconstruct the residual y - y_hat (detached).

    Gradients reach only dead latents' encoder columns, biases and decoder rows.
    """
    if not bool(dead.any()):
        return pre.new_zeros(())
    # work on the dead columns only: few are dead once training settles, and a top-k over
    # all F columns (masked) cost more than the rest of the sparsity terms together
    dead_idx = dead.nonzero().squeeze(1).to(pre.device)
    return auxk_loss_dead(d, pre.index_select(-1, dead_idx), dead_idx, y, y_hat, scale)


def auxk_loss_dead(
    d: Dictionary,
    dead_pre: Float[Tensor, "tokens n_dead"],
    dead_idx: Int[Tensor, " n_dead"],
    y: Float[Tensor, "tokens d"],
    y_hat: Float[Tensor, "tokens d"],
    scale: LossScale,
) -> Tensor:
    """AuxK from the pre-activations of the dead columns `dead_idx` only."""
    n_dead = int(dead_idx.numel())
    k_aux = max(1, d.d_in // 2)
    k = min(k_aux, n_dead)
    residual = (y - y_hat).detach()
    values, idx = dead_pre.topk(k, dim=-1, sorted=False)
    values = torch.relu(values)
    # dense scatter then matmul: the backward of W_dec[idx] with repeated rows accumulates in
    # parallel on CPU, which is not bitwise reproducible (exact resume needs reproducible
    # steps); the rows of dead_idx are distinct, so selecting them is
    dense = dead_pre.new_zeros(dead_pre.shape[0], n_dead).scatter(-1, idx, values)
    e_hat = dense @ d.W_dec.index_select(0, dead_idx)
    return (
        _auxk_weight(n_dead, k_aux) * (e_hat - residual).pow(2).sum() / (scale.n_tokens * scale.var)
    )


def auxk_loss_sparse(
    d: Dictionary,
    x_enc: Float[Tensor, "tokens d_in"],
    dead_idx: Int[Tensor, " n_dead"],
    y: Float[Tensor, "tokens d"],
    y_hat: Float[Tensor, "tokens d"],
    scale: LossScale,
) -> Tensor:
    """`auxk_loss_dead` through the sparse TopK path: the dead columns form a small TopK
    dictionary with k_aux, so no dense [tokens, n_dead] tensor is decoded or differentiated."""
    from training.fused_topk import topk_reconstruct

    n_dead = int(dead_idx.numel())
    k_aux = max(1, d.d_in // 2)
    out = topk_reconstruct(
        x_enc,
        d.W_enc.index_select(1, dead_idx),
        d.b_enc.index_select(0, dead_idx),
        d.W_dec.index_select(0, dead_idx),
        min(k_aux, n_dead),
    )
    residual = (y - y_hat).detach()
    return (
        _auxk_weight(n_dead, k_aux) * (out.y - residual).pow(2).sum() / (scale.n_tokens * scale.var)
    )


def _auxk_weight(n_dead: int, k_aux: int) -> float:
    return min(n_dead / k_aux, 1.0)


def sparsity_loss(
    d: Dictionary,
    x: Float[Tensor, "tokens d_in"],
    y: Float[Tensor, "tokens d_out"],
    y_hat: Float[Tensor, "tokens d_out"],
    acts: Float[Tensor, "tokens F"],
    scale: LossScale,
    *,
    l1_coefficient: float,
    l0_coefficient: float,
    aux_k_coefficient: float,
    dead: Bool[Tensor, " F"] | None = None,
    pre: Float[Tensor, "tokens F"] | None = None,
) -> dict[str, Tensor]:
    """The sparsity (and auxiliary) terms of one dictionary's activation kind, by name."""
    name = d.activation_name
    norm = scale.n_tokens * scale.var**0.5
    if name == "relu":
        return {"l1_loss": l1_coefficient * (acts * decoder_norms(d)).sum() / norm}
    if name == "gated":
        assert isinstance(d, GatedDictionary)
        gate = torch.relu(d.gate_pre_acts(x))
        aux_recon = gate @ d.W_dec.detach() + d.b_dec.detach()
        return {
            "l1_loss": l1_coefficient * (gate * decoder_norms(d)).sum() / norm,
            "gate_aux_loss": (y - aux_recon).pow(2).sum() / (scale.n_tokens * scale.var),
        }
    if name == "jumprelu":
        pre = d.pre_acts(x) if pre is None else pre
        act = d.activation
        l0 = step_l0(pre, act.log_threshold, act.bandwidth) / scale.n_tokens
        return {"l0_loss": l0_coefficient * l0}
    if name in ("topk", "batchtopk"):
        if dead is None or not bool(dead.any()) or aux_k_coefficient == 0:
            return {}
        pre = d.pre_acts(x) if pre is None else pre
        return {"auxk_loss": aux_k_coefficient * auxk_loss(d, pre, y, y_hat, dead, scale)}
    raise ValueError(f"no sparsity loss for activation {name!r}")


# ---- initialisation and decoder rules -----------------------------------------------------------
@torch.no_grad()
def initialise(d: Dictionary, generator: torch.Generator) -> None:
    """SAE: W_dec = W_enc^T with unit rows; transcoders: W_enc random, W_dec = 0, W_skip = 0."""
    bound = d.d_in**-0.5
    w = (torch.rand(d.d_in, d.n_features, generator=generator) * 2 - 1) * bound
    w = w.to(d.W_enc)
    if d.kind == "sae":
        w_dec = w.T / w.T.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        d.W_dec.copy_(w_dec)
        d.W_enc.copy_(w_dec.T)
    else:
        d.W_enc.copy_(w)
        d.W_dec.zero_()
        if d.W_skip is not None:
            d.W_skip.zero_()
    d.b_enc.zero_()
    d.b_dec.zero_()


@torch.no_grad()
def init_b_dec(d: Dictionary, y_mean: Float[Tensor, " d_out"]) -> None:
    """b_dec = mean target of the first batch."""
    d.b_dec.copy_(y_mean.to(d.b_dec))


@torch.no_grad()
def init_b_enc(d: Dictionary, x_mean: Float[Tensor, " d_in"]) -> None:
    """b_enc = -mean(x) W_enc: pre-activations centred over the first batch (transcoders)."""
    d.b_enc.copy_(-(x_mean.to(d.W_enc) @ d.W_enc))


@torch.no_grad()
def init_jumprelu_threshold(
    d: Dictionary, pre: Float[Tensor, "tokens F"], target_l0: float
) -> Float[Tensor, " F"]:
    """Per-feature thresholds at which each feature fires on target_l0 / F of `pre`'s tokens.

    A fixed small threshold (1e-3) leaves nearly every feature on, and log-threshold moves
    slowly under Adam; starting near the target density makes the L0 penalty's job local.
    """
    q = 1.0 - min(max(target_l0 / d.n_features, 1e-6), 1.0)
    pre = pre[: max(1, 2**24 // pre.shape[-1])]  # torch.quantile refuses inputs over 2^24 values
    return torch.quantile(pre.float(), q, dim=0).clamp_min(1e-3).to(pre)


def uses_unit_decoder(d: Dictionary) -> bool:
    """Whether the unit-norm decoder rule applies (SAEs of every activation)."""
    return d.kind == "sae"


@torch.no_grad()
def remove_parallel_grad(d: Dictionary) -> None:
    """Project out of W_dec's gradient the component parallel to each (unit) decoder row."""
    if not uses_unit_decoder(d) or d.W_dec.grad is None:
        return
    w, g = d.W_dec, d.W_dec.grad
    g.sub_((g * w).sum(-1, keepdim=True) * w)


@torch.no_grad()
def normalise_decoder(d: Dictionary) -> None:
    """Rescale decoder rows to unit norm."""
    if uses_unit_decoder(d):
        d.W_dec.div_(d.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))
