"""Data parallelism for the trainer: rank, world size, a summing all-reduce, global BatchTopK.

Under `torchrun` (WORLD_SIZE > 1 in the environment) the trainer joins a gloo (CPU) or NCCL
(CUDA) process group. Each rank takes a disjoint shard of every global batch; since every
loss term is a sum over tokens divided by global denominators, summing the ranks'
gradients gives exactly the single-process gradient, and identical Adam steps keep the
ranks' weights equal. Rank 0 alone writes files.

BatchTopK's rule is not per token: it keeps the k*B largest activations of the whole
batch, so `GlobalBatchTopK` finds the global threshold from every rank's candidates (see
`global_batch_threshold`) and each rank keeps its own entries above it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from jaxtyping import Float
from torch import Tensor

from replacement.activations import BatchTopK
from replacement.dictionary import Dictionary


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel run."""

    rank: int = 0
    """Index of this process (0 in a single-process run)."""
    world_size: int = 1
    """Number of processes."""

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and shows progress."""
        return self.rank == 0

    def reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum of `tensor` over ranks (a new tensor; unchanged in a single process)."""
        if self.world_size == 1:
            return tensor
        out = tensor.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the gradients of `params` over ranks, in place."""
        if self.world_size == 1:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)

    def all_gather(self, tensor: Tensor) -> Float[Tensor, "world ..."]:
        """Every rank's `tensor` (same shape on all ranks), stacked in rank order."""
        if self.world_size == 1:
            return tensor[None]
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of n items (sizes differ by at most one)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))


def context(device: str | torch.device | None = None) -> DistContext:
    """The current context; joins the torchrun process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        on_cuda = device is not None and torch.device(device).type == "cuda"
        dist.init_process_group("nccl" if on_cuda else "gloo")
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size())
    return DistContext()


@torch.no_grad()
def global_batch_threshold(
    acts: Float[Tensor, "tokens F"], k: int, ctx: DistContext
) -> tuple[Tensor, Tensor | None]:
    """The value of the (k * B)-th largest of `acts` over all ranks' shards (B: global tokens).

    Each rank sends only its own k * B largest values: the global k * B largest lie in the
    union of those, so the (k * B)-th largest of the gathered values is the global one,
    whatever the sharding. Also returns the smallest positive value at or above it (None
    if none), BatchTopK's per-batch sample of its inference threshold. Both come out the
    same on every rank and in a single process.
    """
    flat = acts.flatten()
    counts = ctx.reduce_sum(torch.tensor([acts.shape[0], flat.numel()], device=flat.device))
    n_keep = min(k * int(counts[0]), int(counts[1]))
    if n_keep == 0:
        return flat.new_tensor(float("inf")), None
    local = flat.topk(min(n_keep, flat.numel()), sorted=False).values
    # pad below every ReLU output so all ranks send n_keep values
    padded = torch.cat([local, local.new_full((n_keep - local.numel(),), -1.0)])
    gathered = ctx.all_gather(padded).flatten()
    threshold = gathered.topk(n_keep, sorted=False).values.min()
    kept = gathered[(gathered >= threshold) & (gathered > 0)]
    return threshold, (kept.min() if kept.numel() else None)


class GlobalBatchTopK(BatchTopK):
    """BatchTopK whose training-mode batch is the global batch of a data-parallel run.

    Keeps every ReLU(pre) >= the (k * B)-th largest value over all ranks (B: global tokens),
    so a data-parallel run keeps exactly the entries a single process would. Tie rule: all
    entries equal to the threshold are kept (more than k * B only on exact ties), which is
    deterministic and does not depend on how the batch is sharded. In eval mode, and in
    files (same name, parameters and `threshold` buffer), it is a plain BatchTopK.
    """

    def __init__(self, k: int, ctx: DistContext, threshold: float = 0.0, momentum: float = 0.01):
        super().__init__(k, threshold, momentum)
        self.ctx = ctx

    def forward(self, pre: Float[Tensor, "... F"]) -> Float[Tensor, "... F"]:
        if not self.training:
            return super().forward(pre)
        flat = torch.relu(pre.reshape(-1, pre.shape[-1]))
        # a process group torn down after training leaves only this rank's batch
        ctx = self.ctx if dist.is_initialized() else DistContext()
        threshold, smallest = global_batch_threshold(flat.detach(), self.k, ctx)
        if smallest is not None:
            with torch.no_grad():
                self.threshold.lerp_(smallest.to(self.threshold.dtype), self.momentum)
        return (flat * (flat >= threshold)).reshape(pre.shape)


def use_global_batchtopk(d: Dictionary, ctx: DistContext) -> None:
    """Give a BatchTopK dictionary the global batch rule, in place (others are left alone)."""
    act = d.activation
    if isinstance(act, BatchTopK) and not isinstance(act, GlobalBatchTopK):
        new = GlobalBatchTopK(act.k, ctx, momentum=act.momentum)
        new.threshold = act.threshold.detach().clone()
        d.activation = new.train(act.training)
