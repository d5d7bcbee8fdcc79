"""Training speed of TopK skip transcoders: this project's trainer against EleutherAI sparsify.

Both trainers get the same model (the embedded default model; sparsify reads the same
weights through `transformers`), the same token rows (Python stdlib, BOS-first rows of
`--ctx` tokens, BOS excluded from training in both), the same width, k, batch, Adam learning
rate, warm-up and linear decay, AuxK weight 1/32 and dead-latent threshold, and train one
skip transcoder per layer (MLP input -> MLP output) for every layer in one forward pass.

Runs, interleaved per repeat so a shared machine's load falls on all alike:
- ours from the model (activation buffer filled by the model as training goes);
- sparsify (in a subprocess with the Python of `--sparsify-python`, default $SPARSIFY_PYTHON
  or this one: sparsify pins its own dependencies, so it may live in its own environment);
- ours from an activation cache of the same rows (`sparse-circuits cache`, written once
  before the repeats; its writing time is printed and amortised over sweeps);
- a sweep of `--sweep` dictionary sets (k/2, k, 2k) from the cache in one pass (`train_many`);
- ours with the e2e and e2e+ds objectives on the same tokens (they run the model every step).
Prints tokens/s of each, the ratios, and held-out FVU after the same number of tokens.

Measured 2026-12-03 under the CPU lock (2 threads, defaults, eai-sparsify 1.3.3): sparsify
19.5k tokens/s (FVU 0.4331), ours from the model 1.31x (FVU 0.4335), from the cache 2.29x
(FVU 0.4330), sweep of 3 from the cache 2.10x per set.
In a later run (same settings, a slower machine: sparsify 13.4k tokens/s): from the model 1.53x,
from the cache 2.78x; e2e and e2e+ds 0.24x and 0.23x the tokens/s of ours from the model.
Held-out FVU over four init seeds (--seeds 3; ours: init and data order, sparsify: init): ours
from the model 0.4322 on average (0.4311-0.4335), sparsify 0.4334 (0.4331-0.4336).

Differences that remain: sparsify runs the full model each step (ours stops after the last
needed layer, through the bridge's plain Hugging Face twin, training.direct_forward), its SAE forward runs under bf16 autocast on CUDA (ours float32), ours clips
gradients at norm 1 (sparsify does not), and the bridge folds LayerNorm weights into the MLP
and centres its output over d_model, so the two FVUs are measured against targets that differ
by that centring (a per-token constant; FVU barely moves).

    python tests/benchmarks/bench_train.py [--tokens 2e5] [--n-features 1024] [--k 16]
        [--device cuda] [--layers 0,1,2,3] [--repeats 2] [--sparsify-python PATH] [--no-e2e]
        [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from replacement import load_model
from replacement.errors import ModelLoadError
from replacement.zoo import ZOO_DIR
from training.activation_cache import write_activation_cache
from training.activations import collect_activations
from training.config import TrainConfig
from training.data import TokenData, chunk_documents, special_token_ids, token_mask
from training.default_model.corpus import collect_corpus
from training.dictionary_factory import dictionary_hooks
from training.together import train_many
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


def _our_config(args, layers, out_dir: Path, **kw) -> TrainConfig:
    steps = kw.pop("steps", args.steps)
    return TrainConfig(
        **{
            "model": "default",
            "kind": "skip_transcoder",
            "activation": "topk",
            "layers": layers,
            "n_features": args.n_features,
            "k": args.k,
            "objective": "local",
            "lr": args.lr,
            "warmup_steps": args.warmup,
            "decay": "linear",
            "decay_fraction": 1.0,
            "batch_tokens": args.seqs * (args.ctx - 1),
            "total_tokens": steps * args.seqs * (args.ctx - 1),
            "ctx_len": args.ctx,
            "buffer_tokens": args.buffer_tokens,
            "dead_after_tokens": args.dead_after,
            "checkpoint_every": 0,
            "log_every": max(1, steps // 10),
            "evaluate": False,
            "verbose": False,
            "out_dir": str(out_dir),
            "device": args.device,
            **kw,
        }
    )


def run_ours(bridge, data: TokenData, args, layers, out_dir: Path, **kw) -> tuple[float, float]:
    """(tokens/s, held-out FVU) of this project's trainer (kw: TrainConfig overrides)."""
    trainer = Trainer(_our_config(args, layers, out_dir, **kw), bridge, data)
    _sync(args.device)
    t0 = time.perf_counter()
    dicts = trainer.train()
    _sync(args.device)
    seconds = time.perf_counter() - t0
    tokens = trainer.step * trainer.tokens_per_step
    return tokens / seconds, _our_fvu(bridge, dicts, data.val, data.special_ids)


def run_sweep(bridge, data: TokenData, args, layers, out_dir: Path, cache: Path):
    """(dictionary-set tokens/s, mean held-out FVU) of `args.sweep` runs in one cached pass."""
    ks = [max(1, args.k // 2), args.k, 2 * args.k, 4 * args.k][: args.sweep]
    configs = [
        _our_config(args, layers, out_dir / f"k{k}", k=k, activations=str(cache)) for k in ks
    ]
    _sync(args.device)
    t0 = time.perf_counter()
    results = train_many(configs, bridge, data)
    _sync(args.device)
    seconds = time.perf_counter() - t0
    tokens = len(configs) * args.steps * configs[0].batch_tokens
    fvus = [_our_fvu(bridge, dicts, data.val, data.special_ids) for dicts in results]
    return tokens / seconds, sum(fvus) / len(fvus)


def run_sparsify(hf_dir: Path, data: TokenData, args, layers, out_dir: Path, seed: int = 0):
    """(tokens/s, held-out FVU) of sparsify's trainer (in a subprocess), or None if missing."""
    job = out_dir.with_suffix(".job.pt")
    out_dir.mkdir(parents=True, exist_ok=True)
    order = torch.randperm(data.train.shape[0], generator=torch.Generator().manual_seed(0))
    settings = {
        k: getattr(args, k)
        for k in ("n_features", "k", "seqs", "lr", "warmup", "dead_after", "device", "threads")
    }
    settings["seed"] = seed
    torch.save(
        {
            # the same rows our trainer draws from, in a fixed shuffled order
            "rows": data.train[order[: args.steps * args.seqs]],
            "val": data.val,
            "special_ids": list(data.special_ids),
            "bos": data.bos,
            "hf_dir": str(hf_dir),
            "out_dir": str(out_dir),
            "args": {**settings, "layers": layers},
        },
        job,
    )
    runner = Path(__file__).with_name("sparsify_runner.py")
    proc = subprocess.run(
        [args.sparsify_python, str(runner), str(job)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"sparsify did not run ({' / '.join(tail)}); skipping the comparison")
        return None
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["tokens_per_s"], result["fvu"]


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
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs of each trainer")
    p.add_argument("--sweep", type=int, default=3, help="dictionary sets of the cached sweep")
    p.add_argument("--threads", type=int, default=None, help="torch threads (both trainers)")
    p.add_argument("--no-e2e", action="store_true", help="skip the e2e and e2e+ds runs")
    p.add_argument(
        "--seeds",
        type=int,
        default=0,
        help="extra init seeds for both local trainers (untimed): the held-out FVU's seed spread",
    )
    p.add_argument(
        "--sparsify-python",
        default=os.environ.get("SPARSIFY_PYTHON", sys.executable),
        help="Python of an environment with eai-sparsify",
    )
    args = p.parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)

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

    results: dict[str, list[tuple[float, float]]] = {}
    fvus: dict[str, list[float]] = {}  # held-out FVU per extra seed
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = _our_config(args, layers, tmp)
        hooks = [h for layer in layers for h in dictionary_hooks(cfg, layer)]
        t0 = time.perf_counter()
        cache = write_activation_cache(
            bridge, data, hooks, tmp / "acts", dtype="float16", n_shards=4, verbose=False
        )
        cache_s = time.perf_counter() - t0
        print(f"activation cache: {train.shape[0]} rows written in {cache_s:.1f} s (float16)")
        runs = {
            "ours (model)": lambda d: run_ours(bridge, data, args, layers, d),
            "sparsify": lambda d: run_sparsify(hf_dir, data, args, layers, d),
            "ours (cache)": lambda d: run_ours(
                bridge, data, args, layers, d, activations=str(cache)
            ),
            f"ours (cache, sweep of {args.sweep})": lambda d: run_sweep(
                bridge, data, args, layers, d, cache
            ),
        }
        if not args.no_e2e:
            e2e_steps = max(4, args.steps // 4)
            for objective in ("e2e", "e2e_ds"):
                runs[f"ours {objective}"] = lambda d, o=objective: run_ours(
                    bridge, data, args, layers, d, objective=o, steps=e2e_steps
                )
        for rep in range(args.repeats):
            for i, (name, run) in enumerate(runs.items()):
                if rep and name not in results:
                    continue  # sparsify missing
                result = run(tmp / f"run{rep}_{i}")
                if result is None:
                    continue
                results.setdefault(name, []).append(result)
                print(
                    f"{name:28s} run {rep}: {result[0]:9.0f} tokens/s  held-out FVU {result[1]:.4f}"
                )
        for seed in range(1, args.seeds + 1):
            ours = run_ours(bridge, data, args, layers, tmp / f"seed{seed}", seed=seed)
            theirs = run_sparsify(hf_dir, data, args, layers, tmp / f"sp_seed{seed}", seed=seed)
            fvus.setdefault("ours (model)", []).append(ours[1])
            if theirs:
                fvus.setdefault("sparsify", []).append(theirs[1])
    best = {name: max(r, key=lambda x: x[0]) for name, r in results.items()}
    print(f"best of {args.repeats} (machine shared: compare the ratios, measured in one run):")
    for name, (speed, fvu) in best.items():
        print(f"  {name:28s} {speed:9.0f} tokens/s   held-out FVU {fvu:.4f}")
    for name, values in fvus.items():
        every = [best[name][1], *values]
        print(
            f"held-out FVU of {name} over {len(every)} seeds: mean {sum(every) / len(every):.4f}, "
            f"range {min(every):.4f}-{max(every):.4f}"
        )
    base = best.get("sparsify")
    local = best["ours (model)"][0]
    for name, (speed, _) in best.items():
        if base and name != "sparsify":
            print(f"ratio {name} / sparsify tokens/s: {speed / base[0]:.2f}x")
    for name in ("ours e2e", "ours e2e_ds"):
        if name in best:
            print(f"ratio {name} / ours (model) tokens/s: {best[name][0] / local:.2f}x")
    if base:
        n_tokens = args.steps * per_step
        for n in (1, args.sweep, 10):
            ours_s = cache_s + n * n_tokens / best["ours (cache)"][0]
            print(
                f"{n:2d} dictionary sets: cache write + {n} cached runs {ours_s:7.1f} s, "
                f"sparsify {n * n_tokens / base[0]:7.1f} s -> {n * n_tokens / base[0] / ours_s:.2f}x"
            )


if __name__ == "__main__":
    main()
