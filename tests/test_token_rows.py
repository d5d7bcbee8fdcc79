"""Token rows carried to another machine (`training.token_rows`): the same rows come back, a
sweep records which rows it ran on, and runs on other rows are neither resumed nor merged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from replacement.errors import SparseCircuitsError
from training.data import TokenData
from training.token_rows import check_rows, read_rows, rows_digest, write_rows


def _data(seed: int = 0) -> TokenData:
    g = torch.Generator().manual_seed(seed)
    return TokenData(
        torch.randint(0, 4096, (40, 16), generator=g),
        torch.randint(0, 4096, (6, 16), generator=g),
        0,
        [0, 7],
    )


def test_rows_come_back_exactly_and_are_stored_small(tmp_path):
    data = _data()
    write_rows(tmp_path / "rows.npz", data)
    back = read_rows(tmp_path / "rows.npz")
    assert torch.equal(back.train, data.train) and torch.equal(back.val, data.val)
    assert (back.bos, back.special_ids) == (0, [0, 7])
    with np.load(tmp_path / "rows.npz") as f:
        assert f["train"].dtype == np.uint16  # a 4096-token vocabulary fits
    assert rows_digest(back.train, back.val) == rows_digest(data.train, data.val)
    other = _data(seed=1)
    assert rows_digest(other.train, data.val) != rows_digest(data.train, data.val)


def test_a_file_that_is_not_token_rows_is_named(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    np.save(tmp_path / "b.npy", np.zeros(3))
    np.savez(tmp_path / "c.npz", train=np.zeros((2, 2)))
    for name, message in (("missing.npz", "is not a file"), ("a.json", "is unreadable"),
                          ("b.npy", "lacks"), ("c.npz", r"lacks \['val', 'bos', 'special_ids'\]")):  # fmt: skip
        with pytest.raises(SparseCircuitsError, match=message):
            check_rows(tmp_path / name)


@pytest.mark.slow
def test_a_sweep_refuses_other_rows_and_a_merge_of_a_sweep_on_other_rows(
    tmp_path, default_model, monkeypatch
):
    """The sweep records its rows' digest; resumed on other rows (another Python's corpus) it
    stops before training, and a results file made on other rows is not merged."""
    from dataclasses import replace

    import training.claims_plan as plan
    from training.claims_results import RESULTS_FILE, merge_results
    from training.claims_sweep import run_claims
    from training.data import load_token_data

    from .test_claims import _tiny_sweep

    monkeypatch.setattr(plan, "SKIP_KS", (4,))
    settings, data = _tiny_sweep(tmp_path, default_model)
    settings = replace(settings, points=("skip/linear",))  # closed form: no training
    write_rows(tmp_path / "rows.npz", data)
    results = run_claims(replace(settings, rows=str(tmp_path / "rows.npz")), log=lambda m: None,
                         model=default_model)  # fmt: skip
    digest = json.loads((tmp_path / RESULTS_FILE).read_text())["setup"]["rows_sha256"]
    assert digest == results["setup"]["rows_sha256"] == rows_digest(data.train, data.val[:4])
    full = load_token_data(default_model, None, ctx_len=128)
    other = TokenData(full.train[128:256], full.val[:16], full.bos, full.special_ids)
    on_disk = (tmp_path / RESULTS_FILE).read_text()
    with pytest.raises(SparseCircuitsError, match="other token rows"):
        run_claims(replace(settings, points=("skip/transcoder_k4",)), log=lambda m: None,
                   model=default_model, data=other)  # fmt: skip
    assert (tmp_path / RESULTS_FILE).read_text() == on_disk
    elsewhere = json.loads(on_disk)
    elsewhere["setup"]["rows_sha256"] = "0" * 64
    (tmp_path / "there.json").write_text(json.dumps(elsewhere))
    with pytest.raises(SparseCircuitsError, match="other token rows"):
        merge_results(tmp_path, tmp_path / "there.json")
    assert json.loads((tmp_path / RESULTS_FILE).read_text())["setup"]["rows_sha256"] == digest
