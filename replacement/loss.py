"""Spliced-model loss: how much of the model's next-token loss survives replacing sites by dictionaries.

For each dictionary alone and for all of them together, `spliced_loss` reports the CE of the
spliced model, its increase over the original, KL(p_orig || p_spliced), and the fraction of
loss recovered against zero- and mean-ablating the same sites:

    recovered = (CE_ablated - CE_spliced) / (CE_ablated - CE_original)

plus the local metrics of each dictionary on the original activations: FVU, explained
variance, L0, share of dead features and shrinkage gamma = E||y_hat||^2 / E<y, y_hat>.
CE increase, KL, loss recovered, FVU and L0 come with 95% bootstrap intervals over sequences
(`replacement.loss_intervals`).

Position 0 (BOS) is excluded everywhere: its activations from the local metrics and the
prediction made at position 0 from the losses. Padding of ragged text is excluded likewise.
By default (`keep_bos=True`, as in `splice`) position 0 also keeps the model's own activation
in the spliced and in the ablated passes, so "recovered" measures the dictionaries on the
positions they were trained for; `keep_bos=False` splices and ablates BOS as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from replacement.crosslayer import CrossLayerTranscoder
from replacement.dictionary import Dictionary
from replacement.errors import ShapeError, SparseCircuitsError
from replacement.loss_intervals import RESAMPLES, percentile_interval, resampled_sums
from replacement.model import to_tokens
from replacement.splice import (
    _flat,
    _layer_views,
    _split_crosslayer,
    check_compatible,
    keep_first_position,
    splice,
)

Unit = Dictionary | CrossLayerTranscoder
ABLATIONS = ("zero", "mean")
CONVENTIONS = ("sparse-circuits", "saelens")


# ---- results ------------------------------------------------------------------------------------
@dataclass
class SplicedLossRow:
    """Figures of one dictionary spliced alone, or of all dictionaries together (name "all")."""

    name: str
    """The dictionary's out_hook (a CLT: `clt:<first>..<last>`), or "all"."""
    hooks: list[str]
    """The hooks this row replaces."""
    ce_spliced: float | None = None
    """Mean CE of the spliced model (None when this row's spliced pass was not run)."""
    ce_increase: float | None = None
    """ce_spliced - ce_original."""
    ce_increase_interval: list[float] | None = None
    """95% bootstrap interval of ce_increase over sequences (`replacement.loss_intervals`;
    None with one sequence)."""
    kl: float | None = None
    """Mean over tokens of KL(p_original || p_spliced), in nats."""
    kl_interval: list[float] | None = None
    """95% bootstrap interval of kl over sequences."""
    ce_zero_ablated: float | None = None
    """Mean CE with the same hooks set to zero."""
    ce_mean_ablated: float | None = None
    """Mean CE with the same hooks set to their mean over the evaluated tokens."""
    recovered_zero: float | None = None
    """Fraction of loss recovered against zero ablation."""
    recovered_mean: float | None = None
    """Fraction of loss recovered against mean ablation."""
    recovered_zero_interval: list[float] | None = None
    """95% bootstrap interval of recovered_zero over sequences (the same resamples as every
    other interval of the report, so differences between rows are paired)."""
    recovered_mean_interval: list[float] | None = None
    """95% bootstrap interval of recovered_mean over sequences."""
    fvu: float | None = None
    """Fraction of variance unexplained on the original activations (None for "all")."""
    fvu_interval: list[float] | None = None
    """95% bootstrap interval of fvu over sequences (each resample's FVU from its own sums,
    the variance around its own mean)."""
    explained_variance: float | None = None
    """1 - FVU."""
    l0: float | None = None
    """Mean number of active features per token (summed over a CLT's layers)."""
    l0_interval: list[float] | None = None
    """95% bootstrap interval of l0 over sequences."""
    dead_share: float | None = None
    """Share of features that never fired on the evaluated tokens."""
    shrinkage: float | None = None
    """E||y_hat||^2 / E<y, y_hat>; 1 means no shrinkage."""
    saelens: dict[str, float] | None = None
    """With `conventions="saelens"`: SAELens' `run_evals` metrics under SAELens' names."""


@dataclass
class SplicedLossReport:
    """Result of `spliced_loss`: the original CE and one row per dictionary plus "all"."""

    ce_original: float
    """Mean CE of the unspliced model on the evaluated predictions."""
    n_predictions: int
    """Number of next-token predictions evaluated (position 0 and padding excluded)."""
    n_sequences: int
    """Number of sequences (after chunking text to ctx_len)."""
    keep_bos: bool = True
    """Whether position 0 kept the model's own activation in the spliced and ablated passes."""
    rows: list[SplicedLossRow] = field(default_factory=list)
    """Per-dictionary rows, then "all" when there are several dictionaries."""
    mean_fvu_interval: list[float] | None = None
    """95% bootstrap interval of the mean FVU over the dictionaries' rows (the same resamples
    as every row's intervals)."""
    mean_l0_interval: list[float] | None = None
    """95% bootstrap interval of the mean L0 over the dictionaries' rows."""

    def row(self, name: str) -> SplicedLossRow:
        """The row called `name` (an out_hook, a CLT name, or "all")."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no row {name!r}; rows: {[r.name for r in self.rows]}")

    @property
    def all(self) -> SplicedLossRow:
        """The row of every dictionary spliced together."""
        return self.row("all") if len(self.rows) > 1 else self.rows[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (NaN becomes None)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, list):
                return [clean(v) for v in value]
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value

        return clean(asdict(self))

    def __str__(self) -> str:
        columns = [
            ("name", "name"),
            ("CE", "ce_spliced"),
            ("dCE", "ce_increase"),
            ("dCE 95%", "ce_increase_interval"),
            ("KL", "kl"),
            ("rec0", "recovered_zero"),
            ("recmean", "recovered_mean"),
            ("FVU", "fvu"),
            ("FVU 95%", "fvu_interval"),
            ("EV", "explained_variance"),
            ("L0", "l0"),
            ("dead", "dead_share"),
            ("gamma", "shrinkage"),
        ]
        table = [[title for title, _ in columns]]
        for row in self.rows:
            cells = []
            for _, key in columns:
                value = getattr(row, key)
                if isinstance(value, list):
                    cells.append(f"[{_fmt(value[0])}, {_fmt(value[1])}]")
                else:
                    cells.append(value if isinstance(value, str) else _fmt(value))
            table.append(cells)
        widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
        lines = [
            f"original CE {self.ce_original:.4f} nats over {self.n_predictions} predictions "
            f"({self.n_sequences} sequences); position 0 "
            + ("kept exact" if self.keep_bos else "spliced and ablated too")
        ]
        for i, cells in enumerate(table):
            first = cells[0].ljust(widths[0])
            rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
            lines.append("  ".join([first, *rest]))
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"


# ---- tokens -------------------------------------------------------------------------------------
def prepare_tokens(
    model: Any,
    tokens_or_text: Int[Tensor, "batch pos"] | str | Sequence[str],
    ctx_len: int | None = None,
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, " batch"]]:
    """Token rows and their lengths: text is tokenized, chunked to ctx_len and BOS-prefixed.

    A LongTensor is used as given (each row its full length); it must fit in n_ctx.
    """
    n_ctx = int(model.cfg.n_ctx)
    ctx = int(ctx_len or n_ctx)
    if ctx > n_ctx:  # never clamp silently: the user asked for a length the model cannot see
        raise ShapeError(
            f"ctx_len (--ctx-len) {ctx} exceeds the model's context of {n_ctx} tokens; "
            f"use {n_ctx} or less"
        )
    if ctx < 3:
        raise SparseCircuitsError(f"ctx_len must be at least 3 (BOS + two tokens), got {ctx}")
    if isinstance(tokens_or_text, Tensor):
        tokens = tokens_or_text
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int32, torch.int64):
            raise ShapeError(
                f"tokens should be an integer tensor [batch, pos], got {tuple(tokens.shape)} "
                f"{tokens.dtype}"
            )
        if tokens.shape[1] > n_ctx:
            raise ShapeError(
                f"tokens have {tokens.shape[1]} positions, the model's n_ctx is {n_ctx}"
            )
        lengths = torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long)
        return tokens.long(), lengths
    texts = [tokens_or_text] if isinstance(tokens_or_text, str) else list(tokens_or_text)
    bos = model.tokenizer.bos_token_id
    if bos is None:
        raise SparseCircuitsError("the tokenizer has no BOS token; pass a token tensor instead")
    rows: list[list[int]] = []
    for text in texts:
        ids = to_tokens(model, text, prepend_bos=False)[0].tolist() if text else []
        for start in range(0, len(ids), ctx - 1):
            rows.append([bos, *ids[start : start + ctx - 1]])
    rows = [r for r in rows if len(r) >= 3]
    if not rows:
        raise SparseCircuitsError("the text gives no sequence of at least 3 tokens to evaluate")
    width = max(len(r) for r in rows)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else bos
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return tokens, torch.tensor([len(r) for r in rows], dtype=torch.long)


# ---- accumulators -------------------------------------------------------------------------------
class _Local:
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


class _LossSums:
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


class _Stop(Exception):
    """Raised by a hook to end a forward pass once every needed activation was seen."""


# ---- helpers ------------------------------------------------------------------------------------
def _unit_name(unit: Unit) -> str:
    if isinstance(unit, CrossLayerTranscoder):
        return f"clt:{unit.out_hooks[0]}..{unit.out_hooks[-1]}"
    return unit.out_hook


def _out_hooks(unit: Unit) -> list[str]:
    return list(unit.out_hooks) if isinstance(unit, CrossLayerTranscoder) else [unit.out_hook]


def _in_hooks(unit: Unit) -> list[str]:
    return list(unit.in_hooks) if isinstance(unit, CrossLayerTranscoder) else [unit.in_hook]


def _width(unit: Unit) -> int:
    return unit.d_model if isinstance(unit, CrossLayerTranscoder) else unit.d_out


def _log_probs(logits: Tensor, pred_mask: Tensor) -> Tensor:
    return F.log_softmax(logits[:, :-1][pred_mask].float(), dim=-1)


def _replace_hooks(values: dict[str, Callable[[Tensor], Tensor]], keep_bos: bool = False) -> list:
    def make(fn):
        def hook(act: Tensor, hook: Any) -> Tensor:
            return keep_first_position(fn(act), act) if keep_bos else fn(act)

        return hook

    return [(name, make(fn)) for name, fn in values.items()]


def _local_outputs(
    unit: Unit, xs: list[Tensor], local: _Local, act_mask: Tensor, ys: list[Tensor]
) -> list[Tensor]:
    """Reconstructions of a unit from original activations [B, T, d]; feeds the local metrics."""
    flat_mask = act_mask.reshape(-1)
    token_rows = act_mask.nonzero()[:, 0]  # each masked token's sequence in the batch
    local.begin_batch(act_mask.shape[0], act_mask.device)
    outs = []
    if isinstance(unit, CrossLayerTranscoder):
        acts = [unit.encode_layer(layer, x.to(unit.b_dec.dtype)) for layer, x in enumerate(xs)]
        offset = 0
        for layer in range(unit.n_layers):
            y_hat = unit.decode_to(layer, acts)
            if unit.W_skip is not None:
                y_hat = y_hat + unit.skip(layer, xs[layer].to(unit.b_dec.dtype))
            y_hat = y_hat.to(ys[layer].dtype)
            outs.append(y_hat)
            a = acts[layer].reshape(-1, unit.n_features[layer])[flat_mask]
            tok, feats = a.nonzero(as_tuple=True)
            local.add_acts(token_rows, feats, token_rows[tok], offset, new_tokens=layer == 0)
            offset += unit.n_features[layer]
            d = unit.d_model
            y, y_hat = ys[layer].reshape(-1, d)[flat_mask], y_hat.reshape(-1, d)[flat_mask]
            local.add(layer, y, y_hat, token_rows)
        return outs
    x = xs[0]
    shape = x.shape[:-1]
    y_hat, sp = unit.forward_sparse(x.reshape(-1, unit.d_in).to(unit.W_enc.dtype))
    y_hat = y_hat.to(ys[0].dtype).reshape(*shape, unit.d_out)
    keep = flat_mask[sp.token_idx]
    feature_rows = sp.token_idx[keep] // act_mask.shape[1]  # flat token index -> its sequence
    local.add_acts(token_rows, sp.feature_idx[keep], feature_rows)
    y, y_hat_flat = ys[0].reshape(-1, unit.d_out), y_hat.reshape(-1, unit.d_out)
    local.add(0, y[flat_mask], y_hat_flat[flat_mask], token_rows)
    return [y_hat]


# ---- main ---------------------------------------------------------------------------------------
@torch.no_grad()
def spliced_loss(
    model: Any,
    dictionaries: Unit | Sequence[Unit],
    tokens_or_text: Int[Tensor, "batch pos"] | str | Sequence[str],
    batch_size: int = 8,
    ctx_len: int | None = None,
    verbose: bool = True,
    ablations: Sequence[str] = ABLATIONS,
    per_layer: bool = True,
    check_model: bool = True,
    keep_bos: bool = True,
    conventions: str = "sparse-circuits",
) -> SplicedLossReport:
    """CE, CE increase, KL, loss recovered and local metrics of dictionaries spliced into `model`.

    Args:
        model: a `TransformerBridge` from `load_model`.
        dictionaries: one or several dictionaries / cross-layer transcoders (different hooks).
        tokens_or_text: a LongTensor [batch, pos] (BOS at position 0), one string (chunked to
            `ctx_len`), or a list of strings (each chunked; shorter ones padded and masked).
        batch_size: sequences per forward pass.
        ctx_len: chunk length for text, at most the model's n_ctx (default n_ctx).
        verbose: show a tqdm progress bar.
        ablations: baselines of the fraction of loss recovered: "zero" and/or "mean".
        per_layer: also splice (and ablate) each dictionary alone; without it only "all" runs.
        check_model: warn about dictionaries whose recorded model name differs from the model's.
        keep_bos: position 0 keeps the model's own activation when spliced and when ablated
            (see `splice`); False replaces it too.
        conventions: "sparse-circuits" (this module's docstring) or "saelens": each dictionary
            alone, measured as SAELens' `run_evals` measures it (`replacement.saelens_eval`):
            special-token positions left out, KL over every other position including the
            last, zero ablation of every position; rows then carry `saelens` with SAELens'
            metric names, and `keep_bos`, `ablations` and `per_layer` do not apply.

    The intervals keep each sequence's sums: for FVU that is each site's summed target, 8 * d
    bytes per sequence and site (GPT-2, 1M tokens in rows of 128: about 50 MB a site).

    Returns:
        A `SplicedLossReport` (prints as a table; `.to_dict()` for JSON).
    """
    if conventions not in CONVENTIONS:
        raise SparseCircuitsError(f"unknown conventions {conventions!r}; expected {CONVENTIONS}")
    unknown = [a for a in ablations if a not in ABLATIONS]
    if unknown:
        raise SparseCircuitsError(f"unknown ablations {unknown}; expected a subset of {ABLATIONS}")
    if isinstance(dictionaries, (Dictionary, CrossLayerTranscoder)):
        dictionaries = [dictionaries]
    by_out, clts = _split_crosslayer(dictionaries)
    units: list[Unit] = [*by_out.values(), *clts]
    if not units:
        raise SparseCircuitsError("spliced_loss needs at least one dictionary")
    for unit in by_out.values():
        check_compatible(model, unit, check_model)
    for clt in clts:
        for view in _layer_views(clt):
            check_compatible(model, view, check_model)
    device = torch.device(model.cfg.device)
    if conventions == "saelens":
        return _saelens_report(model, units, tokens_or_text, ctx_len, batch_size, verbose)
    tokens, lengths = prepare_tokens(model, tokens_or_text, ctx_len)
    tokens, lengths = tokens.to(device), lengths.to(device)
    batches = [
        (tokens[i : i + batch_size], lengths[i : i + batch_size])
        for i in range(0, tokens.shape[0], batch_size)
    ]
    all_sites = [h for u in units for h in _out_hooks(u)]
    several = len(units) > 1
    alone = per_layer and several

    means = _site_means(model, batches, units, verbose) if "mean" in ablations else {}

    orig = _LossSums()
    locals_ = {_unit_name(u): _Local(sum(_features(u)), device) for u in units}
    spliced = {name: _LossSums() for name in [*locals_, "all"]}
    ablated = {(name, a): _LossSums() for name in [*locals_, "all"] for a in ablations}

    def evaluate(batch: Tensor, lens: Tensor) -> None:
        pos = torch.arange(batch.shape[1], device=device)
        act_mask: Bool[Tensor, "b t"] = (pos[None] >= 1) & (pos[None] < lens[:, None])
        pred_mask = act_mask[:, :-1] & (pos[None, 1:] < lens[:, None])
        targets = batch[:, 1:][pred_mask]
        rows, n_rows = pred_mask.nonzero()[:, 0], batch.shape[0]  # each prediction's sequence

        # original pass, capturing every dictionary's input and target
        captured: dict[str, Tensor] = {}
        wanted = {h for u in units for h in _in_hooks(u) + _out_hooks(u)}

        def capture(name: str):
            # key by the requested name: the bridge may report an alias's canonical name
            def hook(act: Tensor, hook: Any) -> Tensor:
                captured[name] = act
                return act

            return hook

        logits = model.run_with_hooks(batch, fwd_hooks=[(h, capture(h)) for h in sorted(wanted)])
        logp_orig = _log_probs(logits, pred_mask)
        orig.add(logp_orig, targets, None, rows, n_rows)

        recon: dict[str, Tensor] = {}
        for unit in units:
            name = _unit_name(unit)
            xs = [_flat(captured[h], _width_in(unit), h, "d_in") for h in _in_hooks(unit)]
            ys = [_flat(captured[h], _width(unit), h, "d_out") for h in _out_hooks(unit)]
            outs = _local_outputs(unit, xs, locals_[name], act_mask, ys)
            for h, y_hat, y in zip(_out_hooks(unit), outs, ys, strict=True):
                recon[h] = keep_first_position(y_hat, y) if keep_bos else y_hat

        def run(hooks: list, sums: _LossSums) -> None:
            out = model.run_with_hooks(batch, fwd_hooks=hooks)
            sums.add(_log_probs(out, pred_mask), targets, logp_orig, rows, n_rows)

        def ablate(sites: list[str], kind: str) -> list:
            fill = {h: torch.zeros_like if kind == "zero" else _filler(means[h]) for h in sites}
            return _replace_hooks(fill, keep_bos)

        for unit in units if (alone or not several) else []:
            name = _unit_name(unit)
            sites = _out_hooks(unit)
            if isinstance(unit, CrossLayerTranscoder):
                # later layers of a CLT read the spliced stream: recompute
                with splice(model, [unit], check_model=check_model, sparse=True, keep_bos=keep_bos):
                    out = model(batch)
                spliced[name].add(_log_probs(out, pred_mask), targets, logp_orig, rows, n_rows)
            else:
                # upstream of a lone dictionary is unchanged: reuse the reconstruction
                run(_replace_hooks({h: _stored(recon[h]) for h in sites}), spliced[name])
            for kind in ablations:
                run(ablate(sites, kind), ablated[(name, kind)])
        if several:
            with splice(model, units, check_model=check_model, sparse=True, keep_bos=keep_bos):
                out = model(batch)
            logp_all = _log_probs(out, pred_mask)
            spliced["all"].add(logp_all, targets, logp_orig, rows, n_rows)
            for kind in ablations:
                run(ablate(all_sites, kind), ablated[("all", kind)])

    bar = tqdm(batches, desc="spliced loss", disable=not verbose, unit="batch")
    for batch, lens in bar:
        evaluate(batch, lens)
        bar.set_postfix(ce=f"{orig.mean_ce:.3f}")

    report = _report(orig, units, locals_, spliced, ablated, ablations, several, alone, tokens)
    report.keep_bos = keep_bos
    return report


def _saelens_report(
    model: Any,
    units: list[Unit],
    tokens_or_text: Any,
    ctx_len: int | None,
    batch_size: int,
    verbose: bool,
) -> SplicedLossReport:
    """`spliced_loss` under SAELens' conventions: one row per dictionary, spliced alone."""
    from replacement.saelens_eval import saelens_metrics, special_token_mask

    tokens, _ = prepare_tokens(model, tokens_or_text, ctx_len)
    tokens = tokens.to(torch.device(model.cfg.device))
    batches = list(tokens.split(batch_size))
    n_pred = int(special_token_mask(model, tokens)[:, :-1].sum())
    rows, ce_original = [], float("nan")
    for unit in tqdm(units, desc="saelens metrics", disable=not verbose, unit="dictionary"):
        m = saelens_metrics(model, unit, batches)
        ce_original = m["ce_loss_without_sae"]
        row = SplicedLossRow(_unit_name(unit), _out_hooks(unit), saelens=m)
        row.ce_spliced, row.kl = m["ce_loss_with_sae"], m["kl_div_with_sae"]
        row.ce_increase = m["ce_loss_with_sae"] - m["ce_loss_without_sae"]
        row.ce_zero_ablated, row.recovered_zero = m["ce_loss_with_ablation"], m["ce_loss_score"]
        row.explained_variance = m["explained_variance"]
        row.fvu = 1.0 - m["explained_variance"]
        row.l0, row.shrinkage = m["l0"], m["relative_reconstruction_bias"]
        row.dead_share = m["dead_features"] / unit.n_features
        rows.append(row)
    report = SplicedLossReport(ce_original, n_pred, int(tokens.shape[0]), keep_bos=True)
    report.rows = rows
    return report


def _features(unit: Unit) -> list[int]:
    return list(unit.n_features) if isinstance(unit, CrossLayerTranscoder) else [unit.n_features]


def _width_in(unit: Unit) -> int:
    return unit.d_model if isinstance(unit, CrossLayerTranscoder) else unit.d_in


def _stored(value: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda act: value.reshape(act.shape).to(act.dtype)


def _filler(mean: Tensor) -> Callable[[Tensor], Tensor]:
    # means are stored flat over the trailing axes of [batch, pos, ...]
    return lambda act: mean.to(act.dtype).reshape(act.shape[2:]).expand(act.shape).clone()


def _site_means(model: Any, batches: list, units: list[Unit], verbose: bool) -> dict[str, Tensor]:
    """Mean of every out_hook activation over the evaluated tokens (first pass, stops early)."""
    sites = [h for u in units for h in _out_hooks(u)]
    sums: dict[str, Tensor] = {}
    count = 0
    for batch, lens in tqdm(batches, desc="site means", disable=not verbose, unit="batch"):
        count += _add_site_sums(model, batch, lens, sites, sums)
    return {h: (s / max(count, 1)).float() for h, s in sums.items()}


def _report(
    orig: _LossSums,
    units: list[Unit],
    locals_: dict[str, _Local],
    spliced: dict[str, _LossSums],
    ablated: dict[tuple[str, str], _LossSums],
    ablations: Sequence[str],
    several: bool,
    alone: bool,
    tokens: Tensor,
) -> SplicedLossReport:
    report = SplicedLossReport(orig.mean_ce, orig.n, int(tokens.shape[0]))
    for unit in units:
        name = _unit_name(unit)
        row = SplicedLossRow(name, _out_hooks(unit))
        locals_[name].fill(row)
        if alone or not several:
            _fill_losses(row, orig, spliced[name], ablated, name, ablations)
        report.rows.append(row)
    if several:
        row = SplicedLossRow("all", [h for u in units for h in _out_hooks(u)])
        _fill_losses(row, orig, spliced["all"], ablated, "all", ablations)
        report.rows.append(row)
    _add_intervals(report, orig, spliced, ablated, ablations)
    _add_local_intervals(report, locals_)
    return report


def _add_intervals(
    report: SplicedLossReport,
    orig: _LossSums,
    spliced: dict[str, _LossSums],
    ablated: dict[tuple[str, str], _LossSums],
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


def _add_local_intervals(report: SplicedLossReport, locals_: dict[str, _Local]) -> None:
    """Bootstrap intervals over sequences of every dictionary's FVU and L0, and of their means
    over the dictionaries (the resamples of `_add_intervals`, so the figures are paired)."""
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


def _fill_losses(
    row: SplicedLossRow,
    orig: _LossSums,
    spliced: _LossSums,
    ablated: dict[tuple[str, str], _LossSums],
    name: str,
    ablations: Sequence[str],
) -> None:
    row.ce_spliced = spliced.mean_ce
    row.ce_increase = spliced.mean_ce - orig.mean_ce
    row.kl = spliced.mean_kl
    for kind in ablations:
        ce_abl = ablated[(name, kind)].mean_ce
        gap = ce_abl - orig.mean_ce
        recovered = (ce_abl - spliced.mean_ce) / gap if gap != 0 else float("nan")
        if kind == "zero":
            row.ce_zero_ablated, row.recovered_zero = ce_abl, recovered
        else:
            row.ce_mean_ablated, row.recovered_mean = ce_abl, recovered


def _add_site_sums(
    model: Any, batch: Tensor, lens: Tensor, sites: list[str], sums: dict[str, Tensor]
) -> int:
    """Add one batch's sums of the site activations; returns the number of tokens counted."""
    pos = torch.arange(batch.shape[1], device=batch.device)
    mask = (pos[None] >= 1) & (pos[None] < lens[:, None])
    seen: set[str] = set()

    def make(name: str):
        def hook(act: Tensor, hook: Any) -> Tensor:
            flat = act.reshape(*act.shape[:2], -1)[mask].double().sum(0)
            sums[name] = sums.get(name, 0) + flat
            seen.add(name)
            if len(seen) == len(sites):
                raise _Stop  # the rest of the forward pass is not needed
            return act

        return hook

    try:
        model.run_with_hooks(batch, fwd_hooks=[(h, make(h)) for h in sites])
    except _Stop:
        pass
    return int(mask.sum())
