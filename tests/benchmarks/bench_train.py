"""Training speed of a TopK skip transcoder: this project's trainer against EleutherAI sparsify.

Both trainers get the same model (the embedded default model; sparsify reads the same
weights through `transformers`), the same token rows (Python stdlib, BOS-first rows of
`--ctx` tokens, BOS excluded from training in both), the same width, k, batch, Adam learning
rate, warm-up and linear decay, AuxK weight 1/32 and dead-latent threshold, and train one
skip transcoder per layer (MLP input -> MLP output) for every layer in one forward pass.
Prints training tokens/s of each, their ratio, and the held-out FVU of each after the same
number of tokens. sparsify is optional (`pip install eai-sparsify --no-deps` plus natsort,
schedulefree, simple-parsing, docstring-parser); without it only our figures print.

Differences that remain: sparsify runs the full model each step (ours stops after the last
needed layer), its SAE forward runs under bf16 autocast on CUDA (ours float32), ours clips
gradients at norm 1 (sparsify does not), and the bridge folds LayerNorm weights into the MLP
and centres its output over d_model, so the two FVUs are measured against targets that differ
by that centring (a per-token constant; FVU barely moves).

    python tests/benchmarks/bench_train.py [--tokens 1e6] [--n-features 1024] [--k 16]
        [--device cuda] [--layers 0,1,2,3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from replacement import load_model
from replacement.errors import ModelLoadError
from replacement.zoo import ZOO_DIR
from training.activations import collect_activations
from training.config import TrainConfig
from training.data import TokenData, chunk_documents, special_token_ids, token_mask
from training.default_model.corpus import collect_corpus
from training.trainer import Trainer


def _model(device: str) -> tuple[Any, Path, str]:
    """The bridge, the folder of its HF weights, and a description."""
    try:
        return load_model("default", device=device), ZOO_DIR / "default_model", "default model"
    except ModelLoadError:
        from tests.tiny_models import make_gpt2, make_tokenizer, save_hf

        tok = make_tokenizer()
        folder = save_hf(
            make_gpt2(len(tok), n_layers=4, d_model=128), tok, Path(tempfile.mkdtemp())
        )
        return load_model(folder, device=device), folder, "FALLBACK random GPT-2 (4x128)"


def _rows(model: Any, texts: list[str], bos: int, ctx: int, n_rows: int) -> Tensor:
    """The first `n_rows` BOS-first rows of the documents (tokenized only as far as needed)."""
    docs: list[list[int]] = []
    have = 0
    for start in range(0, len(texts), 64):
        batch = model.tokenizer(texts[start : start + 64], add_special_tokens=False)["input_ids"]
        docs.extend(batch)
        have += sum(len(d) + 1 for d in batch)
        if have >= n_rows * (ctx - 1) * 1.05:
            break
    rows = chunk_documents(docs, bos, ctx)
    if rows.shape[0] < n_rows:
        raise SystemExit(f"the corpus gives {rows.shape[0]} rows; {n_rows} needed")
    return rows[:n_rows]


def _fvu(y: Tensor, y_hat: Tensor) -> float:
    y, y_hat = y.double(), y_hat.double()
    return float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


@torch.no_grad()
def _our_fvu(bridge: Any, dicts: dict, val: Tensor, specials: list[int]) -> float:
    hooks = sorted({h for d in dicts.values() for h in (d.in_hook, d.out_hook)})
    acts = collect_activations(bridge, val, hooks)
    mask = token_mask(val, specials).to(next(iter(acts.values())).device)
    out = [_fvu(acts[d.out_hook][mask], d(acts[d.in_hook][mask])) for d in dicts.values()]
    return sum(out) / len(out)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_ours(bridge, data: TokenData, args, layers, out_dir: Path) -> tuple[float, float]:
    """(tokens/s, held-out FVU) of this project's trainer."""
    steps = args.steps
    cfg = TrainConfig(
        model="default",
        kind="skip_transcoder",
        activation="topk",
        layers=layers,
        n_features=args.n_features,
        k=args.k,
        objective="local",
        lr=args.lr,
        warmup_steps=args.warmup,
        decay="linear",
        decay_fraction=1.0,
        batch_tokens=args.seqs * (args.ctx - 1),
        total_tokens=steps * args.seqs * (args.ctx - 1),
        ctx_len=args.ctx,
        buffer_tokens=args.buffer_tokens,
        dead_after_tokens=args.dead_after,
        checkpoint_every=0,
        log_every=max(1, steps // 10),
        evaluate=False,
        verbose=False,
        out_dir=str(out_dir),
        device=args.device,
    )
    trainer = Trainer(cfg, bridge, data)
    _sync(args.device)
    t0 = time.perf_counter()
    dicts = trainer.train()
    _sync(args.device)
    seconds = time.perf_counter() - t0
    tokens = steps * trainer.tokens_per_step
    return tokens / seconds, _our_fvu(bridge, dicts, data.val, data.special_ids)


def run_sparsify(hf_dir: Path, data: TokenData, args, layers, out_dir: Path):
    """(tokens/s, held-out FVU) of sparsify's trainer, or None when it is not installed."""
    try:
        import sparsify
        from datasets import Dataset
    except ImportError as err:
        print(f"sparsify not available ({err}); skipping the comparison")
        return None
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(args.device)
    model.eval()
    steps = args.steps
    # the same rows our trainer draws from, in a fixed shuffled order (sparsify does not shuffle)
    order = torch.randperm(data.train.shape[0], generator=torch.Generator().manual_seed(0))
    rows = data.train[order[: steps * args.seqs]]
    ds = Dataset.from_dict({"input_ids": rows.tolist()}).with_format("torch")
    cfg = sparsify.TrainConfig(
        sparsify.SparseCoderConfig(
            num_latents=args.n_features, k=args.k, transcode=True, skip_connection=True
        ),
        batch_size=args.seqs,
        loss_fn="fvu",
        optimizer="adam",
        lr=args.lr,
        lr_warmup_steps=args.warmup,
        auxk_alpha=1 / 32,
        dead_feature_threshold=args.dead_after,
        exclude_tokens=list(data.special_ids),
        hookpoints=[f"h.{layer}.mlp" for layer in layers],
        log_to_wandb=False,
        save_every=10**9,
        save_dir=str(out_dir),
    )
    trainer = sparsify.Trainer(cfg, ds, model)
    _sync(args.device)
    t0 = time.perf_counter()
    trainer.fit()
    _sync(args.device)
    seconds = time.perf_counter() - t0
    n_tokens = int((rows != data.bos).sum())  # sparsify excludes only the listed tokens
    # held-out FVU, same rows and mask as ours
    captured: dict[int, tuple[Tensor, Tensor]] = {}
    handles = []
    for layer in layers:

        def hook(module, inputs, output, layer=layer):
            captured[layer] = (inputs[0].detach(), output.detach())

        handles.append(model.transformer.h[layer].mlp.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(data.val.to(args.device))
    finally:
        for h in handles:
            h.remove()
    mask = token_mask(data.val, data.special_ids).to(args.device)
    fvus = []
    with torch.no_grad():
        for layer in layers:
            x, y = captured[layer]
            sae = trainer.saes[f"h.{layer}.mlp"]
            fvus.append(_fvu(y[mask], sae(x[mask].float()).sae_out.float()))
    return n_tokens / seconds, sum(fvus) / len(fvus)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=float, default=2e5, help="training tokens (each trainer)")
    p.add_argument("--n-features", type=int, default=1024)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--seqs", type=int, default=32, help="sequences per step")
    p.add_argument("--layers", default="all")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--buffer-tokens", type=int, default=65536)
    p.add_argument("--val-rows", type=int, default=64)
    p.add_argument("--repeats", type=int, default=1, help="alternating runs of each trainer")
    args = p.parse_args()
    torch.manual_seed(0)

    bridge, hf_dir, what = _model(args.device)
    layers = (
        list(range(bridge.cfg.n_layers))
        if args.layers == "all"
        else [int(x) for x in args.layers.split(",")]
    )
    args.lr = 2e-4 / (args.n_features / 2**14) ** 0.5
    per_step = args.seqs * (args.ctx - 1)
    # whole refills of our mixing buffer, so neither trainer computes activations it never uses
    per_refill = max(1, args.buffer_tokens // per_step)
    args.steps = per_refill * max(1, round(int(args.tokens) / per_step / per_refill))
    args.warmup = max(1, args.steps // 20)
    args.dead_after = max(per_step, int(args.tokens) // 10)

    bos, specials = special_token_ids(bridge)
    corpus = collect_corpus()
    train = _rows(bridge, [d.text for d in corpus.train], bos, args.ctx, args.steps * args.seqs)
    val = _rows(bridge, [d.text for d in corpus.heldout], bos, args.ctx, args.val_rows)
    data = TokenData(train, val, bos, specials)
    print(
        f"{what} on {args.device}; {len(layers)} layers, F={args.n_features}, k={args.k}, "
        f"{args.steps} steps x {per_step} tokens, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}"
    )

    # repeats alternate the two trainers so a shared machine's load falls on both alike
    best: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            runners = {"ours": run_ours, "sparsify": run_sparsify}
            sources = {"ours": bridge, "sparsify": hf_dir}
            for name, runner in runners.items():
                if rep and name not in best:
                    continue  # sparsify missing
                result = runner(sources[name], data, args, layers, Path(tmp) / f"{name}{rep}")
                if result is None:
                    continue
                print(
                    f"{name:9s} run {rep}: {result[0]:10.0f} tokens/s  held-out FVU {result[1]:.4f}"
                )
                if name not in best or result[0] > best[name][0]:
                    best[name] = result
    print(f"best of {args.repeats}:")
    for name, (speed, fvu) in best.items():
        print(f"  {name:9s} {speed:10.0f} tokens/s   held-out FVU {fvu:.4f}")
    if "sparsify" in best:
        ratio = best["ours"][0] / best["sparsify"][0]
        print(f"ratio ours / sparsify tokens/s: {ratio:.2f}x")


if __name__ == "__main__":
    main()
