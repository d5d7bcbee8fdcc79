"""Run the example notebooks top to bottom and store them with their outputs.

    python examples/execute_notebooks.py                 # every notebook
    python examples/execute_notebooks.py trace_prompt    # some of them

Each runs in a fresh kernel in a temporary folder (the files it writes are not kept), without
timing metadata, so that a rerun changes a notebook only where its results change. The test
suite (tests/test_examples.py) executes the same notebooks and checks their results.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parent


def execute(path: Path) -> nbformat.NotebookNode:
    """The notebook at `path`, executed in a temporary folder."""
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as folder:
        NotebookClient(
            nb,
            timeout=600,
            kernel_name="python3",
            record_timing=False,
            resources={"metadata": {"path": folder}},
        ).execute()
    return nb


def main(names: list[str]) -> None:
    paths = [EXAMPLES / f"{n}.ipynb" for n in names] or sorted(EXAMPLES.glob("*.ipynb"))
    for path in paths:
        start = time.perf_counter()
        nb = execute(path)
        nbformat.write(nb, path)
        size = path.stat().st_size
        print(f"{path.name}: {time.perf_counter() - start:.0f} s, {size / 1024:.0f} KB")


if __name__ == "__main__":
    main(sys.argv[1:])
