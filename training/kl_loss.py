"""The e2e objective's KL(original || spliced), with a hand-written backward.

KL(p || q) at one token is sum_v p_v (log p_v - log q_v) = sum_v p_v log p_v - sum_v p_v z_v
+ logsumexp(z), for the spliced logits z; its gradient in z is softmax(z) - p. The first
term does not depend on the spliced pass, so the original side is prepared once per batch
(`Reference`, shared by every run trained on that batch) and the spliced side costs one
softmax, one weighted sum and, backwards, one subtraction. Autograd through `log_softmax`
and the elementwise KL makes about twice as many passes over the (tokens x vocabulary)
logits, which on a small model is a quarter of an e2e step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass(frozen=True)
class Reference:
    """The original model's next-token distribution at the tokens a loss counts."""

    probs: Float[Tensor, "tokens vocab"]
    neg_entropy: Float[Tensor, " tokens"]
    """sum_v p_v log p_v per token."""

    @classmethod
    def of(cls, logits: Float[Tensor, "tokens vocab"]) -> Reference:
        """From the original logits (no gradient)."""
        with torch.no_grad():
            logp = torch.log_softmax(logits.float(), dim=-1)
            probs = logp.exp()
            return cls(probs, (probs * logp).sum(-1))


class _KLToReference(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, probs: Tensor, neg_entropy: Tensor, weights: Tensor
    ) -> Tensor:
        z = logits.float()
        top = z.amax(-1, keepdim=True)
        softmax = (z - top).exp_()
        total = softmax.sum(-1, keepdim=True)
        softmax.div_(total)
        lse = (top + total.log()).squeeze(-1)
        per_token = neg_entropy - (probs * z).sum(-1) + lse
        ctx.save_for_backward(softmax, probs, weights)
        ctx.dtype = logits.dtype
        return (weights * per_token).sum()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        if getattr(ctx, "used", False):  # the saved softmax is overwritten below
            raise RuntimeError("kl_to_reference's graph is backpropagated once (no retain_graph)")
        ctx.used = True
        softmax, probs, weights = ctx.saved_tensors
        out = softmax.sub_(probs).mul_((grad * weights).unsqueeze(-1))
        return out.to(ctx.dtype), None, None, None


def kl_to_reference(
    logits: Float[Tensor, "tokens vocab"],
    reference: Reference,
    weights: Float[Tensor, " tokens"],
) -> Float[Tensor, ""]:
    """sum_t weights_t KL(reference_t || softmax(logits_t)): differentiable in `logits`.

    `weights` are typically 1 / (tokens in the global batch), which makes this the batch's
    mean KL; the result equals `(weights * (p * (log p - log_softmax(logits))).sum(-1)).sum()`
    to float rounding, gradient included.
    """
    if logits.shape != reference.probs.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and the reference {tuple(reference.probs.shape)} "
            "must have the same (tokens, vocab) shape"
        )
    return _KLToReference.apply(logits, reference.probs, reference.neg_entropy, weights)
