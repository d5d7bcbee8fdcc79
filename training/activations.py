"""Model activations for local training: one forward pass feeds every layer's dictionary.

`collect_activations` runs the model once under no_grad, keeps each needed hook's output
and stops the forward pass as soon as the last needed hook has fired. `ActivationBuffer`
turns token rows into a shuffled pool of (non-BOS, non-special) token activations; the
content of refill r and its shuffle are pure functions of (seed, r), so the batch of any
step can be rebuilt after a resume without replaying earlier steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from training.data import TokenData, sample_indices, token_mask


class _StopForward(Exception):
    """Raised inside the last needed hook to skip the rest of the model."""


def collect_activations(
    model: Any, tokens: Int[Tensor, "batch pos"], hooks: Sequence[str]
) -> dict[str, Float[Tensor, "batch pos d"]]:
    """Outputs of `hooks` for `tokens` from one no-grad forward pass, stopped early.

    Head-split activations (e.g. attn.hook_z) are flattened to [batch, pos, heads * d_head].
    """
    needed = set(hooks)
    captured: dict[str, Tensor] = {}

    def make(name: str):
        def hook(act: Tensor, hook: Any) -> Tensor:
            captured[name] = act.detach().flatten(2) if act.dim() > 3 else act.detach()
            if len(captured) == len(needed):
                raise _StopForward
            return act

        return hook

    device = torch.device(model.cfg.device)
    with torch.no_grad():
        try:
            model.run_with_hooks(tokens.to(device), fwd_hooks=[(h, make(h)) for h in needed])
        except _StopForward:
            pass
    missing = needed - set(captured)
    if missing:
        raise RuntimeError(f"hooks {sorted(missing)} did not fire during the forward pass")
    return captured


class ActivationBuffer:
    """Shuffled token activations of several hooks, refilled `buffer_tokens` at a time.

    Batch j of refill r holds the same tokens for every hook, so a transcoder's input and
    target (and all layers) stay aligned.
    """

    def __init__(
        self,
        model: Any,
        data: TokenData,
        hooks: Sequence[str],
        batch_tokens: int,
        buffer_tokens: int,
        seed: int,
        model_batch: int = 32,
    ):
        self.model, self.data, self.hooks = model, data, list(hooks)
        self.batch_tokens = int(batch_tokens)
        self.batches_per_refill = max(1, int(buffer_tokens) // self.batch_tokens)
        self.seed, self.model_batch = int(seed), int(model_batch)
        ctx = data.train.shape[1]
        tokens_needed = self.batches_per_refill * self.batch_tokens
        self.rows_per_refill = -(-tokens_needed // (ctx - 1))
        self._refill_index: int | None = None
        self._pool: dict[str, Tensor] = {}
        self._perm: Tensor | None = None

    def _refill(self, r: int) -> None:
        rows = sample_indices(
            self.data.train.shape[0], r * self.rows_per_refill, self.rows_per_refill, self.seed
        )
        tokens = self.data.train[rows]
        parts: dict[str, list[Tensor]] = {h: [] for h in self.hooks}
        for start in range(0, tokens.shape[0], self.model_batch):
            chunk = tokens[start : start + self.model_batch]
            acts = collect_activations(self.model, chunk, self.hooks)
            mask = token_mask(chunk, self.data.special_ids).to(next(iter(acts.values())).device)
            for h in self.hooks:
                parts[h].append(acts[h][mask])
        self._pool = {h: torch.cat(parts[h]) for h in self.hooks}
        n = next(iter(self._pool.values())).shape[0]
        gen = torch.Generator().manual_seed(self.seed * 7919 + r + 1)
        self._perm = torch.randperm(n, generator=gen)
        self._refill_index = r

    def batch(self, step: int) -> dict[str, Float[Tensor, "tokens d"]]:
        """Activations of the batch of `step` (a pure function of seed and step)."""
        r, j = divmod(int(step), self.batches_per_refill)
        if self._refill_index != r:
            self._refill(r)
        assert self._perm is not None
        n = self._perm.shape[0]
        # wrap around when masking left fewer tokens than the refill promised
        idx = self._perm[(torch.arange(self.batch_tokens) + j * self.batch_tokens) % n]
        idx = idx.to(next(iter(self._pool.values())).device)
        return {h: pool[idx] for h, pool in self._pool.items()}
