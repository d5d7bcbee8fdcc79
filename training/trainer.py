"""Train one dictionary per layer with a local, e2e or e2e+downstream objective.

    trainer = Trainer(TrainConfig(kind="skip_transcoder", activation="topk", layers=[0, 1]))
    dictionaries = trainer.train()        # {layer: Dictionary}, also saved under out_dir

Objectives:
- local: each layer's dictionary reconstructs its own activations (from a shuffled buffer
  filled by one forward pass for all layers); loss = FVU + sparsity.
- e2e (Braun et al. 2024): all listed layers are spliced at once; loss = kl_coefficient *
  KL(p_orig || p_spliced) averaged over non-BOS positions + sparsity. We use KL(orig || spliced),
  the direction the reference code computes.
- e2e_ds: e2e plus the MSE (over the variance) between spliced and original
  `blocks.{m}.hook_resid_post` for every layer m from the first spliced layer on, with weights
  downstream_coefficient / (number of such layers).

The data of step s is a pure function of (seed, s), so resuming from a checkpoint (weights,
optimiser, scheduler, RNG states, dead-feature counters, step) continues exactly where an
uninterrupted run would be.

Neighbours: `training.together` advances several runs step by step with their shared work
done once; `training.run_card` writes a finished run's files and card; `training.run_files`
names the files a run owns.
"""

from __future__ import annotations

import errno
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from replacement.atomic import atomic_path
from replacement.dictionary import Dictionary, GatedDictionary
from replacement.errors import SparseCircuitsError
from replacement.hook_table import block_hook
from replacement.hooks import check_hook
from replacement.output_folder import OutputFolder, owned
from replacement.processing import UNKNOWN, model_processing
from replacement.splice import splice
from training.activation_cache import ActivationCache, CachedBatches, rank_shards
from training.activations import ActivationBuffer
from training.config import ConfigError, TrainConfig, option_name
from training.data import TokenData, load_token_data, rows_per_step, sample_indices, token_mask
from training.dictionary_factory import build_dictionary, dictionary_hooks
from training.distributed import DistContext, context, use_global_batchtopk
from training.fused_topk import fired_features, topk_reconstruct
from training.interrupts import TrainingInterrupted, stop_on_interrupt
from training.kl_loss import kl_to_reference
from training.losses import (
    LossScale,
    auxk_loss_sparse,
    init_b_dec,
    init_b_enc,
    init_jumprelu_threshold,
    initialise,
    normalise_decoder,
    reconstruction_loss,
    remove_parallel_grad,
    sparsity_loss,
)
from training.original_pass import OriginalPasses
from training.progress import progress
from training.run_card import write_outputs
from training.run_files import (
    BRANCH_FILE,
    CHECKPOINT_FILE,
    METRICS_FILE,
    append_metrics,
    earlier_output,
    trim_metrics,
)

EVAL_MIN_ROWS = 4
"""The end evaluation uses at least this many held-out sequences."""
# Fields that may change between a run and its resumption without changing the result.
_RESUMABLE_FIELDS = {
    "resume",
    "stop_after_steps",
    "verbose",
    "evaluate",
    "checkpoint_every",
    "out_dir",
    "device",
}


class TrainingDivergedError(SparseCircuitsError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class CheckpointMismatchError(SparseCircuitsError):
    """out_dir holds a checkpoint of a run with a different configuration."""


class Trainer:
    """Trains the dictionaries of `config.layers` on `model` with `data`.

    Args:
        config: the run's configuration.
        model: a loaded bridge (default: `load_model(config.model)`, loaded when first
            needed: a run from an activation cache loads it only to evaluate at the end).
        data: a `TokenData`, or any source `load_token_data` reads (default: `config.data`,
            then the default model's corpus; read when first needed, tokenized once and
            kept in the token cache).
        batches: a shared source of cached batches (`CachedBatches`), for `train_many`.
        originals: e2e: a shared source of the original model's passes (`OriginalPasses`),
            for `train_many`.
    """

    def __init__(
        self,
        config: TrainConfig,
        model: Any = None,
        data: Any = None,
        batches: CachedBatches | None = None,
        originals: OriginalPasses | None = None,
    ):
        self.config = config.validate()
        self._model, self._data_source = model, data
        self._data: TokenData | None = data if isinstance(data, TokenData) else None
        self.cache: ActivationCache | None = None
        if config.activations is not None:
            if config.objective != "local":
                raise ConfigError(
                    f"activations={config.activations!r} serves the local objective only; "
                    f"objective {config.objective!r} needs the model on every step"
                )
            self.cache = (
                batches.cache if batches is not None else ActivationCache(config.activations)
            )
            self.cache.check(
                [h for layer in config.layers for h in dictionary_hooks(config, layer)],
                None if model is None else str(getattr(model.cfg, "model_name", "") or ""),
            )
        default_device = "cpu" if model is None else model.cfg.device
        self.device = torch.device(config.device or default_device)
        self.dist: DistContext = context(self.device)
        if self.cache is not None:
            self.ctx_len = int(self.cache.manifest["ctx_len"])
            d_model = self.cache.hooks[dictionary_hooks(config, config.layers[0])[0]]
            model_name = str(self.cache.manifest.get("model", ""))
            processing = str(self.cache.manifest.get("processing") or "folded")
            if model is not None or config.evaluate:  # the run meets the model: check it now
                self._check_cache_against_model()
        else:
            self._check_against_model(self.model)  # before any data is read
            self.ctx_len = int(self.data.train.shape[1])
            d_model, model_name, processing = None, None, None
        gen = torch.Generator().manual_seed(config.seed)
        self.dictionaries: dict[int, Dictionary] = {}
        for layer in config.layers:
            d = build_dictionary(self._model, config, layer, d_model, model_name, processing)
            initialise(d, gen)
            use_global_batchtopk(d, self.dist)
            self.dictionaries[layer] = d.to(self.device).train()
        self.params = [p for d in self.dictionaries.values() for p in d.parameters()]
        self.optimizer = torch.optim.Adam(self.params, lr=config.learning_rate, eps=config.adam_eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.step = 0
        self.train_seconds = 0.0
        """Wall seconds of the optimiser steps so far, across resumes (in the checkpoint)."""
        self.since_fired = {
            layer: torch.zeros(config.n_features, dtype=torch.long) for layer in config.layers
        }
        self.out_dir = Path(config.out_dir)
        self._folder_cm: Any = None
        self._folder: OutputFolder | None = None
        self.buffer: ActivationBuffer | None = None
        self.batches: CachedBatches | None = batches
        hooks = sorted({h for d in self.dictionaries.values() for h in (d.in_hook, d.out_hook)})
        if self.cache is not None and batches is None:
            shards = rank_shards(self.cache.n_shards, self.dist.rank, self.dist.world_size)
            self.batches = CachedBatches(
                self.cache, hooks, config.batch_tokens, config.seed, shards
            )
        elif config.objective == "local" and self.cache is None:
            self.buffer = ActivationBuffer(
                self.model, self.data, hooks, config.batch_tokens, config.buffer_tokens, config.seed
            )
        # sequences per e2e step: batch_tokens predicted tokens, ctx_len - 1 per sequence
        self.rows_per_step = rows_per_step(config.batch_tokens, self.ctx_len)
        self.last_metrics: dict[str, Any] = {}
        self.card: dict[str, Any] | None = None
        """The finished run's card.json (`training.run_card`)."""
        self.skip_unspliced_blocks = True
        """e2e: run the spliced pass from the first spliced block (TL4's start_at_layer)."""
        self.originals = originals
        """e2e: the original model's passes, shared with the runs of a `train_many`."""
        self.branch_at: int | None = None
        """A step at which to keep the checkpoint as `BRANCH_FILE` too (training.rung_branch)."""
        self.branched_from: dict[str, int] | None = None
        """The shorter run (its tokens, and the step) this run continued, if any."""
        self.heartbeat: Callable[[int, int], None] | None = None
        """Called after each step with (steps done, total steps): a progress line for runs
        without a bar (`training.heartbeat`)."""
        self._shared_seconds = 0.0
        """This step's seconds of shared work: charged share minus time spent here."""

    def _check_against_model(self, model: Any) -> None:
        """Layers, hooks and ctx_len that the model has, checked before any data is read."""
        config, n_layers = self.config, int(model.cfg.n_layers)
        bad = [layer for layer in config.layers if not 0 <= layer < n_layers]
        if bad:
            raise SparseCircuitsError(
                f"--layers {bad} do not exist; the model has {n_layers} blocks (0..{n_layers - 1})"
            )
        if config.ctx_len > int(model.cfg.n_ctx):
            raise SparseCircuitsError(
                f"--ctx-len {config.ctx_len} exceeds the model's context of {model.cfg.n_ctx} "
                f"tokens; use --ctx-len {model.cfg.n_ctx} or less"
            )
        for layer in config.layers:
            d = build_dictionary(model, config, layer)
            check_hook(model, d.in_hook)
            check_hook(model, d.out_hook)

    def _check_cache_against_model(self) -> None:
        """Model, processing and token rows of the activation cache against this run, before
        any step: the evaluation at the end reads the model and validation rows, and rows of
        another split (other data, ctx_len or tokenizer) could be the cache's training rows."""
        from training.activation_cache import ActivationCacheError, token_source_hash

        cache, model = self.cache, self.model  # loading the model checks its name
        cached = cache.manifest.get("processing")
        if cached and model_processing(model) not in (cached, UNKNOWN):
            raise ActivationCacheError(
                f"activation cache {str(cache.folder)!r} holds activations of a model with "
                f"processing {cached!r}; this run's model has {model_processing(model)!r}"
            )
        n_rows = sum(int(s.get("rows", 0)) for s in cache.manifest["shards"])
        train = self.data.train
        if token_source_hash(train[:n_rows]) != cache.manifest.get("token_source_sha256"):
            raise ActivationCacheError(
                f"activation cache {str(cache.folder)!r} was written from other token rows "
                f"than this run's --data at the cache's ctx_len {self.ctx_len} (other data, "
                "tokenizer or split), so its training rows could be this run's validation "
                "rows; pass the --data the cache was written from, or write the cache again"
            )

    def _log(self, message: str) -> None:
        progress(self.config.verbose and self.dist.is_main, message)

    @property
    def model(self) -> Any:
        """The bridge (loaded from `config.model` on first use)."""
        if self._model is None:
            from replacement.model import load_model

            self._log(f"loading model {self.config.model!r}")
            self._model = load_model(self.config.model, device=self.config.device)
            if self.cache is not None:
                self.cache.check([], str(getattr(self._model.cfg, "model_name", "") or ""))
        return self._model

    @property
    def data(self) -> TokenData:
        """Training and validation rows (tokenized on first use, through the token cache)."""
        if self._data is None:
            source = self._data_source if self._data_source is not None else self.config.data
            self._data = load_token_data(
                self.model,
                source,
                # with a cache, its rows' length: the same split, so validation stays held out
                self.config.ctx_len if self.cache is None else self.ctx_len,
                self.config.val_fraction,
                log=self._log,
            )
        return self._data

    # ---- schedule ---------------------------------------------------------------------------
    def lr_factor(self, step: int) -> float:
        """Multiplier of the base lr at `step` (`TrainConfig.lr_factor`)."""
        return self.config.lr_factor(step)

    @property
    def tokens_per_step(self) -> int:
        """Global training tokens consumed by one step."""
        if self.config.objective == "local":
            return self.config.batch_tokens
        return self.rows_per_step * (self.ctx_len - 1)

    def dead_mask(self, layer: int) -> Tensor:
        """Features that have not fired for `dead_threshold` tokens."""
        return (self.since_fired[layer] >= self.config.dead_threshold).to(self.device)

    # ---- one step -----------------------------------------------------------------------------
    def _init_from_batch(self, inputs: dict[int, Tensor], targets: dict[int, Tensor]) -> None:
        """First-batch initialisation: b_dec, transcoders' b_enc, then JumpReLU thresholds."""
        for layer, d in self.dictionaries.items():
            init_b_dec(d, self._global_mean(targets[layer]))
            if not d.apply_b_dec_to_input and d.activation_name in ("topk", "batchtopk"):
                # centre the pre-activations over the first batch, as sparsify does for
                # transcoders (an SAE's encoder reads x - b_dec, which does this already);
                # TopK kinds only: the penalised kinds' coefficients were tuned without it
                init_b_enc(d, self._global_mean(inputs[layer]))
        self._init_thresholds(inputs)

    def _global_mean(self, x: Tensor) -> Tensor:
        x = x.detach().double()
        stats = self.dist.reduce_sum(torch.cat([x.sum(0), x.new_tensor([x.shape[0]])]))
        return stats[:-1] / stats[-1]

    def _init_thresholds(self, inputs: dict[int, Tensor]) -> None:
        """JumpReLU thresholds from rank 0's first batch (broadcast by a masked sum)."""
        for layer, x in inputs.items():
            d = self.dictionaries[layer]
            if d.activation_name != "jumprelu":
                continue
            with torch.no_grad():
                thr = init_jumprelu_threshold(d, d.pre_acts(x.to(d.W_enc)), self.config.k)
                thr = self.dist.reduce_sum(thr if self.dist.is_main else torch.zeros_like(thr))
                d.activation.log_threshold.copy_(thr.log())

    def _dictionary_terms(
        self, layer: int, x: Tensor, y: Tensor, y_hat: Tensor, acts: Tensor, pre: Tensor | None
    ) -> tuple[dict[str, Tensor], dict[str, float], Tensor, LossScale]:
        """Sparsity terms, metrics (FVU, L0) and the fired mask of one layer."""
        cfg, d = self.config, self.dictionaries[layer]
        scale = LossScale.of(y, self.dist.reduce_sum)
        terms = sparsity_loss(
            d,
            x,
            y,
            y_hat,
            acts,
            scale,
            l1_coefficient=cfg.l1_coefficient,
            l0_coefficient=cfg.l0_coefficient,
            aux_k_coefficient=cfg.aux_k_coefficient,
            dead=self.dead_mask(layer),
            pre=pre,
        )
        with torch.no_grad():
            active = acts > 0
            sums = self.dist.reduce_sum(
                torch.stack([(y - y_hat).double().pow(2).sum(), active.sum().double()])
            )
            fired = self.dist.reduce_sum(active.any(0).long()) > 0
        metrics = {
            "fvu": float(sums[0] / (scale.n_tokens * scale.var)),
            "l0": float(sums[1] / scale.n_tokens),
        }
        return terms, metrics, fired, scale

    def _local_loss(self, step: int) -> tuple[Tensor, dict[str, Any], int]:
        if self.batches is not None:  # already this rank's shards
            batch, shard = self.batches.batch(step), slice(None)
        else:
            assert self.buffer is not None
            batch = self.buffer.batch(step)
            shard = self.dist.shard(self.config.batch_tokens)
        if step == 0 and not self._resumed:
            self._init_from_batch(
                {layer: batch[d.in_hook][shard] for layer, d in self.dictionaries.items()},
                {layer: batch[d.out_hook][shard] for layer, d in self.dictionaries.items()},
            )
        total = torch.zeros((), device=self.device)
        metrics: dict[str, Any] = {}
        for layer, d in self.dictionaries.items():
            x = batch[d.in_hook][shard].to(d.W_enc)
            y = batch[d.out_hook][shard].to(d.W_enc)
            if d.activation_name == "topk":
                loss, metrics[f"layer_{layer}"] = self._topk_local_loss(layer, x, y)
                total = total + loss
                continue
            if isinstance(d, GatedDictionary):
                pre, acts = None, d.encode(x)
            else:
                pre = d.pre_acts(x)
                acts = d.activation(pre)
            y_hat = d.decode(acts) + (d.skip(x) if d.W_skip is not None else 0)
            terms, m, fired, scale = self._dictionary_terms(layer, x, y, y_hat, acts, pre)
            recon = reconstruction_loss(y, y_hat, scale)
            total = total + recon + sum(terms.values(), torch.zeros((), device=self.device))
            self._update_fired(layer, fired)
            metrics[f"layer_{layer}"] = {
                **m,
                **{k: float(self.dist.reduce_sum(v.detach())) for k, v in terms.items()},
            }
        return total, metrics, self.config.batch_tokens

    def _topk_local_loss(self, layer: int, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """FVU + AuxK of a TopK dictionary through the sparse path (no dense [tokens, F])."""
        cfg, d = self.config, self.dictionaries[layer]
        x_enc = d._encoder_input(x)
        out = topk_reconstruct(x_enc, d.W_enc, d.b_enc, d.W_dec, d.activation.k)
        y_hat = out.y + d.b_dec
        if d.W_skip is not None:
            y_hat = y_hat + x @ d.W_skip
        scale = LossScale.of(y, self.dist.reduce_sum)
        loss = reconstruction_loss(y, y_hat, scale)
        terms: dict[str, Tensor] = {}
        dead = self.dead_mask(layer)
        if cfg.aux_k_coefficient and bool(dead.any()):
            dead_idx = dead.nonzero().squeeze(1)
            aux = auxk_loss_sparse(d, x_enc, dead_idx, y, y_hat, scale)
            terms["auxk_loss"] = cfg.aux_k_coefficient * aux
            loss = loss + terms["auxk_loss"]
        with torch.no_grad():
            counts = fired_features(out.values, out.indices, d.n_features)
            sums = self.dist.reduce_sum(
                torch.stack([(y - y_hat).double().pow(2).sum(), counts.sum().double()])
            )
            fired = self.dist.reduce_sum(counts) > 0
        self._update_fired(layer, fired)
        metrics = {
            "fvu": float(sums[0] / (scale.n_tokens * scale.var)),
            "l0": float(sums[1] / scale.n_tokens),
            **{k: float(self.dist.reduce_sum(v.detach())) for k, v in terms.items()},
        }
        return loss, metrics

    def _step_tokens(self, step: int) -> Int[Tensor, "rows ctx"]:
        rows = sample_indices(
            self.data.train.shape[0],
            step * self.rows_per_step,
            self.rows_per_step,
            self.config.seed,
        )
        return self.data.train[rows][self.dist.shard(self.rows_per_step)]

    def _e2e_hooks(self) -> tuple[list[str], str | None]:
        """e2e+ds's downstream hooks and the hook the spliced pass starts from (None: from
        the tokens)."""
        cfg = self.config
        ds_layers = (
            list(range(min(cfg.layers), int(self.model.cfg.n_layers)))
            if cfg.objective == "e2e_ds"
            else []
        )
        # the blocks below the first spliced one compute the same in both passes: the
        # spliced pass starts from the original pass's residual there (TransformerLens 4.3
        # still runs those blocks and discards their output, so this saves no time yet)
        start = min(cfg.layers) if self.skip_unspliced_blocks else 0
        return [block_hook(m, "hook_resid_post") for m in ds_layers], (
            block_hook(start, "hook_resid_pre") if start > 0 else None
        )

    def _e2e_loss(self, step: int) -> tuple[Tensor, dict[str, Any], int]:
        cfg = self.config
        tokens = self._step_tokens(step).to(self.device)
        mask = token_mask(tokens, self.data.special_ids).to(self.device)
        n_tokens = float(self.dist.reduce_sum(mask.sum().double()))
        ds_hooks, start_hook = self._e2e_hooks()
        fresh = step == 0 and not self._resumed
        original, spent, charged = self.originals.at(step, tokens, mask)
        self._shared_seconds += charged - spent
        captured = original.captured
        if fresh:
            self._init_from_batch(
                {layer: captured[d.in_hook][mask] for layer, d in self.dictionaries.items()},
                {layer: captured[d.out_hook][mask] for layer, d in self.dictionaries.items()},
            )
        spliced_ds: dict[str, Tensor] = {}
        with splice(self.model, list(self.dictionaries.values()), record=True) as state:
            with self.model.hooks(
                fwd_hooks=[(h, _capture(spliced_ds, h, detach=False)) for h in ds_hooks]
            ):
                if start_hook is not None:
                    start = min(cfg.layers)
                    logits = self.model(captured[start_hook], start_at_layer=start)
                else:
                    logits = self.model(tokens)
        # every position, those the loss does not count weighted 0 (no gather of the logits)
        weights = mask.reshape(-1).to(logits.dtype) / n_tokens
        kl = kl_to_reference(logits.reshape(-1, logits.shape[-1]), original.reference, weights)
        total = cfg.kl_coefficient * kl
        metrics: dict[str, Any] = {"kl": float(self.dist.reduce_sum(kl.detach()))}
        for hook in ds_hooks:
            orig = captured[hook][mask]
            scale = LossScale.of(orig, self.dist.reduce_sum)
            mse = (spliced_ds[hook][mask] - orig).pow(2).sum() / (scale.n_tokens * scale.var)
            total = total + cfg.downstream_coefficient / len(ds_hooks) * mse
            metrics[f"ds_{hook}"] = float(self.dist.reduce_sum(mse.detach()))
        for layer, d in self.dictionaries.items():
            out = d.out_hook
            x, y = state.inputs[out][mask], state.targets[out][mask]
            y_hat, acts = state.recons[out][mask], state.acts[out][mask]
            terms, m, fired, _ = self._dictionary_terms(layer, x, y.detach(), y_hat, acts, None)
            total = total + sum(terms.values(), torch.zeros((), device=self.device))
            self._update_fired(layer, fired)
            metrics[f"layer_{layer}"] = {
                **m,
                **{k: float(self.dist.reduce_sum(v.detach())) for k, v in terms.items()},
            }
        return total, metrics, int(n_tokens)

    def _update_fired(self, layer: int, fired: Tensor) -> None:
        self.since_fired[layer] += self.tokens_per_step
        self.since_fired[layer][fired.cpu()] = 0

    def _train_step(self, step: int) -> dict[str, Any]:
        self.optimizer.zero_grad(set_to_none=True)
        loss_fn = self._local_loss if self.config.objective == "local" else self._e2e_loss
        loss, metrics, n_tokens = loss_fn(step)
        global_loss = float(self.dist.reduce_sum(loss.detach().double()))
        if not math.isfinite(global_loss):
            where = (
                f"the last good checkpoint {str(self.out_dir / CHECKPOINT_FILE)!r} is kept"
                if (self.out_dir / CHECKPOINT_FILE).exists()
                else "no checkpoint had been written yet"
            )
            raise TrainingDivergedError(
                f"training loss became {global_loss} at step {step}; stopping ({where}). "
                "Try a lower lr, stronger grad_clip or check the data for extreme activations."
            )
        loss.backward()
        self.dist.reduce_grads(self.params)
        for d in self.dictionaries.values():
            remove_parallel_grad(d)
        grad_norm = None
        if self.config.grad_clip is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        for d in self.dictionaries.values():
            normalise_decoder(d)
        for layer in self.dictionaries:
            metrics[f"layer_{layer}"]["dead_share"] = float(self.dead_mask(layer).float().mean())
        return {
            "step": step + 1,
            "tokens": (step + 1) * self.tokens_per_step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "loss": global_loss,
            "grad_norm": grad_norm,
            **metrics,
        }

    # ---- checkpoints --------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimiser, scheduler, RNG, counters."""
        return {
            "step": self.step,
            "tokens": self.step * self.tokens_per_step,
            "config": self.config.to_dict(),
            "dictionaries": {layer: d.state_dict() for layer, d in self.dictionaries.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "since_fired": self.since_fired,
            "train_seconds": self.train_seconds,
            "branched_from": self.branched_from,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def save_checkpoint(self, name: str = CHECKPOINT_FILE) -> Path:
        """Write out_dir/checkpoint.pt (or out_dir/`name`) atomically (rank 0 only)."""
        path = self.out_dir / name
        if self.dist.is_main:
            with atomic_path(path) as tmp:
                try:
                    torch.save(self.checkpoint_state(), tmp)
                except RuntimeError as exc:
                    # torch's zip writer reports a short write (full disk, file-size limit) as
                    # a RuntimeError from its inline container, not as OSError
                    if "inline_container" not in str(exc) and "file write failed" not in str(exc):
                        raise
                    raise OSError(
                        errno.ENOSPC, f"the checkpoint could not be written ({exc})", str(path)
                    ) from exc
        return path

    def load_checkpoint(self, path: Path) -> None:
        """Restore a checkpoint written by `save_checkpoint` of a run with the same config."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        old, new = state["config"], self.config.to_dict()
        diff = sorted(
            k
            for k in new
            if k not in _RESUMABLE_FIELDS and not _same_setting(k, old.get(k), new[k])
        )
        if diff:
            changes = ", ".join(f"{option_name(k)} {old.get(k)!r} -> {new[k]!r}" for k in diff)
            raise CheckpointMismatchError(
                f"checkpoint {str(path)!r} was written with different settings ({changes}); "
                "rerun with the earlier values to resume, or start over with --no-resume "
                "(resume=False) or another --out"
            )
        for layer, d in self.dictionaries.items():
            d.load_state_dict(state["dictionaries"][layer])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.since_fired = {int(k): v.clone() for k, v in state["since_fired"].items()}
        torch.set_rng_state(state["rng_cpu"])
        if state.get("rng_cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))  # older checkpoints: none
        self.branched_from = state.get("branched_from")

    # ---- the loop ------------------------------------------------------------------------------
    def train(self) -> dict[int, Dictionary]:
        """Run (or resume) training; returns {layer: Dictionary} in eval mode.

        Writes checkpoint.pt every `checkpoint_every` steps, metrics.jsonl, and at the end
        layer_{l}.safetensors/json, report.json and card.json in out_dir.
        """
        try:
            return self._train()
        finally:
            self.release()

    def _train(self) -> dict[int, Dictionary]:
        end = self.begin()
        bar = tqdm(
            range(self.step, end),
            total=self.config.total_steps,
            initial=self.step,
            desc="train",
            disable=not (self.config.verbose and self.dist.is_main),
            dynamic_ncols=True,
        )
        with stop_on_interrupt(self.dist.world_size == 1) as interrupted:
            for _ in bar:
                if interrupted.is_set():  # only between steps, so the checkpoint is exact
                    bar.close()
                    raise TrainingInterrupted(
                        self.step, self.config.total_steps, self.save_checkpoint()
                    )
                record = self.advance()
                layers = [record[f"layer_{layer}"] for layer in self.dictionaries]
                bar.set_postfix(
                    loss=f"{record['loss']:.4g}",
                    fvu=f"{sum(m['fvu'] for m in layers) / len(layers):.3f}",
                    l0=f"{sum(m['l0'] for m in layers) / len(layers):.1f}",
                    dead=f"{sum(m['dead_share'] for m in layers) / len(layers):.2f}",
                )
            if interrupted.is_set() and self.step < self.config.total_steps:
                bar.close()
                raise TrainingInterrupted(
                    self.step, self.config.total_steps, self.save_checkpoint()
                )
        bar.close()
        return self.finish()

    def begin(self) -> int:
        """Resume from out_dir's checkpoint if there is one; returns the step to stop after."""
        cfg = self.config
        if self.dist.is_main and self._folder is None:
            # ours or refused, one writer at a time (locked until `finish`); files listed first
            self._folder_cm = owned(self.out_dir, command="train", legacy=earlier_output)
            self._folder = self._folder_cm.__enter__()
            self._folder.claim([CHECKPOINT_FILE, METRICS_FILE, BRANCH_FILE])
        ckpt = self.out_dir / CHECKPOINT_FILE
        self._resumed = bool(cfg.resume and ckpt.exists())
        if self._resumed:
            self._log(f"resuming from {str(ckpt)!r}")
            self.load_checkpoint(ckpt)
        if cfg.objective != "local":
            if self.originals is None:
                self.originals = OriginalPasses(self.model)
            ds_hooks, start_hook = self._e2e_hooks()
            firsts = [h for d in self.dictionaries.values() for h in (d.in_hook, d.out_hook)]
            self.originals.need(
                ds_hooks + ([start_hook] if start_hook else []) + ([] if self._resumed else firsts)
            )
        self._trim_metrics()
        total = cfg.total_steps
        self._end = total if cfg.stop_after_steps is None else min(total, cfg.stop_after_steps)
        if self.buffer is not None and self.step < self._end:
            self._log(
                f"filling the activation buffer ({cfg.buffer_tokens:,} tokens) from the model"
            )
        elif self.batches is not None:
            self._log(f"reading activations from {str(self.cache.folder)!r}")
        if self.step < self._end:
            self._log(f"training from step {self.step} of {total}")
        return self._end

    def advance(self) -> dict[str, Any]:
        """One optimiser step, with its metrics line and checkpoint; returns its record."""
        cfg = self.config
        start = time.perf_counter()
        self._shared_seconds = 0.0
        record = self._train_step(self.step)
        self.train_seconds += time.perf_counter() - start + self._shared_seconds
        self.step += 1
        self.last_metrics = record
        if self.dist.is_main and (self.step % max(1, cfg.log_every) == 0 or self.step == self._end):
            self._append_metrics(record)
        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
            self.save_checkpoint()
        if self.step == self.branch_at:
            self.save_checkpoint(BRANCH_FILE)
        if self.heartbeat is not None and self.dist.is_main:
            self.heartbeat(self.step, cfg.total_steps)
        return record

    def finish(self) -> dict[int, Dictionary]:
        """After the last step: checkpoint a stopped run, or write the trained dictionaries."""
        cfg = self.config
        if self.step < cfg.total_steps:
            self.save_checkpoint()
            self.release()
            return self.dictionaries
        self._debias_batchtopk_thresholds()
        for d in self.dictionaries.values():
            d.eval()
        if cfg.checkpoint_every:
            self.save_checkpoint()
        if self.dist.is_main:
            self.card = write_outputs(self)
        self.release()
        return self.dictionaries

    def release(self) -> None:
        """Unlock the output folder (a finished, stopped or failed run)."""
        if self._folder_cm is not None:
            cm, self._folder_cm, self._folder = self._folder_cm, None, None
            cm.__exit__(None, None, None)

    @torch.no_grad()
    def _debias_batchtopk_thresholds(self) -> None:
        """Undo the zero start of BatchTopK's running threshold (as Adam debiases moments).

        The threshold is an exponential moving average started at 0; after t steps its weights
        sum to 1 - (1 - momentum)^t, so short runs would otherwise keep a threshold far too
        low and fire many more than k features per token at inference.
        """
        for d in self.dictionaries.values():
            act = d.activation
            if d.activation_name == "batchtopk":
                act.threshold.div_(1 - (1 - act.momentum) ** max(1, self.step))

    # ---- outputs -----------------------------------------------------------------------------
    def _trim_metrics(self) -> None:
        """Drop metrics lines beyond the resumed step (they will be recomputed)."""
        if self.dist.is_main:
            last = trim_metrics(self.out_dir, self.step, self._resumed)
            if last is not None:
                self.last_metrics = last

    def _append_metrics(self, record: dict[str, Any]) -> None:
        append_metrics(self.out_dir, record)

    def validation_tokens(self) -> Int[Tensor, "rows ctx"]:
        """Held-out rows used for report.json: an eighth of the training tokens, at least four
        sequences and at most val_tokens (a short run does not spend most of its time on the
        end evaluation, which runs the model once per dictionary and once with all)."""
        cfg = self.config
        budget = min(cfg.val_tokens, max(EVAL_MIN_ROWS * self.ctx_len, cfg.total_tokens // 8))
        n = max(1, budget // self.ctx_len)
        return self.data.val[:n]


def _same_setting(key: str, old: Any, new: Any) -> bool:
    """Equal settings; `./x` and `x` (the same existing file or folder) count as equal."""
    if old == new:
        return True
    if key in ("data", "model") and isinstance(old, str) and isinstance(new, str):
        a, b = Path(old).expanduser(), Path(new).expanduser()
        return a.exists() and b.exists() and a.resolve() == b.resolve()
    return False


def _capture(store: dict[str, Tensor], name: str, detach: bool = True):
    def hook(act: Tensor, hook: Any) -> Tensor:
        store[name] = act.detach() if detach else act
        return act

    return hook


def train(config: TrainConfig, model: Any = None, data: Any = None) -> dict[int, Dictionary]:
    """`Trainer(config, model, data).train()`."""
    return Trainer(config, model, data).train()
