"""Head loadings and QK pairs of a graph's cross-position edges, for the files and the views.

`qk_summary` computes, for the pruned graph's edges whose source and target positions differ,
their head loadings, and for each edge's top heads the QK attribution of that head's score at
(query = the target's position, key = the source's position): the pairs of largest |term|.
The result is plain JSON: `trace --qk` keeps it in the graph files' metadata ("qk"), the JSON
export carries it as an extra top-level field "qk" (the circuit-tracer frontend ignores it),
and the HTML page's QK panel (`circuits/views/static/qk_panel.js`) shows it.
"""

from __future__ import annotations

import html
from typing import Any

import torch

from circuits.attention.head_loadings import head_loadings, strongest_edges
from circuits.attention.qk import AttentionAttribution
from circuits.views.feature_labels import LABELS_KEY, feature_key
from replacement.errors import SparseCircuitsError

QK_KEY = "qk"
"""Where the summary lives in `graph.metadata` and in the JSON export."""


def _label(graph: Any, node_id: str, fallback: str) -> str:
    """The atlas label of a feature source when the graph has one, else the source's label."""
    parts = node_id.split("_")
    if len(parts) == 3 and parts[0] != "E" and parts[1] != "-1":
        found = graph.metadata.get(LABELS_KEY, {}).get(feature_key(int(parts[0]), int(parts[1])))
        if found:
            return f"{found} ({fallback})"
    return fallback


def qk_summary(
    model: Any,
    dictionaries: Any,
    graph: Any,
    *,
    max_edges: int = 200,
    heads_per_edge: int = 2,
    pairs_per_head: int = 10,
) -> dict[str, Any]:
    """Head loadings of up to `max_edges` cross-position edges of `graph` (strongest first)
    and the top QK pairs of each edge's `heads_per_edge` heads of largest |loading|."""
    from circuits.graph.export import node_ids

    targets, sources = strongest_edges(graph, max_edges, cross_position=True)
    ids = node_ids(graph)
    out: dict[str, Any] = {
        "n_layers": model.cfg.n_layers,
        "n_heads": model.cfg.n_heads,
        "query": "target position",
        "key": "source position",
        "edges": [],
        "heads": [],
    }
    if len(targets) == 0:
        return out
    loadings = head_loadings(model, dictionaries, graph, (targets, sources))
    att = AttentionAttribution(model, dictionaries, graph.tokens)
    wanted: dict[tuple[int, int, int, int], None] = {}
    for e in range(loadings.n_edges):
        t, s = int(loadings.target[e]), int(loadings.source[e])
        query, key = int(graph.node_pos[t]), int(graph.node_pos[s])
        top = loadings.top_heads(e, model.cfg.n_layers * model.cfg.n_heads)
        top = [h for h in top if h[2] != 0.0][:heads_per_edge]
        for layer, head, _ in top:
            scores = att.stream.get(layer, "attn.hook_attn_scores")
            if key <= query and torch.isfinite(scores[head, query, key]):
                wanted[(layer, head, query, key)] = None
        out["edges"].append(
            {
                "source": ids[s],
                "target": ids[t],
                "weight": float(loadings.edge[e]),
                "bypass": [float(x) for x in loadings.bypass[e]],
                "heads": [[layer, head, value] for layer, head, value in loadings.top_heads(e, 8)],
            }
        )
    att.prepare(sorted({w[0] for w in wanted}))
    for layer, head, query, key in sorted(wanted):
        a = att.qk(layer, head, query, key)
        out["heads"].append(
            {
                "layer": layer,
                "head": head,
                "query": query,
                "key": key,
                "score": a.total,
                "pairs": [
                    [
                        _label(graph, p.query_id, p.query_source),
                        _label(graph, p.key_id, p.key_source),
                        p.value,
                        p.query_id,
                        p.key_id,
                    ]
                    for p in a.top_pairs(pairs_per_head)
                ],
            }
        )
    att.release()
    return out


def qk_html(summary: dict[str, Any], n_edges: int = 10) -> str:
    """HTML tables of a summary: each edge's top heads, and each head's top QK pairs."""
    if not summary.get("edges"):
        return "<p>No cross-position edges.</p>"
    parts = [
        "<table><tr><th>edge (source &rarr; target)</th><th>weight</th><th>top heads "
        "(layer.head: loading)</th></tr>"
    ]
    for e in summary["edges"][:n_edges]:
        heads = ", ".join(f"L{lay}.H{h}: {v:+.3g}" for lay, h, v in e["heads"][:4])
        parts.append(
            f"<tr><td>{html.escape(e['source'])} &rarr; {html.escape(e['target'])}</td>"
            f"<td>{e['weight']:+.4g}</td><td>{heads}</td></tr>"
        )
    parts.append("</table>")
    for h in summary["heads"][:n_edges]:
        parts.append(
            f"<p><b>L{h['layer']}.H{h['head']}</b> query @{h['query']}, key "
            f"@{h['key']}: score {h['score']:+.4g}</p><table><tr><th>query side</th>"
            "<th>key side</th><th>term</th></tr>"
        )
        for q, k, v, *_ in h["pairs"]:
            parts.append(
                f"<tr><td>{html.escape(q)}</td><td>{html.escape(k)}</td><td>{v:+.4g}</td></tr>"
            )
        parts.append("</table>")
    return "<div class='sc-qk'>" + "".join(parts) + "</div>"


def qk_view(obj: Any) -> Any:
    """A Jupyter display object: of a graph carrying a QK summary, a summary dict, or a
    `QKAttribution` (its top pairs and each side's top sources)."""
    from IPython.display import HTML

    if hasattr(obj, "_repr_html_"):
        return HTML(obj._repr_html_())
    summary = obj.metadata.get(QK_KEY) if hasattr(obj, "metadata") else obj
    if not isinstance(summary, dict):
        raise SparseCircuitsError(
            "qk_view takes a QKAttribution, a qk_summary dict or a graph traced with --qk"
        )
    return HTML(qk_html(summary))
