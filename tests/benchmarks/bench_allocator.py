"""e2e step time and page faults under glibc's default allocator, `keep_freed_memory`, and
(optionally) jemalloc: where a CPU e2e step's time goes besides arithmetic.

Each setting runs in a fresh process (an allocator is process-wide), alternating settings per
repeat: one e2e run of the claims sweep's setup (default model, layer 1, F = 1024, TopK 16,
4096 tokens a step, one thread), timed over `--steps` steps after two warm-up steps; minor page
faults per step from getrusage. Prints medians and each setting's speed relative to glibc's
default.

Measured 2026-12-05 on the 2-core CPU machine (the other core idle), e2e: default 0.90 s/step
and about 120k minor faults a step (some 470 MB of fresh pages); keep_freed_memory 0.78 s
(1.16x, 5-8k faults); jemalloc with decay off 0.72 s (1.25x, 5 faults).

    python tests/benchmarks/bench_allocator.py [--repeats 2] [--steps 4] [--objective e2e]
        [--jemalloc /usr/lib/x86_64-linux-gnu/libjemalloc.so.2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = """
import argparse, pathlib, resource, sys, tempfile, time
sys.path.insert(0, {bench_dir!r})
import torch
torch.set_num_threads(1)
if {keep!r}:
    from training.allocator import keep_freed_memory
    assert keep_freed_memory(), "mallopt did not take effect"
from bench_e2e import _config
from replacement import load_model
from training.data import load_token_data
from training.trainer import Trainer
model = load_model("default")
data = load_token_data(model, None, ctx_len=128)
args = argparse.Namespace(objective={objective!r}, steps={steps}, device="cpu")
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
with tempfile.TemporaryDirectory() as tmp:
    t = Trainer(_config(pathlib.Path(tmp) / "r", 16, args), model, data)
    t.begin()
    t.advance(); t.advance()
    f0, s0 = faults(), time.perf_counter()
    for _ in range({steps}):
        t.advance()
    print((time.perf_counter() - s0) / {steps}, (faults() - f0) / {steps})
    t.release()
"""


def _run(setting: str, args: argparse.Namespace) -> tuple[float, float]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if setting == "jemalloc":
        env.update(LD_PRELOAD=args.jemalloc, MALLOC_CONF="dirty_decay_ms:-1,muzzy_decay_ms:-1")
    code = _CHILD.format(
        bench_dir=str(Path(__file__).parent),
        keep=setting == "keep_freed_memory",
        objective=args.objective,
        steps=args.steps,
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[-2]), float(out[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--objective", default="e2e", choices=["e2e", "e2e_ds"])
    p.add_argument("--jemalloc", default=None, help="path of libjemalloc.so to compare too")
    args = p.parse_args()
    settings = ["default", "keep_freed_memory"] + (["jemalloc"] if args.jemalloc else [])
    seconds: dict[str, list[float]] = {s: [] for s in settings}
    faults: dict[str, list[float]] = {s: [] for s in settings}
    for _ in range(args.repeats):
        for s in settings:
            sec, flt = _run(s, args)
            seconds[s].append(sec)
            faults[s].append(flt)
    base = statistics.median(seconds["default"])
    print(f"{args.objective}, 1 thread, medians of {args.repeats}:")
    for s in settings:
        sec = statistics.median(seconds[s])
        print(
            f"  {s:>17}: {sec:.3f} s/step, {statistics.median(faults[s]):9.0f} minor "
            f"faults/step, {base / sec:.2f}x"
        )


if __name__ == "__main__":
    main()
