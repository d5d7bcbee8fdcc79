"""Spliced-model loss: how much of the model's next-token loss survives replacing sites by dictionaries.

For each dictionary alone and for all of them together, `spliced_loss` reports the CE of the
spliced model, its increase over the original, KL(p_orig || p_spliced), and the fraction of
loss recovered against zero- and mean-ablating the same sites:

    recovered = (CE_ablated - CE_spliced) / (CE_ablated - CE_original)

plus the local metrics of each dictionary on the original activations: FVU, explained
variance, L0, share of dead features and shrinkage gamma = E||y_hat||^2 / E<y, y_hat>.
CE increase, KL, loss recovered, FVU and L0 come with 95% bootstrap intervals over sequences
(`replacement.loss_sums`, `replacement.loss_intervals`); the report's form is
`replacement.loss_report`.

Position 0 (BOS) is excluded everywhere: its activations from the local metrics and the
prediction made at position 0 from the losses. Padding of ragged text is excluded likewise.
By default (`keep_bos=True`, as in `splice`) position 0 also keeps the model's own activation
in the spliced and in the ablated passes, so "recovered" measures the dictionaries on the
positions they were trained for; `keep_bos=False` splices and ablates BOS as well.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Int
from torch import Tensor
from tqdm.auto import tqdm

from replacement.crosslayer import CrossLayerTranscoder
from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError
from replacement.eval_tokens import prepare_tokens
from replacement.loss_report import SplicedLossReport, SplicedLossRow
from replacement.loss_sums import LocalSums, LossSums, add_local_intervals, add_loss_intervals
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
    unit: Unit, xs: list[Tensor], local: LocalSums, act_mask: Tensor, ys: list[Tensor]
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

    orig = LossSums()
    locals_ = {_unit_name(u): LocalSums(sum(_features(u)), device) for u in units}
    spliced = {name: LossSums() for name in [*locals_, "all"]}
    ablated = {(name, a): LossSums() for name in [*locals_, "all"] for a in ablations}

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

        def run(hooks: list, sums: LossSums) -> None:
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
    orig: LossSums,
    units: list[Unit],
    locals_: dict[str, LocalSums],
    spliced: dict[str, LossSums],
    ablated: dict[tuple[str, str], LossSums],
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
    add_loss_intervals(report, orig, spliced, ablated, ablations)
    add_local_intervals(report, locals_)
    return report


def _fill_losses(
    row: SplicedLossRow,
    orig: LossSums,
    spliced: LossSums,
    ablated: dict[tuple[str, str], LossSums],
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
