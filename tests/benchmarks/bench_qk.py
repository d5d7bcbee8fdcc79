"""Benchmark: QK attributions and head loadings on the embedded default model.

Run: flock /tmp/cpu.lock python tests/benchmarks/bench_qk.py [--tokens 64] [--edges 200]
     [--repeats 3] [--threads 2]

With the zoo's default skip transcoders on a code prompt of `--tokens` tokens (BOS included),
prints the median over `--repeats` runs (interleaved) of
- setup: `AttentionAttribution` (the prompt's sources and frozen values);
- QK for every head and query position: for each (layer, head, query) the score at the key
  the head attends to most, decomposed into pair terms over every source, and its 10 largest
  pairs (exact); layer by layer (each layer's query and key vectors made once);
- head loadings of the `--edges` strongest edges of the pruned graph (`trace`'s settings:
  1000 feature nodes, pruning 0.8 / 0.98), every layer and head;
and, as the unit measured in the same run, the attribution of the graph itself.
Targets (issue 24): QK <= 10 s, head loadings <= 5 s, on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from circuits.attention import AttentionAttribution, head_loadings
from circuits.attribution.attribute import attribute
from replacement import load_model
from replacement.formats.detect import load_dictionaries
from replacement.zoo import DEFAULT_DICTIONARY_SET

TEXT = "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n"


def prompt_of(model, n_tokens: int) -> torch.Tensor:
    """The first n_tokens tokens (BOS included) of TEXT repeated."""
    ids = model.tokenizer(TEXT * 20, add_special_tokens=False)["input_ids"][: n_tokens - 1]
    return torch.tensor([model.tokenizer.bos_token_id, *ids])


def qk_every_head(model, dictionaries, tokens) -> tuple[float, float, int]:
    """(setup seconds, QK seconds, attributions made)."""
    start = time.perf_counter()
    att = AttentionAttribution(model, dictionaries, tokens)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    made = 0
    for layer in att.each_layer():  # one sweep, each layer's vectors made once
        pattern = att.stream.get(layer, "attn.hook_pattern")
        for head in range(model.cfg.n_heads):
            for query in range(1, tokens.numel()):
                key = int(pattern[head, query, : query + 1].argmax())
                a = att.qk(layer, head, query, key)
                a.top_pairs(10)
                made += 1
    return setup, time.perf_counter() - start, made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--edges", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("default")
    dictionaries = load_dictionaries(DEFAULT_DICTIONARY_SET, model=model)
    tokens = prompt_of(model, args.tokens)
    times: dict[str, list[float]] = {"attribute": [], "setup": [], "qk": [], "loadings": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        graph = attribute(model, dictionaries, tokens, max_feature_nodes=1000, verbose=False)
        times["attribute"].append(time.perf_counter() - start)
        pruned = graph.prune(0.8, 0.98)
        setup, qk, made = qk_every_head(model, dictionaries, tokens)
        times["setup"].append(setup)
        times["qk"].append(qk)
        start = time.perf_counter()
        loadings = head_loadings(model, dictionaries, pruned, top=args.edges)
        times["loadings"].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"default model, {DEFAULT_DICTIONARY_SET}, {tokens.numel()} tokens, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"  attribution graph (unit)          {med['attribute']:7.2f} s")
    print(f"  QK setup (sources, frozen values) {med['setup']:7.2f} s")
    print(
        f"  QK, every head and query ({made})  {med['qk']:7.2f} s "
        f"({med['qk'] / made * 1e3:.1f} ms each; setup + QK = "
        f"{(med['setup'] + med['qk']) / med['attribute']:.2f} x the graph)"
    )
    print(
        f"  head loadings, {loadings.n_edges} edges of the pruned graph ({pruned.n_edges} "
        f"edges)  {med['loadings']:7.2f} s "
        f"({med['loadings'] / med['attribute']:.2f} x the graph); "
        f"max |bypass + sum heads - edge| / max |edge| = {loadings.max_relative_gap():.1e}"
    )


if __name__ == "__main__":
    main()
