"""Held-out figures of one dictionary spliced alone, as additive sums per chunk of rows.

Every figure is kept as sums over `n_chunks` disjoint chunks of the evaluation rows, so the
analysis can bootstrap over chunks (paired across runs: chunk c is the same rows for every
run) instead of trusting one number. The original model's side (its CE and the downstream
activations' variance) is computed once per sweep (`OriginalSide`) and shared by every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from replacement.dictionary import Dictionary
from replacement.hook_table import block_hook, hook_layer, is_layernorm
from replacement.splice import splice

SUM_KEYS = (
    "tokens",  # predicted tokens (CE sums' denominator)
    "ce_orig",  # sum of the original model's CE
    "ce_spliced",  # sum of the spliced model's CE
    "positions",  # dictionary positions (BOS excluded): the denominator of the next three
    "l0",  # sum over positions of active features
    "sq_err",  # sum ||y - y_hat||^2
    "sq_dev",  # sum ||y - mean y||^2, mean over all evaluation positions
    "dot",  # sum <y_hat, y>
    "sq_hat",  # sum ||y_hat||^2
    "down_err",  # sum over later resid_post of ||r_spliced - r_orig||^2
    "down_dev",  # sum over later resid_post of ||r_orig - mean r_orig||^2
    "down_norm_err",  # the same two over normalised residuals (`normalised`): scale-free
    "down_norm_dev",
)
NORMED_KEYS = ("down_norm_err", "down_norm_dev")
"""Added after the first records were written: a record without them has no
`downstream_fvu_normed` (`figures` leaves it out) rather than a wrong one."""


@dataclass
class OriginalSide:
    """The original model's per-chunk CE sums and activation means, shared by every run."""

    chunks: list[Int[Tensor, "rows ctx"]]
    """The evaluation rows split into chunks (the bootstrap's units)."""
    ce_orig: list[float]
    """Sum of the original CE per chunk."""
    tokens: list[int]
    """Predicted tokens per chunk."""
    means: dict[str, Float[Tensor, " d"]]
    """Mean activation over all evaluation positions (BOS excluded) per hook."""
    special_ids: list[int]
    """Target tokens left out of every CE (BOS and the tokenizer's specials)."""
    resid: list[dict[str, Tensor]] | None = None
    """Per chunk, the original `hook_resid_post` activations [rows, ctx, d], kept when they fit
    `KEEP_RESID_BYTES`: every run's downstream figures then reuse them instead of running the
    original model again (about 40% of an evaluation's compute), and its spliced pass starts
    at the dictionary's block from them (the blocks below compute the same either way)."""
    normed_means: dict[str, Float[Tensor, " d"]] | None = None
    """Mean over all evaluation positions of each `hook_resid_post` as `normalised` gives it."""


EVAL_BATCH_ROWS = 8
"""Rows per forward pass: on 2 CPU cores 8 rows (1k tokens) evaluated 20% faster than 32 (the
logits of a small batch stay in cache); the sums are the same."""
KEEP_RESID_BYTES = 3 * 2**30
"""Largest size of the original residual streams kept in memory (3 GiB: 1M tokens of the
default model's 4 layers take 2 GiB); above it each run recomputes them."""


def _token_ce(
    logits: Float[Tensor, "rows ctx vocab"], rows: Int[Tensor, "rows ctx"], special: list[int]
) -> tuple[Float[Tensor, " rows"], Int[Tensor, " rows"]]:
    """Per-row CE sums and counts of next-token prediction, special targets left out."""
    targets = rows[:, 1:]
    # float32 per token (within ~1e-6 nats of float64, at 3x its speed; the log-softmax in
    # float64 was a quarter of an evaluation), summed in float64
    vocab = logits.shape[-1]
    ce = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, vocab), targets.reshape(-1), reduction="none"
    )
    ce = ce.view(targets.shape).double()
    keep: Bool[Tensor, "rows pos"] = torch.ones_like(targets, dtype=torch.bool)
    for token in special:
        keep &= targets != token
    return (ce * keep).sum(-1), keep.sum(-1)


def normalised(
    resid: Float[Tensor, "... d"], layernorm: bool, eps: float
) -> Float[Tensor, "... d"]:
    """The residual as the model's next norm reads it before its weight, per position: centred
    and divided by its standard deviation (LayerNorm) or divided by its root mean square
    (RMSNorm). A change of the stream's scale alone leaves it unchanged, which a dictionary at
    the last block can make freely (the final norm divides it out; docs/claims.md)."""
    if layernorm:
        resid = resid - resid.mean(-1, keepdim=True)
    return resid * torch.rsqrt(resid.pow(2).mean(-1, keepdim=True) + eps)


def _norm_of(model: Any) -> tuple[bool, float]:
    """(LayerNorm?, epsilon) of the model's norms, for `normalised`."""
    return is_layernorm(model.cfg), float(getattr(model.cfg, "eps", 1e-5))


def _sum(x: Float[Tensor, "... d"]) -> float:
    """Sum in float64 of float32 row sums (d terms each: exact to ~1e-7 relative) without a
    float64 copy of the whole tensor."""
    return float(x.sum(-1).double().sum())


@torch.no_grad()
def original_side(
    model: Any,
    rows: Int[Tensor, "rows ctx"],
    hooks: list[str],
    special_ids: list[int],
    n_chunks: int = 64,
    batch_size: int = EVAL_BATCH_ROWS,
    keep_resid_bytes: int = KEEP_RESID_BYTES,
) -> OriginalSide:
    """Split `rows` into `n_chunks` chunks; the original CE per chunk and the mean of each hook
    (and of every `hook_resid_post`), and those residual streams if they fit `keep_resid_bytes`."""
    n_chunks = max(1, min(n_chunks, rows.shape[0]))
    chunks = list(torch.tensor_split(rows, n_chunks))
    resid_hooks = [block_hook(m, "hook_resid_post") for m in range(int(model.cfg.n_layers))]
    hooks = sorted(set(hooks) | set(resid_hooks))
    keep = rows.shape[0] * rows.shape[1] * len(resid_hooks) * model.cfg.d_model * 4
    resid: list[dict[str, Tensor]] | None = [] if keep <= keep_resid_bytes else None
    ce, counts = [], []
    sums: dict[str, Tensor] = {}
    normed_sums: dict[str, Tensor] = {}
    layernorm, eps = _norm_of(model)
    n_positions = 0
    for chunk in chunks:
        ce_sum, count = 0.0, 0
        kept: dict[str, list[Tensor]] = {h: [] for h in resid_hooks}
        for start in range(0, chunk.shape[0], batch_size):
            batch = chunk[start : start + batch_size].to(model.cfg.device)
            logits, cache = model.run_with_cache(batch, names_filter=lambda n: n in hooks)
            row_ce, row_n = _token_ce(logits, batch, special_ids)
            ce_sum += float(row_ce.sum())
            count += int(row_n.sum())
            for h in hooks:
                acts = cache[h][:, 1:].double()
                sums[h] = sums.get(h, 0) + acts.reshape(-1, acts.shape[-1]).sum(0)
            for h in resid_hooks:
                n = normalised(cache[h][:, 1:].float(), layernorm, eps).double()
                normed_sums[h] = normed_sums.get(h, 0) + n.reshape(-1, n.shape[-1]).sum(0)
            if resid is not None:
                for h in resid_hooks:
                    kept[h].append(cache[h].float().cpu())
            n_positions += batch.shape[0] * (batch.shape[1] - 1)
        ce.append(ce_sum)
        counts.append(count)
        if resid is not None:
            resid.append({h: torch.cat(v) for h, v in kept.items()})
    means = {h: (s / max(n_positions, 1)).cpu() for h, s in sums.items()}
    normed = {h: (s / max(n_positions, 1)).cpu() for h, s in normed_sums.items()}
    return OriginalSide(chunks, ce, counts, means, list(special_ids), resid, normed)


def downstream_hooks(model: Any, dictionary: Dictionary) -> list[str]:
    """`hook_resid_post` of the dictionary's own block and every later one."""
    first = hook_layer(dictionary.out_hook)
    return [block_hook(m, "hook_resid_post") for m in range(first, int(model.cfg.n_layers))]


def first_block(dictionary: Dictionary) -> int:
    """The first block whose computation the splice changes (a `hook_resid_pre` dictionary
    reads the residual that block starts from, so its pass starts one block earlier)."""
    hooks = (dictionary.in_hook, dictionary.out_hook)
    first = min(hook_layer(h) for h in hooks)
    reads_resid_pre = any(h == block_hook(hook_layer(h), "hook_resid_pre") for h in hooks)
    return first - 1 if reads_resid_pre else first


@torch.no_grad()
def evaluate_dictionary(
    model: Any,
    dictionary: Dictionary,
    original: OriginalSide,
    batch_size: int = EVAL_BATCH_ROWS,
    from_block: bool = True,
) -> dict[str, Any]:
    """Per-chunk sums (`SUM_KEYS`) of `dictionary` spliced alone, and its alive features.

    BOS (position 0) keeps the model's activation, as `splice` does by default, and is left
    out of the dictionary's own figures. With the original residuals kept, the spliced pass
    starts at the dictionary's block from them (`from_block=False`: from the tokens, the
    same figures; for checks and benchmarks).
    """
    down = downstream_hooks(model, dictionary)
    first = first_block(dictionary)
    start_hook = block_hook(first - 1, "hook_resid_post") if first > 0 else None
    out_mean = original.means[dictionary.out_hook].to(model.cfg.device).float()
    down_means = {h: original.means[h].to(model.cfg.device).float() for h in down}
    if original.normed_means is None:
        raise ValueError("an OriginalSide without normed_means: build it with original_side")
    normed_means = {h: original.normed_means[h].to(model.cfg.device).float() for h in down}
    layernorm, eps = _norm_of(model)
    fired = torch.zeros(dictionary.n_features, dtype=torch.bool, device=model.cfg.device)
    per_chunk: dict[str, list[float]] = {k: [] for k in SUM_KEYS}
    for c, chunk in enumerate(original.chunks):
        sums = dict.fromkeys(SUM_KEYS, 0.0)
        sums["ce_orig"], sums["tokens"] = original.ce_orig[c], original.tokens[c]
        for start in range(0, chunk.shape[0], batch_size):
            batch = chunk[start : start + batch_size].to(model.cfg.device)
            begin: dict[str, Any] = {}
            if original.resid is not None:
                stop = start + batch.shape[0]
                kept = {h: r[start:stop].to(model.cfg.device) for h, r in original.resid[c].items()}
                orig = {h: kept[h][:, 1:] for h in down}
                if start_hook is not None and from_block:  # bit-identical to the full pass
                    begin = {"start_at_layer": first}
            else:
                _, cache = model.run_with_cache(batch, names_filter=lambda n: n in down)
                orig = {h: cache[h][:, 1:] for h in down}
            with splice(model, [dictionary], record=True) as state:
                logits, spliced = model.run_with_cache(
                    kept[start_hook] if begin else batch,
                    names_filter=lambda n: n in down,
                    **begin,
                )
            row_ce, _ = _token_ce(logits, batch, original.special_ids)
            sums["ce_spliced"] += float(row_ce.sum())
            hook = dictionary.out_hook
            acts = state.acts[hook][:, 1:]
            y = state.targets[hook][:, 1:].float()
            y_hat = state.recons[hook][:, 1:].float()
            active = acts != 0
            fired |= active.reshape(-1, active.shape[-1]).any(0)
            sums["positions"] += y.shape[0] * y.shape[1]
            sums["l0"] += float(active.sum())
            sums["sq_err"] += _sum((y - y_hat).pow(2))
            sums["sq_dev"] += _sum((y - out_mean).pow(2))
            sums["dot"] += _sum(y_hat * y)
            sums["sq_hat"] += _sum(y_hat.pow(2))
            for h in down:
                o, s = orig[h].float(), spliced[h][:, 1:].float()
                sums["down_err"] += _sum((s - o).pow(2))
                sums["down_dev"] += _sum((o - down_means[h]).pow(2))
                no, ns = normalised(o, layernorm, eps), normalised(s, layernorm, eps)
                sums["down_norm_err"] += _sum((ns - no).pow(2))
                sums["down_norm_dev"] += _sum((no - normed_means[h]).pow(2))
        for k in SUM_KEYS:
            per_chunk[k].append(sums[k])
    return {"chunks": per_chunk, "alive": int(fired.sum()), "n_features": dictionary.n_features}


class ChunkSums(dict):
    """Per-chunk sums (`SUM_KEYS` -> one value per chunk) that also hold them as one [keys,
    chunks] matrix: a bootstrap weighs them with all its draws' chunk weights at once (one
    matrix product per rung and statistic, not a sum per key and draw)."""

    def __init__(self, chunks: dict[str, Any]):
        super().__init__({k: np.asarray(v, dtype=float) for k, v in chunks.items()})
        self.names = list(self)
        self.matrix = np.stack([self[k] for k in self.names]) if self.names else np.zeros((0, 0))

    def totals(
        self, weights: Float[np.ndarray, " chunks"] | Float[np.ndarray, "draws chunks"]
    ) -> dict[str, float] | dict[str, Float[np.ndarray, " draws"]]:
        """Each key's weighted sum over chunks (one per draw for a [draws, chunks] matrix)."""
        if weights.ndim == 2:
            return dict(zip(self.names, self.matrix @ weights.T, strict=True))
        return dict(zip(self.names, (self.matrix @ weights).tolist(), strict=True))


def figures(
    chunks: dict[str, list[float]],
    weights: Float[np.ndarray, " chunks"]
    | Float[np.ndarray, "draws chunks"]
    | list[float]
    | None = None,
) -> dict[str, Any]:
    """Point figures from per-chunk sums; `weights` (chunk multiplicities) make a bootstrap draw,
    and a [draws, chunks] matrix of them gives every figure per draw (arrays, not floats).

    ce_increase = (sum CE spliced - sum CE orig) / tokens; fvu = sq_err / sq_dev; l0 per
    position; shrinkage gamma = sum ||y_hat||^2 / sum <y_hat, y> (1: no shrinkage, < 1 the
    reconstruction is shrunk); downstream_fvu = down_err / down_dev over the later resid_posts;
    downstream_fvu_normed the same over the residuals as the next norm reads them
    (`normalised`), where the sums have it (records written before it existed do not).
    """
    n = len(chunks["tokens"])
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    if w.ndim not in (1, 2) or w.shape[-1] != n:
        raise ValueError(
            f"chunk weights of shape {w.shape} for {n} chunks (expected ({n},) or (draws, {n}))"
        )
    sums = chunks.totals(w) if isinstance(chunks, ChunkSums) else None

    def total(key: str) -> Any:
        if sums is not None:
            return sums[key]
        return np.dot(w, np.asarray(chunks[key], dtype=float))

    def floor(key: str) -> Any:
        return np.maximum(total(key), 1e-12)

    found = {
        "ce_increase": (total("ce_spliced") - total("ce_orig")) / floor("tokens"),
        "fvu": total("sq_err") / floor("sq_dev"),
        "l0": total("l0") / floor("positions"),
        "shrinkage": total("sq_hat") / floor("dot"),
        "downstream_fvu": total("down_err") / floor("down_dev"),
    }
    if all(k in chunks for k in NORMED_KEYS):
        found["downstream_fvu_normed"] = total("down_norm_err") / floor("down_norm_dev")
    return found if w.ndim == 2 else {k: float(v) for k, v in found.items()}
