"""Build the embedded zoo's dictionary sets for the default model.

    python -m training.build_zoo --runs DIR --zoo replacement/zoo/dictionaries \\
        [--tokens 20000000] [--device cuda] [--data .device_data] [--sets a,b]

Six sets, every layer of the default model, the same token budget and width for each:

    sae_local            TopK SAE on the MLP output, local MSE
    sae_e2e              the same SAE trained end to end (KL to the original model)
    sae_e2e_ds           e2e + MSE to the original downstream residuals
    transcoder           TopK transcoder, MLP input -> MLP output, local
    skip_transcoder      TopK skip transcoder, local (the default set of `trace`)
    skip_transcoder_e2e  TopK skip transcoder, e2e

Training writes full-precision runs (checkpoints, metrics) under --runs; `ship` stores the
layer files in float16 under --zoo with a card.json whose figures are measured on the
shipped (float16) weights by `spliced_loss` on the default model's held-out files.
`--stage card` measures the cards of the shipped sets again without touching their weights
(after a change to how `spliced_loss` measures, say).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from replacement.atomic import write_json
from training.config import TrainConfig
from training.data import TokenData

LOCAL_LR = 4e-3
"""Adam lr of the local sets. The F-scaled default (8e-4 at F=1024) is tuned for far longer
runs: on layer 3's skip transcoder after 1M tokens it left FVU 0.328, against 0.273 at 2e-3,
0.243 at 4e-3 and 0.221 at 8e-3 (batch 4096); 4e-3 allows for the 4.5x longer zoo runs."""
ZOO_SETS: dict[str, dict[str, Any]] = {
    "sae_local": {"kind": "sae", "site": "hook_mlp_out", "objective": "local", "lr": LOCAL_LR},
    "sae_e2e": {"kind": "sae", "site": "hook_mlp_out", "objective": "e2e"},
    "sae_e2e_ds": {"kind": "sae", "site": "hook_mlp_out", "objective": "e2e_ds"},
    "transcoder": {"kind": "transcoder", "objective": "local", "lr": LOCAL_LR},
    "skip_transcoder": {"kind": "skip_transcoder", "objective": "local", "lr": LOCAL_LR},
    "skip_transcoder_e2e": {"kind": "skip_transcoder", "objective": "e2e"},
}
COMMON: dict[str, Any] = {
    "model": "default",
    "activation": "topk",
    "layers": [0, 1, 2, 3],
    "n_features": 1024,
    "k": 16,
    "ctx_len": 128,
    "batch_tokens": 4096,
    "seed": 0,
}


def stream_token_data(folder: Path, bos: int, ctx_len: int, specials: list[int]) -> TokenData:
    """Rows of BOS + (ctx_len - 1) tokens from the default model's prepared token streams.

    `train_tokens.npy` / `heldout_tokens.npy` are written by `python -m training.default_model
    --stage prepare` (documents joined with BOS), so the dictionaries see exactly the corpus of
    the model, whatever Python runs the training.
    """

    def rows(name: str) -> torch.Tensor:
        stream = torch.from_numpy(np.load(folder / name).astype(np.int64))
        n = stream.numel() // (ctx_len - 1)
        body = stream[: n * (ctx_len - 1)].reshape(n, ctx_len - 1)
        return torch.cat([torch.full((n, 1), bos), body], dim=1)

    return TokenData(rows("train_tokens.npy"), rows("heldout_tokens.npy"), bos, specials)


def train_sets(args: argparse.Namespace) -> None:
    """Train the requested sets one after another into --runs/<set>."""
    from replacement.model import load_model
    from training.data import special_token_ids
    from training.trainer import Trainer

    model = load_model("default", device=args.device)
    data = None
    if args.data:
        bos, specials = special_token_ids(model)
        data = stream_token_data(Path(args.data), bos, COMMON["ctx_len"], specials)
    for name in args.sets:
        start = time.perf_counter()
        config = TrainConfig(
            **{**COMMON, **ZOO_SETS[name]},
            total_tokens=int(args.tokens),
            out_dir=str(Path(args.runs) / name),
            device=args.device,
            verbose=not args.quiet,
            checkpoint_every=0,
            evaluate=False,  # `ship` measures the shipped weights
        )
        Trainer(config, model=model, data=data).train()
        print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)


def ship(args: argparse.Namespace) -> None:
    """Store each trained set in float16 under --zoo and measure its card on those weights."""
    from replacement.formats.native import load_native, save_dictionary

    model, val = _card_model_and_tokens(args)
    for name in args.sets:
        run, dest = Path(args.runs) / name, Path(args.zoo) / name
        run_card = json.loads((run / "card.json").read_text())
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        dictionaries = []
        for layer in COMMON["layers"]:
            d = load_native(run / f"layer_{layer}").half()
            d.metadata["source"] = f"zoo:{name}/layer_{layer}"
            save_dictionary(d, tmp / f"layer_{layer}")
            dictionaries.append(d.float().eval())
        card = measure_card(model, val, dictionaries, run_card)
        card["description"] = run_card["description"] + "; shipped in float16"
        write_json(tmp / "card.json", card)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        _print_card(name, card)


def remeasure(args: argparse.Namespace) -> None:
    """Measure the cards again on the sets already shipped under --zoo; the weights stay as they are."""
    from replacement.formats.native import load_native

    model, val = _card_model_and_tokens(args)
    for name in args.sets:
        dest = Path(args.zoo) / name
        old = json.loads((dest / "card.json").read_text())
        dictionaries = [
            load_native(dest / f"layer_{layer}").float().eval() for layer in COMMON["layers"]
        ]
        card = measure_card(model, val, dictionaries, old)
        card["description"] = old["description"]
        write_json(dest / "card.json", card)
        _print_card(name, card)


def _card_model_and_tokens(args: argparse.Namespace) -> tuple[Any, torch.Tensor]:
    from replacement.model import load_model
    from training.data import load_token_data

    model = load_model("default")
    return model, load_token_data(model, None, ctx_len=COMMON["ctx_len"]).val[: args.eval_rows]


def measure_card(
    model: Any, val: torch.Tensor, dictionaries: list, trained: dict[str, Any]
) -> dict[str, Any]:
    """A set's card: `spliced_loss` figures per layer (alone) and all layers together.

    `trained` is the run's card (or the previous zoo card): its "training" section and each
    layer's training tokens are carried over.
    """
    from replacement.loss import spliced_loss

    report = spliced_loss(model, dictionaries, val, verbose=False)
    layers = []
    for d, row_trained in zip(dictionaries, trained["layers"], strict=True):
        row = report.row(d.out_hook)
        layers.append(
            {
                "layer": row_trained["layer"],
                "n_features": d.n_features,
                "l0": row.l0,
                "fvu": row.fvu,
                "ce_increase": row.ce_increase,
                "kl": row.kl,
                "frac_recovered": row.recovered_zero,
                "frac_recovered_mean": row.recovered_mean,
                "dead_share": row.dead_share,
                "shrinkage": row.shrinkage,
                "training_tokens": row_trained["training_tokens"],
            }
        )
    every = report.all
    return {
        "description": trained.get("description", ""),
        "training": trained["training"],
        "evaluated_on": f"{val.numel():,} held-out tokens of the default model's corpus; "
        "position 0 (BOS) keeps the model's own activation in spliced and ablated passes",
        "layers": layers,
        "all_layers": {
            "ce_original": report.ce_original,
            "ce_increase": every.ce_increase,
            "kl": every.kl,
            "frac_recovered": every.recovered_zero,
        },
    }


def _print_card(name: str, card: dict[str, Any]) -> None:
    rows = card["layers"]
    print(
        f"{name}: "
        + ", ".join(
            f"L{r['layer']} fvu={r['fvu']:.3f} l0={r['l0']:.1f} rec={r['frac_recovered']:.3f}"
            for r in rows
        )
        + f"; all rec={card['all_layers']['frac_recovered']:.3f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    p = argparse.ArgumentParser(prog="python -m training.build_zoo", description=__doc__)
    p.add_argument(
        "--stage",
        choices=["train", "ship", "all", "card"],
        default="all",
        help="card: measure the cards of the shipped sets again, weights unchanged",
    )
    p.add_argument("--runs", default="runs/zoo", help="folder of the full-precision runs")
    p.add_argument("--zoo", default="replacement/zoo/dictionaries", help="shipped sets folder")
    p.add_argument("--sets", default=",".join(ZOO_SETS), help="comma-separated set names")
    p.add_argument("--tokens", type=float, default=2e7, help="training tokens per set")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default=None, help="folder with train_tokens.npy/heldout_tokens.npy")
    p.add_argument("--eval-rows", type=int, default=256, help="held-out rows for the cards")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.sets = [s for s in args.sets.split(",") if s]
    unknown = [s for s in args.sets if s not in ZOO_SETS]
    if unknown:
        raise SystemExit(f"unknown sets {unknown}; known: {list(ZOO_SETS)}")
    if args.stage in ("train", "all"):
        train_sets(args)
    if args.stage in ("ship", "all"):
        ship(args)
    if args.stage == "card":
        remeasure(args)


if __name__ == "__main__":
    main()
