"""Atlas pass against a plain spliced forward over the same tokens.

    python tests/benchmarks/bench_atlas.py [--tokens 2000000] [--set skip_transcoder]

Both run the embedded default model with one zoo set (4 layers x 1024 features) over the same
BOS-first rows of 128 tokens from the default model's training corpus, 32 rows per forward:

- baseline: `with splice(model, dictionaries): model(rows)` (encode and decode every layer);
- atlas: `stream_features` (encode every layer and accumulate every statistic the atlas keeps:
  counts, histogram, top-N contexts with windows, the random sample for quantile bands);
- encode only: the same pass with the statistics switched off (their cost is the difference).

The two alternate batch by batch (the atlas side continues its streams), so that the load of
a shared machine hits both alike; prints tokens/s of each and the ratio atlas / baseline
(target <= 1.5). The weight-based lists and labels are timed separately (they do not grow
with the corpus).

Measured 2026-12-03 (2-core CPU, --tokens 2000000 --threads 1, skip_transcoder): baseline 195.5 s
(10,231 tokens/s), atlas 180.7 s (11,067 tokens/s), encode only 133.3 s; ratio atlas / baseline 0.92;
the statistics are 26% of the atlas pass.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from replacement import load_dictionaries, load_model, splice
from replacement.atlas.atlas import FeatureAtlas
from replacement.atlas.build import AtlasSettings, _layer_atlas, stream_features, vocabulary
from replacement.atlas.corpus import rows_from_documents
from replacement.atlas.stream import FeatureStream


def corpus_tokens(model, n_tokens: int, ctx_len: int = 128) -> torch.Tensor:
    """BOS-first rows from the default model's training corpus, at least n_tokens in all."""
    from training.default_model.corpus import collect_corpus

    docs, total = [], 0
    for doc in collect_corpus().train:
        ids = model.tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        docs.append(ids)
        total += len(ids) + 1
        if total >= n_tokens + ctx_len:
            break
    rows = rows_from_documents(docs, model.tokenizer.bos_token_id, ctx_len)
    return rows[: -(-n_tokens // ctx_len)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=2_000_000)
    parser.add_argument("--set", default="skip_transcoder")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("default")
    dictionaries = load_dictionaries(args.set, model=model)
    rows = corpus_tokens(model, args.tokens)
    print(
        f"{rows.numel():,} tokens ({rows.shape[0]} rows of {rows.shape[1]}), set {args.set}, "
        f"{len(dictionaries)} x {dictionaries[0].n_features} features, "
        f"{torch.get_num_threads()} threads"
    )
    settings = AtlasSettings()
    by_layer = dict(enumerate(dictionaries))

    # alternate batch by batch, so that the load of a shared machine hits all alike
    seconds = {"baseline": 0.0, "atlas": 0.0, "encode only": 0.0}
    streams = idle = None
    batch = settings.batch_rows
    update = FeatureStream.update
    for start in range(0, rows.shape[0], batch):
        part = rows[start : start + batch]
        tick = time.perf_counter()
        with torch.no_grad(), splice(model, dictionaries):
            model(part)
        seconds["baseline"] += time.perf_counter() - tick
        tick = time.perf_counter()
        streams = stream_features(model, by_layer, part, settings, batch, False, streams, start)
        seconds["atlas"] += time.perf_counter() - tick
        # the same pass with the statistics switched off: what encoding alone costs
        FeatureStream.update = lambda *args, **kwargs: None
        tick = time.perf_counter()
        idle = stream_features(model, by_layer, part, settings, batch, False, idle, start)
        seconds["encode only"] += time.perf_counter() - tick
        FeatureStream.update = update
    n = rows.numel()
    for name, s in seconds.items():
        print(f"{name:>12}: {s:8.1f} s  {n / s:10,.0f} tokens/s")
    print(f"ratio atlas / baseline: {seconds['atlas'] / seconds['baseline']:.2f} (target <= 1.5)")
    print(
        f"statistics' share of the atlas pass: "
        f"{1 - seconds['encode only'] / seconds['atlas']:.0%} (the pass stops after the last "
        "dictionary's input and never decodes, which the spliced forward must do)"
    )
    tick = time.perf_counter()
    vocab = vocabulary(model)
    layers = {
        layer: _layer_atlas(d, streams[layer], model, settings, vocab, rows)
        for layer, d in by_layer.items()
    }
    atlas = FeatureAtlas(layers, rows, vocab, {"window_before": settings.window_before})
    print(
        f"weights, bands and labels: {time.perf_counter() - tick:.1f} s; e.g. L1 labels: "
        f"{[atlas.label(1, f) for f in range(5)]}"
    )


if __name__ == "__main__":
    main()
