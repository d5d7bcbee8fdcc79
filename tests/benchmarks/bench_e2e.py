"""e2e training speed: the KL's own backward, and runs that share the original model's pass.

The claims sweep's e2e setup (embedded default model, layer 1, 1024 features, TopK, 4096
tokens a step, ctx 128, seed 0), timed step by step after two warm-up steps:
- `autograd KL`: each run on its own, the KL through autograd's log_softmax (the trainer
  before `training.kl_loss`);
- `fused KL`: each run on its own, `kl_to_reference`;
- `K runs together`: `--together` runs (k = 4, 8, 16, 32, ...) advanced step by step on one
  `OriginalPasses`, as `train_many` does; per-run time is the group's step time over K.
Interleaved per repeat; prints medians of tokens/s per run and ratios to `autograd KL`.

Measured 2026-12-05 on the 2-core CPU machine, one thread, another training process on the
other core: autograd KL 4.0k tokens/s, fused KL 1.10x, 4 runs together 1.33x per run
(e2e+ds alike). The original pass is about a quarter of a step; the spliced pass and its
backward are the rest.

    python tests/benchmarks/bench_e2e.py [--steps 6] [--repeats 3] [--together 4]
        [--objective e2e] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from replacement import load_model
from training import kl_loss
from training import trainer as trainer_module
from training.config import TrainConfig
from training.data import load_token_data
from training.original_pass import OriginalPasses
from training.trainer import Trainer


def _autograd_kl(logits, reference, weights):
    logp = torch.log_softmax(logits.float(), dim=-1)
    ref_logp = reference.probs.clamp_min(1e-45).log()
    return (weights * (reference.probs * (ref_logp - logp)).sum(-1)).sum()


def _config(folder: Path, k: int, args) -> TrainConfig:
    return TrainConfig(
        objective=args.objective,
        activation="topk",
        k=k,
        layers=[1],
        n_features=1024,
        batch_tokens=4096,
        ctx_len=128,
        total_tokens=4096 * (args.steps + 2),
        lr=4e-3,
        warmup_steps=1,
        checkpoint_every=0,
        evaluate=False,
        verbose=False,
        device=args.device,
        out_dir=str(folder),
    )


def _time(trainers: list[Trainer], steps: int) -> float:
    """Seconds per run-step over `steps` steps after two warm-up steps."""
    if trainers[0].originals is not None:
        trainers[0].originals.sharers = len(trainers)
    for _ in range(2):
        for t in trainers:
            t.advance()
    start = time.perf_counter()
    for _ in range(steps):
        for t in trainers:
            t.advance()
    return (time.perf_counter() - start) / (steps * len(trainers))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--together", type=int, default=4)
    p.add_argument("--objective", default="e2e", choices=["e2e", "e2e_ds"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("default", device=args.device)
    data = load_token_data(model, None, ctx_len=128)
    ks = [4 * 2**i for i in range(args.together)]
    seconds: dict[str, list[float]] = {"autograd KL": [], "fused KL": [], "together": []}
    per_step = 0
    fused = kl_loss.kl_to_reference
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            for name in seconds:
                trainer_module.kl_to_reference = _autograd_kl if name == "autograd KL" else fused
                if name == "together":
                    shared = OriginalPasses(model)
                    runs = [
                        Trainer(
                            _config(folder / f"{name}{k}", k, args), model, data, originals=shared
                        )
                        for k in ks
                    ]
                else:
                    runs = [
                        Trainer(_config(folder / name.replace(" ", "_"), 16, args), model, data)
                    ]
                for t in runs:
                    t.begin()
                seconds[name].append(_time(runs, args.steps))
                per_step = runs[0].tokens_per_step
                for t in runs:
                    t.release()
    trainer_module.kl_to_reference = fused
    base = statistics.median(seconds["autograd KL"])
    print(f"{args.objective}, {args.threads} thread(s), {args.device}, medians of {args.repeats}:")
    for name, values in seconds.items():
        label = f"{len(ks)} runs together" if name == "together" else name
        s = statistics.median(values)
        print(f"  {label:>18}: {per_step / s / 1e3:6.2f}k tokens/s per run, {base / s:.2f}x")


if __name__ == "__main__":
    main()
