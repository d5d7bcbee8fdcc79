"""Activation functions of sparse dictionaries: ReLU, TopK, BatchTopK and JumpReLU.

Each maps encoder pre-activations [..., F] to activations, and can instead return only the
non-zeros of a [tokens, F] block (`sparse`), which is how the sparse path of `Dictionary`
avoids materialising a dense [tokens, F] activation matrix for a whole batch.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn


class Activation(nn.Module):
    """Base class: `forward(pre) -> acts`, `sparse(pre) -> (indices, values)` per row."""

    name: str = "base"

    def forward(self, pre: Float[Tensor, "... F"]) -> Float[Tensor, "... F"]:
        """Dense activations."""
        raise NotImplementedError

    def sparse_block(
        self, pre: Float[Tensor, "tokens F"]
    ) -> tuple[Int[Tensor, " nnz"], Int[Tensor, " nnz"], Float[Tensor, " nnz"]]:
        """(token, feature, value) of the non-zeros of one block of pre-activations."""
        acts = self.forward(pre)
        token_idx, feature_idx = acts.nonzero(as_tuple=True)
        return token_idx, feature_idx, acts[token_idx, feature_idx]

    def params(self) -> dict[str, Any]:
        """JSON-serialisable parameters (besides tensors) recorded in dictionary files."""
        return {}


class ReLU(Activation):
    """a = max(0, pre)."""

    name = "relu"

    def forward(self, pre: Float[Tensor, "... F"]) -> Float[Tensor, "... F"]:
        return torch.relu(pre)

    def sparse_block(self, pre):
        token_idx, feature_idx = (pre > 0).nonzero(as_tuple=True)
        return token_idx, feature_idx, pre[token_idx, feature_idx]


class TopK(Activation):
    """Keep the k largest of ReLU(pre) per token, zero the rest."""

    name = "topk"

    def __init__(self, k: int):
        super().__init__()
        if k < 1:
            raise ValueError(f"TopK needs k >= 1, got k={k}")
        self.k = int(k)

    def forward(self, pre: Float[Tensor, "... F"]) -> Float[Tensor, "... F"]:
        values, indices = pre.topk(min(self.k, pre.shape[-1]), dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))

    def sparse_block(self, pre):
        values, indices = pre.topk(min(self.k, pre.shape[-1]), dim=-1, sorted=False)
        keep = values > 0
        token_idx = torch.arange(pre.shape[0], device=pre.device)[:, None].expand_as(indices)
        return token_idx[keep], indices[keep], values[keep]

    def params(self) -> dict[str, Any]:
        return {"k": self.k}


class JumpReLUFunction(torch.autograd.Function):
    """z * 1[z > theta] with a straight-through estimator for theta (rectangle kernel)."""

    @staticmethod
    def forward(ctx, pre, log_threshold, bandwidth):
        threshold = log_threshold.exp()
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad_out):
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_pre = grad_out * (pre > threshold)
        # d/dtheta of z*H(z-theta) ~ -theta/bw * rect((z-theta)/bw); chain rule for log theta
        near = ((pre - threshold).abs() < bw / 2).to(pre.dtype)
        grad_theta = -(threshold / bw) * near * grad_out
        grad_log = (grad_theta * threshold).reshape(-1, threshold.shape[-1]).sum(0)
        return grad_pre, grad_log, None


class JumpReLU(Activation):
    """a = pre * 1[pre > theta], theta = exp(log_threshold) per feature."""

    name = "jumprelu"

    def __init__(self, n_features: int, threshold: float = 1e-3, bandwidth: float = 0.05):
        super().__init__()
        self.log_threshold = nn.Parameter(torch.full((n_features,), float(threshold)).log())
        self.bandwidth = float(bandwidth)

    @property
    def threshold(self) -> Float[Tensor, " F"]:
        """Per-feature threshold theta."""
        return self.log_threshold.exp()

    def forward(self, pre: Float[Tensor, "... F"]) -> Float[Tensor, "... F"]:
        if torch.is_grad_enabled() and self.log_threshold.requires_grad:
            return JumpReLUFunction.apply(pre, self.log_threshold, self.bandwidth)
        return pre * (pre > self.threshold)

    def sparse_block(self, pre):
        token_idx, feature_idx = (pre > self.threshold).nonzero(as_tuple=True)
        return token_idx, feature_idx, pre[token_idx, feature_idx]

    def params(self) -> dict[str, Any]:
        return {"bandwidth": self.bandwidth}


class BatchTopK(Activation):
    """Training: keep the k*B largest of ReLU(pre) over a batch of B tokens.

    Inference (eval mode): a JumpReLU with one learned scalar threshold, estimated during
    training as a running mean of the smallest kept activation per batch.
    """

    name = "batchtopk"

    def __init__(self, k: int, threshold: float = 0.0, momentum: float = 0.01):
        super().__init__()
        self.k = int(k)
        self.momentum = float(momentum)
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def forward(self, pre: Float[Tensor, "... F"]) -> Float[Tensor, "... F"]:
        if not self.training:
            return pre * (pre > self.threshold)
        flat = torch.relu(pre.reshape(-1, pre.shape[-1]))
        n_keep = min(self.k * flat.shape[0], flat.numel())
        values, indices = flat.flatten().topk(n_keep, sorted=False)
        acts = torch.zeros_like(flat.flatten()).scatter(0, indices, values)
        positive = values[values > 0]
        if positive.numel():
            with torch.no_grad():
                smallest = positive.min().to(self.threshold.dtype)
                self.threshold.lerp_(smallest, self.momentum)
        return acts.reshape(pre.shape)

    def sparse_block(self, pre):
        if self.training:
            return super().sparse_block(pre)
        token_idx, feature_idx = (pre > self.threshold).nonzero(as_tuple=True)
        return token_idx, feature_idx, pre[token_idx, feature_idx]

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "momentum": self.momentum}


def make_activation(name: str, n_features: int, **params: Any) -> Activation:
    """Build an activation from its name and recorded parameters."""
    name = name.lower()
    if name == "relu":
        return ReLU()
    if name == "topk":
        return TopK(int(params["k"]))
    if name == "batchtopk":
        return BatchTopK(int(params["k"]), momentum=float(params.get("momentum", 0.01)))
    if name == "jumprelu":
        return JumpReLU(n_features, bandwidth=float(params.get("bandwidth", 0.05)))
    raise ValueError(
        f"unknown activation {name!r}; expected one of relu, topk, batchtopk, jumprelu (or gated)"
    )
