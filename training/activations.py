"""Model activations for local training: one forward pass feeds every layer's dictionary.

`collect_activations` runs the model once under no_grad, keeps each needed hook's output
and stops the forward pass as soon as the last needed hook has fired. `ActivationBuffer`
turns token rows into a shuffled mixing pool of (non-BOS, non-special) token activations
in which every batch mixes tokens of several refills; the content of refill r, its split
and every phase's shuffle are pure functions of (seed, r), so the batch of any step can be
rebuilt after a resume without replaying earlier steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from training.data import TokenData, sample_indices, token_mask
from training.direct_forward import direct_forward


class _StopForward(Exception):
    """Raised inside the last needed hook to skip the rest of the model."""


def collect_activations(
    model: Any, tokens: Int[Tensor, "batch pos"], hooks: Sequence[str], direct_ok: bool = True
) -> dict[str, Float[Tensor, "batch pos d"]]:
    """Outputs of `hooks` for `tokens` from one no-grad forward pass, stopped early.

    Runs the bridge's plain Hugging Face twin where it gives the same activations
    (`training.direct_forward`, about twice as fast); `direct_ok=False` forces the bridge.

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
    tokens = tokens.to(device)

    def through_bridge(rows: Tensor) -> dict[str, Tensor]:
        captured.clear()
        with torch.no_grad():
            try:
                model.run_with_hooks(rows, fwd_hooks=[(h, make(h)) for h in needed])
            except _StopForward:
                pass
        return dict(captured)

    direct = direct_forward(model, sorted(needed), through_bridge, tokens) if direct_ok else None
    out = direct(tokens) if direct is not None else through_bridge(tokens)
    missing = needed - set(out)
    if missing:
        raise RuntimeError(f"hooks {sorted(missing)} did not fire during the forward pass")
    return out


class ActivationBuffer:
    """A shuffled mixing pool of token activations of several hooks.

    The pool holds `mix` refills of `buffer_tokens / mix` tokens each (rows read in the
    order of `sample_indices`). Each refill is split by its own shuffle into `mix` parts, and
    serving goes in phases of one refill's worth of batches: phase p serves one part of each
    refill p, ..., p + mix - 1 (part p + mix - 1 - q of refill q), shuffled together. Then
    refill p leaves the pool and refill p + mix comes in. So every batch mixes tokens of
    `mix` refills, consecutive phases share refills, and each token of refill q >= mix - 1
    is served exactly once (the first fill, like SAELens's, reads `mix` refills at once and
    never serves the first parts of refills 0..mix-2). This is a fixed-age version of
    SAELens's pool (refilled when half empty, reshuffled, a random half kept): a token waits
    at most `mix` phases, so resuming at any step rebuilds at most `mix` refills.

    Batch j of a phase holds the same tokens for every hook, so a transcoder's input and
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
        model_batch: int = 64,
        mix: int = 2,
    ):
        self.model, self.data, self.hooks = model, data, list(hooks)
        self.batch_tokens, self.mix = int(batch_tokens), max(1, int(mix))
        self.batches_per_refill = max(1, int(buffer_tokens) // (self.mix * self.batch_tokens))
        # 64 rows a forward pass: the bridge runs many small ops, and with two threads on a
        # busy CPU 32-row passes took twice as long per token (equal on one thread)
        self.seed, self.model_batch = int(seed), int(model_batch)
        ctx = data.train.shape[1]
        tokens_needed = self.batches_per_refill * self.batch_tokens
        self.rows_per_refill = -(-tokens_needed // (ctx - 1))
        # the pool: `mix` slots of one refill each (refill q in slot q % mix), one tensor a hook
        self.slot_tokens = self.rows_per_refill * (ctx - 1)
        self._pool: dict[str, Tensor] = {}
        self._held: list[tuple[int, Tensor] | None] = [None] * self.mix  # (refill, its shuffle)
        self._phase: int | None = None
        self._order = torch.zeros(0, dtype=torch.long)

    def _refill(self, r: int) -> None:
        """Read refill r into its slot: its (masked) tokens' activations and a shuffle of them."""
        rows = sample_indices(
            self.data.train.shape[0], r * self.rows_per_refill, self.rows_per_refill, self.seed
        )
        tokens = self.data.train[rows]
        base, n = (r % self.mix) * self.slot_tokens, 0
        for start in range(0, tokens.shape[0], self.model_batch):
            chunk = tokens[start : start + self.model_batch]
            acts = collect_activations(self.model, chunk, self.hooks)
            mask = token_mask(chunk, self.data.special_ids).to(next(iter(acts.values())).device)
            for h in self.hooks:
                kept = acts[h][mask]
                if h not in self._pool:
                    size = (self.mix * self.slot_tokens, kept.shape[-1])
                    self._pool[h] = kept.new_empty(size)
                self._pool[h][base + n : base + n + kept.shape[0]] = kept
            n += int(mask.sum())
        gen = torch.Generator().manual_seed(self.seed * 7919 + r + 1)
        self._held[r % self.mix] = (r, torch.randperm(n, generator=gen))

    def _start_phase(self, p: int) -> None:
        """Read the refills of phase p not yet held and draw its serving order."""
        parts = []
        for q in range(p, p + self.mix):
            held = self._held[q % self.mix]
            if held is None or held[0] != q:
                self._refill(q)
            perm = self._held[q % self.mix][1]
            part = p + self.mix - 1 - q  # refill q's parts come due one a phase, in order
            lo, hi = part * perm.numel() // self.mix, (part + 1) * perm.numel() // self.mix
            parts.append(perm[lo:hi] + (q % self.mix) * self.slot_tokens)
        order = torch.cat(parts)
        gen = torch.Generator().manual_seed(self.seed * 7919 + p + 1 + (1 << 40))
        self._order = order[torch.randperm(order.numel(), generator=gen)]
        self._order = self._order.to(next(iter(self._pool.values())).device)
        self._phase = p

    def batch(self, step: int) -> dict[str, Float[Tensor, "tokens d"]]:
        """Activations of the batch of `step` (a pure function of seed and step)."""
        p, j = divmod(int(step), self.batches_per_refill)
        if self._phase != p:
            self._start_phase(p)
        n = self._order.numel()
        # wrap around when masking left fewer tokens than the refills promised
        take = torch.arange(self.batch_tokens, device=self._order.device) + j * self.batch_tokens
        idx = self._order[take % n]
        return {h: pool[idx] for h, pool in self._pool.items()}
