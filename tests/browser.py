"""Headless Chromium for page tests: the command-line DOM dump and the skip marker."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

import pytest

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
