"""The interactive HTML page, driven in the system's Chromium by Playwright.

The browser tests skip (by name) where Chromium or Playwright is missing. They share few page
loads: a 64-token page for the layout, a small page for the interactions, a comparison page.
"""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from html.parser import HTMLParser

import pytest
import torch

from circuits import AttributionGraph
from circuits.graph.export import node_ids, validate
from circuits.views.html_page import (
    influence_shares,
    page_data,
    render_page,
    visible,
    visible_nodes,
    write_compare_html,
    write_html,
)
from replacement.errors import SparseCircuitsError
from tests.browser import CHROMIUM
from tests.test_draw import synthetic_graph

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # the dev extra has it
    sync_playwright = None
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or sync_playwright is None,
    reason="needs Chromium (apt-get install chromium) and Playwright (the dev extra) to run "
    "the page's script",
)
WINDOW = {"width": 1280, "height": 800}


def with_logit_labels(graph: AttributionGraph) -> AttributionGraph:
    """Logits labelled as `attribute` labels them (token and probability)."""
    for i in graph.find("logit"):
        p = float(graph.node_activation[i])
        graph.node_label[i] = f"logit ' tok{int(graph.node_feature[i])}' p={p:.3f}"
    return graph


@pytest.fixture(scope="module")
def small():
    """A pruned 6-position graph (features and errors carry influence shares)."""
    graph = with_logit_labels(synthetic_graph(seed=3, n_pos=6, n_layers=3).prune(1.0, 1.0))
    assert graph.node_influence is not None
    return graph


# ---- without a browser ---------------------------------------------------------------------
def test_page_is_self_contained(small, tmp_path):
    page = write_html(small, tmp_path / "g.html", title="a <b> & c")
    text = page.read_text(encoding="utf-8")
    assert "<title>a &lt;b&gt; &amp; c</title>" in text

    class Elements(HTMLParser):
        attrs: list = []

        def handle_starttag(self, tag, attrs):
            self.attrs.append(dict(attrs))

    parser = Elements()
    parser.feed(text)
    for attrs in parser.attrs:
        for name in ("src", "href"):
            assert not re.match(r"\s*(https?:)?//", attrs.get(name) or ""), attrs
    assert re.search(r"https?://", text) is None  # not even the SVG namespace
    assert "@import" not in text and "url(" not in text
    # the embedded data is the graph, and survives a `</script>` in a label
    small = replace(small, node_label=["</script><script>alert(1)</script>", *small.node_label[1:]])
    text = write_html(small, tmp_path / "h.html").read_text(encoding="utf-8")
    blob = re.search(r'<script type="application/json" id="graph-data">(.*?)</script>', text, re.S)
    data = json.loads(blob.group(1))
    assert data["graphs"][0]["nodes"][0]["label"] == small.node_label[0]
    assert data == json.loads(json.dumps({"graphs": [page_data(small)], "extra": {}}))
    assert len(data["graphs"][0]["edges"]) == int((small.adjacency != 0).sum())


def _chain() -> AttributionGraph:
    """token -> three features (edge weights 3, 2, 1) -> one logit (weights 1 each)."""
    kinds = ["token", "feature", "feature", "feature", "logit"]
    adjacency = torch.zeros(5, 5)
    adjacency[1, 0], adjacency[2, 0], adjacency[3, 0] = 3.0, 2.0, -1.0
    adjacency[4, 1] = adjacency[4, 2] = adjacency[4, 3] = 0.5
    return AttributionGraph(
        prompt="x",
        tokens=torch.tensor([0]),
        token_strs=["x"],
        node_kind=kinds,
        node_layer=torch.tensor([-1, 0, 0, 0, 1]),
        node_pos=torch.zeros(5, dtype=torch.long),
        node_feature=torch.tensor([0, 1, 2, 3, 9]),
        node_activation=torch.tensor([0.0, 1.0, 1.0, 1.0, 0.9]),
        node_label=["x", "a", "b", "c", "logit ' y' p=0.900"],
        adjacency=adjacency,
        n_layers=1,
        node_influence=torch.tensor([0.0, 0.2, 0.5, 0.9, 0.0]),
    )


def test_visible_rule_on_a_known_graph():
    graph = _chain()
    assert visible(graph) == (
        [0, 1, 2, 3, 4],
        [(0, 1), (0, 2), (0, 3), (1, 4), (2, 4), (3, 4)],
    )
    assert visible_nodes(graph, 0.6) == [0, 1, 2, 4]  # feature c (share 0.9) hidden
    # |weights| 3, 2, 1, .5, .5, .5 (total 7.5): a share of 0.5 is reached by 3 + 2 = 5 >= 3.75
    nodes, edges = visible(graph, 1.0, 0.5)
    assert edges == [(0, 1), (0, 2)] and nodes == [0, 1, 2, 4]  # c left without an edge
    nodes, edges = visible(graph, 0.6, 0.9)  # of 3, 2, .5, .5 (total 6): 5.5 >= 5.4
    assert edges == [(0, 1), (0, 2), (1, 4)] and nodes == [0, 1, 2, 4]


def test_compare_page_refuses_two_prompts(small, tmp_path):
    other = synthetic_graph(seed=4, n_pos=5, n_layers=3)
    with pytest.raises(SparseCircuitsError, match="different prompts"):
        write_compare_html(
            [("a", small, None, None), ("b", other, None, None)], tmp_path / "c.html"
        )
    with pytest.raises(SparseCircuitsError, match="one or two graphs"):
        render_page([page_data(small)] * 3, "three")


# ---- in Chromium ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def open_page(browser, path, fragment=""):
    page = browser.new_page(viewport=WINDOW)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.resolve().as_uri() + (f"#{fragment}" if fragment else ""))
    page.wait_for_function("window.sparseCircuitsPage !== undefined")
    assert not errors, errors
    return page


def shown(page, graph_index=0):
    """Drawn nodes (index -> class names) and edges {(source, target): weight} of a pane."""
    return page.evaluate(
        """g => {
        const svg = document.querySelectorAll('.graph-pane svg')[g];
        const nodes = {}, edges = {};
        svg.querySelectorAll('.node').forEach(n => { nodes[n.getAttribute('data-key')] = n.getAttribute('class'); });
        svg.querySelectorAll('.edge').forEach(e => {
          edges[e.getAttribute('data-source') + '>' + e.getAttribute('data-target')] = Number(e.getAttribute('data-weight'));
        });
        return [nodes, edges]; }""",
        graph_index,
    )


def href(page) -> str:
    """The address as the page sees it now (`page.url` follows replaceState a moment later)."""
    return page.evaluate("location.href")


def boxes(page, selector):
    return page.evaluate(
        """s => Array.from(document.querySelectorAll(s)).map(e => {
        const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom, e.textContent]; })""",
        selector,
    )


def overlapping(rects, slack=0.5):
    """Pairs of rectangles that overlap by more than `slack` pixels each way."""
    out = []
    for a in range(len(rects)):
        for b in range(a + 1, len(rects)):
            (l1, t1, r1, b1, x), (l2, t2, r2, b2, y) = rects[a][:5], rects[b][:5]
            if min(r1, r2) - max(l1, l2) > slack and min(b1, b2) - max(t1, t2) > slack:
                out.append((x, y))
    return out


@needs_chromium
def test_64_tokens_readable_in_1280_px(browser, tmp_path):
    graph = synthetic_graph(seed=5, n_pos=64, n_layers=3)
    graph.token_strs = [f" word{p}" if p % 2 else f"tok{p}" for p in range(64)]
    graph = with_logit_labels(graph.prune(0.9, 0.98))
    page = open_page(browser, write_html(graph, tmp_path / "g64.html"))
    page.screenshot(path=str(tmp_path / "g64.png"))
    sizes = page.evaluate(
        """() => { const d = document.documentElement, a = document.querySelector('.graph-area');
        return [d.scrollWidth, d.clientWidth, a.scrollWidth, a.clientWidth, a.getBoundingClientRect().right]; }"""
    )
    assert sizes[0] <= sizes[1] and sizes[2] <= sizes[3], sizes
    area_right = sizes[4]
    tokens = boxes(page, ".token-label")
    assert [t[4] for t in tokens] == graph.token_strs
    assert all(t[0] >= 0 and t[2] <= area_right for t in tokens)  # every token in the pane
    assert all(0 <= b[0] and b[2] <= area_right for b in boxes(page, ".node"))  # every node
    labels = boxes(page, ".node-label")
    assert overlapping(tokens) == [] and overlapping(labels) == []
    assert overlapping(tokens + labels) == []
    logits = [t[4] for t in boxes(page, ".logit-label")]
    assert sorted(logits) == sorted(
        graph.node_label[i].removeprefix("logit ") for i in graph.find("logit")
    )
    rows = [t[4] for t in boxes(page, ".row-label")]
    assert rows == ["emb", "L0", "L1", "L2", "out"]

    # zooming in (wheel over the pane) widens the columns: the features in view get their
    # labels (most of them; some at the pane edge have no room), which stay apart
    def labelled_share():
        in_view = [b for b in boxes(page, ".node.feature") if 0 < b[0] < area_right]
        drawn = [b for b in boxes(page, ".node-label") if 0 < b[0] < area_right]
        return (len(drawn) - len(boxes(page, ".logit-label"))) / len(in_view)

    before = labelled_share()
    page.mouse.move(500, 450)
    for _ in range(4):
        page.mouse.wheel(0, -400)
        page.wait_for_timeout(40)
    page.wait_for_function("window.sparseCircuitsPage.getState().zoom > 3")
    page.wait_for_timeout(50)
    after = labelled_share()
    assert before < 0.6 and after > 0.8, (before, after)
    assert overlapping(boxes(page, ".node-label")) == []
    page.click("#fit")
    assert page.evaluate("window.sparseCircuitsPage.getState().zoom") == 1
    page.close()


@pytest.fixture(scope="module")
def small_page(browser, small, tmp_path_factory):
    """One page of the small graph, with a card (and an interpretability score) for its first
    feature, shared by the interaction tests (each starts from an empty state)."""
    data = page_data(small, scores={"replacement": 0.75, "completeness": 0.5})
    i = small.find("feature")[0]
    layer, feature = int(small.node_layer[i]), int(small.node_feature[i])
    data["cards"] = {f"{layer}/{feature}": _card(layer, feature)}
    data["vocab"] = {"1": " the", "2": " cat"}
    path = tmp_path_factory.mktemp("page") / "small.html"
    path.write_text(render_page([data], "small"), encoding="utf-8")
    page = open_page(browser, path)
    yield page
    page.close()


def _card(layer: int, feature: int) -> dict:
    context = {"value": 2.0, "tokens": [1, 2], "acts": [0, 255], "centre": 1}
    return {
        "layer": layer, "feature": feature, "label": "'cat' -> the", "frequency": 0.01,
        "mean": 1.0, "max": 2.0, "hist": [1, 0, 2], "promoted": [[1, 0.5]],
        "suppressed": [[2, -0.4]], "inputs": None, "neighbours": [[7, 0.3, "'dog'"]],
        "top": [context], "bands": [[context]], "band_edges": [0.0, 2.0],
        "interpretability_score": 0.8,
    }  # fmt: skip


def reset(page, fragment=""):
    """Set the page's state from a fragment (as a pasted link does) and wait for it."""
    page.evaluate(
        """f => { window.__changed = false;
        window.addEventListener('hashchange', () => { window.__changed = true; }, { once: true });
        location.hash = f ? f : '#clear'; }""",
        fragment,
    )
    page.wait_for_function("window.__changed")
    page.mouse.move(1, 1)


@needs_chromium
def test_hover_shows_card_beside_the_graph(small, small_page):
    page = small_page
    reset(page)
    i = small.find("feature")[0]
    a = small.adjacency != 0
    assert "Hover over a node" in page.inner_text("#details")
    page.hover(f"#node-0-{i}")
    details = page.inner_text("#details")
    assert small.node_label[i] in details
    assert f"activation {float(small.node_activation[i]):.3f}" in details
    assert "'cat' -> the" in details and "interpretability score 0.800" in details
    assert page.locator("#details .sc-card .sc-ctx").count() >= 1  # top contexts
    panel, area = boxes(page, "#panel")[0], boxes(page, ".graph-area")[0]
    assert overlapping([panel, area]) == []  # the panel never covers the graph
    # the hovered node's inputs and outputs are highlighted
    classes = shown(page)[0]
    inputs = {str(j) for j in a[i].nonzero().flatten().tolist()}
    outputs = {str(j) for j in a[:, i].nonzero().flatten().tolist()}
    assert {k for k, c in classes.items() if " input" in c} == inputs
    assert {k for k, c in classes.items() if " output" in c} == outputs
    page.mouse.move(1, 1)
    assert "Hover over a node" in page.inner_text("#details")


@needs_chromium
def test_click_pins_and_the_url_keeps_the_view(small, small_page, browser):
    page = small_page
    reset(page)
    ids = node_ids(small)
    feats = small.find("feature")
    events = []
    page.evaluate(
        "window.__clicks = []; sparseCircuitsPage.on('nodeclick', d => __clicks.push(d.id))"
    )
    page.click(f"#node-0-{feats[0]}")
    page.click(f"#node-0-{feats[1]}")
    classes = shown(page)[0]
    assert {k for k, c in classes.items() if "pinned" in c.split()} == {
        str(feats[0]),
        str(feats[1]),
    }
    assert "selected" in classes[str(feats[1])].split()
    events = page.evaluate("window.__clicks")
    assert events == [ids[feats[0]], ids[feats[1]]]
    assert f"pins={ids[feats[0]]},{ids[feats[1]]}" in href(page)
    assert page.locator(".pin-row").count() == 2
    page.click(f"#node-0-{feats[0]}")  # unpin
    assert page.locator(".pin-row").count() == 1 and f"pins={ids[feats[1]]}" in href(page)
    # the link restores the view in a fresh page
    page.fill("#search", "L1")
    url = href(page)
    fresh = browser.new_page(viewport=WINDOW)
    fresh.goto(url)
    fresh.wait_for_function("window.sparseCircuitsPage !== undefined")
    assert fresh.input_value("#search") == "L1"
    assert fresh.evaluate("sparseCircuitsPage.getState().pins") == [[ids[feats[1]]]]
    fresh.close()


@needs_chromium
def test_supernode_sums_its_members_edges(small, small_page):
    page = small_page
    reset(page)
    ids = node_ids(small)
    a = small.adjacency
    # three features of layer 1 and one of layer 2 they feed
    layer = small.node_layer
    members = [i for i in small.find("feature") if int(layer[i]) == 1][:3]
    target = next(
        t for t in small.find("feature") if int(layer[t]) == 2 and (a[t, members] != 0).any()
    )
    for i in [*members, target]:
        page.click(f"#node-0-{i}")
    page.locator(f'.pin-check[data-id="{ids[target]}"]').uncheck()
    page.fill("#group-name", "my group")
    page.click("#group")
    page.check("#view-pinned")
    nodes, edges = shown(page)
    assert set(nodes) == {"group-0", str(target)}
    group = page.locator('.node.supernode[data-group="my group"]')
    assert group.count() == 1
    assert set(group.get_attribute("data-members").split(",")) == {str(i) for i in members}
    assert edges == {f"group-0>{target}": pytest.approx(float(a[target, members].sum()))}
    assert "my group" in [t[4] for t in boxes(page, ".node-label")]
    assert "view=pinned" in href(page) and "groups=my%20group:" in href(page)
    # the pinned subgraph exports in the circuit-tracer schema, with the group as a supernode
    document = page.evaluate("sparseCircuitsPage.exportJSON(0)")
    validate(document)
    pinned = [ids[i] for i in [*members, target]]
    assert [n["node_id"] for n in document["nodes"]] == pinned
    assert document["qParams"]["supernodes"] == [["my group", *[ids[i] for i in members]]]
    expected = {
        (ids[s], ids[t]): float(a[t, s])
        for s in [*members, target]
        for t in [*members, target]
        if a[t, s] != 0
    }
    links = {(x["source"], x["target"]): x["weight"] for x in document["links"]}
    assert links == pytest.approx(expected)


@needs_chromium
def test_sliders_reprune_live(small, small_page):
    page = small_page
    reset(page)
    shares = sorted(set(influence_shares(small).tolist()))
    node_t = (shares[len(shares) // 2] + shares[len(shares) // 2 + 1]) / 2  # not on a share
    for node_threshold, edge_threshold in [(1.0, 0.6), (node_t, 1.0), (node_t, 0.8)]:
        for slider, value in (
            ("#node-threshold", node_threshold),
            ("#edge-threshold", edge_threshold),
        ):
            page.evaluate(
                """([s, v]) => { const e = document.querySelector(s); e.value = v;
                e.dispatchEvent(new Event('input', { bubbles: true })); }""",
                [slider, value],
            )
        nodes, edges = shown(page)
        want_nodes, want_edges = visible(small, node_threshold, edge_threshold)
        assert sorted(map(int, nodes)) == want_nodes
        assert {tuple(map(int, k.split(">"))) for k in edges} == set(want_edges)
        assert page.inner_text("#node-count") == str(len(want_nodes))
        assert f"edge={edge_threshold}" in href(page) or edge_threshold == 1.0
    assert len(want_nodes) < small.n_nodes and len(want_edges) < int((small.adjacency != 0).sum())


@needs_chromium
def test_search_marks_matching_nodes(small, small_page):
    page = small_page
    reset(page)
    page.fill("#search", "l2 p3")
    want = {str(i) for i, label in enumerate(small.node_label) if "l2 p3" in label.lower()}
    assert want
    classes = shown(page)[0]
    assert {k for k, c in classes.items() if "match" in c.split()} == want
    assert page.inner_text("#match-count") == f"{len(want)} found"
    assert "q=l2%20p3" in href(page)


@needs_chromium
def test_exports_and_edge_hook(small, small_page):
    page = small_page
    reset(page)
    # nothing pinned: the shown graph is exported
    document = page.evaluate("sparseCircuitsPage.exportJSON(0)")
    validate(document)
    assert len(document["nodes"]) == small.n_nodes
    assert len(document["links"]) == int((small.adjacency != 0).sum())
    svg = ET.fromstring(page.evaluate("sparseCircuitsPage.exportSVG(0)"))
    assert svg.tag.endswith("svg") and "style" in {e.tag.split("}")[-1] for e in svg}
    n_shapes = sum(1 for e in svg.iter() if "node" in e.get("class", "").split())
    assert n_shapes == small.n_nodes
    png = page.evaluate("sparseCircuitsPage.exportPNG(0, 1)")
    raw = base64.b64decode(png.split(",", 1)[1])
    width = int.from_bytes(raw[16:20], "big")
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and width == int(float(svg.get("width")))
    # plugins hear edge clicks
    page.evaluate("window.__edges = []; sparseCircuitsPage.on('edgeclick', d => __edges.push(d))")
    page.evaluate(
        "document.querySelector('.edge').dispatchEvent(new MouseEvent('click', { bubbles: true }))"
    )
    clicked = page.evaluate("window.__edges")[0]
    s, t = int(clicked["source"]), int(clicked["target"])
    assert clicked["weight"] == pytest.approx(float(small.adjacency[t, s]))


@needs_chromium
def test_two_graphs_side_by_side(small, browser, tmp_path):
    other = with_logit_labels(synthetic_graph(seed=9, n_pos=6, n_layers=3).prune(1.0, 1.0))
    path = write_compare_html(
        [
            ("sae_local", small, None, {"replacement": 0.61, "completeness": 0.82}),
            ("skip_transcoder", other, None, {"replacement": 0.71, "completeness": 0.93}),
        ],
        tmp_path / "compare.html",
    )
    page = open_page(browser, path)
    heads = page.locator(".pane-head").all_inner_texts()
    assert heads[0].startswith("sae_local") and "replacement 0.610" in heads[0]
    assert heads[1].startswith("skip_transcoder") and "completeness 0.930" in heads[1]
    assert len(shown(page, 0)[0]) == small.n_nodes and len(shown(page, 1)[0]) == other.n_nodes
    # aligned: each position's column and each layer's row at the same place in both panes
    where = page.evaluate(
        """() => Array.from(document.querySelectorAll('.graph-pane svg')).map(svg => {
        const left = svg.getBoundingClientRect().left, top = svg.getBoundingClientRect().top;
        const at = s => Array.from(svg.querySelectorAll(s)).map(e => {
          const r = e.getBoundingClientRect(); return [Math.round(r.left - left), Math.round(r.top - top)]; });
        return [at('.token-label'), at('.row-line')]; })"""
    )
    assert where[0] == where[1]
    areas = boxes(page, ".graph-area")
    assert overlapping(areas) == []
    for pane, area in enumerate(areas):  # the whole graph fits its pane, logits included
        drawn = boxes(page, f".graph-pane:nth-child({pane + 1}) .node")
        assert drawn and all(area[0] <= b[0] and b[2] <= area[2] for b in drawn)
    page.close()
