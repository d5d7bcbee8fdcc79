"""The interactive HTML page, checked in a headless Chromium (its DOM after the script ran)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from circuits.views.html_page import influence_shares, page_data, visible_nodes, write_html
from tests.test_draw import synthetic_graph

CHROMIUM = next(
    (path for path in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if path),
    None,
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no headless Chromium on PATH (apt-get install chromium) to run the page's script",
)


class _Elements(HTMLParser):
    """Collects (tag, attributes) of every element."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text_by_id: dict[str, str] = {}
        self._open_id: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attrs))
        self._open_id = attrs.get("id")

    def handle_data(self, data):
        if self._open_id is not None:
            self.text_by_id[self._open_id] = self.text_by_id.get(self._open_id, "") + data

    def handle_endtag(self, tag):
        self._open_id = None

    def nodes(self) -> dict[int, set[str]]:
        """Rendered graph nodes: index -> class names."""
        return {
            int(a["data-index"]): set(a["class"].split())
            for _, a in self.elements
            if "node" in a.get("class", "").split()
        }


def dump_dom(page, fragment: str, tmp_path, graph: bool = True) -> _Elements:
    """The page's DOM after loading `page#fragment` in headless Chromium (`graph`: a graph
    page, which must have rendered nodes)."""
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--virtual-time-budget=3000",
            "--dump-dom",
            f"{page.resolve().as_uri()}#{fragment}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    parser = _Elements()
    parser.feed(result.stdout)
    assert parser.nodes() or not graph, f"no nodes rendered; stderr: {result.stderr[-2000:]}"
    return parser


@pytest.fixture(scope="module")
def pruned():
    """A pruned synthetic graph: features and errors carry cumulative-influence shares."""
    graph = synthetic_graph(seed=3, n_pos=6, n_layers=3).prune(1.0, 1.0)
    assert graph.node_influence is not None
    return graph


def test_shares_match_pruning():
    graph = synthetic_graph(seed=3, n_pos=6, n_layers=3)
    shares = influence_shares(graph)  # computed, since the graph is unpruned
    pruned = graph.prune(1.0, 1.0)  # drops dangling nodes; labels are unique
    assert len(set(graph.node_label)) == graph.n_nodes
    index = {label: i for i, label in enumerate(graph.node_label)}
    for j, label in enumerate(pruned.node_label):
        if pruned.node_kind[j] in ("feature", "error"):
            assert shares[index[label]].item() == pytest.approx(pruned.node_influence[j].item())
    # pruning at t keeps what the slider at t shows, plus the one node crossing t
    shown = visible_nodes(graph, 0.6)
    kept = graph.prune(0.6, 1.0)
    assert len(shown) <= kept.n_nodes


def test_page_is_self_contained(pruned, tmp_path):
    page = write_html(pruned, tmp_path / "g.html", title="a <b> & c")
    text = page.read_text(encoding="utf-8")
    assert "<title>a &lt;b&gt; &amp; c</title>" in text
    parser = _Elements()
    parser.feed(text)
    for tag, attrs in parser.elements:
        for name in ("src", "href"):
            assert not re.match(r"\s*(https?:)?//", attrs.get(name, "")), (tag, attrs)
    assert re.search(r"https?://", text) is None  # not even the SVG namespace
    assert "@import" not in text and "url(" not in text
    # the embedded data is the graph, and survives a `</script>` in a label
    pruned.node_label[0] = "</script><script>alert(1)</script>"
    text = write_html(pruned, tmp_path / "h.html").read_text(encoding="utf-8")
    blob = re.search(r'<script type="application/json" id="graph-data">(.*?)</script>', text, re.S)
    data = json.loads(blob.group(1))
    assert data["nodes"][0]["label"] == pruned.node_label[0]
    assert data == json.loads(json.dumps(page_data(pruned)))
    assert len(data["edges"]) == int((pruned.adjacency != 0).sum())


@needs_chromium
@pytest.mark.parametrize("threshold", [1.0, 0.55, 0.2])
def test_slider_shows_the_nodes_under_the_threshold(pruned, tmp_path, threshold):
    shares = pruned.node_influence.tolist()
    expected = {
        i
        for i, k in enumerate(pruned.node_kind)
        if k in ("token", "logit") or shares[i] <= threshold
    }
    # the thresholds used are not on a share, so rounding cannot decide the count
    if threshold < 1.0:
        assert all(abs(s - threshold) > 1e-6 for s in shares)
        assert len(expected) < pruned.n_nodes
    page = write_html(pruned, tmp_path / "g.html")
    dom = dump_dom(page, f"threshold={threshold}", tmp_path)
    assert set(dom.nodes()) == expected
    assert dom.text_by_id["node-count"] == str(len(expected))
    # edges drawn are exactly those between shown nodes
    drawn = {
        (int(a["data-source"]), int(a["data-target"]))
        for _, a in dom.elements
        if "edge" in a.get("class", "").split()
    }
    a = pruned.adjacency
    assert drawn == {
        (s, t) for t, s in (a != 0).nonzero().tolist() if s in expected and t in expected
    }


@needs_chromium
def test_click_highlights_exactly_the_neighbours(pruned, tmp_path):
    a = pruned.adjacency != 0
    # a feature with both inputs and outputs
    i = next(
        j for j, k in enumerate(pruned.node_kind) if k == "feature" and a[j].any() and a[:, j].any()
    )
    inputs = set(a[i].nonzero().flatten().tolist())
    outputs = set(a[:, i].nonzero().flatten().tolist())
    page = write_html(pruned, tmp_path / "g.html")
    classes = dump_dom(page, f"click={i}", tmp_path).nodes()
    assert {j for j, c in classes.items() if "selected" in c} == {i}
    assert {j for j, c in classes.items() if "input" in c} == inputs
    assert {j for j, c in classes.items() if "output" in c} == outputs
    related = inputs | outputs | {i}
    assert {j for j, c in classes.items() if "dimmed" in c} == set(classes) - related

    # with the slider lowered first, the click sees only the shown neighbours
    shares = pruned.node_influence.tolist()
    hideable = [shares[j] for j in related - {i} if pruned.node_kind[j] in ("feature", "error")]
    threshold = max(hideable + [shares[i]]) - 1e-4
    shown = set(visible_nodes(pruned, threshold))
    if i not in shown:  # i is the least influential of its neighbourhood: hide nothing else
        threshold = shares[i] + 1e-4
        shown = set(visible_nodes(pruned, threshold))
    classes = dump_dom(page, f"threshold={threshold}&click={i}", tmp_path).nodes()
    assert set(classes) == shown and i in shown
    assert {j for j, c in classes.items() if "input" in c} == inputs & shown
    assert {j for j, c in classes.items() if "output" in c} == outputs & shown


@needs_chromium
def test_hover_shows_label_and_activation(pruned, tmp_path):
    i = pruned.find("feature")[0]
    page = write_html(pruned, tmp_path / "g.html")
    dom = dump_dom(page, "", tmp_path)
    assert "hidden" in next(a for _, a in dom.elements if a.get("id") == "tooltip")
    dom = dump_dom(page, f"hover={i}", tmp_path)
    assert "hidden" not in next(a for _, a in dom.elements if a.get("id") == "tooltip")
    text = dom.text_by_id["tooltip"]
    assert pruned.node_label[i] in text
    assert f"activation {float(pruned.node_activation[i]):.3f}" in text
