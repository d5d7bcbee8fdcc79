"""Static, browsable pages of an atlas: `index.html` and one `layer_{l}.html` per layer.

A layer page embeds its features' records (token ids, window activations as bytes) and the
vocabulary as JSON, and builds a card in the browser when a feature is clicked (or named in
the URL as `#f=148`). Pages need no network and no server.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from replacement.atlas.atlas import FeatureAtlas
from replacement.atlas.card import static_text
from replacement.atomic import write_text

_LAYER_STYLE = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 0; color: #222; }
header { padding: 8px 14px; border-bottom: 1px solid #ddd; background: #fafafa; }
header h1 { font-size: 15px; margin: 0 0 4px; }
main { display: flex; align-items: flex-start; }
#list { width: 420px; flex: none; max-height: calc(100vh - 70px); overflow: auto; }
#list table { border-collapse: collapse; width: 100%; font-size: 12px; }
#list td { padding: 1px 6px; border-bottom: 1px solid #f0f0f0; white-space: nowrap;
  overflow: hidden; text-overflow: ellipsis; max-width: 220px; }
#list tr { cursor: pointer; }
#list tr:hover, #list tr.selected { background: #fff3e0; }
#card { flex: 1; padding: 10px; }
"""


def script_json(data: Any) -> str:
    """JSON safe inside a <script> element (no `</script>`, no `<!--`)."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def layer_page_html(atlas: FeatureAtlas, layer: int) -> str:
    """The page of one layer (see the module docstring)."""
    entry = atlas.layers[layer]
    records = [atlas.record(layer, f) for f in range(entry.n_features)]
    title = f"Layer {layer}: {entry.n_features} features of {entry.source or entry.out_hook}"
    corpus = (
        f"{atlas.settings.get('n_tokens', '?'):,} tokens of {atlas.settings.get('corpus', '?')}"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_LAYER_STYLE}{static_text("feature_card.css")}</style></head>
<body><header><h1>{html.escape(title)}</h1>
<div>{html.escape(entry.in_hook)} &rarr; {html.escape(entry.out_hook)} · {html.escape(corpus)} ·
<input id="filter" placeholder="filter labels or index"> · <a href="index.html">all layers</a></div>
</header>
<main><div id="list"><table><tbody id="features"></tbody></table></div><div id="card"></div></main>
<script type="application/json" id="atlas-data">{script_json({"records": records, "vocab": atlas.vocab})}</script>
<script>{static_text("feature_card.js")}</script>
<script>{static_text("layer_page.js")}</script>
</body></html>
"""


def write_atlas_pages(atlas: FeatureAtlas, folder: str | Path) -> list[Path]:
    """Write `index.html` and `layer_{l}.html` for every layer into `folder`; returns the paths."""
    folder = Path(folder)
    paths = []
    links = []
    for layer, entry in sorted(atlas.layers.items()):
        path = folder / f"layer_{layer}.html"
        write_text(path, layer_page_html(atlas, layer))
        paths.append(path)
        alive = sum(label != "dead" for label in entry.labels)
        links.append(
            f'<li><a href="{path.name}">layer {layer}</a>: {entry.n_features} features '
            f"({alive} fired), {html.escape(entry.in_hook)} &rarr; {html.escape(entry.out_hook)}</li>"
        )
    s = atlas.settings
    index = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Feature atlas</title></head>
<body style="font: 14px/1.5 system-ui, sans-serif; margin: 16px">
<h1 style="font-size: 18px">Feature atlas of {html.escape(str(s.get("model_name", "")))}</h1>
<p>{s.get("n_tokens", 0):,} tokens of {html.escape(str(s.get("corpus", "")))}</p>
<ul>{"".join(links)}</ul></body></html>
"""
    write_text(folder / "index.html", index)
    return [folder / "index.html", *paths]
