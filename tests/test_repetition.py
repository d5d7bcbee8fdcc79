"""training.repetition: which rows a rung read how often, and the unpaired interval."""

from __future__ import annotations

import json

import numpy as np
import pytest

from replacement.errors import SparseCircuitsError
from training.data import sample_indices
from training.repetition import exposures, rows_read, unpaired_difference


def test_exposures_count_whole_passes_and_the_rows_of_the_part_pass():
    seen = exposures(10, 25, seed=3)
    assert seen.sum() == 25 and seen.min() == 2 and seen.max() == 3
    # the 5 rows read a third time are the first 5 of the third pass's order
    third = set(sample_indices(10, 20, 5, 3).tolist())
    assert set(np.flatnonzero(seen == 3).tolist()) == third


def test_rows_read_follows_the_trainers_count_and_refuses_a_local_run(tmp_path):
    card = {"objective": "e2e", "batch_tokens": 4096, "total_tokens": 16_000_000, "ctx_len": 128}
    (tmp_path / "card.json").write_text(json.dumps({"training": card}))
    assert rows_read(tmp_path) == 3906 * 32  # 3906 steps of 4096 // 127 rows
    card["objective"] = "local"
    (tmp_path / "card.json").write_text(json.dumps({"training": card}))
    with pytest.raises(SparseCircuitsError, match="'local' run; only e2e"):
        rows_read(tmp_path)


def test_unpaired_difference_has_the_known_answer_and_covers_it_under_noise():
    def mean(chunks, w):
        return float(np.dot(w, chunks["x"]) / w.sum())

    flat = unpaired_difference(mean, {"x": np.ones(16)}, {"x": np.full(16, 3.0)}, 16)
    assert flat == pytest.approx((2.0, 2.0, 2.0))
    rng = np.random.default_rng(1)
    a, b = {"x": rng.normal(0.0, 1.0, 64)}, {"x": rng.normal(0.5, 1.0, 64)}
    point, low, high = unpaired_difference(mean, a, b, 64)
    assert point == pytest.approx(b["x"].mean() - a["x"].mean())
    assert low < point < high and low < 0.5 < high
    # about 2 * 1.96 * sqrt(2 / 64) wide for two independent sets of unit variance
    assert 0.5 < high - low < 0.9
