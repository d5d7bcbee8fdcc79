"""Speed of splicing and of `spliced_loss` against the plain model's forward, in the same run.

Two models: the embedded default model (4 layers, d_model 128; TopK skip transcoders F=2048,
k=32 at every layer) and a random GPT-2-size model (12 layers, d_model 768, vocab 50257;
F=6144, k=32). Every layer is spliced. Printed as ratios to the plain forward pass, and the
extra time of splicing as a ratio to the dictionaries' floor: the time of their own
arithmetic alone (encoder product, sparse decoder, skip) on the same activations, measured in
the same run, and their FLOPs (2 d_in F + 2 k d_out + 2 d_in d_out per token) at the matmul
rate measured here. The hooks do no per-position Python work: every dictionary runs once
per forward pass on the whole [batch * pos, d] block. The machine may be shared: compare the
ratios, not the absolute rates.

Measured 2026-12-03 under the CPU lock (2 threads): default model, sparse-path spliced forward
2.15x the plain forward (dictionaries alone 1.28x; splicing adds 0.90x the dictionaries alone,
2.18x their FLOP floor); GPT-2 size 1.55x the plain forward (adds 1.08x the dictionaries alone,
1.58x their FLOP floor).

    python tests/benchmarks/bench_splice.py [--skip-gpt2]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `tests.tiny_models` as a script

from replacement import load_model
from replacement.dictionary import Dictionary
from replacement.errors import ModelLoadError
from replacement.loss import spliced_loss
from replacement.splice import splice


def _model():
    try:
        return load_model("default"), "embedded default model"
    except ModelLoadError:
        import tempfile
        from pathlib import Path

        from tests.tiny_models import make_gpt2, make_tokenizer, save_hf

        tok = make_tokenizer()
        folder = save_hf(
            make_gpt2(len(tok), n_layers=4, d_model=128), tok, Path(tempfile.mkdtemp())
        )
        return load_model(
            folder
        ), "FALLBACK random GPT-2 (4 layers, d_model 128): default model missing"


def _gpt2_size():
    """A random GPT-2-size bridge (12 x 768, vocab 50257)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.tiny_models import make_tokenizer

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=256)
    return load_model(GPT2LMHeadModel(cfg).eval(), tokenizer=make_tokenizer())


def _transcoders(model, F=2048, k=32):
    torch.manual_seed(0)
    d = model.cfg.d_model
    out = []
    for layer in range(model.cfg.n_layers):
        tc = Dictionary(
            d,
            d,
            F,
            f"blocks.{layer}.ln2.hook_normalized",
            f"blocks.{layer}.hook_mlp_out",
            "topk",
            skip=True,
            activation_params={"k": k},
        )
        with torch.no_grad():
            tc.W_enc.normal_(0, d**-0.5)
            tc.W_dec.normal_(0, 0.02)
            tc.W_skip.normal_(0, 0.02)
        out.append(tc.eval())
    return out


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _floor(model, dicts, tokens, batch: int, k: int) -> tuple[float, float]:
    """(seconds of the dictionaries alone on `tokens`' activations, seconds at the FLOP floor)."""
    from training.activations import collect_activations

    acts = [
        collect_activations(model, tokens[i : i + batch], [d.in_hook for d in dicts])
        for i in range(0, tokens.shape[0], batch)
    ]

    def alone():
        for a in acts:
            for d in dicts:
                d.forward_sparse(a[d.in_hook].reshape(-1, d.d_in))

    t_alone = _time(alone, 3)
    d0 = dicts[0]
    flops = tokens.numel() * sum(
        2 * d.d_in * d.n_features + 2 * k * d.d_out + 2 * d.d_in * d.d_out for d in dicts
    )
    a, b = torch.randn(4096, d0.d_in), torch.randn(d0.d_in, d0.n_features)
    t_mm = _time(lambda: a @ b, 3)
    rate = 2 * a.shape[0] * a.shape[1] * b.shape[1] / t_mm
    return t_alone, flops / rate


def bench(model, label: str, dicts, n_rows: int, batch: int, ctx: int, k: int) -> tuple:
    tokens = torch.randint(
        1, model.cfg.d_vocab, (n_rows, ctx), generator=torch.Generator().manual_seed(0)
    )
    n_tok = tokens.numel()
    F = dicts[0].n_features
    print(f"\nmodel: {label}; {len(dicts)} TopK skip transcoders F={F} k={k}; {n_tok} tokens")

    def plain():
        for i in range(0, tokens.shape[0], batch):
            model(tokens[i : i + batch])

    def spliced(sparse: bool):
        def run():
            with splice(model, dicts, sparse=sparse):
                for i in range(0, tokens.shape[0], batch):
                    model(tokens[i : i + batch])

        return run

    t_plain = _time(plain, 3)
    t_dense = _time(spliced(False), 3)
    t_sparse = _time(spliced(True), 3)
    t_alone, t_flops = _floor(model, dicts, tokens, batch, k)
    rate = lambda t: n_tok / t  # noqa: E731
    print(f"plain forward                 {rate(t_plain):10.0f} tok/s   1.00x")
    print(f"spliced forward (dense path)  {rate(t_dense):10.0f} tok/s   {t_dense / t_plain:.2f}x")
    print(f"spliced forward (sparse path) {rate(t_sparse):10.0f} tok/s   {t_sparse / t_plain:.2f}x")
    extra = t_sparse - t_plain
    print(
        f"dictionaries alone {t_alone / t_plain:.2f}x the plain forward, FLOP floor "
        f"{t_flops / t_plain:.2f}x; splicing adds {extra / t_plain:.2f}x = "
        f"{extra / t_alone:.2f}x the dictionaries alone, {extra / t_flops:.2f}x their FLOP floor"
    )
    return tokens, t_plain


@torch.no_grad()
def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--skip-gpt2", action="store_true", help="only the default model")
    args = p.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, label = _model()
    dicts = _transcoders(model)
    batch = 8
    tokens, t_plain = bench(model, label, dicts, batch * 4, batch, 128, 32)
    n_tok = tokens.numel()
    t_min = _time(
        lambda: spliced_loss(
            model, dicts, tokens, batch, verbose=False, ablations=(), per_layer=False
        ),
        2,
    )
    t_full = _time(lambda: spliced_loss(model, dicts, tokens, batch, verbose=False), 1)
    # passes per batch: full = mean pass (~1) + original + all + (alone + zero + mean) per layer + 2
    n_layers = len(dicts)
    passes_full = 1 + 1 + 1 + 3 * n_layers + 2
    rate = lambda t: n_tok / t  # noqa: E731
    print(
        f"spliced_loss minimal (orig+all, 2 passes)  {rate(t_min):8.0f} tok/s   "
        f"{t_min / t_plain:.2f}x  = {t_min / t_plain / 2:.2f}x per pass"
    )
    print(
        f"spliced_loss full (~{passes_full} passes)       {rate(t_full):8.0f} tok/s   "
        f"{t_full / t_plain:.2f}x  = {t_full / t_plain / passes_full:.2f}x per pass"
    )
    if not args.skip_gpt2:
        big = _gpt2_size()
        bench(big, "random GPT-2-size (12 x 768)", _transcoders(big, F=6144), 4, 2, 128, 32)


if __name__ == "__main__":
    main()
