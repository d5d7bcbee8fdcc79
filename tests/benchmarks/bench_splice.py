"""Speed of splicing and of `spliced_loss` against the plain model's forward, in the same run.

Every layer of the default model (4 layers, d_model 128) is spliced with a random TopK skip
transcoder (F=2048, k=32). Prints tokens/s and ratios; the goal is a spliced forward pass at
most 1.3x the cost of a plain one. `spliced_loss` runs several forward passes per batch
(original, all spliced, each dictionary alone, zero/mean ablations), so its figure is also
given per forward pass.

    python tests/benchmarks/bench_splice.py
"""

from __future__ import annotations

import time

import torch

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


@torch.no_grad()
def main() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, label = _model()
    dicts = _transcoders(model)
    batch, ctx = 8, 128
    tokens = torch.randint(
        1, model.cfg.d_vocab, (batch * 4, ctx), generator=torch.Generator().manual_seed(0)
    )
    n_tok = tokens.numel()
    print(f"model: {label}; {len(dicts)} TopK skip transcoders F=2048 k=32; {n_tok} tokens")

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
    print(f"plain forward                 {rate(t_plain):10.0f} tok/s   1.00x")
    print(f"spliced forward (dense path)  {rate(t_dense):10.0f} tok/s   {t_dense / t_plain:.2f}x")
    print(f"spliced forward (sparse path) {rate(t_sparse):10.0f} tok/s   {t_sparse / t_plain:.2f}x")
    print(
        f"spliced_loss minimal (orig+all, 2 passes)  {rate(t_min):8.0f} tok/s   "
        f"{t_min / t_plain:.2f}x  = {t_min / t_plain / 2:.2f}x per pass"
    )
    print(
        f"spliced_loss full (~{passes_full} passes)       {rate(t_full):8.0f} tok/s   "
        f"{t_full / t_plain:.2f}x  = {t_full / t_plain / passes_full:.2f}x per pass"
    )


if __name__ == "__main__":
    main()
