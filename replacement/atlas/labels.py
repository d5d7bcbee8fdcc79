"""A short, deterministic label per feature: the tokens it fires on, and the token it promotes.

    'return' -> self        fires mostly on "return", promotes " self" most
    'if'/'elif' -> (        two tokens share most of its top activations
    'def'                   no direct logit effect known (e.g. an SAE on attn.hook_z)
    dead                    never fired on the atlas's corpus

The firing tokens are the tokens at the maximum of the top contexts, weighted by activation;
ties are broken by token id, so the same atlas always gives the same labels.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MAX_TOKEN_CHARS = 12
DOMINANT_SHARE = 0.5
"""A single token names the feature when it carries this share of the top activations."""


def token_text(token: str, limit: int = MAX_TOKEN_CHARS) -> str:
    """A token for a label: surrounding spaces dropped; whitespace-only tokens escaped, with a
    run of spaces written as its length (a newline and 8 spaces: `\\n+8sp`)."""
    stripped = token.strip()
    if stripped:
        text = stripped
    else:
        text = re.sub(r" {2,}", lambda m: f"+{len(m.group())}sp", token)
        text = text.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    text = text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def feature_label(
    peak_tokens: Sequence[int],
    peak_values: Sequence[float],
    promoted: Sequence[int],
    vocab: Sequence[str],
) -> str:
    """Label from the tokens at the maximum of the top contexts and the most promoted tokens.

    Args:
        peak_tokens: token id at the maximum of each top context (empty for a dead feature).
        peak_values: the activation there (the weight of that token's vote).
        promoted: token ids the feature promotes most, best first (may be empty).
        vocab: token id -> string.
    """
    weight: dict[str, float] = {}
    first_id: dict[str, int] = {}
    for tok, value in zip(peak_tokens, peak_values, strict=True):
        if value <= 0:
            continue
        text = token_text(vocab[tok])
        weight[text] = weight.get(text, 0.0) + float(value)
        first_id[text] = min(first_id.get(text, tok), tok)
    if not weight:
        return "dead"
    ranked = sorted(weight, key=lambda t: (-round(weight[t], 6), first_id[t]))
    total = sum(weight.values())
    if weight[ranked[0]] >= DOMINANT_SHARE * total or len(ranked) == 1:
        left = f"'{ranked[0]}'"
    else:
        left = f"'{ranked[0]}'/'{ranked[1]}'"
    if not promoted:
        return left
    return f"{left} -> {token_text(vocab[promoted[0]])}"
