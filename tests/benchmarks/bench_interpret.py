"""Benchmark: interpretability scoring of one zoo set (4 x 1024 features) over 2e5 held-out
tokens, the target being at most 3 minutes on 2 cores. Prints the time of each stage.

    flock /tmp/cpu.lock env PYTHONPATH=$PWD python tests/benchmarks/bench_interpret.py --threads 2

Stages: labelled splits (tokenize + Python labels), the forward capture of both splits,
encoding, and scoring (sampling, explainer on the fit split, detection / fuzzing on the score
split, concept probing). Controls (random set, neurons) are not part of the figure: each
costs what one set costs, minus the shared forward.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", default="transcoder")
    parser.add_argument("--score-tokens", type=int, default=200_000)
    parser.add_argument("--fit-tokens", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from analysis.interpretability.corpus import default_splits, vocabulary
    from analysis.interpretability.run import InterpretSettings, score_source
    from analysis.interpretability.units import capture, encode_sources, source_hooks
    from replacement import load_dictionaries, load_model

    model = load_model("default")
    ds = load_dictionaries(args.set, model=model)
    times = {}
    t = time.perf_counter()
    fit, score = default_splits(model, args.fit_tokens, args.score_tokens)
    times["splits"] = time.perf_counter() - t
    sources = {args.set: ds}
    t = time.perf_counter()
    hooks = source_hooks(sources)
    fit_cache = capture(model, hooks, fit.tokens, verbose=False)
    score_cache = capture(model, hooks, score.tokens, verbose=False)
    times["forward"] = time.perf_counter() - t
    t = time.perf_counter()
    fit_acts = encode_sources(sources, fit_cache, fit.tokens.shape[1])[args.set]
    score_acts = encode_sources(sources, score_cache, score.tokens.shape[1])[args.set]
    times["encode"] = time.perf_counter() - t
    t = time.perf_counter()
    vocab = vocabulary(model.tokenizer, model.cfg.d_vocab)
    r = score_source(
        args.set, "trained", "", fit_acts, score_acts, fit, score, vocab, InterpretSettings()
    )
    times["score"] = time.perf_counter() - t
    total = sum(times.values())
    print(
        f"set {args.set}: {fit_acts.n_units} features; fit {fit.n_tokens:,} tokens, "
        f"held-out {score.n_tokens:,} tokens; {args.threads} threads"
    )
    for k, v in times.items():
        print(f"  {k:8s} {v:7.1f} s")
    print(f"  total    {total:7.1f} s  (target <= 180 s)  scored {int(r.scored.sum())} features")


if __name__ == "__main__":
    main()
