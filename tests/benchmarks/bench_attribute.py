"""Benchmark: attribution rows per second and peak memory against prompt length.

Run: python tests/benchmarks/bench_attribute.py [--lengths 16 64 256] [--features 200]
     [--device cuda] [--no-offload] [--threads 2]

For prompts of 16, 64 and 256 tokens on the embedded default model with the zoo's skip
transcoders (random TopK skip transcoders of the same shape if the zoo set is absent), prints
rows/s, the time per row in units of one plain forward+backward pass of the same prompt (the
unit is measured in the same run), the peak resident memory growth (ru_maxrss, a high-water
mark: a row shows growth beyond every earlier row) and, on CUDA, the peak accelerator memory.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from circuits.attribution.attribute import attribute
from replacement import load_model
from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError
from replacement.formats.detect import load_dictionaries
from replacement.hooks import layer_hooks
from replacement.zoo import DEFAULT_DICTIONARY_SET


def random_dictionaries(model, n_features: int, k: int = 16):
    """Random TopK skip transcoders on every layer (same shape as the zoo's)."""
    torch.manual_seed(0)
    d_model = model.cfg.d_model
    out = []
    for layer in range(model.cfg.n_layers):
        h = layer_hooks(layer)
        d = Dictionary(
            d_model,
            d_model,
            n_features,
            h.mlp_in,
            h.mlp_out,
            "topk",
            skip=True,
            activation_params={"k": k},
        )
        torch.nn.init.normal_(d.W_enc, std=0.1)
        torch.nn.init.normal_(d.W_dec, std=0.05)
        torch.nn.init.normal_(d.W_skip, std=0.02)
        out.append(d.eval())
    return out, f"random TopK skip transcoders (F={n_features}, k={k})"


def dictionaries(model, n_features: int | None):
    if n_features is not None:
        return random_dictionaries(model, n_features)
    try:
        return load_dictionaries(DEFAULT_DICTIONARY_SET, model=model), (
            "zoo " + DEFAULT_DICTIONARY_SET
        )
    except SparseCircuitsError:  # the zoo set is not shipped in this checkout
        return random_dictionaries(model, 1024)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def forward_backward_seconds(model, tokens, repeats=5) -> float:
    embed = {}

    def grab(act, hook):
        embed["x"] = act.detach().requires_grad_(True)
        return embed["x"]

    times = []
    for _ in range(repeats):
        _sync(tokens.device)
        start = time.perf_counter()
        with model.hooks(fwd_hooks=[("hook_embed", grab)]):
            logits = model(tokens.unsqueeze(0))
        logits[0, -1].sum().backward()
        _sync(tokens.device)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--features", type=int, default=200, help="max_feature_nodes")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-offload", action="store_true", help="offload_rows_to_cpu=False")
    parser.add_argument(
        "--random-features", type=int, default=None, help="use random dictionaries this wide"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("default", device=args.device)
    dicts, what = dictionaries(model, args.random_features)
    dicts = [d.to(args.device) for d in dicts]
    cuda = torch.device(args.device).type == "cuda"
    print(
        f"default model on {args.device}, {what}, torch threads {torch.get_num_threads()}, "
        f"batch {args.batch_size}, max_feature_nodes {args.features}, "
        f"offload_rows_to_cpu={not args.no_offload}"
    )
    print(
        f"{'tokens':>6} {'rows':>6} {'seconds':>8} {'rows/s':>8} {'fwd+bwd s':>10} "
        f"{'row/unit':>9} {'peak RSS +MB':>12}" + (f" {'peak GPU MB':>11}" if cuda else "")
    )
    gen = torch.Generator().manual_seed(0)
    # warm-up (allocator, kernels) so the first row is not charged for it
    attribute(model, dicts, "import os", max_feature_nodes=8, verbose=False)
    for n in args.lengths:
        tokens = torch.randint(1, model.cfg.d_vocab, (n,), generator=gen)
        tokens[0] = model.tokenizer.bos_token_id
        tokens = tokens.to(args.device)
        unit = forward_backward_seconds(model, tokens)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        _sync(args.device)
        start = time.perf_counter()
        graph = attribute(
            model,
            dicts,
            tokens,
            max_feature_nodes=args.features,
            batch_size=args.batch_size,
            verbose=False,
            offload_rows_to_cpu=not args.no_offload,
        )
        _sync(args.device)
        seconds = time.perf_counter() - start
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rows = graph.node_kind.count("feature") + graph.node_kind.count("logit")
        per_row_units = seconds / rows / unit
        gpu = f" {torch.cuda.max_memory_allocated() / 2**20:>11.1f}" if cuda else ""
        print(
            f"{n:>6} {rows:>6} {seconds:>8.2f} {rows / seconds:>8.1f} {unit:>10.4f} "
            f"{per_row_units:>9.3f} {(rss1 - rss0) / 1024:>12.1f}{gpu}"
        )


if __name__ == "__main__":
    main()
