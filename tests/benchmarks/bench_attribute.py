"""Benchmark: attribution rows per second and peak memory against prompt length.

Run: python tests/benchmarks/bench_attribute.py [--lengths 16 64 256] [--features 200]

For prompts of 16, 64 and 256 tokens on the embedded default model with the zoo's skip
transcoders (random TopK skip transcoders of the same shape if the zoo set is absent), prints
rows/s, the time per row in units of one plain forward+backward pass of the same prompt (the
unit is measured in the same run), and the peak resident memory growth.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from circuits.attribute import attribute
from replacement import load_model
from replacement.hooks import layer_hooks


def dictionaries(model):
    try:
        from replacement.formats.detect import load_dictionaries
        from replacement.zoo import DEFAULT_DICTIONARY_SET

        return load_dictionaries(
            DEFAULT_DICTIONARY_SET, model=model
        ), "zoo " + DEFAULT_DICTIONARY_SET
    except Exception:  # the zoo set is not shipped in this checkout
        from replacement.dictionary import Dictionary

        torch.manual_seed(0)
        out = []
        for layer in range(model.cfg.n_layers):
            h = layer_hooks(layer)
            d = Dictionary(
                128, 128, 1024, h.mlp_in, h.mlp_out, "topk", skip=True, activation_params={"k": 16}
            )
            torch.nn.init.normal_(d.W_enc, std=0.1)
            torch.nn.init.normal_(d.W_dec, std=0.05)
            torch.nn.init.normal_(d.W_skip, std=0.02)
            out.append(d.eval())
        return out, "random TopK skip transcoders (F=1024, k=16)"


def forward_backward_seconds(model, tokens, repeats=5) -> float:
    embed = {}

    def grab(act, hook):
        embed["x"] = act.detach().requires_grad_(True)
        return embed["x"]

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with model.hooks(fwd_hooks=[("hook_embed", grab)]):
            logits = model(tokens.unsqueeze(0))
        logits[0, -1].sum().backward()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--features", type=int, default=200, help="max_feature_nodes")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_model("default")
    dicts, what = dictionaries(model)
    print(f"default model, {what}, torch threads {torch.get_num_threads()}")
    print(
        f"{'tokens':>6} {'rows':>6} {'seconds':>8} {'rows/s':>8} {'fwd+bwd s':>10} "
        f"{'row/unit':>9} {'peak RSS +MB':>12}"
    )
    gen = torch.Generator().manual_seed(0)
    for n in args.lengths:
        tokens = torch.randint(1, model.cfg.d_vocab, (n,), generator=gen)
        tokens[0] = model.tokenizer.bos_token_id
        unit = forward_backward_seconds(model, tokens)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        graph = attribute(
            model,
            dicts,
            tokens,
            max_feature_nodes=args.features,
            batch_size=args.batch_size,
            verbose=False,
        )
        seconds = time.perf_counter() - start
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rows = graph.node_kind.count("feature") + graph.node_kind.count("logit")
        per_row_units = seconds / rows / unit
        print(
            f"{n:>6} {rows:>6} {seconds:>8.2f} {rows / seconds:>8.1f} {unit:>10.4f} "
            f"{per_row_units:>9.3f} {(rss1 - rss0) / 1024:>12.1f}"
        )


if __name__ == "__main__":
    main()
