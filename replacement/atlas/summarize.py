"""Turn a finished `FeatureStream` into what an atlas stores: quantile bands and their examples,
a display histogram, and context windows quantised to bytes."""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float, Int, UInt8
from torch import Tensor

from replacement.atlas.stream import (
    BINS_PER_DECADE,
    LOG_LOW,
    N_LOG_BINS,
    Examples,
    FeatureStream,
)


class BandExamples(NamedTuple):
    """Examples per quantile band: [F, bands, per_band] (row -1 where the band has too few)."""

    value: Float[Tensor, "F bands per"]
    row: Int[Tensor, "F bands per"]
    pos: Int[Tensor, "F bands per"]
    window: Float[Tensor, "F bands per window"]


def _bin_upper_edges(n_features: int, max_act: Float[Tensor, " F"]) -> Float[Tensor, "F bins"]:
    """Upper edge of every fine log bin (the overflow bin ends at the feature's maximum)."""
    b = torch.arange(N_LOG_BINS, dtype=torch.float64)
    edges = (10.0 ** (LOG_LOW + b / BINS_PER_DECADE)).expand(n_features, -1).clone()
    edges[:, -1] = max_act.double()
    return torch.minimum(edges, max_act.double()[:, None])


def quantile_edges(stream: FeatureStream, n_bands: int) -> Float[Tensor, "F edges"]:
    """Band edges [0, q_1, ..., q_{n-1}, max] of each feature's non-zero activations.

    Quantiles come from the fine log histogram, so an inner edge is the upper edge of the bin
    where the quantile falls (within 1/24 decade of the exact quantile). A band is the interval
    (edge_b, edge_{b+1}].
    """
    F = stream.n_features
    hist = stream.log_hist.view(F, N_LOG_BINS)
    cdf = hist.cumsum(1).double()
    upper = _bin_upper_edges(F, stream.max)
    edges = [torch.zeros(F, dtype=torch.float64)]
    for q in range(1, n_bands):
        target = stream.count.double()[:, None] * q / n_bands
        at = torch.searchsorted(cdf.contiguous(), target.contiguous()).clamp(max=N_LOG_BINS - 1)
        edges.append(upper.gather(1, at)[:, 0])
    edges.append(stream.max.double())
    return torch.stack(edges, 1).cummax(1).values.float()


def display_histogram(stream: FeatureStream, n_bins: int) -> Float[Tensor, "F bins"]:
    """Share of each feature's firing tokens in `n_bins` equal bins over (0, max].

    Re-binned from the fine log bins by each bin's geometric centre, so a bar may hold counts
    from just across its edge (by at most 1/24 decade).
    """
    F = stream.n_features
    hist = stream.log_hist.view(F, N_LOG_BINS).double()
    b = torch.arange(N_LOG_BINS, dtype=torch.float64)
    centre = 10.0 ** (LOG_LOW + (b - 0.5) / BINS_PER_DECADE)
    centre = torch.minimum(centre.expand(F, -1), stream.max.double()[:, None])
    scale = stream.max.double().clamp_min(1e-30)[:, None]
    target = (centre / scale * n_bins).floor().long().clamp(0, n_bins - 1)
    out = torch.zeros(F, n_bins, dtype=torch.float64).scatter_add_(1, target, hist)
    return (out / stream.count.double().clamp_min(1)[:, None]).float()


def band_examples(
    stream: FeatureStream, edges: Float[Tensor, "F edges"], per_band: int
) -> BandExamples:
    """Up to `per_band` sampled examples in each quantile band, in random (sample) order."""
    sample = stream.sample  # slots sorted by random key: a uniform random order
    n_bands = edges.shape[1] - 1
    valid = sample.row >= 0
    inner = edges[:, 1:-1]  # [F, bands - 1]
    band = (sample.value[..., None] > inner[None]).sum(-1)  # [K, F]
    onehot = (band[..., None] == torch.arange(n_bands)) & valid[..., None]  # [K, F, bands]
    rank = onehot.long().cumsum(0) - 1
    K, F = sample.value.shape
    w = sample.window.shape[-1]
    value = torch.zeros(F, n_bands, per_band)
    row = torch.full((F, n_bands, per_band), -1, dtype=torch.long)
    pos = torch.zeros(F, n_bands, per_band, dtype=torch.long)
    window = torch.zeros(F, n_bands, per_band, w)
    for j in range(per_band):
        hit = onehot & (rank == j)  # [K, F, bands]
        has = hit.any(0)  # [F, bands]
        slot = hit.long().argmax(0)  # [F, bands]
        f = torch.arange(F)[:, None].expand(F, n_bands)
        value[..., j] = torch.where(has, sample.value[slot, f], 0.0)
        row[..., j] = torch.where(has, sample.row[slot, f], -1)
        pos[..., j] = torch.where(has, sample.pos[slot, f], 0)
        window[..., j, :] = torch.where(has[..., None], sample.window[slot, f], 0.0)
    return BandExamples(value, row, pos, window)


def quantise_windows(
    window: Float[Tensor, "... window"], max_act: Float[Tensor, " F"]
) -> UInt8[Tensor, "... window"]:
    """Window activations as bytes, 255 = the feature's maximum (`window` starts with F)."""
    shape = (-1,) + (1,) * (window.dim() - 1)
    scale = max_act.clamp_min(1e-30).view(shape)
    return (window / scale * 255).round().clamp(0, 255).to(torch.uint8)


def top_examples(stream: FeatureStream) -> Examples:
    """The top-N contexts as [F, N] (feature first), best first."""
    top = stream.top
    return Examples(top.value.T, top.row.T, top.pos.T, top.window.transpose(0, 1))
