"""Load SAELens folders: `sae_weights.safetensors` + `cfg.json`.

Architectures: standard (ReLU), gated, jumprelu, topk, and the transcoder variants
(transcoder, skip_transcoder, jumprelu_transcoder). SAELens stores `W_enc [d_in, d_sae]`,
`W_dec [d_sae, d_out]` in our orientation; JumpReLU's `threshold` becomes our
`log_threshold = log(threshold)`; SAELens' `W_skip` is `[d_out, d_in]` (skip = x @ W_skip^T).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from replacement.dictionary import Dictionary, GatedDictionary
from replacement.errors import DictionaryFileError
from replacement.formats.common import fill, finish, need, parse_hooks, read_json, take
from replacement.formats.model_hooks import tl2_source
from replacement.formats.native import read_safetensors
from replacement.processing import parse_processing, processing_from_tl_kwargs, tl2_to_tl4_hook

WEIGHTS_FILE = "sae_weights.safetensors"
CONFIG_FILE = "cfg.json"
_ARCHITECTURES = (
    "standard",
    "gated",
    "jumprelu",
    "topk",
    "transcoder",
    "skip_transcoder",
    "jumprelu_transcoder",
)


def is_saelens_folder(path: Path) -> bool:
    """True if `path` is a folder in SAELens' layout."""
    return path.is_dir() and (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file()


def _lookup(cfg: dict[str, Any], key: str) -> Any:
    """A key at the top level or under `metadata` (newer SAELens moved several there)."""
    if cfg.get(key) is not None:
        return cfg[key]
    return (cfg.get("metadata") or {}).get(key)


def saelens_processing(cfg: dict[str, Any]) -> str:
    """The model processing a SAELens SAE was trained under.

    SAELens loads its model with `from_pretrained_no_processing(**model_from_pretrained_kwargs)`
    and records those kwargs; files without them (older releases) followed TransformerLens'
    `from_pretrained` defaults (LayerNorm folded, writing weights centred).
    """
    meta = cfg.get("metadata") or {}
    for place in (meta, cfg):
        if "model_from_pretrained_kwargs" in place:
            return processing_from_tl_kwargs(place["model_from_pretrained_kwargs"], True)
    return processing_from_tl_kwargs(None, False)


def _tl4(hook: Any, fold_ln: bool) -> str | None:
    return tl2_to_tl4_hook(str(hook), fold_ln) if hook else None


def _topk_k(cfg: dict[str, Any], source: Path) -> int | None:
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    return int(k) if k is not None else None


def load_saelens(
    folder: str | Path,
    hooks: str | tuple[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> Dictionary:
    """Load one SAELens SAE or transcoder.

    Args:
        folder: folder holding `sae_weights.safetensors` and `cfg.json`.
        hooks: override the recorded hook(s): one name for an SAE, or (in_hook, out_hook).
        dtype: convert to this dtype (default: the dtype stored in the file).
    """
    folder = Path(folder)
    cfg_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    cfg = read_json(cfg_path)
    tensors = read_safetensors(weights_path)
    arch = str(cfg.get("architecture") or "standard").lower()
    if arch not in _ARCHITECTURES:
        raise DictionaryFileError(
            f"{str(cfg_path)!r}: unsupported SAELens architecture {arch!r}; expected one of "
            f"{list(_ARCHITECTURES)}"
        )
    norm = cfg.get("normalize_activations")
    if norm not in (None, "none"):
        raise DictionaryFileError(
            f"{str(cfg_path)!r}: normalize_activations={norm!r} is not supported; expected 'none' "
            "(fold the normalisation into the weights first)"
        )
    d_in = int(need(cfg, "d_in", cfg_path))
    d_sae = int(need(cfg, "d_sae", cfg_path))
    transcoder = "transcoder" in arch
    d_out = int(cfg.get("d_out") or d_in)
    processing = saelens_processing(cfg)
    fold = parse_processing(processing).fold_ln
    raw_in = _lookup(cfg, "hook_name")
    raw_out = _lookup(cfg, "hook_name_out") if transcoder else raw_in
    in_hook, out_hook = _tl4(raw_in, fold), _tl4(raw_out, fold)
    # TL2 names whose TL4 meaning depends on the model's norms (resolved by load_dictionaries)
    source = tl2_source(str(raw_in), str(raw_out), fold) if raw_in and raw_out else None
    override = parse_hooks(hooks)
    if override is not None:
        in_hook, out_hook = override
        source = None
    if not in_hook or not out_hook:
        raise DictionaryFileError(
            f"{str(cfg_path)!r} records no hook name (metadata.hook_name"
            + (" and hook_name_out" if transcoder else "")
            + "); pass hooks=..."
        )
    if transcoder and in_hook == out_hook:
        raise DictionaryFileError(f"{str(cfg_path)!r}: a transcoder needs two different hooks")

    src = str(weights_path)
    W_dec = take(tensors, "W_dec", src, (d_sae, d_out))
    stored = W_dec.dtype if W_dec.is_floating_point() else torch.float32
    k = _topk_k(cfg, cfg_path)
    activation, params = "relu", {}
    if arch == "topk" or (cfg.get("activation_fn") == "topk"):
        if k is None:
            raise DictionaryFileError(f"{str(cfg_path)!r}: a TopK SAE needs the key 'k'")
        activation, params = "topk", {"k": k}
    if "jumprelu" in arch:
        activation = "jumprelu"
    apply_b_dec = cfg.get("apply_b_dec_to_input")
    common: dict[str, Any] = dict(
        apply_b_dec_to_input=bool(apply_b_dec) if apply_b_dec is not None else (not transcoder),
        model_name=str(_lookup(cfg, "model_name") or ""),
        metadata={
            "source_format": "saelens",
            "source": str(folder),
            "architecture": arch,
            "processing": processing,
            **({"hook_source": source} if source else {}),
        },
        dtype=stored,
    )
    values = {
        "W_enc": take(tensors, "W_enc", src, (d_in, d_sae)),
        "W_dec": W_dec,
        "b_dec": take(tensors, "b_dec", src, (d_out,)),
    }
    if arch == "gated":
        d: Dictionary = GatedDictionary(d_in, d_out, d_sae, in_hook, out_hook, **common)
        values["b_enc"] = take(tensors, "b_gate", src, (d_sae,))
        values["b_mag"] = take(tensors, "b_mag", src, (d_sae,))
        values["r_mag"] = take(tensors, "r_mag", src, (d_sae,))
    else:
        skip = arch == "skip_transcoder"
        d = Dictionary(
            d_in,
            d_out,
            d_sae,
            in_hook,
            out_hook,
            activation,
            skip=skip,
            activation_params=params,
            **common,
        )
        values["b_enc"] = take(tensors, "b_enc", src, (d_sae,))
        if skip:
            # SAELens keeps W_skip as [d_out, d_in] and computes x @ W_skip^T
            values["W_skip"] = take(tensors, "W_skip", src, (d_out, d_in)).T
        if activation == "jumprelu":
            threshold = take(tensors, "threshold", src, (d_sae,)).double()
            # a zero threshold is a plain ReLU; keep log finite with the smallest normal number
            tiny = torch.finfo(stored).tiny
            values["activation.log_threshold"] = threshold.clamp_min(tiny).log()
    fill(d, values, src)
    return finish(d, src, dtype)
