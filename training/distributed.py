"""Data parallelism for the trainer: rank, world size and a summing all-reduce.

Under `torchrun` (WORLD_SIZE > 1 in the environment) the trainer joins a gloo (CPU) or NCCL
(CUDA) process group. Each rank takes a disjoint shard of every global batch; since every
loss term is a sum over tokens divided by global denominators, summing the ranks'
gradients gives exactly the single-process gradient, and identical Adam steps keep the
ranks' weights equal. Rank 0 alone writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


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
