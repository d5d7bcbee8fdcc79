"""Adjacency rows of a prompt attribution graph by backward passes through the frozen
replacement model: the prompt repeated along the batch, each batch row reading out a different
target (a logit direction or a feature's encoder), one backward pass for all of them."""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuits.attribution.replacement_forward import FINAL_HOOK, frozen_forward
from circuits.attribution.sources import PromptSources
from replacement.errors import SparseCircuitsError


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early."""


def _stop_forward(act: Tensor, hook: Any) -> Tensor:
    raise _StopForward


class RowEngine:
    """Computes adjacency rows by backward passes over a batch of repeated prompts.

    A context manager: the frozen forward (and its autograd graph) is built on entry and
    released on exit.
    """

    def __init__(self, model, dictionaries, tokens, sources: PromptSources, batch_size: int):
        self.model, self.dictionaries, self.sources = model, dictionaries, sources
        self.tokens, self.batch_size = tokens, batch_size
        self._state = None

    def __enter__(self) -> RowEngine:
        # hooks are installed only for this forward; the autograd graph outlives them. The
        # forward stops after the final norm: batch x pos x vocab logits are never needed.
        stop = [(FINAL_HOOK, _stop_forward)]
        with frozen_forward(self.model, self.dictionaries, stop) as state, torch.enable_grad():
            try:
                self.model(self.tokens.unsqueeze(0).expand(self.batch_size, -1))
            except _StopForward:
                pass
        if state.final is None:
            raise SparseCircuitsError(f"the model has no {FINAL_HOOK} hook")
        self._state = state
        return self

    def __exit__(self, *exc: object) -> None:
        self._state = None

    def _rows(self, objective_fn, n: int) -> Float[Tensor, "n n_src"]:
        state = self._state
        outputs = [state.outputs[d.out_hook] for d in self.dictionaries]
        with torch.enable_grad():
            objective = objective_fn(state, n)
            grads = torch.autograd.grad(
                objective, [*outputs, state.embed], retain_graph=True, allow_unused=True
            )
        return self.sources.rows_from_grads(grads[:-1], grads[-1], n)

    def rows_for_logits(self, directions: Float[Tensor, "n d_model"]) -> Float[Tensor, "n n_src"]:
        """Each source's direct effect on the final norm's output at the last position, read
        along each direction (a logit's unembedding column): one backward pass per batch."""
        out = []
        for start in range(0, len(directions), self.batch_size):
            dirs = directions[start : start + self.batch_size].to(self.tokens.device)

            def objective(state, n, dirs=dirs):
                final = state.final[:n, -1]
                return (final * dirs.to(final.dtype)).sum()

            out.append(self._rows(objective, len(dirs)))
        return torch.cat(out)

    def rows_for_features(self, chosen: Int[Tensor, " n"]) -> Float[Tensor, "n n_src"]:
        """Each source's direct effect on each chosen feature's encoder readout (`chosen`
        indexes the prompt's active features): one backward pass per batch of features."""
        src = self.sources
        out = []
        for start in range(0, len(chosen), self.batch_size):
            idx = chosen[start : start + self.batch_size]

            def objective(state, n, idx=idx):
                total = 0.0
                rows = torch.arange(n, device=self.tokens.device)
                for k, d in enumerate(self.dictionaries):
                    mine = src.feat_dict[idx] == k
                    if not mine.any():
                        continue
                    readout = state.readouts[d.out_hook]
                    pos = src.feat_pos[idx][mine].to(readout.device)
                    enc = d.W_enc[:, src.feat_index[idx][mine].to(d.W_enc.device)].T
                    x = readout[rows[mine.to(rows.device)], pos]
                    total = total + (x * enc.to(x.dtype)).sum()
                return total

            out.append(self._rows(objective, len(idx)))
        return torch.cat(out)
