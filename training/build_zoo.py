"""Build the embedded zoo's dictionary sets for the default model, by one documented recipe.

    python -m training.build_zoo --runs DIR --zoo replacement/zoo/dictionaries \\
        [--start-tokens 1000000] [--cap-tokens 64000000] [--device cuda] [--sets a,b]
        [--layers 0,2] [--claims-runs CLAIMS_DIR] [--rows ROWS.npz]

Six sets, every layer of the default model, the same width, k and learning rate for each:

    sae_local            TopK SAE on the MLP output, local MSE
    sae_e2e              the same SAE trained end to end (KL to the original model)
    sae_e2e_ds           e2e + MSE to the original downstream residuals
    transcoder           TopK transcoder, MLP input -> MLP output, local
    skip_transcoder      TopK skip transcoder, local (the default set of `trace`)
    skip_transcoder_e2e  TopK skip transcoder, e2e

The recipe (`RECIPE`): every (set, layer) is its own run with only that layer's dictionary
(for e2e: spliced alone, the other layers original, as in Braun et al. 2024); one Adam lr for
every objective (`ZOO_LR`); BOS keeps the model's own activation; seed 0; a ladder of budgets
doubling from --start-tokens until the layer's held-out CE increase (spliced alone, on the
claims sweep's evaluation rows) changed by less than 2% over the last doubling, or --cap-tokens
(`training.ladder`, resumable: finished rungs are skipped). Each layer's dictionary-free
baselines (mean ablation, the affine map of the MLP; `training.zoo_baselines`) are fitted and
evaluated once, on the same rows and chunks, into the ladder file. `ship` stores each layer's final
rung in float16 under --zoo with a card.json recording, per layer, the tokens, steps, lr, seed,
convergence curve and machine, and the figures of `spliced_loss` measured on the shipped
(float16) weights on the held-out files. `--stage card` measures the cards of the shipped sets
again without touching their weights. `--claims-runs` takes the (set, layer) ladders that a
claims sweep trained as the same run (`training.zoo_from_claims`) instead of training them,
and leaves to the sweep those it has not yet trained as far. `ship` ships a set only once each
of its layers' ladders has ended (converged, or at the cap); the cards of such sets are kept in
`training/zoo_staged/` until the whole zoo ships (`training.zoo_cards`, whose `recipe_problems`
checks a card against the recipe).
`--stage export --transfer DEST` (on an accelerator) and `--stage merge --transfer DEST` (here)
move ladders trained elsewhere, with their final rungs, into --runs (`training.zoo_transfer`);
`--stage record --transfer DEST` writes the ladders as figures only, to commit at the end of a
session: merged on a new machine, each unfinished ladder resumes at its next rung.
`--sets` and `--layers` name the ladders a `train` process takes (each process claims the
next free ones, `training.sweep_locks`), so that processes side by side train chosen ladders.
`--rows` trains, evaluates and measures the cards on the rows of a `training.token_rows` file
(this machine's corpus, on a machine whose Python would read another); the ladders record the
rows' sha256, and a resume on other rows is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.allocator import keep_freed_memory
from training.config import TrainConfig
from training.data import TokenData
from training.zoo_recipe import (
    COMMON,
    LADDER_FILE,
    RECIPE,
    ZOO_SETS,
)
from training.zoo_ship import remeasure, ship


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


def rung_config(
    name: str, layer: int, tokens: int, folder: Path, device: str, cache: Path | None = None
) -> TrainConfig:
    """The recipe's config of one rung: set `name`, `layer` alone, `tokens` training tokens
    (a local set reads `cache`, the layer's activation cache, when given)."""
    steps = max(1, tokens // COMMON["batch_tokens"])
    local = ZOO_SETS[name]["objective"] == "local"
    return TrainConfig(
        **{**COMMON, **ZOO_SETS[name], "layers": [layer]},
        warmup_steps=max(1, min(50, steps // 10)),
        total_tokens=int(tokens),
        out_dir=str(folder),
        device=device,
        verbose=False,
        checkpoint_every=200,
        evaluate=False,  # the ladder evaluates on the sweep's rows; `ship` on the shipped weights
        buffer_tokens=max(4 * COMMON["batch_tokens"], min(65536, int(tokens))),
        activations=str(cache) if cache is not None and local else None,
    ).validate()


def train_sets(args: argparse.Namespace) -> dict[str, Any]:
    """Train the requested sets by the recipe into --runs/<set>/layer<l>/t<tokens>; returns the
    ladders' results (also in --runs/zoo_ladders.json, written after every rung).

    Layer by layer, so that one activation cache of a layer (--runs/activations/layer<l>,
    float32: 8.6 GB for the default corpus) serves every local set of it. Started in several
    shells, the processes share the work (`training.sweep_locks`).
    """
    from replacement.errors import SparseCircuitsError
    from replacement.hook_table import block_hook
    from replacement.hooks import layer_hooks
    from replacement.model import load_model
    from training.claims_eval import original_side
    from training.claims_sweep import split_rows
    from training.convergence import DEFAULT_FLOOR, DEFAULT_TOLERANCE, budget_ladder, raised_cap
    from training.data import load_token_data, special_token_ids
    from training.ladder import Ladder, train_ladders
    from training.sweep_locks import claimed, read_results, save_entry, shared_cache
    from training.token_rows import read_rows, record_rows, rows_digest
    from training.zoo_baselines import fit_layer_baselines
    from training.zoo_from_claims import sweep_twin

    runs = Path(args.runs)
    path = runs / LADDER_FILE
    setup = {"recipe": RECIPE, "start_tokens": args.start_tokens, "cap_tokens": args.cap_tokens,
             "eval_tokens": args.eval_tokens, "n_chunks": args.n_chunks}  # fmt: skip
    results = read_results(path) or {"setup": setup, "sets": {}}
    # the rows are checked below; the cap may rise (as a claims sweep's may)
    volatile = ("rows_sha256", "cap_tokens")
    kept = {k: v for k, v in results["setup"].items() if k not in volatile}
    if kept != {k: v for k, v in setup.items() if k not in volatile}:
        raise SystemExit(
            f"{path} was recorded with {kept}; rerun with those settings to resume, "
            "or use another --runs"
        )
    try:
        results["setup"]["cap_tokens"] = raised_cap(
            results["setup"], args.start_tokens, args.cap_tokens, str(path)
        )
    except SparseCircuitsError as exc:
        raise SystemExit(str(exc)) from exc
    model = load_model("default", device=args.device)
    if args.data:
        bos, specials = special_token_ids(model)
        data = stream_token_data(Path(args.data), bos, COMMON["ctx_len"], specials)
    elif args.rows:
        data = read_rows(args.rows)
    else:
        data = load_token_data(model, None, ctx_len=COMMON["ctx_len"])
    train_data, rows, reserved = split_rows(data, args.eval_tokens)
    eval_rows = {"heldout": int(data.val.shape[0]), "reserved": reserved}
    digest = rows_digest(train_data.train, rows)
    try:
        record_rows(results["setup"], digest, str(path), "--runs")
    except SparseCircuitsError as exc:
        raise SystemExit(str(exc)) from exc
    save_entry(path, results, ("setup",))  # before any rung: a run elsewhere can be checked
    n_layers = int(model.cfg.n_layers)
    hooks = [block_hook(m, h) for m in range(n_layers) for h in ("hook_resid_post", "hook_mlp_out")]
    original = original_side(model, rows, hooks, data.special_ids, args.n_chunks)
    ladder = budget_ladder(args.start_tokens, args.cap_tokens)
    log = (lambda m: None) if args.quiet else lambda m: print(m, flush=True)
    layers = args.layers or COMMON["layers"]
    for layer in layers:  # what each layer's dictionaries must beat, fitted once
        with claimed(runs / "baselines" / f"layer{layer}") as mine:
            if mine:
                results = read_results(path) or results
                fit_layer_baselines(results, path, layer, model, train_data.train,
                                    data.special_ids, original, args.start_tokens, args.device,
                                    log)  # fmt: skip
    held = 0
    left: list[str] = []

    def due(name: str, layer: int) -> dict[str, Any] | None:
        """The (set, layer) ladder's entry in `results` if it has rungs to train here (its
        folder claimed, and `results` read again, by the caller), else None; a ladder the
        claims sweep trained is taken from it."""
        per_layer = results["sets"].setdefault(name, {"layers": {}})["layers"]
        entry = per_layer.setdefault(str(layer), {"rungs": [], "converged": False})
        if entry["converged"] or len(entry["rungs"]) == len(ladder):
            return None
        # a ladder taken from the sweep is taken again when a raised cap extends it: its
        # weights live in the sweep's folder, so it is never trained on here
        if args.claims_runs and (not entry["rungs"] or "trained_as" in entry):
            first = rung_config(name, layer, ladder[0], runs / name / f"layer{layer}", args.device)
            twin = sweep_twin(Path(args.claims_runs), first, ladder, args, eval_rows, digest)
            if twin is not None and twin.ladder is not None:
                taken = per_layer[str(layer)] = twin.ladder
                save_entry(path, results, ("sets", name, "layers", str(layer)))
                log(f"{name} layer {layer}: the {taken['trained_as']}; its "
                    f"{len(taken['rungs'])} rungs taken, none trained")  # fmt: skip
                return None
            if twin is not None and twin.short:
                # the same run as the sweep's: trained here too, it would cost its whole
                # ladder again (an e2e one: CPU-days) for a second copy of one run
                left.append(f"{name} layer {layer}")
                log(f"{name} layer {layer} is the claims sweep's {twin.name} seed 0, which has "
                    f"not trained as far as --cap-tokens {args.cap_tokens:,} needs: left to "
                    f"the sweep (sparse-circuits claims --points {twin.name} --up-to "
                    f"{args.cap_tokens}), not trained here")  # fmt: skip
                return None
        if "trained_as" in entry:
            raise SystemExit(
                f"{name} layer {layer} is the {entry['trained_as']}, which has not "
                f"trained as far as --cap-tokens {args.cap_tokens:,} needs: train it "
                "there (sparse-circuits claims) and pass that folder as --claims-runs"
            )
        return entry

    def ladder_of(name: str, layer: int, entry: dict[str, Any], cache: Path | None) -> Ladder:
        return Ladder(
            entry,
            lambda tokens, f: rung_config(name, layer, tokens, f, args.device, cache),
            runs / name / f"layer{layer}",
            lambda: save_entry(path, results, ("sets", name, "layers", str(layer))),
            f"{name} layer {layer}",
            layer,
        )

    def train(ladders: list[Ladder]) -> None:
        start = time.perf_counter()
        train_ladders(ladders, ladder, None, model, train_data, original, log,
                      tolerance=DEFAULT_TOLERANCE, floor=DEFAULT_FLOOR)  # fmt: skip
        log(f"{', '.join(x.label for x in ladders)}: {time.perf_counter() - start:.1f} s")

    together = args.together
    e2e = [n for n in args.sets if ZOO_SETS[n]["objective"] != "local"]
    for layer in layers:
        for name in args.sets:
            if name in e2e and together > 1:
                continue  # below, with the other e2e ladders
            with claimed(runs / name / f"layer{layer}") as mine:
                if not mine:
                    held += 1
                    continue
                results = read_results(path) or results
                entry = due(name, layer)
                if entry is None:
                    continue
                cache = None
                if ZOO_SETS[name]["objective"] == "local" and args.activation_cache != "none":
                    pair = layer_hooks(layer)
                    cache = shared_cache(
                        runs / "activations" / f"layer{layer}",
                        args.activation_cache,
                        [pair.mlp_in, pair.mlp_out],
                        model,
                        train_data,
                        log,
                    )
                train([ladder_of(name, layer, entry, cache)])
    # e2e ladders draw the same rows at every step: up to --together of them train together,
    # rung by rung, on one pass of the original model per step (training.original_pass)
    pairs = [(n, layer) for layer in layers for n in e2e] if together > 1 else []
    for i in range(0, len(pairs), together):
        with contextlib.ExitStack() as stack:
            mine = []
            for name, layer in pairs[i : i + together]:
                if stack.enter_context(claimed(runs / name / f"layer{layer}")):
                    mine.append((name, layer))
                else:
                    held += 1
            # read once for the group: every ladder's entry must stay in the `results` saved
            results = read_results(path) or results
            group = []
            for name, layer in mine:
                entry = due(name, layer)
                if entry is not None:
                    group.append(ladder_of(name, layer, entry, None))
            if group:
                train(group)
    if held:
        log(f"{held} ladders are being trained by another process; left to it")
    if left:
        log(f"{len(left)} ladders wait for the claims sweep ({', '.join(left)}); run this "
            "again once it has trained them")  # fmt: skip
    return read_results(path) or results


def _layers(text: str | None) -> list[int] | None:
    """--layers as the recipe's layers it names (None: every one), refused before any work."""
    if text is None:
        return None
    known = COMMON["layers"]
    try:
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--layers takes comma-separated layer numbers, got {text!r}") from None
    bad = [layer for layer in layers if layer not in known]
    if bad or not layers:
        raise SystemExit(f"--layers {text!r}: the recipe's layers are {known}")
    return sorted(set(layers))


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    p = argparse.ArgumentParser(prog="python -m training.build_zoo", description=__doc__)
    p.add_argument(
        "--stage",
        choices=["train", "ship", "all", "card", "export", "merge", "record"],
        default="all",
        help="card: measure the cards of the shipped sets again, weights unchanged; export: "
        "copy --runs' ladders and final rungs to --transfer DIR (on an accelerator); merge: "
        "take the ladders of such a DIR that are further than --runs' (training.zoo_transfer); "
        "record: write --sets' ladders as figures only to --transfer DIR, to commit (a merge "
        "of it on a new machine resumes each ladder at its next rung)",
    )
    p.add_argument("--transfer", default=None, help="the folder of --stage export / merge")
    p.add_argument("--runs", default="runs/zoo", help="folder of the full-precision runs")
    p.add_argument("--zoo", default="replacement/zoo/dictionaries", help="shipped sets folder")
    p.add_argument("--sets", default=",".join(ZOO_SETS), help="comma-separated set names")
    p.add_argument(
        "--layers",
        default=None,
        help="comma-separated layers whose ladders --stage train trains (default: every layer "
        "of the recipe); with --sets it names the ladders a process takes, so that two "
        "processes train chosen ones side by side",
    )
    p.add_argument(
        "--start-tokens", type=int, default=1_000_000, help="first rung of every ladder (tokens)"
    )
    p.add_argument(
        "--cap-tokens",
        type=int,
        default=64_000_000,
        help="largest rung of a ladder (tokens); a resumed build's cap may be raised to a "
        "doubling of the recorded one, never lowered",
    )
    p.add_argument(
        "--eval-tokens", type=int, default=1_000_000, help="held-out tokens of the ladders"
    )
    p.add_argument("--n-chunks", type=int, default=64, help="chunks of the evaluation rows")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--activation-cache",
        default="float32",
        choices=["float32", "float16", "bfloat16", "none"],
        help="dtype of the local sets' activation cache per layer under --runs, or none",
    )
    rows = p.add_mutually_exclusive_group()
    rows.add_argument(
        "--data", default=None, help="folder with train_tokens.npy/heldout_tokens.npy"
    )
    rows.add_argument(
        "--rows",
        default=None,
        help="token rows written by `python -m training.token_rows` (the model's corpus as read "
        "on another machine: an accelerator's Python reads another standard library)",
    )
    p.add_argument("--eval-rows", type=int, default=256, help="held-out rows for the cards")
    p.add_argument(
        "--claims-runs",
        default=None,
        help="a claims sweep's --out: (set, layer) ladders it trained as the same run are taken "
        "from it instead of trained (training.zoo_from_claims)",
    )
    p.add_argument(
        "--together",
        type=int,
        default=12,
        help="e2e ladders this process trains together, rung by rung, on one pass of the "
        "original model per step (the results equal training each alone); 1 trains each "
        "alone (default: 12, every e2e ladder of the zoo)",
    )
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    keep_freed_memory()
    if args.together < 1:
        raise SystemExit(f"--together must be >= 1; got {args.together}")
    args.sets = [s for s in args.sets.split(",") if s]
    unknown = [s for s in args.sets if s not in ZOO_SETS]
    if unknown:
        raise SystemExit(f"unknown sets {unknown}; known: {list(ZOO_SETS)}")
    args.layers = _layers(args.layers)
    if args.rows:
        from replacement.errors import SparseCircuitsError
        from training.token_rows import check_rows

        try:
            check_rows(args.rows)  # before any work
        except SparseCircuitsError as exc:
            raise SystemExit(str(exc)) from exc
    if args.stage in ("export", "merge", "record"):
        from training.zoo_transfer import export_runs, merge_runs, record_runs

        if not args.transfer:
            raise SystemExit(f"--stage {args.stage} needs --transfer DIR")
        runs, other = Path(args.runs), Path(args.transfer)
        if args.stage == "export":
            print(f"exported {export_runs(runs, other, LADDER_FILE)} final rungs to {other}")
        elif args.stage == "record":
            n = record_runs(runs, other, LADDER_FILE, args.sets)
            print(f"recorded {n} ladders (figures, no weights) in {other / LADDER_FILE}")
        else:
            taken, kept = merge_runs(runs, other, LADDER_FILE)
            print(f"merged {other}: {taken} ladders taken, {kept} kept as they were")
        return
    if args.stage in ("train", "all"):
        from training.interrupts import TrainingInterrupted

        try:
            train_sets(args)
        except TrainingInterrupted as exc:  # Ctrl-C: say where it resumes, no traceback
            raise SystemExit(str(exc)) from None
        except KeyboardInterrupt:  # outside a training loop: setup or a rung's evaluation
            raise SystemExit(
                "interrupted outside a training loop (setup, or a finished rung's evaluation, "
                "whose weights were checkpointed first); running again resumes each run from "
                "its last checkpoint"
            ) from None
    if args.stage in ("ship", "all"):
        ship(args)
    if args.stage == "card":
        remeasure(args)


if __name__ == "__main__":
    main()
