"""Does a long e2e rung fit the rows it trained on better than rows it never saw?

    python -m training.repetition --out CLAIMS_DIR --point braun/e2e_topk_k4 [--seed 0]
        [--rows 1024] [--chunks 16]

The claims sweep's budgets go past the training split (8.3M tokens on the default corpus):
a 16M-token rung reads every training row about twice. Its figures are measured on held-out
rows, so fitting the training rows better than others cannot flatter them; it would show as a
held-out CE increase that rises with budget. This measures the fit directly, per finished rung
of one e2e ladder, on `--rows` rows each:

- **read more - read less:** the CE increase on training rows the rung read most often minus
  on rows it read least often (at 1M tokens: once against never; at 16M: twice against once).
  Both are rows of the training split drawn at random, so the difference is the effect of
  having read them, with no change of distribution. The rows read more often are also the
  ones read more recently.
- **held-out - read more:** the sweep's evaluation rows minus the rows read most often. This
  also holds the difference between the held-out files and the training files, so its change
  from rung to rung is what to read.

Intervals: 95% percentile bootstrap resampling each row set's chunks independently (the two
sets are different rows, so nothing pairs them); the same draws for every rung of a ladder.
Only e2e and e2e+ds ladders: their rows follow `training.data.sample_indices` directly (a
local run reads an activation cache in shard order).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Int

from replacement.errors import SparseCircuitsError
from replacement.formats.native import load_native
from training.claims_eval import downstream_hooks, evaluate_dictionary, figures, original_side
from training.config import TrainConfig
from training.data import rows_per_step, sample_indices

N_DRAWS = 2000


def exposures(n_rows: int, rows_read: int, seed: int) -> Int[np.ndarray, " n_rows"]:
    """How many times each of `n_rows` training rows is read in the first `rows_read`
    positions of the run's row stream (`sample_indices`, seeded by the run's seed)."""
    read = sample_indices(n_rows, 0, rows_read, seed).numpy()
    return np.bincount(read, minlength=n_rows)


def unpaired_difference(
    value: Callable[[dict[str, Any], np.ndarray], float],
    a: dict[str, Any],
    b: dict[str, Any],
    n_chunks: int,
    draws: int = N_DRAWS,
    seed: int = 0,
) -> tuple[float, float, float]:
    """value(b) - value(a) with a 95% interval resampling the chunks of a and of b apart."""
    rng = np.random.default_rng(seed)
    ones = np.ones(n_chunks)
    point = value(b, ones) - value(a, ones)
    out = []
    for _ in range(draws):
        wa = np.bincount(rng.integers(0, n_chunks, n_chunks), minlength=n_chunks)
        wb = np.bincount(rng.integers(0, n_chunks, n_chunks), minlength=n_chunks)
        out.append(value(b, wb) - value(a, wa))
    return point, float(np.quantile(out, 0.025)), float(np.quantile(out, 0.975))


def _ce(chunks: dict[str, Any], weights: np.ndarray) -> float:
    return figures(chunks, weights)["ce_increase"]


def ladder_fit(
    model: Any,
    ladder: Path,
    train_rows: Int[torch.Tensor, "rows ctx"],
    held_rows: Int[torch.Tensor, "rows ctx"],
    special_ids: list[int],
    seed: int,
    n_rows: int = 1024,
    n_chunks: int = 16,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Per finished rung (`t<tokens>/layer_*.safetensors` under `ladder`): the two differences
    of the module docstring, each as (estimate, low, high)."""
    rng = np.random.default_rng(seed)
    held = held_rows[torch.as_tensor(rng.permutation(held_rows.shape[0])[:n_rows])]
    rungs = sorted(
        (int(p.name[1:]), p) for p in ladder.glob("t*") if any(p.glob("layer_*.safetensors"))
    )
    sides: dict[str, Any] = {}
    found = []
    for tokens, folder in rungs:
        (weights,) = folder.glob("layer_*.safetensors")
        dictionary = load_native(weights).eval()
        hooks = [dictionary.in_hook, dictionary.out_hook, *downstream_hooks(model, dictionary)]
        seen = exposures(train_rows.shape[0], rows_read(folder), seed)
        most, least = int(seen.max()), int(seen.min())
        if most == least:  # a whole number of passes: no row was read more than another
            log(f"| {tokens / 1e6:g}M | every row {most}x | (nothing to compare) |")
            continue
        picked = {}
        for name, count in (("more", most), ("less", least)):
            pool = np.flatnonzero(seen == count)
            picked[name] = rng.choice(pool, min(n_rows, len(pool)), replace=False)
        chunks = {}
        for name, idx in picked.items():
            side = original_side(
                model, train_rows[torch.as_tensor(idx)], hooks, special_ids, n_chunks
            )
            chunks[name] = evaluate_dictionary(model, dictionary, side)["chunks"]
        if "held" not in sides:
            sides["held"] = original_side(model, held, hooks, special_ids, n_chunks)
        chunks["held"] = evaluate_dictionary(model, dictionary, sides["held"])["chunks"]
        row = {
            "tokens": tokens,
            "read": [most, least],
            "rows": [len(picked["more"]), len(picked["less"])],
            "ce_more": _ce(chunks["more"], np.ones(n_chunks)),
            "ce_less": _ce(chunks["less"], np.ones(n_chunks)),
            "ce_held": _ce(chunks["held"], np.ones(n_chunks)),
            "less_minus_more": unpaired_difference(_ce, chunks["more"], chunks["less"], n_chunks),
            "held_minus_training": unpaired_difference(
                _ce, chunks["more"], chunks["held"], n_chunks
            ),
        }
        found.append(row)
        log(_line(row))
    return found


def rows_read(folder: Path) -> int:
    """Rows a finished e2e rung read from its stream: its steps times its rows a step, as the
    trainer counts them."""
    config = TrainConfig.from_dict(json.loads((folder / "card.json").read_text())["training"])
    if config.objective not in ("e2e", "e2e_ds"):
        raise SparseCircuitsError(
            f"{str(folder)!r} is a {config.objective!r} run; only e2e and e2e+ds runs read "
            "their rows in the order this counts (a local run reads a cache)"
        )
    return config.total_steps * rows_per_step(config.batch_tokens, config.ctx_len)


def _line(row: dict[str, Any]) -> str:
    def iv(x: tuple[float, float, float]) -> str:
        return f"{x[0]:+.4f} [{x[1]:+.4f}, {x[2]:+.4f}]"

    more, less = row["read"]
    return (
        f"| {row['tokens'] / 1e6:g}M | {more}x / {less}x | {row['ce_more']:.4f} | "
        f"{row['ce_less']:.4f} | {iv(row['less_minus_more'])} | {row['ce_held']:.4f} | "
        f"{iv(row['held_minus_training'])} |"
    )


def main(argv: list[str] | None = None) -> None:
    """Print the table of `ladder_fit` for one e2e ladder of a claims sweep."""
    from replacement import load_model
    from training.claims_sweep import split_rows
    from training.data import load_token_data

    parser = argparse.ArgumentParser(prog="python -m training.repetition", description=__doc__)
    parser.add_argument("--out", required=True, help="the claims sweep's --out folder")
    parser.add_argument("--point", required=True, help="an e2e point, e.g. braun/e2e_topk_k4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", type=int, default=1024, help="rows in each set (128 tokens)")
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--eval-tokens", type=int, default=1_000_000, help="the sweep's")
    args = parser.parse_args(argv)
    ladder = Path(args.out) / "runs" / args.point / f"seed{args.seed}"
    if not ladder.is_dir():
        parser.error(f"no ladder folder {str(ladder)!r}: expected --out DIR/runs/POINT/seedS")
    model = load_model("default")
    data = load_token_data(model, None, ctx_len=128)
    train, held, _ = split_rows(data, args.eval_tokens)
    print(
        "| rung | rows read | CE incr. read more | read less | less - more | held-out | "
        "held-out - read more |\n|---|---|---|---|---|---|---|"
    )
    ladder_fit(
        model,
        ladder,
        train.train,
        held,
        list(data.special_ids),
        args.seed,
        args.rows,
        args.chunks,
    )


if __name__ == "__main__":
    main()
