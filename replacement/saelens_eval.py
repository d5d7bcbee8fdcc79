"""Spliced-model metrics under SAELens' conventions (`sae_lens.evals.run_evals`, SAELens 6.x).

`spliced_loss(..., conventions="saelens")` calls `saelens_rows`. Per dictionary, alone:
- positions holding a special token (BOS, EOS, PAD, SEP, decoder start) are left out of every
  metric; in the spliced pass they keep the model's own activation, in the zero-ablation pass
  they are zeroed like every other position;
- KL(p_original || p_spliced) is averaged over every kept position, the last one included;
  CE over the predictions made at kept positions (the last position predicts nothing);
- `ce_loss_score = (CE_ablated - CE_sae) / (CE_ablated - CE_original)`,
  `kl_div_score = (KL_ablated - KL_sae) / KL_ablated`;
- on the original activations: `explained_variance = 1 - E||x - x_hat||^2 / (E||x||^2 - ||E x||^2)`,
  `mse = E||x - x_hat||^2`, `l2_ratio = E(||x_hat|| / ||x||)`, `cossim`, `l0`, `l1`,
  `relative_reconstruction_bias = E||x_hat||^2 / E<x, x_hat>` taken per batch and averaged over
  batches (as SAELens does), and the number of dead features (density 0).
Each row's `saelens` field holds these under SAELens' names; the common fields are filled from
them (`fvu = 1 - explained_variance`, `shrinkage = relative_reconstruction_bias`, ...).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Int
from torch import Tensor

from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError

_SPECIAL = (
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sep_token_id",
    "decoder_start_token_id",
)


def special_token_mask(model: Any, tokens: Int[Tensor, "b t"]) -> Bool[Tensor, "b t"]:
    """True at positions SAELens keeps: the token is none of the tokenizer's special tokens."""
    ids = {getattr(model.tokenizer, a, None) for a in _SPECIAL} - {None}
    keep = torch.ones_like(tokens, dtype=torch.bool)
    for token in ids:
        keep &= tokens != int(token)
    return keep


def _kl(logits_orig: Tensor, logits_new: Tensor) -> Tensor:
    logp_new = F.log_softmax(logits_new.float(), dim=-1)
    logp_orig = F.log_softmax(logits_orig.float(), dim=-1)
    return (logp_orig.exp() * (logp_orig - logp_new)).sum(-1)


def _ce(logits: Tensor, tokens: Tensor) -> Tensor:
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, tokens[:, 1:, None])[..., 0]


class _Sums:
    """Per-token values concatenated over batches (SAELens averages them at the end)."""

    def __init__(self) -> None:
        self.values: dict[str, list[Tensor]] = {}

    def add(self, name: str, value: Tensor) -> None:
        self.values.setdefault(name, []).append(value.detach().double().reshape(-1).cpu())

    def mean(self, name: str) -> float:
        return float(torch.cat(self.values[name]).mean())


def _capture(store: dict[str, Tensor], name: str):
    def hook(act: Tensor, hook: Any) -> Tensor:
        store[name] = act
        return act

    return hook


@torch.no_grad()
def saelens_metrics(
    model: Any, d: Dictionary, batches: list[Int[Tensor, "b t"]]
) -> dict[str, float]:
    """SAELens' `run_evals` metrics of one dictionary spliced alone (module docstring)."""
    if not isinstance(d, Dictionary):
        raise SparseCircuitsError("conventions='saelens' applies to per-site dictionaries")
    sums = _Sums()
    n_tok, sum_x, sum_x2, sum_err2 = 0, None, 0.0, 0.0
    fired = torch.zeros(d.n_features, dtype=torch.bool)
    for tokens in batches:
        keep = special_token_mask(model, tokens)
        captured: dict[str, Tensor] = {}
        names = dict.fromkeys([d.in_hook, d.out_hook])
        logits = model.run_with_hooks(tokens, fwd_hooks=[(n, _capture(captured, n)) for n in names])
        x = captured[d.in_hook].reshape(*tokens.shape, -1)
        y = captured[d.out_hook]
        flat_y = y.reshape(*tokens.shape, -1)
        x_d = x.to(d.W_enc.dtype)
        acts = d.encode(x_d)
        y_hat = (d.decode(acts) + d.skip(x_d)).to(flat_y.dtype)
        spliced_value = torch.where(keep[..., None], y_hat, flat_y).reshape(y.shape)

        def replace(act: Tensor, hook: Any, value: Tensor = spliced_value) -> Tensor:
            return value.to(act.dtype)

        spliced = model.run_with_hooks(tokens, fwd_hooks=[(d.out_hook, replace)])
        zero = model.run_with_hooks(
            tokens, fwd_hooks=[(d.out_hook, lambda act, hook: torch.zeros_like(act))]
        )
        pred_keep = keep[:, :-1]
        sums.add("kl_div_with_sae", _kl(logits, spliced)[keep])
        sums.add("kl_div_with_ablation", _kl(logits, zero)[keep])
        sums.add("ce_loss_with_sae", _ce(spliced, tokens)[pred_keep])
        sums.add("ce_loss_without_sae", _ce(logits, tokens)[pred_keep])
        sums.add("ce_loss_with_ablation", _ce(zero, tokens)[pred_keep])

        xs = flat_y[keep].double()  # the target: x itself for an SAE
        outs = y_hat[keep].double()
        a = acts[keep]
        norm_in, norm_out = xs.norm(dim=-1), outs.norm(dim=-1)
        guarded = torch.where(norm_in.abs() < 1e-4, torch.ones_like(norm_in), norm_in)
        sums.add("l2_norm_in", norm_in)
        sums.add("l2_norm_out", norm_out)
        sums.add("l2_ratio", norm_out / guarded)
        rrb = norm_out.pow(2).mean() / (xs * outs).sum(-1).mean()
        sums.add("relative_reconstruction_bias", rrb)
        sums.add("l0", (a != 0).sum(-1))
        sums.add("l1", a.abs().sum(-1))
        err2 = (xs - outs).pow(2).sum(-1)
        sums.add("mse", err2)
        cos = (xs / xs.norm(dim=-1, keepdim=True) * outs / norm_out[:, None]).sum(-1)
        sums.add("cossim", cos)
        n_tok += xs.shape[0]
        sum_x = xs.sum(0) if sum_x is None else sum_x + xs.sum(0)
        sum_x2 += float(xs.pow(2).sum())
        sum_err2 += float(err2.sum())
        fired |= (a != 0).any(0).cpu()
    out = {
        name: sums.mean(name)
        for name in (
            "kl_div_with_sae",
            "kl_div_with_ablation",
            "ce_loss_with_sae",
            "ce_loss_without_sae",
            "ce_loss_with_ablation",
            "l2_norm_in",
            "l2_norm_out",
            "l2_ratio",
            "relative_reconstruction_bias",
            "l0",
            "l1",
            "mse",
            "cossim",
        )
    }
    total_var = sum_x2 / max(n_tok, 1) - float((sum_x / max(n_tok, 1)).pow(2).sum())
    mse = sum_err2 / max(n_tok, 1)
    out["explained_variance"] = 1.0 - mse / total_var if total_var >= 1e-10 else float(mse < 1e-10)
    out["kl_div_score"] = (out["kl_div_with_ablation"] - out["kl_div_with_sae"]) / out[
        "kl_div_with_ablation"
    ]
    out["ce_loss_score"] = (out["ce_loss_with_ablation"] - out["ce_loss_with_sae"]) / (
        out["ce_loss_with_ablation"] - out["ce_loss_without_sae"]
    )
    out["dead_features"] = int((~fired).sum())
    out["n_tokens"] = n_tok
    return out
