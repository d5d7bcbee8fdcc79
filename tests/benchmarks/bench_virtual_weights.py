"""Benchmark: blocked top-k virtual-weight graphs vs dense matmuls, in the same run.

1. The full top-k graph (`topk_graph`) of a 4-layer set of skip transcoders at d=128: the
   zoo's default set on the default model when it is shipped, else random skip transcoders of
   `--features` features (default 4096); against the dense way: the [F, F] virtual-weight
   matrix of every layer pair (one matmul each) + topk.
2. A synthetic large case: F features (default 100k) in two layers at d=128, blocked running
   top-k against one dense [F, d] @ [d, F] matmul of the same size when it fits in memory
   (`--dense auto`: on an accelerator with room for F^2 floats), else against the same
   multiply work done block by block with nothing kept. Peak memory: CUDA
   max_memory_allocated; CPU: growth of the process's max RSS (the blocked variant is
   measured first; a baseline peak below it reads as 0 -- use CUDA for memory ratios).

Usage: python tests/benchmarks/bench_virtual_weights.py [--large 100000] [--device cuda]
"""

from __future__ import annotations

import argparse
import resource
import time
from types import SimpleNamespace

import torch

from circuits.invariant.topk_graph import blocked_topk, topk_graph
from circuits.invariant.virtual_weights import apply_operator, dictionary_sites, path_operators
from replacement.dictionary import Dictionary
from replacement.hooks import layer_hooks


def _fake_model(n_layers: int, d: int, device: str) -> SimpleNamespace:
    """Just what the virtual-weight code reads without attention: cfg (LayerNorm)."""
    cfg = SimpleNamespace(
        n_layers=n_layers, d_model=d, normalization_type="LN", device=device, model_name="synthetic"
    )
    return SimpleNamespace(cfg=cfg)


def _random_dicts(n_layers: int, d: int, n_features: int, device: str) -> list[Dictionary]:
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


def _zoo_or_random(device: str, n_features: int) -> tuple[object, list[Dictionary], str]:
    from replacement.zoo import DEFAULT_DICTIONARY_SET, list_dictionary_sets

    if any(e.name == DEFAULT_DICTIONARY_SET for e in list_dictionary_sets()):
        from replacement import load_model
        from replacement.formats.detect import load_dictionaries

        model = load_model("default", device=device)
        dicts = load_dictionaries(DEFAULT_DICTIONARY_SET, model=model)
        return model, dicts, f"zoo set {DEFAULT_DICTIONARY_SET!r}"
    return (
        _fake_model(4, 128, device),
        _random_dicts(4, 128, n_features, device),
        f"random skip transcoders (zoo set {DEFAULT_DICTIONARY_SET!r} not shipped)",
    )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> tuple[float, float]:
    """(seconds, peak bytes above the start during fn)."""
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


def small_case(device: str, k: int, n_features: int) -> None:
    model, dicts, what = _zoo_or_random(device, n_features)
    sites = dictionary_sites(dicts, model)
    pairs = [(a, b) for a in sites for b in sites if a.write_at < b.read_at]

    def dense() -> None:
        for a, b in pairs:
            op = path_operators(dicts, model, a.name, b.name, per_head=False).total
            apply_operator(a.dictionary, op, b.dictionary).abs().topk(k, dim=1)

    def blocked() -> None:
        topk_graph(dicts, model, k, verbose=False)

    # blocked first: on the CPU, peak memory is the growth of max RSS, so a later, smaller
    # peak would read as 0
    blocked()  # warm-up
    t_block, m_block = _timed(blocked, device)
    t_dense, m_dense = _timed(dense, device)
    sizes = sorted({s.dictionary.n_features for s in sites})
    print(f"full top-k graph: {what}, F={sizes}, k={k}, {len(pairs)} pairs, device={device}")
    print(f"  dense [F, F] + topk : {t_dense * 1e3:8.1f} ms, peak {m_dense / 2**20:8.1f} MiB")
    print(f"  blocked topk_graph  : {t_block * 1e3:8.1f} ms, peak {m_block / 2**20:8.1f} MiB")
    print(f"  time ratio blocked/dense = {t_block / t_dense:.2f}")


def _dense_fits(device: str, n_features: int) -> bool:
    if not device.startswith("cuda"):
        return False
    free, _ = torch.cuda.mem_get_info()
    return n_features**2 * 4 < 0.8 * free


def large_case(device: str, n_features: int, k: int, block: int | None, dense: str) -> None:
    d = 128
    block = block or (4096 if device == "cpu" else 16384)
    gen = torch.Generator().manual_seed(1)
    left = torch.randn(n_features, d, generator=gen).to(device)  # W_dec T
    right = torch.randn(d, n_features, generator=gen).to(device)  # W_enc

    use_dense = dense == "yes" or (dense == "auto" and _dense_fits(device, n_features))

    def one_dense_matmul() -> None:
        out = left @ right
        del out

    def bare_blocked_matmul() -> None:  # the same multiply work, nothing kept
        for r0 in range(0, n_features, block):
            rows = left[r0 : r0 + block]
            for c0 in range(0, n_features, block):
                rows @ right[:, c0 : c0 + block]

    def blocked() -> None:
        blocked_topk(left, right, k, block)

    baseline = one_dense_matmul if use_dense else bare_blocked_matmul
    name = "one dense matmul" if use_dense else "bare blocked matmul"
    blocked_topk(left[:block], right, k, block)  # warm-up (kernels, allocator)
    t_tk, m_tk = _timed(blocked, device)
    t_mm, m_mm = _timed(baseline, device)
    dense_bytes = n_features**2 * 4
    print(f"large: F={n_features} in two layers, d={d}, k={k}, block={block}, device={device}")
    print(f"  {name:<20}: {t_mm:8.3f} s, peak {m_mm / 2**20:10.1f} MiB")
    print(f"  blocked running topk: {t_tk:8.3f} s, peak {m_tk / 2**20:10.1f} MiB")
    print(f"  time ratio topk/{name.split()[-1]} = {t_tk / t_mm:.2f}")
    print(
        f"  dense [F, F] is {dense_bytes / 2**30:.1f} GiB; blocked peak / dense size = "
        f"{m_tk / dense_bytes:.5f}"
        + (f"; peak ratio blocked/dense matmul = {m_tk / max(m_mm, 1):.5f}" if use_dense else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=int, default=4096, help="F of the random 4-layer set")
    parser.add_argument("--large", type=int, default=100_000, help="features per layer, large case")
    parser.add_argument("--k", type=int, default=10, help="partners per feature")
    parser.add_argument("--block", type=int, default=None, help="block size (default: auto)")
    parser.add_argument("--dense", choices=("auto", "yes", "no"), default="auto")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    with torch.no_grad():
        small_case(args.device, args.k, args.features)
        large_case(args.device, args.large, args.k, args.block, args.dense)


if __name__ == "__main__":
    main()
