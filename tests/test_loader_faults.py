"""Property-based: a truncated or corrupted file of any supported layout gives a named error.

Each example damages one file of a valid folder (cuts it short, overwrites random bytes, or
replaces it by noise) and loads the folder again. The load must either succeed (the damage hit
tensor values and left them finite) or raise a `SparseCircuitsError`; never an exception from
torch, safetensors, json or yaml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from replacement.crosslayer import CrossLayerTranscoder, save_crosslayer
from replacement.errors import SparseCircuitsError
from replacement.formats.detect import load_dictionaries
from replacement.formats.native import save_dictionary
from replacement.model import load_model
from tests.test_formats import D, F, _native, _t, _write_ct_set, _write_saelens, _write_sparsify

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure is reproducible
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _clt_circuit_tracer(folder: Path) -> None:
    folder.mkdir(parents=True)
    for i in range(2):
        enc = {f"W_enc_{i}": _t(F, D), f"b_enc_{i}": _t(F), f"b_dec_{i}": _t(D)}
        save_file(enc, str(folder / f"W_enc_{i}.safetensors"))
        save_file({f"W_dec_{i}": _t(F, 2 - i, D)}, str(folder / f"W_dec_{i}.safetensors"))
    cfg = {
        "model_kind": "cross_layer_transcoder",
        "feature_input_hook": "hook_resid_mid",
        "feature_output_hook": "hook_mlp_out",
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))


def _clt_native(folder: Path) -> None:
    clt = CrossLayerTranscoder(2, D, [F, F], "jumprelu", skip=True)
    with torch.no_grad():
        for p in clt.parameters():
            p.normal_()
    save_crosslayer(clt, folder / "clt")


def _saelens(folder: Path) -> None:
    tensors = dict(W_enc=_t(D, F), b_enc=_t(F), W_dec=_t(F, D), b_dec=_t(D), threshold=_t(F).abs())
    _write_saelens(folder, "jumprelu", tensors)


# each writes one layout into a new folder, which load_dictionaries reads as a whole
WRITERS = {
    "native": lambda f: save_dictionary(_native(), f / "layer_0"),
    "saelens": _saelens,
    "sparsify": lambda f: _write_sparsify(f / "layers.0.mlp", 4, True, True),
    "circuit_tracer": lambda f: _write_ct_set(f, n_layers=2),
    "clt_circuit_tracer": _clt_circuit_tracer,
    "clt_native": _clt_native,
}


def damage(path: Path, how: str, where: float, noise: bytes) -> None:
    """Cut the file at a share of its length, overwrite bytes there, or replace it by noise."""
    data = path.read_bytes()
    at = int(where * len(data))
    if how == "truncate":
        path.write_bytes(data[:at])
    elif how == "overwrite":
        path.write_bytes(data[:at] + noise + data[at + len(noise) :])
    else:
        path.write_bytes(noise)


DAMAGE = st.tuples(
    st.sampled_from(["truncate", "overwrite", "replace"]),
    st.floats(0, 1, exclude_max=True),
    st.binary(min_size=1, max_size=16),
    st.integers(0, 10_000),  # which file of the folder
)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_damaged_dictionary_files_give_named_errors(layout, tmp_path):
    clean = tmp_path / "clean"
    WRITERS[layout](clean)
    assert load_dictionaries(clean)  # the undamaged folder loads
    work = tmp_path / "work"

    @SETTINGS
    @given(DAMAGE)
    def check(case):
        how, where, noise, pick = case
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(clean, work)
        files = _files(work)
        damage(files[pick % len(files)], how, where, noise)
        try:
            loaded = load_dictionaries(work)
        except SparseCircuitsError:
            return
        for d in loaded:  # a load that succeeds gives finite weights
            assert all(torch.isfinite(p).all() for p in d.parameters())

    check()


def test_damaged_model_folder_gives_named_errors(tiny_gpt2_dir, tmp_path):
    work = tmp_path / "model"

    @settings(SETTINGS, max_examples=12)
    @given(DAMAGE)
    def check(case):
        how, where, noise, pick = case
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(tiny_gpt2_dir, work)
        files = [p for p in _files(work) if p.name != "generation_config.json"]
        damage(files[pick % len(files)], how, where, noise)
        try:
            load_model(work)
        except SparseCircuitsError:
            pass

    check()
