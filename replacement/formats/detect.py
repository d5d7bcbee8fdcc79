"""Load dictionaries from any supported layout, detected from the folder or file.

Layouts: this project's own `<name>.json` + `<name>.safetensors` (also a cross-layer
transcoder), a folder of such files (e.g. a zoo set), SAELens (`cfg.json` +
`sae_weights.safetensors`), sparsify (`cfg.json` + `sae.safetensors`, one folder per hookpoint,
or a folder of those), circuit-tracer (`config.yaml` with a transcoder set or a cross-layer
transcoder), and the name of a dictionary set shipped in `replacement.zoo`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from replacement import zoo
from replacement.crosslayer import KIND as CLT_KIND
from replacement.crosslayer import CrossLayerTranscoder, load_crosslayer
from replacement.dictionary import Dictionary
from replacement.errors import DictionaryFileError
from replacement.formats import circuit_tracer, saelens, sparsify
from replacement.formats.common import parse_hooks, read_json
from replacement.formats.model_hooks import fit_hooks_to_model
from replacement.formats.native import load_native
from replacement.hooks import check_hook
from replacement.processing import fit_to_processing

AnyDictionary = Dictionary | CrossLayerTranscoder
HookSpec = str | tuple[str, str] | Mapping[Any, str | tuple[str, str]] | None

_LAYOUTS = (
    "<name>.json + <name>.safetensors (sparse-circuits), a folder of those, SAELens folder "
    "(cfg.json + sae_weights.safetensors), sparsify folder (cfg.json + sae.safetensors) or a "
    "folder of them, circuit-tracer folder (config.yaml + layer_{i}.safetensors or "
    "W_enc_{i}/W_dec_{i}.safetensors), or a shipped set name"
)


def _native_configs(folder: Path) -> list[Path]:
    """JSON files in `folder` that describe a native dictionary (they have a tensors sibling)."""
    found = [p for p in folder.glob("*.json") if p.with_suffix(".safetensors").is_file()]
    return sorted(
        found, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]
    )


def _load_native_any(path: Path, dtype: torch.dtype | None) -> AnyDictionary:
    json_path = path.with_suffix(".json")
    kind = read_json(json_path).get("kind") if json_path.is_file() else None
    if kind == CLT_KIND:
        return load_crosslayer(path, dtype=dtype)
    return load_native(path, dtype=dtype)


def _single_hooks(hooks: HookSpec, key: Any, many: bool) -> tuple[str, str] | None:
    """The override for one dictionary, from a global spec or a mapping keyed by name/layer."""
    if hooks is None:
        return None
    if isinstance(hooks, Mapping):
        spec = hooks.get(key)
        return parse_hooks(spec) if spec is not None else None
    if many:
        raise DictionaryFileError(
            "a single hooks override applies to one dictionary; this location holds several, "
            "so pass a mapping {name_or_layer: (in_hook, out_hook)}"
        )
    return parse_hooks(hooks)


def _resolve(path: str | Path) -> Path:
    """The file or folder a user's argument names (a zoo set name becomes its folder)."""
    p = Path(path).expanduser()
    if p.exists():
        if p.is_file() and p.name in (
            saelens.CONFIG_FILE,
            saelens.WEIGHTS_FILE,
            sparsify.WEIGHTS_FILE,
            circuit_tracer.CONFIG_FILE,
        ):
            return p.parent
        return p
    if p.with_suffix(".json").is_file() or Path(str(p) + ".json").is_file():
        return p
    if (
        "/" not in str(path)
        and "\\" not in str(path)
        and zoo.DICTIONARY_DIR.joinpath(str(path)).is_dir()
    ):
        return zoo.dictionary_set_path(str(path))
    names = [entry.name for entry in zoo.list_dictionary_sets()]
    raise DictionaryFileError(
        f"dictionary location {str(path)!r} does not exist (nor is it a shipped set; shipped: {names})"
    )


def _load_all(p: Path, hooks: HookSpec, dtype: torch.dtype | None) -> list[AnyDictionary]:
    if p.is_file() or not p.exists():
        if p.suffix not in (".json", ".safetensors", ""):
            raise DictionaryFileError(f"{str(p)!r} is not a dictionary file; expected {_LAYOUTS}")
        stem = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p
        d = _load_native_any(stem, dtype)
        return [_override_native(d, _single_hooks(hooks, stem.name, False))]
    if saelens.is_saelens_folder(p):
        return [saelens.load_saelens(p, _single_hooks(hooks, p.name, False), dtype)]
    if sparsify.is_sparsify_folder(p):
        return [sparsify.load_sparsify(p, _single_hooks(hooks, p.name, False), dtype)]
    if circuit_tracer.is_circuit_tracer_folder(p):
        if circuit_tracer.circuit_tracer_kind(p) == circuit_tracer.CLT_KIND:
            return [circuit_tracer.load_circuit_tracer_clt(p, dtype)]
        per_layer = None
        if hooks is not None:
            if not isinstance(hooks, Mapping):
                raise DictionaryFileError(
                    "a circuit-tracer set holds one transcoder per layer: pass hooks as "
                    "{layer: (in_hook, out_hook)}"
                )
            per_layer = {int(k): parse_hooks(v) for k, v in hooks.items()}
        return list(circuit_tracer.load_circuit_tracer_set(p, per_layer, dtype))
    natives = _native_configs(p)
    if natives:
        many = len(natives) > 1
        return [
            _override_native(
                _load_native_any(j.with_suffix(""), dtype), _single_hooks(hooks, j.stem, many)
            )
            for j in natives
        ]
    subs = sparsify.sparsify_subfolders(p)
    subs += sorted(s for s in p.iterdir() if saelens.is_saelens_folder(s))
    if subs:
        many = len(subs) > 1
        out: list[AnyDictionary] = []
        for s in subs:
            spec = _single_hooks(hooks, s.name, many)
            if sparsify.is_sparsify_folder(s):
                out.append(sparsify.load_sparsify(s, spec, dtype))
            else:
                out.append(saelens.load_saelens(s, spec, dtype))
        return out
    raise DictionaryFileError(
        f"{str(p)!r} holds no dictionary in a known layout; expected {_LAYOUTS}"
    )


def _override_native(d: AnyDictionary, hooks: tuple[str, str] | None) -> AnyDictionary:
    if hooks is None:
        return d
    if isinstance(d, CrossLayerTranscoder):
        raise DictionaryFileError("hooks of a cross-layer transcoder are templates; edit its JSON")
    d.in_hook, d.out_hook = hooks
    return d


def _fit_to_model(d: AnyDictionary, model: Any, dtype: torch.dtype | None) -> AnyDictionary:
    # peer hook names whose meaning depends on the model's norms first (an exact renaming),
    # then read and write what this model's processing gives (exact conversion, or an error)
    d = fit_to_processing(fit_hooks_to_model(d, model), model)
    hooks = (
        d.in_hooks + d.out_hooks if isinstance(d, CrossLayerTranscoder) else [d.in_hook, d.out_hook]
    )
    for hook in hooks:
        check_hook(model, hook)
    device = torch.device(model.cfg.device)
    # without an explicit dtype, compute in the model's (fp16 zoo files would be slow on CPU)
    return d.to(device=device, dtype=dtype or model.W_E.dtype)


def load_dictionaries(
    path_or_set_name: str | Path,
    model: Any = None,
    hooks: HookSpec = None,
    dtype: torch.dtype | None = None,
) -> list[AnyDictionary]:
    """Every dictionary at a location, layout detected from the files.

    Args:
        path_or_set_name: a file, a folder, or the name of a shipped dictionary set.
        model: if given, convert each dictionary to the model's processing (exactly, or raise
            `ProcessingError` naming the `load_model` call that fits), check its hooks exist and
            move it to the model's device.
        hooks: override hooks: one name / (in_hook, out_hook) for a single dictionary, or a
            mapping from file/folder name (or layer, for circuit-tracer sets) to such a value.
        dtype: convert to this dtype (default: the model's dtype when `model` is given, else
            as stored).

    Returns:
        Dictionaries (and cross-layer transcoders), in layer order where the layout has one.
    """
    dictionaries = _load_all(_resolve(path_or_set_name), hooks, dtype)
    if model is not None:
        dictionaries = [_fit_to_model(d, model, dtype) for d in dictionaries]
    return dictionaries


def load_model_and_dictionaries(
    model_source: Any,
    path_or_set_name: str | Path,
    *,
    processing: str = "auto",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    hooks: HookSpec = None,
) -> tuple[Any, list[AnyDictionary]]:
    """The model in the processing its dictionaries were trained under, and the dictionaries.

    The dictionaries are read first, so that `load_model(..., for_dictionaries=...)` can pick
    the processing (`processing="auto"`); they are then converted to it where needed and moved
    to the model's device. What the CLI commands use.
    """
    from replacement.model import load_model

    found = _load_all(_resolve(path_or_set_name), hooks, dtype)
    model = load_model(model_source, device=device, processing=processing, for_dictionaries=found)
    return model, [_fit_to_model(d, model, dtype) for d in found]


def load_dictionary(
    path: str | Path,
    model: Any = None,
    hooks: str | tuple[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> AnyDictionary:
    """The one dictionary at `path` (see `load_dictionaries`); refuses a location holding several."""
    found = load_dictionaries(path, model, hooks, dtype)
    if len(found) != 1:
        raise DictionaryFileError(
            f"{str(path)!r} holds {len(found)} dictionaries; use load_dictionaries to load them all"
        )
    return found[0]


def describe(path: str | Path) -> str:
    """One line naming the layout detected at `path` (for messages and the CLI)."""
    p = _resolve(path)
    if p.is_dir():
        for label, test in (
            ("saelens", saelens.is_saelens_folder),
            ("sparsify", sparsify.is_sparsify_folder),
            ("circuit-tracer", circuit_tracer.is_circuit_tracer_folder),
        ):
            if test(p):
                return f"{label} folder {str(p)!r}"
        return f"folder {str(p)!r}"
    return f"sparse-circuits file {str(p)!r}"
