"""What a feature does according to the weights alone (no data): its direct-path logit effect,
the input tokens that excite it directly, and its nearest features by decoder cosine."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from replacement.dictionary import Dictionary
from replacement.hook_table import (
    is_residual_stream,
    norm_facts,
    norm_hook,
    norm_output,
    norm_scale_hook,
    post_norm_of,
)

CHUNK = 1024
"""Features per block, so that no [F, vocab] or [F, F] matrix is ever whole."""


class TokenList(NamedTuple):
    """The k tokens (or features) of largest score per feature."""

    ids: Int[Tensor, "F k"]
    """Token ids (or feature indices)."""
    values: Float[Tensor, "F k"]
    """Their scores."""


def _topk_rows(score_block, n_features: int, k: int, largest: bool = True) -> TokenList:
    ids, values = [], []
    for start in range(0, n_features, CHUNK):
        block = score_block(start, min(start + CHUNK, n_features))  # [c, n]
        v, i = block.topk(min(k, block.shape[1]), dim=1, largest=largest)
        ids.append(i)
        values.append(v)
    return TokenList(torch.cat(ids), torch.cat(values))


def _norm_linear_part(model: Any, norm: str, x: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
    """w * C x for the model's norm module `norm` (C: LayerNorm's centring, the identity for
    RMSNorm; w: its effective weight, Gemma's 1 + w included, 1 once folded): the module's
    output minus its bias, times the scale it divided by. Exact for every norm kind and
    processing, because it runs the model's own module."""
    module = model.get_submodule(norm)
    captured: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: Any) -> Tensor:
        captured["scale"] = act
        return act

    with model.hooks(fwd_hooks=[(norm_scale_hook(norm), keep)]):
        out = module(x)
    bias = module(torch.zeros_like(x[:1]))  # C 0 = 0: the output is the bias alone
    return (out - bias) * captured["scale"]


def _to_residual(dictionary: Dictionary, model: Any, d: Tensor) -> Tensor:
    """Decoder rows as what they add to the residual stream, up to a positive per-row scale."""
    post = post_norm_of(dictionary.out_hook, norm_facts(model))
    return d if post is None else _norm_linear_part(model, post, d)


@torch.no_grad()
def logit_effects(
    dictionary: Dictionary, model: Any, k: int = 10, tokens: Tensor | None = None
) -> tuple[TokenList, TokenList] | None:
    """Tokens each feature promotes and suppresses most through the direct path.

    The decoder row (through a post-norm where the dictionary writes before one), through the
    final norm's linear part (centring for LayerNorm, its weight when not folded) and the
    unembedding, with the mean over the vocabulary removed; the norms' frozen scales are
    positive and drop out of the ranking. `tokens` (bool [vocab]) limits the lists to tokens
    that occur in real text: the rows of tokens a model never saw keep their initial values
    and would otherwise crowd the lists. None when the dictionary does not write the residual
    width (e.g. at `attn.hook_z`).
    """
    if dictionary.d_out != model.cfg.d_model:
        return None
    W_U = model.W_U.detach()  # [d_model, vocab]
    W_dec = dictionary.W_dec.detach().to(W_U.device, W_U.dtype)

    def block(a: int, b: int) -> Tensor:
        d = _norm_linear_part(model, "ln_final", _to_residual(dictionary, model, W_dec[a:b]))
        logits = (d @ W_U).float().cpu()
        return logits - logits.mean(-1, keepdim=True)

    def only(block_fn, fill: float):
        if tokens is None:
            return block_fn
        return lambda a, b: block_fn(a, b).masked_fill(~tokens, fill)

    n = dictionary.n_features
    promoted = _topk_rows(only(block, -torch.inf), n, k, True)
    return promoted, _topk_rows(only(block, torch.inf), n, k, False)


def _direct_input(dictionary: Dictionary, model: Any) -> Tensor | None:
    """Token embeddings as the dictionary's input hook sees them on the direct path: the
    embedding module's output (Gemma's sqrt(d_model) scaling included), then, for a reader of
    a norm's `hook_normalized` or `hook_out`, that norm module's own output at that hook."""
    hook = dictionary.in_hook
    if dictionary.d_in != model.cfg.d_model:
        return None
    device = model.W_E.device
    ids = torch.arange(model.W_E.shape[0], device=device)
    embed = torch.cat([model.embed(ids[i : i + 8192]) for i in range(0, ids.numel(), 8192)])
    facts = norm_facts(model)
    if is_residual_stream(hook, facts):
        return embed.float().cpu()
    read = norm_output(hook, facts)
    if read is None or norm_scale_hook(read.norm) not in model.hook_dict:
        return None  # an MLP or attention output: no direct path from the embedding
    norm, hook = read.norm, norm_hook(read)
    captured: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: Any) -> Tensor:
        captured["x"] = act
        return act

    with model.hooks(fwd_hooks=[(hook, keep)]):
        model.get_submodule(norm)(embed)
    return captured["x"].float().cpu()


@torch.no_grad()
def input_tokens(
    dictionary: Dictionary, model: Any, k: int = 10, tokens: Tensor | None = None
) -> TokenList | None:
    """Input tokens whose embedding alone gives each feature the largest pre-activation.

    The embedding goes straight through the residual stream (and the input norm, for a
    dictionary reading `ln*.hook_normalized`) into the encoder; positional embeddings and
    every layer in between are left out. `tokens` (bool [vocab]) limits the list as in
    `logit_effects`. None where no such path exists (an SAE on an MLP output) or the widths
    differ.
    """
    x = _direct_input(dictionary, model)
    if x is None:
        return None
    W_enc = dictionary.W_enc.detach().float().cpu()
    b_enc = dictionary.b_enc.detach().float().cpu()
    if dictionary.apply_b_dec_to_input:
        x = x - dictionary.b_dec.detach().float().cpu()

    def block(a: int, b: int) -> Tensor:
        scores = (x @ W_enc[:, a:b] + b_enc[a:b]).T
        return scores if tokens is None else scores.masked_fill(~tokens, -torch.inf)

    return _topk_rows(block, dictionary.n_features, k, True)


@torch.no_grad()
def nearest_features(dictionary: Dictionary, k: int = 5) -> TokenList:
    """The k other features of the same dictionary whose decoder rows are closest in cosine."""
    unit = F.normalize(dictionary.W_dec.detach().float().cpu(), dim=-1)
    n = dictionary.n_features

    def block(a: int, b: int) -> Tensor:
        sims = unit[a:b] @ unit.T
        sims[torch.arange(b - a), torch.arange(a, b)] = -2.0  # not itself
        return sims

    return _topk_rows(block, n, min(k, max(n - 1, 1)), True)
