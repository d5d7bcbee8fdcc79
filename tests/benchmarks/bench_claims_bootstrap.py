"""The claims bootstrap, every draw at once (`analysis.claims_stats`), against a per-draw loop.

The statistic is the gated claim's on the shipped sweep: gated - ReLU CE increase over the
matched log-L0 grid (`matched_l0_profile`: the mean and each grid L0), 1000 draws over the
64 evaluation chunks and both seeds. The reference is the per-draw form the report used until
2026-12-06 (written out here): one `rng.choice` per draw and arm, each seed's curve from the
chunk sums under that draw's weights, `np.interp` per curve. Both draw the same stream, so the
intervals must agree to rounding; the benchmark prints the largest difference and the medians
of interleaved repeats.

Measured 2026-12-06 on the 2-core CPU machine, one thread, two training processes on the
cores, medians of 3: per-draw 0.541 s, every draw at once 0.008 s (71x), largest difference
1.0e-15 (nats; the interval -0.0684 [-0.0714, -0.0654] either way). The
whole report on the shipped sweep took 25.5 s before and 6.0 s after (its plots and tables
remain).

    python tests/benchmarks/bench_claims_bootstrap.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from analysis.claims import load_sweep
from analysis.claims_arms import arms, live, matched_l0_profile, n_chunks, rung_figures
from analysis.claims_stats import N_DRAWS, Interval, chunk_weights, matched_grid


def per_draw(a, b, key: str, chunks: int, seed: int = 0) -> list[Interval]:
    """The matched-L0 profile by one Python pass per draw (the reference)."""
    ones = np.ones(chunks)

    def curve(arm, s, w):
        figs = [rung_figures(p[s], w) for p in arm.points]
        return np.array([f["l0"] for f in figs]), np.array([f[key] for f in figs])

    grid = matched_grid([curve(a, s, ones) for s in a.seeds] + [curve(b, s, ones) for s in b.seeds])
    rng = np.random.default_rng(seed)
    weights = chunk_weights(chunks, N_DRAWS, rng)
    seeds = {"a": a.seeds, "b": b.seeds}
    rows = []
    for d in range(N_DRAWS):
        picked = (
            seeds if d == 0 else {k: list(rng.choice(s, size=len(s))) for k, s in seeds.items()}
        )
        means = []
        for arm, side in ((a, "a"), (b, "b")):
            vals = []
            for s in picked[side]:
                l0, metric = curve(arm, s, weights[d])
                order = np.argsort(l0)
                vals.append(np.interp(np.log(grid), np.log(l0[order]), metric[order]))
            means.append(np.mean(vals, axis=0))
        diff = means[1] - means[0]
        rows.append([np.mean(diff), *diff])
    out = []
    for column in np.array(rows).T:
        low, high = np.percentile(column, [2.5, 97.5])
        out.append(Interval(float(column[0]), float(low), float(high)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = load_sweep()
    found = arms(results, "gated")
    (a, _), (b, _) = live(found["relu"]), live(found["gated"])
    chunks = n_chunks(results)
    times: dict[str, list[float]] = {"per draw": [], "every draw at once": []}
    for _ in range(args.repeats):  # interleaved
        t = time.perf_counter()
        ref = per_draw(a, b, "ce_increase", chunks)
        times["per draw"].append(time.perf_counter() - t)
        t = time.perf_counter()
        mean, each, _ = matched_l0_profile(a, b, "ce_increase", chunks)
        times["every draw at once"].append(time.perf_counter() - t)
    new = [mean, *each]
    worst = max(
        abs(getattr(x, f) - getattr(y, f))
        for x, y in zip(ref, new, strict=True)
        for f in ("estimate", "low", "high")
    )
    base = statistics.median(times["per draw"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:20s} median {med:.3f} s over {len(ts)} ({base / med:.1f}x the per-draw loop)")
    print(f"largest difference between the two intervals' ends: {worst:.1e}")
    print(f"gated - ReLU over the grid: {mean.text()}")


if __name__ == "__main__":
    main()
