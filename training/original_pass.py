"""The original model's pass of an e2e step, computed once per batch for every run on it.

An e2e step runs the model twice: once unchanged (the KL's reference distribution, the
residual where the spliced pass starts, e2e+ds's downstream targets) and once spliced. The
first pass depends only on the batch, so runs that train on the same batches (the same seed
and batch size: `train_many` of e2e runs) share it: each asks for step s and the first to
ask computes it. On the default model this pass is about a quarter of a step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from training.kl_loss import Reference


@dataclass(frozen=True)
class OriginalPass:
    """What an e2e step needs from the unchanged model on one batch."""

    tokens: Int[Tensor, "rows ctx"]
    mask: Bool[Tensor, "rows ctx"]
    """The positions the loss counts."""
    captured: dict[str, Float[Tensor, "rows ctx d"]]
    """Activations at the hooks asked for (no gradient)."""
    reference: Reference
    """The next-token distribution at every position, flattened (rows * ctx, vocab): the
    loss weighs the positions it does not count by 0 instead of gathering the others, which
    saves two copies of the logits and a scatter of their gradient per step."""


class OriginalPasses:
    """One `OriginalPass` per step, shared by the runs that registered with it.

    Keeps the latest pass only: shared runs advance step by step together. A run that asks
    for another step (or other tokens at the same step) gets a fresh pass; nothing is wrong,
    only nothing is shared.
    """

    def __init__(self, model: Any):
        self.model = model
        self.hooks: set[str] = set()
        self.sharers = 1
        """Runs that use each pass: its seconds are charged to them in equal parts."""
        self._last: tuple[int, OriginalPass, float] | None = None

    def need(self, hooks: list[str]) -> None:
        """Capture `hooks` too from now on (each run registers what it reads)."""
        self.hooks.update(hooks)

    def at(
        self, step: int, tokens: Int[Tensor, "rows ctx"], mask: Bool[Tensor, "rows ctx"]
    ) -> tuple[OriginalPass, float, float]:
        """The pass of `step`, the seconds spent computing it in this call (0 when it was
        shared) and the seconds charged to the caller (its share of the pass's time)."""
        last = self._last
        if (
            last is not None
            and last[0] == step
            and self.hooks <= last[1].captured.keys()
            and torch.equal(last[1].tokens, tokens)
            and torch.equal(last[1].mask, mask)
        ):
            return last[1], 0.0, last[2] / self.sharers
        start = time.perf_counter()
        result = self._compute(tokens, mask)
        seconds = time.perf_counter() - start
        self._last = (step, result, seconds)
        return result, seconds, seconds / self.sharers

    def _compute(
        self, tokens: Int[Tensor, "rows ctx"], mask: Bool[Tensor, "rows ctx"]
    ) -> OriginalPass:
        captured: dict[str, Tensor] = {}

        def keep(name: str):
            def hook(act: Tensor, hook: Any) -> Tensor:
                captured[name] = act.detach()
                return act

            return hook

        with torch.no_grad():
            fwd = [(h, keep(h)) for h in sorted(self.hooks)]
            logits = self.model.run_with_hooks(tokens, fwd_hooks=fwd) if fwd else self.model(tokens)
            reference = Reference.of(logits.reshape(-1, logits.shape[-1]))
        return OriginalPass(tokens, mask, captured, reference)
