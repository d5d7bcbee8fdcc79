"""The streaming sums behind `spliced_loss`, kept per sequence, and the bootstrap intervals
over sequences that they give each row of its report (`replacement.loss_intervals`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from replacement.loss_intervals import RESAMPLES, percentile_interval, resampled_sums
from replacement.loss_report import SplicedLossReport, SplicedLossRow


class LocalSums:
    """Streaming local metrics of one dictionary (pooled over a CLT's layers), kept per
    sequence: the totals give the point figures, resampled sums their bootstrap intervals."""

    def __init__(self, n_features: int, device: torch.device):
        self.yhat2 = self.dot = 0.0
        self.fired = torch.zeros(n_features, dtype=torch.bool, device=device)
        # per batch: [rows, 4] sums of err2, y2, active features and tokens, plus each site's
        # [rows, d] sum of y and [rows] token count
        self._per_batch: list[Tensor] = []
        self._sum_y_per_batch: dict[int, list[Tensor]] = {}
        self._count_per_batch: dict[int, list[Tensor]] = {}

    def begin_batch(self, n_rows: int, device: torch.device) -> None:
        """Open the per-sequence sums of a batch of `n_rows` sequences."""
        self._per_batch.append(torch.zeros(n_rows, 4, dtype=torch.float64, device=device))

    def _site_sums(self, site: int, d: int) -> tuple[list[Tensor], list[Tensor]]:
        """A site's per-batch sums, with zeros for the batches it was not seen in."""
        sums = self._sum_y_per_batch.setdefault(site, [])
        counts = self._count_per_batch.setdefault(site, [])
        while len(counts) < len(self._per_batch):
            rows = self._per_batch[len(counts)].shape[0]
            sums.append(torch.zeros(rows, d, dtype=torch.float64))
            counts.append(torch.zeros(rows, dtype=torch.float64))
        return sums, counts

    def add(self, site: int, y: Tensor, y_hat: Tensor, rows: Tensor) -> None:
        """Add one site's masked targets and reconstructions [tokens, d]; `rows` gives each
        token's sequence in the current batch."""
        y, y_hat = y.double(), y_hat.double()
        self.yhat2 += float(y_hat.pow(2).sum())
        self.dot += float((y * y_hat).sum())
        per = self._per_batch[-1]
        n_rows = per.shape[0]
        per[:, 0] += torch.bincount(rows, weights=(y - y_hat).pow(2).sum(-1), minlength=n_rows)
        per[:, 1] += torch.bincount(rows, weights=y.pow(2).sum(-1), minlength=n_rows)
        sum_y = torch.zeros(n_rows, y.shape[1], dtype=torch.float64, device=y.device)
        sum_y.index_add_(0, rows, y)
        sums, counts = self._site_sums(site, y.shape[1])
        sums[-1] += sum_y.cpu()
        counts[-1] += torch.bincount(rows, minlength=n_rows).to(torch.float64).cpu()

    def add_acts(
        self,
        token_rows: Tensor,
        feature_idx: Tensor,
        feature_rows: Tensor,
        offset: int = 0,
        new_tokens: bool = True,
    ) -> None:
        """Add the active features of masked tokens: `token_rows` gives each token's sequence
        in the batch, `feature_rows` each active feature's (new_tokens: count the tokens)."""
        per = self._per_batch[-1]
        n_rows = per.shape[0]
        per[:, 2] += torch.bincount(feature_rows, minlength=n_rows).to(per.dtype)
        if new_tokens:
            per[:, 3] += torch.bincount(token_rows, minlength=n_rows).to(per.dtype)
        self.fired[feature_idx + offset] = True

    def _columns(self) -> tuple[Float[np.ndarray, "sequences k"], list[int]]:
        """Each sequence's sums side by side, and each site's width (see `_fvu_l0`)."""
        columns, widths = [torch.cat(self._per_batch).cpu()], []
        for site in sorted(self._sum_y_per_batch):
            sums, counts = self._site_sums(site, self._sum_y_per_batch[site][0].shape[1])
            columns += [torch.cat(sums), torch.cat(counts)[:, None]]
            widths.append(sums[0].shape[1])
        return torch.cat(columns, 1).numpy(), widths

    @staticmethod
    def _fvu_l0(sums: Float[np.ndarray, "draws k"], widths: list[int]) -> tuple[np.ndarray, ...]:
        """FVU (the error over the variance around the draw's own mean, pooled over sites)
        and L0 of each row of summed columns."""
        err2, total_var, l0, n = sums[:, 0], sums[:, 1].copy(), sums[:, 2], sums[:, 3]
        at = 4
        for d in widths:
            total_var -= (sums[:, at : at + d] ** 2).sum(1) / sums[:, at + d]
            at += d + 1
        with np.errstate(divide="ignore", invalid="ignore"):
            fvu = np.where(total_var > 0, err2 / total_var, np.nan)
            return fvu, l0 / np.maximum(n, 1)

    def fill(self, row: SplicedLossRow) -> None:
        columns, widths = self._columns()
        fvu, l0 = self._fvu_l0(columns.sum(0, keepdims=True), widths)
        row.fvu, row.l0 = float(fvu[0]), float(l0[0])
        row.explained_variance = 1.0 - row.fvu
        row.dead_share = float((~self.fired).float().mean())
        row.shrinkage = self.yhat2 / self.dot if self.dot != 0 else float("nan")

    def resampled(self, resamples: int) -> tuple[np.ndarray, np.ndarray]:
        """FVU and L0 under `resamples` bootstrap draws of the sequences (the draws of
        `resampled_sums`, so paired with every loss figure of the report)."""
        columns, widths = self._columns()
        return self._fvu_l0(resampled_sums(columns, resamples), widths)


class LossSums:
    """Streaming sums of CE and KL over predictions, in total and per sequence."""

    def __init__(self):
        self.ce = self.kl = 0.0
        self.n = 0
        self._per_batch: list[Tensor] = []  # [rows, 3]: each sequence's CE, KL, predictions

    def add(
        self, logp: Tensor, targets: Tensor, logp_orig: Tensor | None, rows: Tensor, n_rows: int
    ) -> None:
        """Add a batch's predictions; `rows` gives each prediction's sequence in the batch."""
        ce = -logp.gather(-1, targets[:, None])[:, 0].double()
        self.ce += float(ce.sum())
        kl = torch.zeros_like(ce)
        if logp_orig is not None:
            kl = (logp_orig.exp() * (logp_orig - logp)).sum(-1).double()
            self.kl += float(kl.sum())
        self.n += targets.shape[0]
        per = torch.zeros(n_rows, 3, dtype=torch.float64, device=ce.device)
        per.index_add_(0, rows, torch.stack([ce, kl, torch.ones_like(ce)], -1))
        self._per_batch.append(per.cpu())

    @property
    def per_sequence(self) -> Float[np.ndarray, "sequences 3"]:
        """Each sequence's sums of CE and KL and its number of predictions."""
        return torch.cat(self._per_batch).numpy()

    @property
    def mean_ce(self) -> float:
        return self.ce / max(self.n, 1)

    @property
    def mean_kl(self) -> float:
        return self.kl / max(self.n, 1)


def add_loss_intervals(
    report: SplicedLossReport,
    orig: LossSums,
    spliced: dict[str, LossSums],
    ablated: dict[tuple[str, str], LossSums],
    ablations: Sequence[str],
) -> None:
    """Bootstrap intervals over sequences of every row's CE increase, KL and loss recovered."""
    rows = [row for row in report.rows if row.ce_spliced is not None]
    if report.n_sequences < 2 or not rows:
        return  # one sequence has no spread to resample
    base = orig.per_sequence
    columns: dict[Any, np.ndarray] = {"orig": base[:, 0], "n": base[:, 2]}
    for row in rows:
        per = spliced[row.name].per_sequence
        columns[(row.name, "ce")], columns[(row.name, "kl")] = per[:, 0], per[:, 1]
        for kind in ablations:
            columns[(row.name, kind)] = ablated[(row.name, kind)].per_sequence[:, 0]
    keys = list(columns)
    sums = resampled_sums(np.stack([columns[k] for k in keys], 1))
    col = {k: sums[:, i] for i, k in enumerate(keys)}
    with np.errstate(divide="ignore", invalid="ignore"):
        for row in rows:
            ce = col[(row.name, "ce")]
            row.ce_increase_interval = percentile_interval((ce - col["orig"]) / col["n"])
            row.kl_interval = percentile_interval(col[(row.name, "kl")] / col["n"])
            for kind in ablations:
                ce_abl = col[(row.name, kind)]
                recovered = (ce_abl - ce) / (ce_abl - col["orig"])
                setattr(row, f"recovered_{kind}_interval", percentile_interval(recovered))


def add_local_intervals(report: SplicedLossReport, locals_: dict[str, LocalSums]) -> None:
    """Bootstrap intervals over sequences of every dictionary's FVU and L0, and of their means
    over the dictionaries (the resamples of `add_loss_intervals`, so the figures are paired)."""
    if report.n_sequences < 2:
        return
    fvus, l0s = [], []
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, local in locals_.items():
            row = report.row(name)
            fvu, l0 = local.resampled(RESAMPLES)
            row.fvu_interval, row.l0_interval = percentile_interval(fvu), percentile_interval(l0)
            fvus.append(fvu)
            l0s.append(l0)
    report.mean_fvu_interval = percentile_interval(np.mean(fvus, 0))
    report.mean_l0_interval = percentile_interval(np.mean(l0s, 0))
