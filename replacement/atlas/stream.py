"""Per-feature statistics of one dictionary, accumulated batch by batch in bounded memory.

`FeatureStream.update` takes the sparse activations of one batch of token rows and keeps:

- firing count, activation sum and maximum per feature;
- a histogram of the non-zero activations in fine log-spaced bins (re-binned at the end);
- the top-N rows by the feature's maximum in the row, with the position of that maximum and
  the activations in a window around it: the batch's per-row maxima go through `torch.topk`
  and are merged with the running top-N by one more `topk` over the concatenation;
- a uniform random sample of the tokens where the feature fires (bottom-k of random keys,
  merged the same way), from which the quantile-band examples are drawn at the end.

State is O(F * (N + K) * window) whatever the number of tokens; nothing is a Python heap.
Position 0 of every row (BOS) is left out of every statistic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

LOG_LOW, LOG_HIGH, BINS_PER_DECADE = -5, 5, 24
"""Fine histogram: bins of 1/24 decade from 1e-5 to 1e5, plus one bin below and one above."""
N_LOG_BINS = (LOG_HIGH - LOG_LOW) * BINS_PER_DECADE + 2


@dataclass
class StreamSettings:
    """How much of each feature the pass keeps."""

    n_top: int = 16
    """Top-activating contexts kept per feature."""
    n_samples: int = 32
    """Uniform sample of firing tokens per feature (the pool of quantile-band examples)."""
    window_before: int = 12
    """Tokens shown before the maximum of a context."""
    window_after: int = 3
    """Tokens shown after it."""
    seed: int = 0
    """Seed of the random sample."""

    @property
    def window(self) -> int:
        """Tokens in a context window."""
        return self.window_before + 1 + self.window_after


@dataclass
class Examples:
    """Contexts of one feature set: [slots, F] references and [slots, F, window] activations."""

    value: Float[Tensor, "slots F"]
    """Activation at the context's centre (0 where the slot is empty)."""
    row: Int[Tensor, "slots F"]
    """Corpus row of the context (-1 where empty)."""
    pos: Int[Tensor, "slots F"]
    """Position of the centre in its row."""
    window: Float[Tensor, "slots F window"]
    """The feature's activation on each token of the window."""


def _empty_examples(slots: int, n_features: int, window: int) -> Examples:
    return Examples(
        value=torch.zeros(slots, n_features),
        row=torch.full((slots, n_features), -1, dtype=torch.long),
        pos=torch.zeros(slots, n_features, dtype=torch.long),
        window=torch.zeros(slots, n_features, window),
    )


class _BatchLookup:
    """Activation of (row, position, feature) in one batch, by binary search in sorted keys."""

    def __init__(self, row, pos, feat, vals, n_pos: int, n_features: int):
        keys = (row * n_pos + pos) * n_features + feat
        self.keys, order = keys.sort()
        self.vals = vals[order]
        self.n_pos, self.n_features = n_pos, n_features

    def windows(self, row, pos, feat, offsets) -> Float[Tensor, "m window"]:
        q = pos[:, None] + offsets[None, :]
        valid = (q >= 1) & (q < self.n_pos)
        wanted = (row[:, None] * self.n_pos + q.clamp(0, self.n_pos - 1)) * self.n_features
        wanted = wanted + feat[:, None]
        if self.keys.numel() == 0:
            return torch.zeros(q.shape)
        at = torch.searchsorted(self.keys, wanted).clamp(max=self.keys.numel() - 1)
        hit = valid & (self.keys[at] == wanted)
        return torch.where(hit, self.vals[at], 0.0)


class FeatureStream:
    """Running statistics of the `n_features` features of one dictionary."""

    def __init__(self, n_features: int, settings: StreamSettings, seed_offset: int = 0):
        self.n_features, self.settings = n_features, settings
        self.count = torch.zeros(n_features, dtype=torch.long)
        self.total = torch.zeros(n_features, dtype=torch.float64)
        self.max = torch.zeros(n_features)
        self.log_hist = torch.zeros(n_features * N_LOG_BINS, dtype=torch.long)
        self.n_tokens = 0
        w = settings.window
        self.top = _empty_examples(settings.n_top, n_features, w)
        self.sample = _empty_examples(settings.n_samples, n_features, w)
        self.sample_key = torch.full((settings.n_samples, n_features), 2.0)
        self.offsets = torch.arange(-settings.window_before, settings.window_after + 1)
        self.generator = torch.Generator().manual_seed(settings.seed * 7919 + seed_offset)

    @torch.no_grad()
    def update(
        self,
        token_idx: Int[Tensor, " nnz"],
        feature_idx: Int[Tensor, " nnz"],
        values: Float[Tensor, " nnz"],
        n_rows: int,
        n_pos: int,
        first_row: int,
    ) -> None:
        """Add one batch: non-zeros of `n_rows` rows of `n_pos` tokens (token = row * n_pos + pos).

        Only positive activations count (every activation of this project is >= 0); position 0
        is skipped. `first_row` is the corpus index of the batch's first row.
        """
        F = self.n_features
        row, pos = token_idx // n_pos, token_idx % n_pos
        keep = (pos > 0) & (values > 0)
        row, pos, feat, vals = row[keep], pos[keep], feature_idx[keep], values[keep].float()
        self.n_tokens += n_rows * (n_pos - 1)
        self.count += torch.bincount(feat, minlength=F)
        self.total += torch.bincount(feat, weights=vals.double(), minlength=F)
        self.max = self.max.scatter_reduce(0, feat, vals, "amax")
        bins = ((vals.log10() - LOG_LOW) * BINS_PER_DECADE).floor().long() + 1
        bins = bins.clamp(0, N_LOG_BINS - 1)
        self.log_hist += torch.bincount(feat * N_LOG_BINS + bins, minlength=F * N_LOG_BINS)
        lookup = _BatchLookup(row, pos, feat, vals, n_pos, F)
        self._update_top(lookup, row, pos, feat, vals, n_rows, first_row)
        self._update_sample(lookup, row, pos, feat, vals, first_row)

    def _merge(self, kept: Examples, cand: Examples, scores, cand_scores, slots, largest):
        both = torch.cat([scores, cand_scores])
        best, idx = both.topk(slots, dim=0, largest=largest)
        merged = Examples(
            value=torch.cat([kept.value, cand.value]).gather(0, idx),
            row=torch.cat([kept.row, cand.row]).gather(0, idx),
            pos=torch.cat([kept.pos, cand.pos]).gather(0, idx),
            window=torch.cat([kept.window, cand.window]).gather(
                0, idx[..., None].expand(-1, -1, kept.window.shape[-1])
            ),
        )
        return merged, best

    def _candidates(self, lookup, take, row, pos, feat_grid, value, first_row) -> Examples:
        """Examples for the slots in `take` (others empty), windows looked up in the batch."""
        cand = _empty_examples(value.shape[0], self.n_features, self.settings.window)
        cand.value = torch.where(take, value, 0.0)
        cand.row = torch.where(take, row + first_row, -1)
        cand.pos = torch.where(take, pos, 0)
        if take.any():
            cand.window[take] = lookup.windows(row[take], pos[take], feat_grid[take], self.offsets)
        return cand

    def _update_top(self, lookup, row, pos, feat, vals, n_rows, first_row) -> None:
        F, n_top = self.n_features, self.settings.n_top
        cell = row * F + feat
        row_max = torch.zeros(n_rows * F).scatter_reduce(0, cell, vals, "amax")
        at_max = vals == row_max[cell]
        # the first position of the row's maximum (deterministic under ties)
        arg = torch.full((n_rows * F,), 1 << 30, dtype=torch.long)
        arg = arg.scatter_reduce(0, cell[at_max], pos[at_max], "amin")
        row_max, arg = row_max.view(n_rows, F), arg.view(n_rows, F)
        n = min(n_top, n_rows)
        cand_val, cand_row = row_max.topk(n, dim=0)
        cand_pos = arg.gather(0, cand_row)
        # only rows that beat the current N-th best need their windows looked up
        take = (cand_val > 0) & (cand_val > self.top.value[-1])
        feat_grid = torch.arange(F).expand(n, F)
        cand = self._candidates(lookup, take, cand_row, cand_pos, feat_grid, cand_val, first_row)
        self.top, _ = self._merge(self.top, cand, self.top.value, cand.value, n_top, True)

    def _update_sample(self, lookup, row, pos, feat, vals, first_row) -> None:
        F, k = self.n_features, self.settings.n_samples
        if feat.numel() == 0:
            return
        key = torch.rand(feat.numel(), generator=self.generator)
        order = (feat.double() + key.double()).argsort()
        f_sorted = feat[order]
        counts = torch.bincount(feat, minlength=F)
        rank = torch.arange(feat.numel()) - (counts.cumsum(0) - counts)[f_sorted]
        first = rank < k
        pick, slot, f_pick = order[first], rank[first], f_sorted[first]
        cand_key = torch.full((k, F), 2.0)
        cand_key[slot, f_pick] = key[pick]
        grid = {}
        for name, src in (("row", row), ("pos", pos)):
            grid[name] = torch.zeros(k, F, dtype=torch.long)
            grid[name][slot, f_pick] = src[pick]
        value = torch.zeros(k, F)
        value[slot, f_pick] = vals[pick]
        take = cand_key < self.sample_key[-1]
        take &= cand_key < 2.0
        feat_grid = torch.arange(F).expand(k, F)
        cand = self._candidates(lookup, take, grid["row"], grid["pos"], feat_grid, value, first_row)
        cand_key = torch.where(take, cand_key, 2.0)
        self.sample, self.sample_key = self._merge(
            self.sample, cand, self.sample_key, cand_key, k, False
        )
