"""Load EleutherAI sparsify folders: one folder per hookpoint with `sae.safetensors` + `cfg.json`.

sparsify stores `encoder.weight [F, d]` (an `nn.Linear`), `encoder.bias [F]`, `W_dec [F, d]`,
`b_dec [d]` and, for skip transcoders, `W_skip [d, d]` applied as `x @ W_skip^T`. Its TopK keeps
the k largest of ReLU(pre); an SAE (not `transcode`) subtracts b_dec from its input first.

A folder is named after the Hugging Face module it hooked (`layers.3.mlp`, `h.3`,
`gpt_neox.layers.3`); `hook_table.from_hf_module` maps it to TransformerLens hooks, e.g.
`layers.3.mlp` to `blocks.3.ln2.hook_out -> blocks.3.hook_mlp_out` for a transcoder. The MLP's
input is the norm's output, `ln2.hook_out` in TransformerLens 4 (`hook_normalized` precedes the
norm's weight and bias). On a model with norms after attention and MLP (Gemma) the modules'
outputs are `mlp.hook_out` / `attn.hook_out`, before those norms; `load_dictionaries(...,
model=...)` renames them (`replacement.formats.model_hooks`). sparsify trains on the unprocessed
Hugging Face model, so loaded dictionaries record processing "none"; `load_dictionaries(...,
model=...)` converts them exactly for a folded model. Pass `hooks=` to choose other hooks.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from replacement.dictionary import Dictionary
from replacement.errors import DictionaryFileError
from replacement.formats.common import fill, finish, parse_hooks, read_json, take
from replacement.formats.native import read_safetensors
from replacement.hook_table import from_hf_module, hf_module_part

WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "cfg.json"


def is_sparsify_folder(path: Path) -> bool:
    """True if `path` is one hookpoint folder in sparsify's layout."""
    return path.is_dir() and (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file()


def sparsify_hooks(hookpoint: str, transcode: bool) -> tuple[str, str]:
    """TransformerLens (in_hook, out_hook) for a sparsify hookpoint (folder) name."""
    if hf_module_part(hookpoint) is None:
        raise DictionaryFileError(
            f"cannot map the sparsify hookpoint {hookpoint!r} to a layer; pass hooks=(in, out)"
        )
    hooks = from_hf_module(hookpoint, transcode)
    if hooks is None:
        raise DictionaryFileError(
            f"cannot map the sparsify hookpoint {hookpoint!r} to TransformerLens hooks; "
            "pass hooks=(in_hook, out_hook)"
        )
    return hooks


def load_sparsify(
    folder: str | Path,
    hooks: str | tuple[str, str] | None = None,
    dtype: torch.dtype | None = None,
    hookpoint: str | None = None,
) -> Dictionary:
    """Load one sparsify SAE or (skip) transcoder.

    Args:
        folder: the hookpoint folder holding `sae.safetensors` and `cfg.json`.
        hooks: override the hooks: one name (an SAE) or (in_hook, out_hook).
        dtype: convert to this dtype (default: the stored dtype).
        hookpoint: the Hugging Face module name, if the folder is not named after it.
    """
    folder = Path(folder)
    cfg_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    cfg = read_json(cfg_path)
    tensors = read_safetensors(weights_path)
    src = str(weights_path)
    activation = str(cfg.get("activation", "topk")).lower()
    if activation != "topk":
        raise DictionaryFileError(
            f"{str(cfg_path)!r}: sparsify activation {activation!r} is not supported; expected 'topk'"
        )
    if "k" not in cfg:
        raise DictionaryFileError(f"{str(cfg_path)!r} lacks the config key 'k'")
    W_enc = take(tensors, "encoder.weight", src)
    if W_enc.dim() != 2:
        raise DictionaryFileError(
            f"{src!r}: 'encoder.weight' should be [F, d], got {list(W_enc.shape)}"
        )
    n_latents, d_in = (int(s) for s in W_enc.shape)
    if cfg.get("d_in") is not None and int(cfg["d_in"]) != d_in:
        raise DictionaryFileError(
            f"{src!r}: 'encoder.weight' has d_in={d_in}, but cfg.json says d_in={cfg['d_in']}"
        )
    expected_latents = int(cfg.get("num_latents") or 0) or int(
        cfg.get("expansion_factor", 0) * d_in
    )
    if expected_latents and expected_latents != n_latents:
        raise DictionaryFileError(
            f"{src!r}: 'encoder.weight' has {n_latents} latents, cfg.json implies {expected_latents}"
        )
    transcode = bool(cfg.get("transcode", False))
    skip = bool(cfg.get("skip_connection", False))
    override = parse_hooks(hooks)
    in_hook, out_hook = override or sparsify_hooks(hookpoint or folder.name, transcode)
    # a module's output means another hook on a model with norms after attention/MLP (Gemma):
    # recorded so that load_dictionaries(..., model=...) can rename it
    source = (
        None
        if override
        else {
            "kind": "hf_module",
            "hookpoint": hookpoint or folder.name,
            "transcode": transcode,
        }
    )
    if transcode and in_hook == out_hook:
        raise DictionaryFileError(f"{str(cfg_path)!r}: a transcoder needs two different hooks")
    W_dec = take(tensors, "W_dec", src)
    if W_dec.dim() != 2 or W_dec.shape[0] != n_latents:
        raise DictionaryFileError(
            f"{src!r}: 'W_dec' has shape {list(W_dec.shape)}, expected [{n_latents}, d_out]"
        )
    d_out = int(W_dec.shape[1])
    d = Dictionary(
        d_in,
        d_out,
        n_latents,
        in_hook,
        out_hook,
        "topk",
        skip=skip,
        apply_b_dec_to_input=not transcode,
        activation_params={"k": int(cfg["k"])},
        metadata={
            "source_format": "sparsify",
            "source": str(folder),
            "hookpoint": folder.name,
            "processing": "none",
            **({"hook_source": source} if source else {}),
        },
        dtype=W_dec.dtype,
    )
    values = {
        "W_enc": W_enc.T,
        "b_enc": take(tensors, "encoder.bias", src, (n_latents,)),
        "W_dec": W_dec,
        "b_dec": take(tensors, "b_dec", src, (d_out,)),
    }
    if skip:
        values["W_skip"] = take(tensors, "W_skip", src, (d_out, d_in)).T
    fill(d, values, src)
    return finish(d, src, dtype)


def sparsify_subfolders(folder: Path) -> list[Path]:
    """Hookpoint folders directly inside `folder`, in layer order."""
    found = [p for p in folder.iterdir() if is_sparsify_folder(p)]
    return sorted(found, key=_natural_key)


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]
