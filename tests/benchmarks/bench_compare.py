"""Time `sparse-circuits compare --out DIR` with its defaults (six zoo sets, three random
dictionary sets, neuron and MLP-output baselines, three node currencies, attention heads, eight
tasks of 64 pairs split half/half, nodes ranked by joint integrated gradients and all three
rankings side by side on the shortest task, 1000 bootstrap resamples).

    flock /tmp/cpu.lock python tests/benchmarks/bench_compare.py --out runs/compare --threads 2

Prints wall and CPU seconds of the whole command and the compare stage alone; the target is
<= 300 s wall on 2 cores. Extra arguments go to the command.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/compare_bench")
    parser.add_argument("--threads", type=int, default=2)
    args, rest = parser.parse_known_args()
    import torch

    torch.set_num_threads(args.threads)
    from sparse_circuits_cli import main as cli

    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    code = cli(["compare", "--out", args.out, "--threads", str(args.threads), "--quiet", *rest])
    wall = time.perf_counter() - start
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
    settings = json.loads((Path(args.out) / "results.json").read_text())["settings"]
    print(
        f"compare defaults: {wall:.0f} s wall, {cpu_s:.0f} s CPU, {args.threads} threads "
        f"(compare stage {settings['seconds']:.0f} s; exit {code})"
    )
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
