"""spliced_loss's intervals over sequences: the documented bootstrap of each sequence's own
figures, no spread where every sequence is the same, none from one sequence."""

from __future__ import annotations

import numpy as np
import torch

from replacement.dictionary import Dictionary
from replacement.loss import spliced_loss

TOKENS = torch.randint(1, 300, (5, 12), generator=torch.Generator().manual_seed(7))


def _noisy(layer: int) -> Dictionary:
    """A random dictionary at mlp_out: a CE increase that differs from sequence to sequence."""
    torch.manual_seed(layer)
    return Dictionary(
        32, 32, 16, f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
    )


def _hand_interval(stat, n: int) -> list[float]:
    """The documented resampling (replacement.loss_intervals): seed 0, 100 draws at a time."""
    rng, values = np.random.default_rng(0), []
    for _ in range(10):
        for idx in rng.integers(0, n, size=(100, n)):
            values.append(stat(idx))
    return list(np.percentile(values, [2.5, 97.5]))


def _statistics(ce, kl, zero, orig, n) -> dict:
    """Each interval's figure on the sequences `i` of a resample, from per-sequence sums."""
    return {
        "ce_increase_interval": lambda i: (ce[i].sum() - orig[i].sum()) / n[i].sum(),
        "kl_interval": lambda i: kl[i].sum() / n[i].sum(),
        "recovered_zero_interval": lambda i: (
            (zero[i].sum() - ce[i].sum()) / (zero[i].sum() - orig[i].sum())
        ),
    }


def test_intervals_are_the_bootstrap_of_each_sequences_own_figures(tiny_gpt2):
    units = [_noisy(0), _noisy(1)]
    report = spliced_loss(tiny_gpt2, units, TOKENS, batch_size=2, verbose=False)
    # each sequence alone: its CE sums and counts, measured by separate evaluations
    alone = [spliced_loss(tiny_gpt2, units, TOKENS[i : i + 1], verbose=False) for i in range(5)]
    n = np.array([r.n_predictions for r in alone], float)
    orig = np.array([r.ce_original for r in alone]) * n
    for name in [u.out_hook for u in units] + ["all"]:
        ce = np.array([r.row(name).ce_spliced for r in alone]) * n
        zero = np.array([r.row(name).ce_zero_ablated for r in alone]) * n
        kl = np.array([r.row(name).kl for r in alone]) * n
        row = report.row(name)
        expected = _statistics(ce, kl, zero, orig, n)
        for key, stat in expected.items():
            got = getattr(row, key)
            assert np.allclose(got, _hand_interval(stat, 5), rtol=0, atol=1e-5), (name, key)
        lo, hi = row.ce_increase_interval
        assert lo < row.ce_increase < hi and hi - lo > 1e-3  # the sequences do differ


def test_identical_sequences_give_an_interval_of_no_width(tiny_gpt2):
    same = TOKENS[:1].repeat(4, 1)
    row = spliced_loss(tiny_gpt2, [_noisy(0)], same, verbose=False).all
    for key in ("ce_increase", "kl", "recovered_zero", "recovered_mean"):
        lo, hi = getattr(row, f"{key}_interval")
        assert abs(lo - getattr(row, key)) < 1e-9 and abs(hi - getattr(row, key)) < 1e-9


def test_one_sequence_gives_no_interval_and_the_table_says_so(tiny_gpt2):
    report = spliced_loss(tiny_gpt2, [_noisy(0)], TOKENS[:1], verbose=False)
    assert report.all.ce_increase_interval is None and report.all.recovered_zero_interval is None
    assert "dCE 95%" in str(report) and report.to_dict()["rows"][0]["kl_interval"] is None
