"""A feature's card as self-contained HTML (the notebook view of `atlas[layer, feature]`).

It renders the record of `FeatureAtlas.record` with the classes of `static/feature_card.css`,
the same structure `static/feature_card.js` builds in the static pages: header and label,
frequency / mean / max, the activation histogram, promoted / suppressed / input tokens,
nearest features, the top contexts and examples per quantile band, every token shaded by the
feature's activation on it (hover a token for the value).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

SHADE = "rgba(255,140,0,{:.3f})"
HIST_WIDTH, HIST_HEIGHT = 240, 44


def static_text(name: str) -> str:
    """A file of `replacement/atlas/static` (the card's CSS and script)."""
    return resources.files("replacement.atlas").joinpath("static", name).read_text("utf-8")


def token_display(token: str) -> str:
    """A token as shown in a context line: newlines and tabs made visible, on one line."""
    return token.replace("\n", "⏎").replace("\t", "→").replace("\r", "␍")


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def _context_html(ctx: Mapping[str, Any], vocab: Any, max_act: float) -> str:
    spans = []
    for i, (tok, act) in enumerate(zip(ctx["tokens"], ctx["acts"], strict=True)):
        value = act / 255 * max_act
        style = f' style="background:{SHADE.format(0.85 * act / 255)}"' if act else ""
        cls = "sc-tok sc-centre" if i == ctx["centre"] else "sc-tok"
        text = html.escape(token_display(vocab[tok]))
        spans.append(f'<span class="{cls}"{style} title="{_fmt(value)}">{text}</span>')
    return (
        f'<div class="sc-ctx"><span class="sc-val">{_fmt(ctx["value"])}</span>'
        + "".join(spans)
        + "</div>"
    )


def _histogram_svg(hist: Sequence[float]) -> str:
    if not hist or max(hist) <= 0:
        return ""
    width = HIST_WIDTH / len(hist)
    top = max(hist)
    bars = "".join(
        f'<rect x="{i * width:.1f}" y="{HIST_HEIGHT * (1 - h / top):.1f}" '
        f'width="{max(width - 1, 1):.1f}" height="{HIST_HEIGHT * h / top:.1f}"/>'
        for i, h in enumerate(hist)
    )
    return (
        f'<svg class="sc-hist" width="{HIST_WIDTH}" height="{HIST_HEIGHT}" '
        f'viewBox="0 0 {HIST_WIDTH} {HIST_HEIGHT}">{bars}</svg>'
    )


def _token_list(title: str, pairs: list | None, vocab: Any, cls: str) -> str:
    if pairs is None:
        return ""
    items = "".join(
        f'<li class="{cls}">{html.escape(token_display(vocab[t]))}'
        f'<span class="sc-num">{_fmt(v)}</span></li>'
        for t, v in pairs
    )
    return f'<div class="sc-list"><h4>{title}</h4><ol>{items}</ol></div>'


def _scores_html(scores: Mapping[str, Any] | None) -> str:
    """One line of interpretability scores (`sparse-circuits interpret`), if any."""
    if not scores or scores.get("explanation") is None:
        return ""
    parts = [f"explained as <b>{html.escape(scores['explanation'])}</b>"]
    if scores.get("detection") is not None:
        parts.append(f"detection {scores['detection']:.2f} · fuzzing {scores['fuzzing']:.2f}")
    if scores.get("concept"):
        parts.append(f"best concept {html.escape(scores['concept'])} (F1 {scores['concept_f1']:.2f})")
    return f'<div class="sc-stats sc-interp">{" · ".join(parts)}</div>'


def feature_card_html(record: Mapping[str, Any], vocab: Any, with_style: bool = True) -> str:
    """The card of one feature's record; `vocab` maps token id -> string (list or dict)."""
    r = record
    max_act = float(r["max"])
    parts = [f"<style>{static_text('feature_card.css')}</style>"] if with_style else []
    parts.append(f'<div class="sc-card" data-layer="{r["layer"]}" data-feature="{r["feature"]}">')
    parts.append(
        f'<div class="sc-head"><b>L{r["layer"]} F{r["feature"]}</b> '
        f'<span class="sc-label">{html.escape(r["label"])}</span></div>'
    )
    parts.append(
        f'<div class="sc-stats">fires on {100 * r["frequency"]:.3g}% of tokens · mean '
        f"{_fmt(r['mean'])} · max {_fmt(max_act)}</div>"
    )
    parts.append(_scores_html(r.get("interpretability")))
    parts.append(_histogram_svg(r["hist"]))
    lists = (
        _token_list("promotes", r["promoted"], vocab, "sc-pos")
        + _token_list("suppresses", r["suppressed"], vocab, "sc-neg")
        + _token_list("excited by (input)", r["inputs"], vocab, "")
    )
    neighbours = "".join(
        f"<li>F{f} {html.escape(label)}<span class='sc-num'>{cos:.2f}</span></li>"
        for f, cos, label in r["neighbours"]
    )
    lists += f'<div class="sc-list"><h4>nearest features</h4><ol>{neighbours}</ol></div>'
    parts.append(f'<div class="sc-lists">{lists}</div>')
    parts.append("<h4>top activations</h4>")
    if not r["top"]:
        parts.append('<div class="sc-empty">never fired on the corpus</div>')
    parts += [_context_html(c, vocab, max_act) for c in r["top"]]
    edges = r["band_edges"]
    if any(r["bands"]):
        parts.append("<h4>examples by activation quantile</h4>")
    for b, examples in enumerate(r["bands"]):
        if not examples:
            continue
        parts.append(
            f'<div class="sc-band">band {b + 1}: ({_fmt(edges[b])}, {_fmt(edges[b + 1])}]</div>'
        )
        parts += [_context_html(c, vocab, max_act) for c in examples]
    parts.append("</div>")
    return "".join(parts)
