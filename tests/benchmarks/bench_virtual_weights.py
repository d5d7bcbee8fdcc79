"""Benchmark: blocked top-k virtual-weight graphs vs dense matmuls, same run.

1. The full top-k graph (`topk_graph`) of 4 layers of random skip transcoders (d=128,
   F=1024) vs the dense way: one [F, d] @ [d, F] matmul + topk per layer pair.
2. A synthetic large case, F features in two layers (default 100k): the blocked top-k vs the
   bare matmul work of the same size done block by block (the full [F, F] product would need
   F^2 * 4 bytes, 40 GB at 100k, so it cannot be the baseline). Peak memory is measured
   (CUDA: max_memory_allocated; CPU: growth of the process's max RSS) and compared with the
   size of the dense [F, F] matrix.

Usage: python tests/benchmarks/bench_virtual_weights.py [--large 100000] [--device cuda]
"""

from __future__ import annotations

import argparse
import resource
import time
from types import SimpleNamespace

import torch

from circuits.virtual_weights import blocked_topk, topk_graph, virtual_weights
from replacement.dictionary import Dictionary
from replacement.hooks import layer_hooks


def _fake_model(n_layers: int, d: int, device: str) -> SimpleNamespace:
    """Just what the virtual-weight code reads: cfg (LayerNorm) and the hook check."""
    cfg = SimpleNamespace(
        n_layers=n_layers, d_model=d, normalization_type="LN", device=device, model_name="synthetic"
    )
    return SimpleNamespace(cfg=cfg)


def _dicts(n_layers: int, d: int, n_features: int, device: str) -> list[Dictionary]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for layer in range(n_layers):
        hooks = layer_hooks(layer)
        tc = Dictionary(d, d, n_features, hooks.mlp_in, hooks.mlp_out, skip=True)
        with torch.no_grad():
            tc.W_enc.copy_(torch.randn(d, n_features, generator=gen) / d**0.5)
            tc.W_dec.copy_(torch.randn(n_features, d, generator=gen) / d**0.5)
            tc.W_skip.copy_(torch.randn(d, d, generator=gen) * 0.2 / d**0.5)
        out.append(tc.to(device))
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> tuple[float, float]:
    """(seconds, peak bytes during fn)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    seconds = time.perf_counter() - start
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return seconds, float(max(peak, 0))


def small_case(device: str, k: int) -> None:
    d, n_features, n_layers = 128, 1024, 4
    model = _fake_model(n_layers, d, device)
    dicts = _dicts(n_layers, d, n_features, device)

    def dense() -> None:
        for a in range(n_layers):
            for b in range(a + 1, n_layers):
                w = virtual_weights(dicts, model, a, b).total
                w.abs().topk(k, dim=1)

    def blocked() -> None:
        topk_graph(dicts, model, k, block_size=4096, verbose=False)

    dense()  # warm-up
    t_dense, m_dense = _timed(dense, device)
    t_block, m_block = _timed(blocked, device)
    print(f"small: 4 layers, d={d}, F={n_features}, k={k}, 6 layer pairs, device={device}")
    print(f"  dense matmul + topk : {t_dense * 1e3:8.1f} ms, peak {m_dense / 2**20:8.1f} MiB")
    print(f"  blocked topk_graph  : {t_block * 1e3:8.1f} ms, peak {m_block / 2**20:8.1f} MiB")
    print(f"  time ratio blocked/dense = {t_block / t_dense:.2f}")


def large_case(device: str, n_features: int, k: int, block: int) -> None:
    d = 128
    gen = torch.Generator().manual_seed(1)
    left = torch.randn(n_features, d, generator=gen).to(device)  # D T
    right = torch.randn(d, n_features, generator=gen).to(device)  # E

    def bare_matmul() -> None:  # the same multiply work, nothing kept
        for r0 in range(0, n_features, block):
            rows = left[r0 : r0 + block]
            for c0 in range(0, n_features, block):
                rows @ right[:, c0 : c0 + block]

    def blocked() -> None:
        blocked_topk(left, right, k, block)

    t_mm, m_mm = _timed(bare_matmul, device)
    t_tk, m_tk = _timed(blocked, device)
    dense_bytes = n_features**2 * 4
    print(f"large: F={n_features} in two layers, d={d}, k={k}, block={block}, device={device}")
    print(f"  bare blocked matmul : {t_mm:8.2f} s, peak {m_mm / 2**20:8.1f} MiB")
    print(f"  blocked running topk: {t_tk:8.2f} s, peak {m_tk / 2**20:8.1f} MiB")
    print(f"  time ratio topk/matmul = {t_tk / t_mm:.2f}")
    print(
        f"  dense [F, F] would be {dense_bytes / 2**30:.1f} GiB; "
        f"peak / dense = {m_tk / dense_bytes:.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--large", type=int, default=100_000, help="features per layer, large case")
    parser.add_argument("--k", type=int, default=10, help="partners per feature")
    parser.add_argument("--block", type=int, default=4096, help="block size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    small_case(args.device, args.k)
    large_case(args.device, args.large, args.k, args.block)


if __name__ == "__main__":
    main()
