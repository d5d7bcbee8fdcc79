"""Benchmark: attribution of long prompts on a GPT-2-size model, time and peak memory.

Run: python tests/benchmarks/bench_long_prompt.py [--lengths 1024 2048] [--layers 12]
     [--d-model 768] [--features 24576] [--k 32] [--max-feature-nodes 512] [--device cpu]
     [--sparse] [--row-top-k K] [--row-min-abs X]

The embedded default model takes at most 256 tokens, so this builds a random GPT-2 of the
given size (12 layers, d_model 768, 12 heads by default; context as long as the longest
prompt) with random TopK skip transcoders on every layer, and attributes a random prompt of
each length with a feature budget (a dense adjacency over every active feature of a long
prompt does not fit: at 1024 tokens, 12 layers and k=32 there are ~393k active features).
For each length it prints the seconds, rows per second, the peak resident memory growth of
the call (sampled every 2 ms; a later length in the same process starts from a heap the
earlier ones grew, so run one length per process for clean figures), the process's peak
resident memory so far (model and dictionaries included: what has to fit) and, on CUDA, the peak accelerator memory, plus the memory the
stored rows take ([budget, n_sources] floats), from which the largest prompt that fits a
memory limit follows: the rows grow linearly with the prompt, the row working set is capped
by `circuits.attribution.linear_rows.ROW_MEMORY_BYTES`. The dense adjacency [n_nodes, n_nodes] (n_nodes
about (n_layers + 1) x tokens) grows with the square of the prompt; `--sparse` (with
`--row-top-k` / `--row-min-abs`) stores the thresholded rows instead (`attribute(...,
sparse=True)`), and the table gives the entries kept and what they take.

Measured (2026-12-03, defaults, 2 threads, under the shared CPU lock): dense 1024 tokens 71.5 s
+4.3 GB, 2048 tokens 263 s +10.5 GB; `--row-top-k 2048`: 2048 tokens 184 s +6.1 GB, 2304
tokens 222 s, 3072 tokens 373 s +11.9 GB (process peak 14.4 GB); 4096 tokens (budget 256)
was killed at 24 GB: the capturing forward pass grows with the square of the prompt.
With patterns kept as causal bands (`--pattern-block`, default 256 keys): 4096 tokens, sparse,
top 2048 per row, budget 256: 349 s, +17.2 GB, process peak 19.7 GB; 1024 tokens dense, bands
against dense patterns in one lock-held run: 95.5 s / +4.03 GB against 107.1 s / +4.51 GB.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_circuit_tracer import PeakRSS  # noqa: E402

from circuits import linear_rows  # noqa: E402
from circuits.attribution.attribute import attribute  # noqa: E402
from replacement import load_model  # noqa: E402
from replacement.dictionary import Dictionary  # noqa: E402
from replacement.hooks import layer_hooks  # noqa: E402


def gpt2_of_size(n_layers: int, d_model: int, n_ctx: int):
    """A random GPT-2 (HF) of the given size, loaded as a bridge with the default tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = load_model("default").tokenizer
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_ctx,
        n_embd=d_model,
        n_layer=n_layers,
        n_head=d_model // 64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return load_model(GPT2LMHeadModel(cfg).eval(), tokenizer=tokenizer)


def topk_transcoders(model, n_features: int, k: int) -> list[Dictionary]:
    d = model.cfg.d_model
    out = []
    for layer in range(model.cfg.n_layers):
        h = layer_hooks(layer)
        tc = Dictionary(
            d, d, n_features, h.mlp_in, h.mlp_out, "topk", skip=True, activation_params={"k": k}
        )
        with torch.no_grad():
            tc.W_enc.normal_(0, d**-0.5)
            tc.W_dec.normal_(0, 0.05)
            tc.W_skip.normal_(0, 0.2 * d**-0.5)
        out.append(tc.eval())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--features", type=int, default=24576)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--max-feature-nodes", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sparse", action="store_true", help="sparse adjacency")
    parser.add_argument("--row-top-k", type=int, default=None)
    parser.add_argument("--row-min-abs", type=float, default=0.0)
    parser.add_argument(
        "--pattern-block",
        type=int,
        default=linear_rows.PATTERN_BLOCK,
        help="keys per stored causal band of a pattern (>= the prompt: dense patterns)",
    )
    args = parser.parse_args()
    linear_rows.PATTERN_BLOCK = args.pattern_block
    torch.set_num_threads(args.threads)
    model = gpt2_of_size(args.layers, args.d_model, max(args.lengths)).to(args.device)
    dicts = [d.to(args.device) for d in topk_transcoders(model, args.features, args.k)]
    cuda = torch.device(args.device).type == "cuda"
    print(
        f"random GPT-2: {args.layers} layers, d_model {args.d_model}, n_ctx {model.cfg.n_ctx}; "
        f"TopK skip transcoders F={args.features} k={args.k}; budget {args.max_feature_nodes} "
        f"features; {args.device}, {torch.get_num_threads()} threads; pattern bands of "
        f"{args.pattern_block} keys; adjacency "
        + (
            f"sparse (row_top_k {args.row_top_k}, row_min_abs {args.row_min_abs})"
            if args.sparse or args.row_top_k or args.row_min_abs
            else "dense"
        )
    )
    print(
        f"{'tokens':>6} {'active':>8} {'rows':>6} {'seconds':>8} {'rows/s':>7} "
        f"{'peak RSS +GB':>12} {'process GB':>10} {'dense rows GB':>13} {'adjacency GB':>12} {'entries':>11}"
        + (" peak GPU GB" if cuda else "")
    )
    gen = torch.Generator().manual_seed(0)
    attribute(model, dicts, "import os", max_feature_nodes=8, verbose=False)  # warm-up
    for n in args.lengths:
        tokens = torch.randint(1, model.cfg.d_vocab, (n,), generator=gen)
        tokens[0] = model.tokenizer.bos_token_id
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with PeakRSS() as mem:
            start = time.perf_counter()
            graph = attribute(
                model,
                dicts,
                tokens.to(args.device),
                verbose=False,
                max_feature_nodes=args.max_feature_nodes,
                sparse=args.sparse,
                row_top_k=args.row_top_k,
                row_min_abs=args.row_min_abs,
            )
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        active = graph.metadata["n_active_features"]
        rows = graph.node_kind.count("feature") + graph.node_kind.count("logit")
        n_src = active + (args.layers + 1) * n
        stored = rows * n_src * 4 / 2**30
        adj = graph.adjacency
        if adj.is_sparse:  # int64 (target, source) and a float32 value per entry
            entries, adj_gb = adj._nnz(), adj._nnz() * 20 / 2**30
        else:
            entries, adj_gb = adj.numel(), adj.numel() * 4 / 2**30
        process_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        gpu = f" {torch.cuda.max_memory_allocated() / 2**30:>11.2f}" if cuda else ""
        print(
            f"{n:>6} {active:>8} {rows:>6} {seconds:>8.1f} {rows / seconds:>7.1f} "
            f"{mem.peak_mb / 1024:>12.2f} {process_gb:>10.2f} {stored:>13.2f} {adj_gb:>12.2f} {entries:>11}{gpu}",
            flush=True,
        )


if __name__ == "__main__":
    main()
