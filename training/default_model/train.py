"""Train the default GPT-2 style model on a token stream."""

from __future__ import annotations

import math
import platform
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from jaxtyping import Int, UInt16
from torch import Tensor
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel

from training.default_model.data import SEQ_LEN
from training.default_model.tokenizer import EOT_ID


@dataclass
class ModelShape:
    """Architecture of the default model (GPT-2 block, tied embeddings)."""

    vocab_size: int = 4096
    """Tokenizer vocabulary size."""
    n_layer: int = 4
    """Transformer blocks."""
    d_model: int = 128
    """Residual stream width."""
    n_head: int = 4
    """Attention heads per block."""
    d_mlp: int = 512
    """MLP hidden width."""
    n_positions: int = SEQ_LEN
    """Context length."""


@dataclass
class TrainConfig:
    """Optimisation settings."""

    seed: int = 0
    """Seeds torch, numpy, random and the data order."""
    tokens: int = 200_000_000
    """Training tokens (sequences x SEQ_LEN, BOS included); sets the number of steps."""
    batch_size: int = 256
    """Sequences per step."""
    lr: float = 3e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak (cosine decay)."""
    warmup_frac: float = 0.02
    """Fraction of the steps spent in linear warmup."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (not on biases, LayerNorm or position embeddings)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    log_every: int = 50
    """Steps between entries of the loss curve."""
    shape: ModelShape = field(default_factory=ModelShape)
    """Architecture."""

    @property
    def tokens_per_step(self) -> int:
        """Tokens in one batch."""
        return self.batch_size * self.shape.n_positions

    @property
    def steps(self) -> int:
        """Optimizer steps needed to see ``tokens`` tokens."""
        return max(1, math.ceil(self.tokens / self.tokens_per_step))


@dataclass
class TrainStats:
    """What happened during training (goes into the model card)."""

    seed: int
    tokens: int
    steps: int
    batch_size: int
    seq_len: int
    lr: float
    min_lr_ratio: float
    warmup_steps: int
    weight_decay: float
    epochs: float
    """Passes over the training stream."""
    final_train_loss: float
    """Mean loss over the last ``log_every`` steps."""
    wall_time_s: float
    """Seconds spent in the training loop."""
    tokens_per_s: float
    hardware: str
    """GPU name, or CPU description."""
    precision: str
    host_python: str
    """Interpreter that ran the training (may differ from the corpus's)."""
    torch_version: str
    loss_curve: list[tuple[int, float]]
    """(step, mean training loss since the previous entry)."""


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(shape: ModelShape) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 model of the given shape (no dropout, tied embeddings)."""
    config = GPT2Config(
        vocab_size=shape.vocab_size,
        n_positions=shape.n_positions,
        n_embd=shape.d_model,
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        n_inner=shape.d_mlp,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=EOT_ID,
        eos_token_id=EOT_ID,
        tie_word_embeddings=True,
    )
    return GPT2LMHeadModel(config)


def hardware_name(device: torch.device) -> str:
    """Human-readable name of the device that trains."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class ChunkSampler:
    """Yields batches of ``[BOS] + SEQ_LEN-1 stream tokens``, shuffled, epoch after epoch.

    Each epoch cuts the stream at a random offset into non-overlapping windows and visits
    them in a random order, so windows start at different places from epoch to epoch.
    """

    def __init__(
        self,
        stream: Int[Tensor, " n"],
        batch_size: int,
        seq_len: int,
        generator: torch.Generator,
    ) -> None:
        self.stream = stream
        self.batch_size = batch_size
        self.window = seq_len - 1
        self.gen = generator
        self._starts = torch.empty(0, dtype=torch.long)
        self._pos = 0
        self.epochs = 0.0

    def _new_epoch(self) -> None:
        offset = int(torch.randint(0, self.window, (1,), generator=self.gen))
        n = (self.stream.numel() - offset) // self.window
        perm = torch.randperm(n, generator=self.gen)
        self._starts = offset + perm * self.window
        self._pos = 0

    def next_batch(self) -> Int[Tensor, "batch seq"]:
        """The next batch, on the stream's device."""
        rows = []
        need = self.batch_size
        while need > 0:
            if self._pos >= self._starts.numel():
                self._new_epoch()
            take = self._starts[self._pos : self._pos + need]
            self._pos += take.numel()
            need -= take.numel()
            rows.append(take)
        self.epochs += self.batch_size / max(1, self._starts.numel())
        starts = torch.cat(rows).to(self.stream.device)
        idx = starts[:, None] + torch.arange(self.window, device=self.stream.device)
        body = self.stream[idx]
        bos = torch.full((self.batch_size, 1), EOT_ID, dtype=body.dtype, device=body.device)
        return torch.cat([bos, body], dim=1)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup then cosine decay to ``min_lr_ratio * lr``."""
    warmup = max(1, int(cfg.warmup_frac * cfg.steps))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


def make_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW with weight decay on 2-D weight matrices only (the tied embedding included)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        # wpe is a table of positions, not a map; decaying it only hurts.
        (decay if p.ndim >= 2 and "wpe" not in name else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=cfg.betas, fused=device.type == "cuda", eps=1e-8
    )


def train_model(
    train_stream: UInt16[np.ndarray, " n"],
    cfg: TrainConfig,
    device: str | torch.device = "cpu",
    verbose: bool = True,
) -> tuple[GPT2LMHeadModel, TrainStats]:
    """Train the default model from scratch.

    bf16 autocast on CUDA (weights stay fp32), plain fp32 on CPU.

    Args:
        train_stream: training tokens, documents separated by ``EOT``.
        cfg: optimisation settings; ``cfg.shape.vocab_size`` must exceed every token id.
        device: where to train.
        verbose: show a progress bar.

    Returns:
        The trained model (fp32, on CPU, eval mode) and the training statistics.
    """
    device = torch.device(device)
    if int(train_stream.max()) >= cfg.shape.vocab_size:
        raise ValueError(
            f"token id {int(train_stream.max())} out of range for vocab_size {cfg.shape.vocab_size}"
        )
    seed_everything(cfg.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = build_model(cfg.shape).to(device)
    model.train()
    opt = make_optimizer(model, cfg, device)
    stream = torch.from_numpy(train_stream.astype(np.int64)).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    sampler = ChunkSampler(stream, cfg.batch_size, cfg.shape.n_positions, gen)
    use_bf16 = device.type == "cuda"

    curve: list[tuple[int, float]] = []
    window_loss = torch.zeros((), device=device)
    window_n = 0
    last_window = float("nan")
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), disable=not verbose, desc="train", mininterval=2.0)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = sampler.next_batch()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(input_ids=batch).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().flatten(0, 1), batch[:, 1:].flatten()
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        window_loss += loss.detach()
        window_n += 1
        if window_n == cfg.log_every or step == cfg.steps - 1:
            # one device sync per log window keeps the GPU busy
            last_window = float(window_loss) / window_n
            curve.append((step + 1, round(last_window, 4)))
            bar.set_postfix(loss=f"{last_window:.3f}")
            window_loss.zero_()
            window_n = 0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    model = model.float().cpu().eval()
    stats = TrainStats(
        seed=cfg.seed,
        tokens=cfg.steps * cfg.tokens_per_step,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        seq_len=cfg.shape.n_positions,
        lr=cfg.lr,
        min_lr_ratio=cfg.min_lr_ratio,
        warmup_steps=max(1, int(cfg.warmup_frac * cfg.steps)),
        weight_decay=cfg.weight_decay,
        epochs=round(sampler.epochs, 3),
        final_train_loss=round(last_window, 4),
        wall_time_s=round(wall, 1),
        tokens_per_s=round(cfg.steps * cfg.tokens_per_step / wall, 1),
        hardware=hardware_name(device),
        precision="bf16 autocast, fp32 weights" if use_bf16 else "fp32",
        host_python=platform.python_version(),
        torch_version=torch.__version__,
        loss_curve=curve,
    )
    return model, stats


def stats_to_json(stats: TrainStats) -> dict:
    """JSON-ready dict of the statistics."""
    return asdict(stats)
