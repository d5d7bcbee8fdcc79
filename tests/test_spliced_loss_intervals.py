"""spliced_loss's intervals over sequences: the documented bootstrap of each sequence's own
figures (losses from evaluating each sequence alone, FVU and L0 from the model's activations), no spread where every sequence is the same, none from one sequence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from replacement.crosslayer import CrossLayerTranscoder
from replacement.dictionary import Dictionary
from replacement.loss import spliced_loss

TOKENS = torch.randint(1, 300, (5, 12), generator=torch.Generator().manual_seed(7))


def _noisy(layer: int) -> Dictionary:
    """A random dictionary at mlp_out: a CE increase that differs from sequence to sequence."""
    torch.manual_seed(layer)
    return Dictionary(
        32, 32, 16, f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
    )


def _random(layer: int) -> Dictionary:
    """A random ReLU transcoder whose features fire on some tokens and not others."""
    d = _noisy(layer)
    g = torch.Generator().manual_seed(10 + layer)
    with torch.no_grad():
        d.W_enc.copy_(torch.randn(32, 16, generator=g))
        d.b_enc.fill_(-1.0)
        d.W_dec.copy_(1e-3 * torch.randn(16, 32, generator=g))
    return d


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
    for key in ("ce_increase", "kl", "recovered_zero", "recovered_mean", "fvu", "l0"):
        lo, hi = getattr(row, f"{key}_interval")
        assert abs(lo - getattr(row, key)) < 1e-9 and abs(hi - getattr(row, key)) < 1e-9


def test_one_sequence_gives_no_interval_and_the_table_says_so(tiny_gpt2):
    report = spliced_loss(tiny_gpt2, [_noisy(0)], TOKENS[:1], verbose=False)
    assert report.all.ce_increase_interval is None and report.all.recovered_zero_interval is None
    assert report.all.fvu_interval is None and report.mean_fvu_interval is None
    assert "dCE 95%" in str(report) and report.to_dict()["rows"][0]["kl_interval"] is None


@torch.no_grad()
def _local_sums(model, unit: Dictionary | CrossLayerTranscoder) -> tuple:
    """Each sequence's local sums, from the model's own activations and the dictionary's
    dense forward (a CLT's pooled over its layers): error and target squares, each site's
    target sum and count, active features and tokens."""
    clt = isinstance(unit, CrossLayerTranscoder)
    layers = range(unit.n_layers) if clt else [0]
    ins = [unit.in_hook(i) for i in layers] if clt else [unit.in_hook]
    outs = [unit.out_hook(i) for i in layers] if clt else [unit.out_hook]
    acts = {}
    hooks = [(h, lambda a, hook, h=h: acts.setdefault(h, a)) for h in {*ins, *outs}]
    model.run_with_hooks(TOKENS, fwd_hooks=hooks)
    xs = [acts[h][:, 1:] for h in ins]  # position 0 (BOS) is left out
    ys = [acts[h][:, 1:].double() for h in outs]
    y_hats = [y.double() for y in unit(xs)] if clt else [unit(xs[0]).double()]
    code = unit.encode_layer if clt else lambda i, x: unit.encode(x)
    codes = [code(i, x) for i, x in zip(layers, xs, strict=True)]
    err2 = sum((y - y_hat).pow(2).sum((1, 2)) for y, y_hat in zip(ys, y_hats, strict=True)).numpy()
    y2 = sum(y.pow(2).sum((1, 2)) for y in ys).numpy()
    sum_y = [y.sum(1).numpy() for y in ys]
    count = np.full(len(err2), ys[0].shape[1], float)
    active = sum((c != 0).sum((1, 2)).double() for c in codes).numpy()
    return err2, y2, sum_y, count, active


def _fvu(sums, i) -> float:
    err2, y2, sum_y, count, _ = sums
    centred = sum((s[i].sum(0) ** 2).sum() / count[i].sum() for s in sum_y)
    return err2[i].sum() / (y2[i].sum() - centred)


def _clt() -> CrossLayerTranscoder:
    """A random two-layer CLT (mlp_out), its features firing on some tokens only."""
    torch.manual_seed(3)
    clt = CrossLayerTranscoder(2, 32, [40, 24], "relu")
    with torch.no_grad():
        for p in clt.parameters():
            p.normal_(0, 0.2)
    return clt


@pytest.mark.parametrize("kind", ["dictionaries", "crosslayer"])
def test_fvu_and_l0_intervals_are_the_bootstrap_of_each_sequences_sums(tiny_gpt2, kind):
    units = [_random(0), _random(1)] if kind == "dictionaries" else [_clt()]
    report = spliced_loss(tiny_gpt2, units, TOKENS, batch_size=2, verbose=False)
    sums = [_local_sums(tiny_gpt2, u) for u in units]
    for row, s in zip(report.rows, sums, strict=False):  # the dictionaries' rows come first
        assert np.isclose(row.l0, s[4].sum() / s[3].sum(), rtol=1e-6)
        assert np.isclose(row.fvu, _fvu(s, np.arange(5)), rtol=1e-5)  # the point figure agrees
        fvu = _hand_interval(lambda i, s=s: _fvu(s, i), 5)
        l0 = _hand_interval(lambda i, s=s: s[4][i].sum() / s[3][i].sum(), 5)
        assert np.allclose(row.fvu_interval, fvu, rtol=1e-5, atol=1e-7), row.name
        assert np.allclose(row.l0_interval, l0, rtol=1e-5, atol=1e-7), row.name
        for lo, hi in (row.fvu_interval, row.l0_interval):
            assert hi - lo > 1e-3  # the sequences do differ
    # the mean over the dictionaries is resampled jointly (paired), not averaged bound by bound
    mean_fvu = _hand_interval(lambda i: np.mean([_fvu(s, i) for s in sums]), 5)
    assert np.allclose(report.mean_fvu_interval, mean_fvu, rtol=1e-5, atol=1e-7)
    mean_l0 = _hand_interval(lambda i: np.mean([s[4][i].sum() / s[3][i].sum() for s in sums]), 5)
    assert np.allclose(report.mean_l0_interval, mean_l0, rtol=1e-5, atol=1e-7)
