"""Several training runs advanced step by step together, sharing the work that does not
depend on the dictionary: cached batches (local runs) or the original model's pass (e2e)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from replacement.dictionary import Dictionary
from training.activation_cache import ActivationCache, CachedBatches, rank_shards
from training.config import ConfigError, TrainConfig
from training.dictionary_factory import dictionary_hooks
from training.distributed import context
from training.interrupts import TrainingInterrupted, stop_on_interrupt
from training.original_pass import OriginalPasses
from training.run_files import CHECKPOINT_FILE
from training.trainer import Trainer


def train_many(
    configs: Sequence[TrainConfig], model: Any = None, data: Any = None
) -> list[dict[int, Dictionary]]:
    """Train several runs together, sharing the work that does not depend on the dictionary.

    Local runs read `activations` from the same folder with the same batch_tokens and seed,
    so each batch is read once and serves every run (different layers, kinds, widths, k or
    sparsity coefficients). e2e and e2e+ds runs (no activations) with the same model,
    batch_tokens, ctx_len and seed train on the same token rows at every step, so the
    original model's pass of each step is run once for all of them (`OriginalPasses`).
    Each run keeps its own out_dir, checkpoint and resume; the result equals training each
    config on its own, and each run's train_seconds includes an equal share of the shared
    passes.
    """
    trainers = trainers_for(configs, model, data)
    return train_together(trainers, trainers[0]._model if trainers else model)


def trainers_for(
    configs: Sequence[TrainConfig], model: Any = None, data: Any = None
) -> list[Trainer]:
    """The `Trainer`s of `train_many`, sharing cached batches (local) or the original
    model's passes (e2e); checked before any is built."""
    if not configs:
        return []
    first = configs[0]
    local = [c.objective == "local" for c in configs]
    if any(local) and not all(local):
        raise ConfigError(
            "train_many trains local runs or e2e runs together, not both: local runs share "
            "cached activations, e2e runs the original model's pass"
        )
    shared = ("activations", "batch_tokens", "seed") + (() if all(local) else ("model", "ctx_len"))
    if all(local) and first.activations is None:
        raise ConfigError("train_many reads an activation cache: set activations on every config")
    for cfg in configs:
        for name in shared:
            if getattr(cfg, name) != getattr(first, name):
                raise ConfigError(
                    f"train_many needs one {name} for all runs; got {getattr(first, name)!r} "
                    f"and {getattr(cfg, name)!r}"
                )
    if len({str(Path(c.out_dir).resolve()) for c in configs}) < len(configs):
        raise ConfigError("train_many needs a different out_dir for every run")
    if not all(local):
        if model is None:
            from replacement.model import load_model

            model = load_model(first.model, device=first.device)
        originals = OriginalPasses(model)
        trainers = [Trainer(first, model, data, originals=originals)]
        data = trainers[0].data  # tokenized once, for every run
        return trainers + [Trainer(c, model, data, originals=originals) for c in configs[1:]]
    cache = ActivationCache(first.activations)
    hooks = sorted({h for c in configs for layer in c.layers for h in dictionary_hooks(c, layer)})
    dist = context(first.device)
    shards = rank_shards(cache.n_shards, dist.rank, dist.world_size)
    batches = CachedBatches(cache, hooks, first.batch_tokens, first.seed, shards)
    return [Trainer(c, model, data, batches=batches) for c in configs]


def train_together(trainers: list[Trainer], model: Any) -> list[dict[int, Dictionary]]:
    """Advance `trainers` step by step together (`trainers_for`); returns their dictionaries.

    A Ctrl-C (SIGINT) stops at the next step boundary: every unfinished run is checkpointed
    and `TrainingInterrupted` is raised (naming the first); the folders are released either way.
    """
    if not trainers:
        return []
    try:
        return _train_together(trainers, model)
    finally:
        for t in trainers:
            t.release()


def _train_together(trainers: list[Trainer], model: Any) -> list[dict[int, Dictionary]]:
    first, dist = trainers[0].config, trainers[0].dist
    configs = [t.config for t in trainers]
    ends = [t.begin() for t in trainers]
    bar = tqdm(
        total=sum(c.total_steps for c in configs),
        initial=sum(t.step for t in trainers),
        desc=f"train {len(configs)} runs",
        disable=not (first.verbose and dist.is_main),
        dynamic_ncols=True,
    )
    with stop_on_interrupt(dist.world_size == 1) as interrupted:
        for step in range(min(t.step for t in trainers), max(ends)):
            if interrupted.is_set():  # only between steps, so every checkpoint is exact
                break
            active = [t for t, end in zip(trainers, ends, strict=True) if t.step == step < end]
            if active and active[0].originals is not None:  # e2e: this step's pass is theirs
                active[0].originals.sharers = len(active)
            for trainer in active:
                trainer.advance()
                bar.update(1)
    bar.close()
    if interrupted.is_set():
        stopped = [t for t, end in zip(trainers, ends, strict=True) if t.step < end]
        for t in stopped:
            t.save_checkpoint()
        if stopped:
            t = stopped[0]
            raise TrainingInterrupted(t.step, t.config.total_steps, t.out_dir / CHECKPOINT_FILE)
    if model is None and any(
        t.config.evaluate and t.step >= t.config.total_steps for t in trainers
    ):
        model = trainers[0].model  # evaluation needs the model: load it once for every run
        for t in trainers:
            t._model = model
    return [t.finish() for t in trainers]
