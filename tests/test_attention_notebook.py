"""The attention example notebook runs top to bottom (nbclient, fresh kernel) on the shipped
default model and dictionaries; its last cell asserts that every decomposition it showed sums to
the model's own number."""

from __future__ import annotations

import nbformat
from nbclient import NotebookClient

from tests.test_examples import EXAMPLES, _shipped_or_stand_in


def test_attention_notebook(tmp_path):
    nb = nbformat.read(EXAMPLES / "attention.ipynb", as_version=4)
    _shipped_or_stand_in(nb, tmp_path)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "sums exact" in text
    assert "induction head:" in text and "top pair = (token at the query)" in text
    html = [
        o["data"]["text/html"]
        for c in nb.cells
        for o in c.get("outputs", [])
        if "text/html" in o.get("data", {})
    ]
    assert len(html) == 2 and "query-side source" in html[0] and "top heads" in html[1]
