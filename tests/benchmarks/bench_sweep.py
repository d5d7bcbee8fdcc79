"""Speed of the two things a claims or zoo ladder repeats: drawing cached batches and
evaluating a rung, each against the way it was done before, interleaved in the same run.

- Batch indices of an activation-cache shard (`sample_indices`): each epoch's permutation
  kept between batches, against drawn again for every batch (as before). The cost grows with
  the shard's tokens, not its width; 2M tokens is one shard of the default corpus's cache.
- One rung's evaluation (`evaluate_dictionary`, transcoder of layer 1 spliced alone, default
  model): the current pass (8 rows a batch, starting at the dictionary's block from the kept
  residual) against the earlier settings (32 rows, every block from the tokens; the float32
  CE is in both). Figures agree to 1e-9 nats; only the time differs.

Printed as medians of interleaved repeats and their ratio. Other processes on the CPU make
absolute times meaningless: compare the ratios.

Measured 2026-12-04 (2 cores, both also running claims-sweep processes, 1 thread, 3
repeats): batch indices of a 2M-token shard kept 16 us against redrawn 32,882 us per batch of
1024 (a cached step draws one per shard: 4 shards, 0.13 s a step before); evaluation of 256
rows 3.63 s now against 4.28 s with the earlier settings (0.85x).

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_sweep.py [--shard-tokens 2000000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _median_pair(a, b, repeats: int) -> tuple[float, float]:
    ta, tb = [], []
    for _ in range(repeats):  # interleaved, so drift hits both alike
        for fn, out in ((a, ta), (b, tb)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def bench_indices(shard_tokens: int, repeats: int) -> None:
    from training.data import _epoch_permutation, sample_indices

    step = [0]

    def kept() -> None:
        step[0] += 1
        sample_indices(shard_tokens, step[0] * 1024, 1024, seed=3)

    def redrawn() -> None:
        _epoch_permutation.cache_clear()
        kept()

    kept()  # the epoch's permutation drawn once
    t_kept, t_redrawn = _median_pair(kept, redrawn, repeats)
    print(
        f"batch indices, shard of {shard_tokens:,} tokens: kept {t_kept * 1e6:.0f} us, "
        f"redrawn {t_redrawn * 1e6:.0f} us per batch of 1024 ({t_redrawn / t_kept:.0f}x)"
    )


def bench_evaluation(rows: int, repeats: int) -> None:
    from replacement import load_dictionaries
    from replacement.hook_table import block_hook
    from replacement.model import load_model
    from training.claims_eval import evaluate_dictionary, figures, original_side
    from training.data import load_token_data

    model = load_model("default")
    data = load_token_data(model, None, ctx_len=128)
    hooks = [block_hook(m, "hook_mlp_out") for m in range(int(model.cfg.n_layers))]
    kept = original_side(model, data.val[:rows], hooks, data.special_ids, n_chunks=4)
    dictionary = load_dictionaries("transcoder")[1].float()
    first = lambda: evaluate_dictionary(model, dictionary, kept)  # noqa: E731
    # the earlier settings: 32 rows a batch, every block from the tokens
    before = lambda: evaluate_dictionary(model, dictionary, kept, 32, from_block=False)  # noqa: E731
    a, b = figures(first()["chunks"]), figures(before()["chunks"])
    assert abs(a["ce_increase"] - b["ce_increase"]) < 1e-9
    t_now, t_before = _median_pair(first, before, repeats)
    print(
        f"evaluation of {rows} rows x 128 tokens: now {t_now:.2f} s, earlier settings "
        f"{t_before:.2f} s ({t_now / t_before:.2f}x)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shard-tokens", type=int, default=2_000_000)
    p.add_argument("--rows", type=int, default=256, help="evaluation rows of 128 tokens")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    bench_indices(args.shard_tokens, max(args.repeats, 9))
    bench_evaluation(args.rows, args.repeats)


if __name__ == "__main__":
    main()
