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


MIN_SHARE = 0.6
"""A pattern names a feature when it covers this share of the top contexts' activation."""
N_PROMOTED = 3


def _token_class(token: str) -> str | None:
    """A coarse class of a token: what a group of different peak tokens may share."""
    text = token.strip()
    if not text:
        return "indentation" if "\n" in token or token.startswith("  ") else "whitespace"
    if text.isdigit():
        return "numbers"
    if all(not c.isalnum() for c in text):
        return "punctuation"
    if text[0].isupper():
        return "Capitalised words"
    if text.isidentifier():
        return "words/names"
    return None


def describe_contexts(
    contexts: Sequence[dict], promoted: Sequence[int], vocab: Sequence[str] | dict
) -> str:
    """A label read at a glance: the pattern its top contexts share, then what it promotes.

    The pattern is the first of these that covers `MIN_SHARE` of the top contexts' summed
    activation: one token at the peak (`'return'`), the token before the peak (`after 'def'`),
    a token pair at the peak (`'if'/'elif'`), one coarse class of the peak tokens (`numbers`,
    `indentation`, ...); else the three commonest peak tokens. The most promoted tokens follow
    an arrow (`'return' → self x cls`).

    Args:
        contexts: the top contexts, each {"value", "tokens", "centre"} (`FeatureAtlas.record`).
        promoted: token ids the feature promotes most, best first (may be empty).
        vocab: token id -> string (a list, or a dict keyed by str(id)).
    """

    def word(t: int) -> str:
        return vocab[str(t)] if isinstance(vocab, dict) else vocab[t]

    peak: dict[str, float] = {}
    before: dict[str, float] = {}
    kind: dict[str, float] = {}
    total = 0.0
    for c in contexts:
        value = float(c["value"])
        if value <= 0:
            continue
        total += value
        tok = word(c["tokens"][c["centre"]])
        peak[token_text(tok)] = peak.get(token_text(tok), 0.0) + value
        if c["centre"] > 0:
            prev = token_text(word(c["tokens"][c["centre"] - 1]))
            before[prev] = before.get(prev, 0.0) + value
        cls = _token_class(tok)
        if cls is not None:
            kind[cls] = kind.get(cls, 0.0) + value
    if total == 0:
        return "dead"

    def ranked(d: dict[str, float]) -> list[str]:
        return sorted(d, key=lambda k: (-round(d[k], 6), k))

    tops, prevs, kinds = ranked(peak), ranked(before), ranked(kind)
    if peak[tops[0]] >= DOMINANT_SHARE * total:
        pattern = f"'{tops[0]}'"
    elif prevs and before[prevs[0]] >= MIN_SHARE * total:
        pattern = f"after '{prevs[0]}'"
    elif len(tops) > 1 and peak[tops[0]] + peak[tops[1]] >= MIN_SHARE * total:
        pattern = f"'{tops[0]}'/'{tops[1]}'"
    elif kinds and kind[kinds[0]] >= MIN_SHARE * total:
        pattern = kinds[0]
    else:
        pattern = "/".join(f"'{t}'" for t in tops[:3])
    if not promoted:
        return pattern
    return f"{pattern} → " + " ".join(token_text(word(t)) for t in promoted[:N_PROMOTED])
