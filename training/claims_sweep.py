"""Short sparsity sweeps that test the seed papers' claims on the default model.

    python -m training.claims_sweep --out runs/claims [--tokens 2e5] [--e2e-tokens 1e5]
        [--groups skip,gated,e2e] [--device cpu]

Every run trains one layer (`--layer`, default 1) of the default model with the project's
own `Trainer`, then measures the dictionary spliced alone on the same held-out rows:

- skip: transcoders against skip transcoders at equal k (Paulo et al. 2025);
- gated: ReLU against gated SAEs over four L1 coefficients each (Rajamanoharan et al. 2024):
  L0, fraction of loss recovered and shrinkage gamma;
- e2e: TopK SAEs at equal k trained locally, end to end (KL) and e2e+ds, one layer at a
  time as in Braun et al. 2024, plus two runs that isolate why the zoo's e2e sets (all
  layers spliced together, a 5x lower learning rate) recover less than its local set.

Results are appended run by run to `<out>/claims_sweep.json` (a finished run is not trained
again), so an interrupted sweep resumes. `analysis.claims` turns that file into the report's
section. Sized for one CPU core: about 15 minutes of CPU time at the defaults.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from replacement.atomic import write_json
from replacement.dictionary import Dictionary
from replacement.loss import spliced_loss
from replacement.splice import splice
from training.config import TrainConfig
from training.data import TokenData

RESULTS_FILE = "claims_sweep.json"
SWEEP_LR = 4e-3
"""The zoo's local learning rate (training/build_zoo.py), used by every sweep run unless a run
says otherwise, so that objectives differ in nothing but their loss."""
ZOO_E2E_LR = None
"""The zoo's e2e sets kept the F-scaled default (8e-4 at F=1024)."""


def sweep_runs(layer: int) -> list[dict[str, Any]]:
    """Every run of the sweep: a name, its claim group and the TrainConfig fields it sets."""
    runs: list[dict[str, Any]] = []
    for k in (8, 32):
        for kind in ("transcoder", "skip_transcoder"):
            runs.append({"name": f"{kind}_k{k}", "group": "skip", "kind": kind, "k": k})
    for coefficient in (0.03, 0.1, 0.3, 1.0):
        for act in ("relu", "gated"):
            runs.append(
                {
                    "name": f"{act}_sae_l1_{coefficient:g}",
                    "group": "gated",
                    "kind": "sae",
                    "activation": act,
                    "l1_coefficient": coefficient,
                }
            )
    for k in (8, 16):
        for objective in ("local", "e2e", "e2e_ds"):
            runs.append(
                {
                    "name": f"sae_{objective}_k{k}",
                    "group": "e2e",
                    "kind": "sae",
                    "k": k,
                    "objective": objective,
                }
            )
    # the zoo's e2e recipe, one change at a time: its lower lr, and all layers spliced at once
    runs.append(
        {
            "name": "sae_e2e_k16_zoo_lr",
            "group": "e2e_zoo",
            "kind": "sae",
            "k": 16,
            "objective": "e2e",
            "lr": ZOO_E2E_LR,
        }
    )
    runs.append(
        {
            "name": "sae_e2e_k16_all_layers",
            "group": "e2e_zoo",
            "kind": "sae",
            "k": 16,
            "objective": "e2e",
            "layers": "all",
        }
    )
    for run in runs:
        run.setdefault("layers", [layer])
    return runs


def _config(run: dict[str, Any], n_layers: int, args: argparse.Namespace) -> TrainConfig:
    fields = {k: v for k, v in run.items() if k not in ("name", "group")}
    if fields["layers"] == "all":
        fields["layers"] = list(range(n_layers))
    e2e = fields.get("objective", "local") != "local"
    return TrainConfig(
        **{
            "model": "default",
            "activation": "topk",
            "n_features": args.n_features,
            "lr": SWEEP_LR,
            "ctx_len": 128,
            "batch_tokens": 2048,
            "seed": 0,
            "warmup_steps": 10,
            **fields,
        },
        total_tokens=int(args.e2e_tokens if e2e else args.tokens),
        buffer_tokens=32768,
        out_dir=str(Path(args.out) / "runs" / run["name"]),
        device=args.device,
        evaluate=False,
        verbose=False,
        checkpoint_every=0,
    ).validate()


@torch.no_grad()
def downstream_fvu(
    model: Any, dictionary: Dictionary, tokens: Int[Tensor, "rows ctx"], batch_size: int = 16
) -> dict[str, float]:
    """FVU of every later `hook_resid_post` when `dictionary` alone is spliced (BOS excluded).

    sum ||r_spliced - r_orig||^2 / sum ||r_orig - mean r_orig||^2 per layer from the
    dictionary's own layer on: how well the spliced model keeps the downstream computation.
    """
    from replacement.hooks import hook_layer

    first = hook_layer(dictionary.out_hook)
    hooks = [f"blocks.{m}.hook_resid_post" for m in range(first, int(model.cfg.n_layers))]
    err = dict.fromkeys(hooks, 0.0)
    s1: dict[str, Tensor] = {}
    s2 = dict.fromkeys(hooks, 0.0)
    n = 0
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start : start + batch_size].to(model.cfg.device)
        _, orig = model.run_with_cache(batch, names_filter=lambda name: name in hooks)
        with splice(model, [dictionary]):
            _, spl = model.run_with_cache(batch, names_filter=lambda name: name in hooks)
        for h in hooks:
            o, s = orig[h][:, 1:].double(), spl[h][:, 1:].double()
            err[h] += float((s - o).pow(2).sum())
            s1[h] = s1.get(h, 0) + o.sum((0, 1))
            s2[h] += float(o.pow(2).sum())
        n += batch.shape[0] * (batch.shape[1] - 1)
    out = {}
    for h in hooks:
        var = s2[h] - float(s1[h].pow(2).sum()) / n
        out[h] = err[h] / max(var, 1e-12)
    return out


def evaluate_run(
    model: Any, dictionaries: list[Dictionary], layer: int, val: Int[Tensor, "rows ctx"]
) -> dict[str, Any]:
    """Figures of the layer-`layer` dictionary spliced alone (and of all, if several)."""
    mine = next(d for d in dictionaries if d.out_hook.startswith(f"blocks.{layer}."))
    report = spliced_loss(model, [mine], val, verbose=False)
    row = report.all
    out: dict[str, Any] = {
        "l0": row.l0,
        "fvu": row.fvu,
        "ce_increase": row.ce_increase,
        "kl": row.kl,
        "frac_recovered": row.recovered_zero,
        "frac_recovered_mean": row.recovered_mean,
        "shrinkage": row.shrinkage,
        "dead_share": row.dead_share,
        "alive": int(round((1 - row.dead_share) * mine.n_features)),
        "downstream_fvu": downstream_fvu(model, mine, val),
    }
    if len(dictionaries) > 1:
        every = spliced_loss(model, dictionaries, val, verbose=False, per_layer=False)
        out["all_layers"] = {
            "ce_increase": every.all.ce_increase,
            "frac_recovered": every.all.recovered_zero,
        }
    return out


def run_sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Train and measure every run not yet in the results file; returns the whole file."""
    from replacement.model import load_model
    from training.data import load_token_data
    from training.trainer import Trainer

    out = Path(args.out)
    path = out / RESULTS_FILE
    results = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    model = load_model("default", device=args.device)
    data: TokenData = load_token_data(model, None, ctx_len=128)
    val = data.val[: args.eval_rows]
    n_layers = int(model.cfg.n_layers)
    results["setup"] = {
        "model": "default",
        "layer": args.layer,
        "n_features": args.n_features,
        "tokens_local": int(args.tokens),
        "tokens_e2e": int(args.e2e_tokens),
        "lr": SWEEP_LR,
        "eval_tokens": int(val.numel()),
        "command": "python -m training.claims_sweep " + " ".join(args.argv),
    }
    for run in sweep_runs(args.layer):
        if run["group"] not in args.groups or run["name"] in results["runs"]:
            continue
        config = _config(run, n_layers, args)
        start = time.perf_counter()
        trainer = Trainer(config, model=model, data=data)
        trained = trainer.train()
        seconds = time.perf_counter() - start
        dictionaries = [d.eval() for d in trained.values()]
        record = {
            "group": run["group"],
            "kind": config.kind,
            "activation": config.activation,
            "objective": config.objective,
            "k": config.k if config.activation in ("topk", "batchtopk") else None,
            "l1_coefficient": config.l1_coefficient
            if config.activation in ("relu", "gated")
            else None,
            "lr": config.learning_rate,
            "layers": config.layers,
            "training_tokens": trainer.step * trainer.tokens_per_step,
            "train_seconds": seconds,
            **evaluate_run(model, dictionaries, args.layer, val),
        }
        results["runs"][run["name"]] = record
        write_json(path, results)
        print(
            f"{run['name']}: {seconds:.0f} s, L0 {record['l0']:.1f}, FVU {record['fvu']:.3f}, "
            f"dCE {record['ce_increase']:.3f}, rec {record['frac_recovered']:.3f}",
            flush=True,
        )
    return results


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    import sys

    p = argparse.ArgumentParser(prog="python -m training.claims_sweep", description=__doc__)
    p.add_argument("--out", default="runs/claims", help="folder of runs and claims_sweep.json")
    p.add_argument("--layer", type=int, default=1, help="block whose dictionaries are swept")
    p.add_argument("--n-features", type=int, default=1024)
    p.add_argument("--tokens", type=float, default=2e5, help="training tokens of a local run")
    p.add_argument("--e2e-tokens", type=float, default=1e5, help="training tokens of e2e runs")
    p.add_argument("--eval-rows", type=int, default=64, help="held-out rows of 128 tokens")
    p.add_argument("--groups", default="skip,gated,e2e,e2e_zoo")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.groups = [g for g in args.groups.split(",") if g]
    torch.manual_seed(0)
    run_sweep(args)


if __name__ == "__main__":
    main()
