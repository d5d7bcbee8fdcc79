"""Cross-layer transcoders (CLT): one encoder per layer, decoders to every later layer.

Features of layer l read `in_hook(l)` (default `blocks.{l}.ln2.hook_normalized`) and write to
the MLP output of every layer l' >= l, each with its own decoder:

    acts[l]   = act_l(x[l] @ W_enc[l] + b_enc[l])                                 [.., F_l]
    y_hat[l'] = sum_{l <= l'} acts[l] @ W_dec[l][l' - l] + b_dec[l'] (+ x[l'] @ W_skip[l'])

Shapes: `W_enc[l] [d, F_l]`, `b_enc[l] [F_l]`, `W_dec[l][j] [F_l, d]` (writes to layer l + j),
`b_dec [n_layers, d]`, optional `W_skip [n_layers, d, d]`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors.torch import save_file
from torch import Tensor, nn

from replacement.activations import make_activation
from replacement.atomic import atomic_path, write_json
from replacement.errors import DictionaryFileError, SparseCircuitsError
from replacement.hook_table import block_template, fill_template, is_template

KIND = "crosslayer_transcoder"
FORMAT_VERSION = 1
DEFAULT_IN = block_template("ln2.hook_normalized")
"""Where every layer's encoder reads unless a template says otherwise."""
DEFAULT_OUT = block_template("hook_mlp_out")
"""Where the decoders into every layer write unless a template says otherwise."""


class CrossLayerTranscoder(nn.Module):
    """A cross-layer transcoder over layers 0..n_layers-1 of a model."""

    def __init__(
        self,
        n_layers: int,
        d_model: int,
        n_features: int | Sequence[int],
        activation: str = "relu",
        *,
        activation_params: dict[str, Any] | None = None,
        skip: bool = False,
        in_hook: str = DEFAULT_IN,
        out_hook: str = DEFAULT_OUT,
        model_name: str = "",
        metadata: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
    ):
        super().__init__()
        feats = [int(n_features)] * n_layers if isinstance(n_features, int) else list(n_features)
        if len(feats) != n_layers:
            raise SparseCircuitsError(f"n_features has {len(feats)} entries for {n_layers} layers")
        for template in (in_hook, out_hook):
            if not is_template(template):
                raise SparseCircuitsError(f"hook template {template!r} lacks '{{layer}}'")
        self.n_layers, self.d_model, self.n_features = int(n_layers), int(d_model), feats
        self.d_in = self.d_out = self.d_model
        self.in_hook_template, self.out_hook_template = in_hook, out_hook
        self.model_name = model_name
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.activation_params = dict(activation_params or {})
        kw = {"dtype": dtype, "device": device}
        self.W_enc = nn.ParameterList([nn.Parameter(torch.zeros(d_model, f, **kw)) for f in feats])
        self.b_enc = nn.ParameterList([nn.Parameter(torch.zeros(f, **kw)) for f in feats])
        self.W_dec = nn.ModuleList(
            nn.ParameterList(
                [nn.Parameter(torch.zeros(f, d_model, **kw)) for _ in range(n_layers - layer)]
            )
            for layer, f in enumerate(feats)
        )
        self.b_dec = nn.Parameter(torch.zeros(n_layers, d_model, **kw))
        self.W_skip = nn.Parameter(torch.zeros(n_layers, d_model, d_model, **kw)) if skip else None
        self.activations = nn.ModuleList(
            make_activation(activation, f, **self.activation_params).to(**kw) for f in feats
        )

    # ---- description -------------------------------------------------------------------
    kind = KIND

    @property
    def activation_name(self) -> str:
        """Name of the activation shared by every layer."""
        return self.activations[0].name

    def in_hook(self, layer: int) -> str:
        """Hook that layer `layer`'s encoder reads."""
        return fill_template(self.in_hook_template, layer)

    def out_hook(self, layer: int) -> str:
        """Hook that the decoders into layer `layer` write."""
        return fill_template(self.out_hook_template, layer)

    @property
    def in_hooks(self) -> list[str]:
        """Input hook of every layer."""
        return [self.in_hook(layer) for layer in range(self.n_layers)]

    @property
    def out_hooks(self) -> list[str]:
        """Output hook of every layer."""
        return [self.out_hook(layer) for layer in range(self.n_layers)]

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description (everything but the tensors)."""
        return {
            "kind": KIND,
            "activation": self.activation_name,
            "activation_params": self.activations[0].params(),
            "in_hook": self.in_hook_template,
            "out_hook": self.out_hook_template,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_features": self.n_features,
            "skip": self.W_skip is not None,
            "model_name": self.model_name,
            "dtype": str(self.b_dec.dtype).removeprefix("torch."),
            "metadata": self.metadata,
        }

    def extra_repr(self) -> str:
        return (
            f"layers={self.n_layers}, d_model={self.d_model}, F={self.n_features}, "
            f"activation={self.activation_name}, {self.in_hook_template} -> {self.out_hook_template}"
        )

    # ---- computation -------------------------------------------------------------------
    def pre_acts_layer(self, layer: int, x: Float[Tensor, "... d"]) -> Float[Tensor, "... F"]:
        """Encoder pre-activations of layer `layer`."""
        return x @ self.W_enc[layer] + self.b_enc[layer]

    def encode_layer(self, layer: int, x: Float[Tensor, "... d"]) -> Float[Tensor, "... F"]:
        """Feature activations of layer `layer` from its input activation."""
        return self.activations[layer](self.pre_acts_layer(layer, x))

    def decode_to(
        self,
        layer: int,
        acts_by_layer: Mapping[int, Float[Tensor, "... F"]] | Sequence[Float[Tensor, "... F"]],
    ) -> Float[Tensor, "... d"]:
        """Reconstruction of layer `layer`'s output from the activations of layers <= `layer`.

        Without the skip connection (see `skip`). Layers missing from a mapping contribute 0.
        """
        if not isinstance(acts_by_layer, Mapping):
            acts_by_layer = dict(enumerate(acts_by_layer))
        out = self.b_dec[layer]
        for source in range(layer + 1):
            acts = acts_by_layer.get(source)
            if acts is not None:
                out = out + acts @ self.W_dec[source][layer - source]
        return out

    def skip(self, layer: int, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """The skip path `x @ W_skip[layer]` (zeros without one)."""
        if self.W_skip is None:
            return torch.zeros_like(x)
        return x @ self.W_skip[layer]

    def forward(self, xs: Sequence[Float[Tensor, "... d"]]) -> list[Float[Tensor, "... d"]]:
        """Predictions of every layer's output from every layer's input."""
        acts = [self.encode_layer(layer, x) for layer, x in enumerate(xs)]
        return [
            self.decode_to(layer, acts)
            + (self.skip(layer, xs[layer]) if self.W_skip is not None else 0)
            for layer in range(self.n_layers)
        ]

    @torch.no_grad()
    def check_finite(self, source: str = "cross-layer transcoder") -> None:
        """Raise if any weight is NaN or infinite, naming the tensor."""
        for name, tensor in self.state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                bad = int((~torch.isfinite(tensor)).sum())
                raise SparseCircuitsError(f"{source}: tensor {name!r} has {bad} NaN/inf values")


# ---- native format ---------------------------------------------------------------------------
def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_crosslayer(clt: CrossLayerTranscoder, path: str | Path) -> Path:
    """Write a CLT to `<path>.safetensors` + `<path>.json`, each atomically; returns the JSON path."""
    tensors_path, json_path = _paths(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in clt.state_dict().items()}
    with atomic_path(tensors_path) as tmp:
        save_file(tensors, str(tmp), metadata={"format_version": str(FORMAT_VERSION)})
    write_json(json_path, {"format_version": FORMAT_VERSION, **clt.config()})
    return json_path


def crosslayer_from_config(cfg: dict[str, Any], dtype: torch.dtype) -> CrossLayerTranscoder:
    """An empty CLT of the shape a config describes."""
    return CrossLayerTranscoder(
        int(cfg["n_layers"]),
        int(cfg["d_model"]),
        cfg["n_features"],
        cfg.get("activation", "relu"),
        activation_params=cfg.get("activation_params") or {},
        skip=bool(cfg.get("skip", False)),
        in_hook=cfg.get("in_hook", DEFAULT_IN),
        out_hook=cfg.get("out_hook", DEFAULT_OUT),
        model_name=cfg.get("model_name", ""),
        metadata=cfg.get("metadata") or {},
        dtype=dtype,
    )


def load_crosslayer(
    path: str | Path, cfg: dict[str, Any] | None = None, dtype: torch.dtype | None = None
) -> CrossLayerTranscoder:
    """Load a CLT saved by `save_crosslayer` (path with or without suffix)."""
    from replacement.formats.common import fill, finish, read_json
    from replacement.formats.native import read_safetensors

    tensors_path, json_path = _paths(path)
    cfg = cfg if cfg is not None else read_json(json_path)
    missing = [k for k in ("n_layers", "d_model", "n_features") if k not in cfg]
    if cfg.get("kind") != KIND or missing:
        raise DictionaryFileError(
            f"{str(json_path)!r} is not a cross-layer transcoder config (kind {cfg.get('kind')!r}, "
            f"missing {missing})"
        )
    tensors = read_safetensors(tensors_path)
    stored = getattr(torch, cfg.get("dtype", "float32"), torch.float32)
    clt = crosslayer_from_config(cfg, stored)
    expected = clt.state_dict()
    absent = sorted(set(expected) - set(tensors))
    if absent:
        raise DictionaryFileError(f"{str(tensors_path)!r} lacks the tensors {absent}")
    fill(clt, {k: tensors[k] for k in expected}, tensors_path)
    return finish(clt, tensors_path, dtype)
