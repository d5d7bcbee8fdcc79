"""Load circuit-tracer transcoders: a folder with `config.yaml` and safetensors per layer.

Per-layer transcoder set (`model_kind: transcoder_set`): `layer_{i}.safetensors` with
`W_enc [F, d]`, `W_dec [F, d]`, `b_enc [F]`, `b_dec [d]`, optional
`activation_function.threshold [F]` (JumpReLU) and `W_skip [d, d]` (skip = x @ W_skip^T).

Cross-layer transcoder (`model_kind: cross_layer_transcoder`): `W_enc_{i}.safetensors` holding
`W_enc_{i} [F, d]`, `b_enc_{i} [F]`, `b_dec_{i} [d]`, optional `threshold_{i} [F]` and
`W_skip_{i} [d, d]` (there applied as x @ W_skip, no transpose), and `W_dec_{i}.safetensors`
holding `W_dec_{i} [F, n_layers - i, d]` (slot j writes to layer i + j).

`feature_input_hook` / `feature_output_hook` are TransformerLens 2 hook suffixes such as
`hook_resid_mid`, `ln2.hook_normalized` or `hook_mlp_out`; layer i uses `blocks.{i}.<suffix>`.
circuit-tracer runs an unprocessed model (no LayerNorm folding, no centring), where TL2's
`ln2.hook_normalized` is a LayerNorm's output (TL4's `ln2.hook_out`) but an RMSNorm's
normalized input before its weight (TL4's `ln2.hook_normalized`; GemmaScope transcoders read
it so). Loaded dictionaries record processing "none" and hooks in TL4 meaning for a LayerNorm
model, with the TL2 names in `metadata["hook_source"]`; `load_dictionaries(..., model=...)`
renames them for an RMSNorm model (`replacement.formats.model_hooks`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from replacement.crosslayer import CrossLayerTranscoder
from replacement.dictionary import Dictionary
from replacement.errors import DictionaryFileError
from replacement.formats.common import fill, finish, need, read_yaml, take
from replacement.formats.model_hooks import tl2_source
from replacement.formats.native import read_safetensors
from replacement.hook_table import block_template, fill_template
from replacement.processing import tl2_to_tl4_hook

CONFIG_FILE = "config.yaml"
_HOOK_KEYS = ("feature_input_hook", "feature_output_hook")
SET_KIND = "transcoder_set"
CLT_KIND = "cross_layer_transcoder"


def is_circuit_tracer_folder(path: Path) -> bool:
    """True if `path` is a folder with circuit-tracer's `config.yaml`."""
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def _numbered(folder: Path, pattern: str) -> dict[int, Path]:
    regex = re.compile(pattern)
    found = {}
    for p in folder.iterdir():
        match = regex.fullmatch(p.name)
        if match:
            found[int(match.group(1))] = p
    return dict(sorted(found.items()))


def _check_contiguous(layers: list[int], folder: Path, what: str) -> None:
    if layers != list(range(len(layers))):
        raise DictionaryFileError(
            f"{str(folder)!r}: {what} files should cover layers 0..{len(layers) - 1} without gaps, "
            f"found layers {layers}"
        )


def _load_layer(
    path: Path, layer: int, cfg: dict[str, Any], cfg_path: Path, hooks: tuple[str, str] | None
) -> Dictionary:
    tensors = read_safetensors(path)
    src = str(path)
    W_enc = take(tensors, "W_enc", src)
    if W_enc.dim() != 2:
        raise DictionaryFileError(f"{src!r}: 'W_enc' should be [F, d], got {list(W_enc.shape)}")
    n_features, d_in = (int(s) for s in W_enc.shape)
    W_dec = take(tensors, "W_dec", src)
    if W_dec.dim() != 2 or W_dec.shape[0] != n_features:
        raise DictionaryFileError(
            f"{src!r}: 'W_dec' has shape {list(W_dec.shape)}, expected [{n_features}, d_out]"
        )
    d_out = int(W_dec.shape[1])
    raw_in = fill_template(str(need(cfg, "feature_input_hook", cfg_path)), layer)
    raw_out = fill_template(str(need(cfg, "feature_output_hook", cfg_path)), layer)
    # circuit-tracer runs TL2 unprocessed; what ln*.hook_normalized means there depends on the
    # model's norm (resolved by load_dictionaries(..., model=...))
    source: dict[str, Any] | None = tl2_source(raw_in, raw_out, fold_ln=False)
    in_hook, out_hook = (tl2_to_tl4_hook(h, fold_ln=False) for h in (raw_in, raw_out))
    if hooks is not None:
        in_hook, out_hook = hooks
        source = None
    threshold = tensors.get("activation_function.threshold")
    activation, params = str(cfg.get("activation") or "relu").lower(), {}
    if threshold is not None:
        activation = "jumprelu"
    elif activation == "topk":
        params = {"k": int(need(cfg, "k", cfg_path))}
    elif activation not in ("relu", "jumprelu", "jump_relu"):
        raise DictionaryFileError(
            f"{str(cfg_path)!r}: activation {activation!r} is not supported; expected relu or topk"
        )
    skip = "W_skip" in tensors
    d = Dictionary(
        d_in,
        d_out,
        n_features,
        in_hook,
        out_hook,
        "jumprelu" if activation == "jump_relu" else activation,
        skip=skip,
        apply_b_dec_to_input=False,
        activation_params=params,
        model_name=str(cfg.get("model_name") or ""),
        metadata={
            "source_format": "circuit_tracer",
            "source": src,
            "layer": layer,
            "processing": "none",
            **({"hook_source": source} if source else {}),
        },
        dtype=W_dec.dtype,
    )
    values = {
        "W_enc": W_enc.T,
        "b_enc": take(tensors, "b_enc", src, (n_features,)),
        "W_dec": W_dec,
        "b_dec": take(tensors, "b_dec", src, (d_out,)),
    }
    if skip:
        values["W_skip"] = take(tensors, "W_skip", src, (d_out, d_in)).T
    if d.activation_name == "jumprelu":
        if threshold is None:
            raise DictionaryFileError(f"{src!r} lacks the tensor 'activation_function.threshold'")
        threshold = take(tensors, "activation_function.threshold", src, (n_features,))
        tiny = torch.finfo(W_dec.dtype).tiny
        values["activation.log_threshold"] = threshold.double().clamp_min(tiny).log()
    fill(d, values, src)
    return d


def load_circuit_tracer_set(
    folder: str | Path,
    hooks: dict[int, tuple[str, str]] | None = None,
    dtype: torch.dtype | None = None,
) -> list[Dictionary]:
    """Load a circuit-tracer per-layer transcoder set (one Dictionary per layer, in order).

    Args:
        folder: folder with `config.yaml` and `layer_{i}.safetensors`.
        hooks: optional {layer: (in_hook, out_hook)} overriding the configured hooks.
        dtype: convert to this dtype.
    """
    folder = Path(folder)
    cfg_path = folder / CONFIG_FILE
    cfg = read_yaml(cfg_path)
    kind = cfg.get("model_kind", SET_KIND)
    if kind != SET_KIND:
        raise DictionaryFileError(
            f"{str(cfg_path)!r} has model_kind {kind!r}; expected {SET_KIND!r}"
        )
    files = _numbered(folder, r"layer_(\d+)\.safetensors")
    if not files:
        raise DictionaryFileError(f"{str(folder)!r} holds no layer_{{i}}.safetensors files")
    hooks = hooks or {}
    out = []
    for layer, path in files.items():
        d = _load_layer(path, layer, cfg, cfg_path, hooks.get(layer))
        out.append(finish(d, path, dtype))
    return out


def load_circuit_tracer_clt(
    folder: str | Path,
    dtype: torch.dtype | None = None,
    in_hook: str | None = None,
    out_hook: str | None = None,
) -> CrossLayerTranscoder:
    """Load a circuit-tracer cross-layer transcoder folder.

    Args:
        folder: folder with `config.yaml` (`model_kind: cross_layer_transcoder`) and
            `W_enc_{i}.safetensors` / `W_dec_{i}.safetensors` per layer.
        dtype: convert to this dtype.
        in_hook, out_hook: hook templates with `{layer}` overriding the configured suffixes.
    """
    folder = Path(folder)
    cfg_path = folder / CONFIG_FILE
    cfg = read_yaml(cfg_path)
    if cfg.get("model_kind") != CLT_KIND:
        raise DictionaryFileError(
            f"{str(cfg_path)!r} has model_kind {cfg.get('model_kind')!r}; expected {CLT_KIND!r}"
        )
    enc_files = _numbered(folder, r"W_enc_(\d+)\.safetensors")
    dec_files = _numbered(folder, r"W_dec_(\d+)\.safetensors")
    if not enc_files:
        raise DictionaryFileError(f"{str(folder)!r} holds no W_enc_{{i}}.safetensors files")
    _check_contiguous(list(enc_files), folder, "W_enc_{i}")
    n_layers = len(enc_files)
    missing_dec = [i for i in range(n_layers) if i not in dec_files]
    if missing_dec:
        raise DictionaryFileError(
            f"{str(folder)!r} lacks W_dec_{{i}}.safetensors for layers {missing_dec}"
        )
    encs = [read_safetensors(enc_files[i]) for i in range(n_layers)]
    first = take(encs[0], "W_enc_0", enc_files[0])
    if first.dim() != 2:
        raise DictionaryFileError(f"{str(enc_files[0])!r}: 'W_enc_0' should be [F, d]")
    n_features, d_model = (int(s) for s in first.shape)
    has_threshold = "threshold_0" in encs[0]
    has_skip = "W_skip_0" in encs[0]
    raw = [block_template(str(need(cfg, key, cfg_path))) for key in _HOOK_KEYS]
    templates = [
        given or tl2_to_tl4_hook(t, fold_ln=False)
        for given, t in zip((in_hook, out_hook), raw, strict=True)
    ]
    overridden = in_hook is not None or out_hook is not None
    clt = CrossLayerTranscoder(
        n_layers,
        d_model,
        n_features,
        "jumprelu" if has_threshold else "relu",
        skip=has_skip,
        in_hook=templates[0],
        out_hook=templates[1],
        model_name=str(cfg.get("model_name") or ""),
        metadata={
            "source_format": "circuit_tracer_clt",
            "source": str(folder),
            "processing": "none",
            **({} if overridden else {"hook_source": tl2_source(*raw, fold_ln=False)}),
        },
        dtype=first.dtype,
    )
    values: dict[str, torch.Tensor] = {}
    b_dec = []
    skips = []
    for i, tensors in enumerate(encs):
        path = enc_files[i]
        values[f"W_enc.{i}"] = take(tensors, f"W_enc_{i}", path, (n_features, d_model)).T
        values[f"b_enc.{i}"] = take(tensors, f"b_enc_{i}", path, (n_features,))
        b_dec.append(take(tensors, f"b_dec_{i}", path, (d_model,)))
        if has_skip:
            skips.append(take(tensors, f"W_skip_{i}", path, (d_model, d_model)))
        if has_threshold:
            threshold = take(tensors, f"threshold_{i}", path, (n_features,)).double()
            tiny = torch.finfo(first.dtype).tiny
            values[f"activations.{i}.log_threshold"] = threshold.clamp_min(tiny).log()
        dec_path = dec_files[i]
        W_dec = take(
            read_safetensors(dec_path), f"W_dec_{i}", dec_path, (n_features, n_layers - i, d_model)
        )
        for j in range(n_layers - i):
            values[f"W_dec.{i}.{j}"] = W_dec[:, j, :]
    values["b_dec"] = torch.stack(b_dec)
    if has_skip:
        values["W_skip"] = torch.stack(skips)
    fill(clt, values, folder)
    return finish(clt, folder, dtype)


def circuit_tracer_kind(folder: str | Path) -> str:
    """The `model_kind` recorded in a circuit-tracer folder's config.yaml."""
    cfg_path = Path(folder) / CONFIG_FILE
    return str(read_yaml(cfg_path).get("model_kind", SET_KIND))
