"""Redraw `trace_example.png`, the README's picture: `python docs/images/make_trace_example.py`.

The pruned attribution graph of the README's Jupyter example, drawn by `AttributionGraph.draw`,
stored with a 64-colour palette to stay small.
"""

from pathlib import Path

from PIL import Image

from circuits import attribute
from replacement import load_dictionaries, load_model

OUT = Path(__file__).with_name("trace_example.png")

model = load_model("default")
tcs = load_dictionaries("skip_transcoder")
graph = attribute(model, tcs, "def add(a, b):\n    return", max_feature_nodes=200, verbose=False)
pruned = graph.prune(node_threshold=0.8, edge_threshold=0.98)
pruned.draw().savefig(OUT, dpi=60, bbox_inches="tight")
Image.open(OUT).convert("RGB").quantize(colors=64).save(OUT, optimize=True)
print(f"{pruned!r}\n{pruned.scores()} -> {OUT}")
