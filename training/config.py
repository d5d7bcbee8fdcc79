"""The configuration of one dictionary-training run (`TrainConfig`), readable from YAML/JSON."""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from replacement.errors import SparseCircuitsError
from replacement.hook_table import BLOCK_SITES, is_block_site

KINDS = ("sae", "transcoder", "skip_transcoder")
ACTIVATIONS = ("relu", "topk", "batchtopk", "jumprelu", "gated")
OBJECTIVES = ("local", "e2e", "e2e_ds")
DECAYS = ("cosine", "linear", "none")


# Hooks inside `blocks.{l}.` that an SAE can read and write: `hook_table.BLOCK_SITES` (the
# trainer also checks the chosen one against the loaded model).
# Config fields whose CLI option is not simply --field-name
_OPTIONS = {"total_tokens": "tokens", "out_dir": "out"}


class ConfigError(SparseCircuitsError):
    """A training configuration value that is missing, unknown or out of range."""


def option_name(field_name: str) -> str:
    """The `train` flag of a config field (`total_tokens` -> `--tokens`)."""
    return "--" + _OPTIONS.get(field_name, field_name).replace("_", "-")


def _named(field_name: str) -> str:
    """How error messages name a field: its flag and config key."""
    return f"{option_name(field_name)} ({field_name})"


def _at_least(config: Any, name: str, low: float) -> None:
    value = getattr(config, name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= low:
        raise ConfigError(f"{_named(name)} must be a number >= {low}, got {value!r}")


@dataclass
class TrainConfig:
    """Everything that defines a training run; equal configs give equal dictionaries."""

    model: str = "default"
    """Model to train on: "default" (the embedded model), a folder or a Hugging Face name."""
    data: str | None = None
    """Text file or folder of text files; None uses the default model's corpus (Python stdlib)."""
    activations: str | None = None
    """Activation cache folder (`sparse-circuits cache`) the local objective reads instead of
    running the model; None runs the model."""
    kind: str = "skip_transcoder"
    """Dictionary kind: sae, transcoder or skip_transcoder."""
    activation: str = "topk"
    """Activation: relu, topk, batchtopk, jumprelu or gated."""
    layers: list[int] = field(default_factory=lambda: [0])
    """Block indices that get a dictionary (one per layer)."""
    site: str = "hook_mlp_out"
    """Hook inside `blocks.{l}.` an SAE reads and writes (transcoders: MLP input -> output)."""
    n_features: int = 1024
    """Number of features F of each dictionary."""
    k: int = 16
    """Number of active features per token (topk and batchtopk)."""
    objective: str = "local"
    """local (reconstruct activations), e2e (KL of the spliced model) or e2e_ds (e2e + downstream MSE)."""
    l1_coefficient: float = 0.1
    """Weight of the decoder-norm-weighted L1 penalty (relu and gated)."""
    l0_coefficient: float = 1e-3
    """Weight of the straight-through L0 penalty (jumprelu), per feature per token."""
    kl_coefficient: float = 1.0
    """Weight of KL(p_orig || p_spliced) in the e2e objectives."""
    downstream_coefficient: float = 2.5
    """Total weight of the downstream resid_post MSE terms of e2e_ds (split evenly over layers)."""
    aux_k_coefficient: float = 1 / 32
    """Weight of the AuxK dead-latent loss (topk and batchtopk)."""
    lr: float | None = None
    """Adam learning rate; None uses 2e-4 / sqrt(F / 2^14)."""
    adam_eps: float = 1e-6
    """Adam epsilon (above torch's 1e-8 so rounding-noise gradients never make full-size steps)."""
    warmup_steps: int = 50
    """Number of steps of linear learning-rate warm-up from 0."""
    decay: str = "cosine"
    """Learning-rate decay to 0 over the last `decay_fraction` of steps: cosine, linear or none."""
    decay_fraction: float = 0.2
    """Fraction of the run (at its end) over which the learning rate decays to 0."""
    grad_clip: float | None = 1.0
    """Maximum global gradient norm (None: no clipping)."""
    batch_tokens: int = 4096
    """Tokens per optimiser step (e2e: rounded to whole sequences of ctx_len - 1 predicted tokens)."""
    total_tokens: int = 2_000_000
    """Training tokens in all; steps = total_tokens // batch_tokens. Cost on 2 CPU cores (default
    model, 4 skip transcoders, F=1024): about 40 s per 1M tokens local from the model, 17 s from
    an activation cache, about 4x the local time for e2e and e2e+ds (bench_train, 2026-12-03)."""
    ctx_len: int = 128
    """Sequence length, BOS included."""
    buffer_tokens: int = 65536
    """Capacity of the shuffled mixing pool (local objective): activations held at once,
    refilled half at a time, so every batch mixes tokens of two refills."""
    val_tokens: int = 32768
    """Held-out tokens for report.json (taken from the validation split)."""
    val_fraction: float = 0.02
    """Share of the sequences set aside for validation when the data has no held-out part."""
    dead_after_tokens: int | None = None
    """A feature not firing for this many tokens counts as dead; None: min(1e7, total_tokens // 10)."""
    seed: int = 0
    """Seed of initialisation and data order (data order is a pure function of seed and step)."""
    checkpoint_every: int = 500
    """Steps between atomic checkpoints (0: only at the end)."""
    log_every: int = 10
    """Steps between lines of metrics.jsonl."""
    out_dir: str = "runs/dictionaries"
    """Folder of checkpoints, metrics.jsonl, layer_{l}.safetensors/json and report.json."""
    resume: bool = True
    """Continue from out_dir/checkpoint.pt when it exists."""
    stop_after_steps: int | None = None
    """Stop after this step keeping only the checkpoint (to split a run over several jobs)."""
    evaluate: bool = True
    """Write report.json (spliced loss on held-out tokens) at the end."""
    verbose: bool = True
    """Show a tqdm progress bar."""
    device: str | None = None
    """Torch device (None: the model's device, CUDA when available for loaded models)."""

    # ---- derived values ----------------------------------------------------------------------
    @property
    def learning_rate(self) -> float:
        """The lr in use: the configured one or 2e-4 / sqrt(F / 2^14)."""
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(self.n_features / 2**14)

    def lr_factor(self, step: int) -> float:
        """Multiplier of the base lr at `step`: linear warm-up, flat, then decay to 0."""
        total = self.total_steps
        factor = 1.0
        if self.warmup_steps > 0 and step < self.warmup_steps:
            factor = (step + 1) / self.warmup_steps
        start = self.decay_start
        if self.decay != "none" and step >= start and total > start:
            p = (step - start) / (total - start)
            factor *= 0.5 * (1 + math.cos(math.pi * p)) if self.decay == "cosine" else 1 - p
        return factor

    @property
    def decay_start(self) -> int:
        """The first step of the lr decay (the flat part ends there)."""
        return int(self.total_steps * (1 - self.decay_fraction))

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the whole run."""
        return max(1, int(self.total_tokens) // int(self.batch_tokens))

    @property
    def dead_threshold(self) -> int:
        """Tokens without firing after which a feature is dead."""
        if self.dead_after_tokens is not None:
            return int(self.dead_after_tokens)
        return int(min(10_000_000, max(1, self.total_tokens // 10)))

    # ---- checks and files ----------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.validate()  # a bad value fails where it is set, before any model is loaded

    def validate(self) -> TrainConfig:
        """Raise `ConfigError` naming the first bad field, its CLI option and the fix; returns self."""
        for name, value, allowed in (
            ("kind", self.kind, KINDS),
            ("activation", self.activation, ACTIVATIONS),
            ("objective", self.objective, OBJECTIVES),
            ("decay", self.decay, DECAYS),
        ):
            if value not in allowed:
                raise ConfigError(f"{_named(name)}={value!r} is unknown; expected one of {allowed}")
        if self.activation == "gated" and self.kind != "sae":
            raise ConfigError("activation 'gated' is implemented for kind 'sae' only")
        if not self.layers:
            raise ConfigError(f"{_named('layers')} is empty; expected at least one block index")
        if any(int(layer) < 0 for layer in self.layers):
            raise ConfigError(f"{_named('layers')} {self.layers} has a negative block index")
        for name in (
            "n_features",
            "k",
            "batch_tokens",
            "total_tokens",
            "buffer_tokens",
            "log_every",
        ):
            _at_least(self, name, 1)
        for name in ("warmup_steps", "checkpoint_every", "val_tokens", "seed"):
            _at_least(self, name, 0)
        for name in ("stop_after_steps", "dead_after_tokens"):
            if getattr(self, name) is not None:
                _at_least(self, name, 1)
        for name in ("l1_coefficient", "l0_coefficient", "kl_coefficient"):
            _at_least(self, name, 0.0)
        for name in ("downstream_coefficient", "aux_k_coefficient"):
            _at_least(self, name, 0.0)
        if self.activation in ("topk", "batchtopk", "jumprelu") and self.k > self.n_features:
            raise ConfigError(
                f"{_named('k')}={self.k} active features per token exceeds "
                f"{_named('n_features')}={self.n_features}; choose k <= n_features"
            )
        if self.lr is not None and not 0 < self.lr < math.inf:
            raise ConfigError(
                f"{_named('lr')} must be > 0, got {self.lr}; omit it for 2e-4 / sqrt(F / 2^14)"
            )
        if self.grad_clip is not None and not 0 < self.grad_clip < math.inf:
            raise ConfigError(
                f"{_named('grad_clip')} must be > 0 (the largest gradient norm kept), got "
                f"{self.grad_clip}; omit it for 1.0 (null in a config file turns clipping off)"
            )
        if not 0 < self.adam_eps < 1:
            raise ConfigError(f"{_named('adam_eps')} must be in (0, 1), got {self.adam_eps}")
        if self.ctx_len < 3:
            raise ConfigError(
                f"{_named('ctx_len')} must be >= 3 (BOS + two tokens), got {self.ctx_len}"
            )
        if not 0 <= self.decay_fraction <= 1:
            raise ConfigError(
                f"{_named('decay_fraction')} must be in [0, 1], got {self.decay_fraction}"
            )
        if not 0 < self.val_fraction < 1:
            raise ConfigError(
                f"{_named('val_fraction')} must be in (0, 1), got {self.val_fraction}"
            )
        if not is_block_site(self.site):  # a typo fails even where only SAEs use it
            close = difflib.get_close_matches(self.site, BLOCK_SITES, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"{_named('site')}={self.site!r} is not a hook inside a block; {hint}"
                f"expected one of {', '.join(BLOCK_SITES)}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown keys raise `ConfigError` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown training config keys {unknown}; expected some of {sorted(known)}"
            )
        data = dict(data)
        try:
            if isinstance(data.get("layers"), (int, str)):
                data["layers"] = parse_layers(data["layers"])
            for key in ("total_tokens", "batch_tokens", "buffer_tokens", "val_tokens"):
                if isinstance(data.get(key), (float, str)):
                    data[key] = int(float(data[key]))
            return cls(**data)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:  # a value of the wrong type in a config file
            raise ConfigError(f"training config value of the wrong type: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read a YAML (.yaml/.yml) or JSON file of config fields."""
        data = read_config_file(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{str(path)!r} should hold a mapping of config fields")
        return cls.from_dict(data)


def run_identity(config: TrainConfig) -> dict[str, Any]:
    """What makes a training run: its config but for the folder it is written to and the
    activation cache it reads (a cache of the same rows, at a dtype both runs record, holds
    the model's own activations). Equal identities train equal dictionaries."""
    identity = asdict(config)
    for name in ("out_dir", "activations"):
        identity.pop(name)
    return identity


def read_config_file(path: str | Path) -> Any:
    """The content of a YAML (.yaml/.yml) or JSON file; a clear ConfigError if it is not valid."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training config file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text) or {}
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError and yaml.YAMLError's message
        raise ConfigError(f"training config file {str(path)!r} is not valid: {exc}") from None
    except Exception as exc:
        if type(exc).__module__.startswith("yaml"):
            raise ConfigError(
                f"training config file {str(path)!r} is not valid YAML: {exc}"
            ) from None
        raise


def field_docs() -> dict[str, str]:
    """The one-line docstring of each TrainConfig field (read from the source), for --help."""
    import ast
    import inspect

    body = ast.parse(inspect.getsource(TrainConfig)).body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr):
            if isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = nxt.value.value.strip()
    return docs


def parse_layers(value: int | str | list[int]) -> list[int]:
    """`"0,1,2"`, `"0-3"`, `2` or `[0, 1]` -> a list of block indices."""
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [int(v) for v in value]
    out: list[int] = []
    for part in str(value).split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-")
            if int(hi) - int(lo) > 10_000:  # a typo, not a model: refuse before the list is built
                raise ValueError(f"layer range {part!r} spans more than 10000 blocks")
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return out
