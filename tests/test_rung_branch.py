"""A ladder rung continued from its previous rung's state equals the rung trained from scratch."""

from __future__ import annotations

import json

import pytest
import torch

from tests.tiny_e2e import STEP_TOKENS, e2e_config, json_package_rows
from training.config import TrainConfig
from training.data import TokenData
from training.run_files import BRANCH_FILE
from training.rung_branch import branch_step, can_branch, start_from_branch
from training.trainer import Trainer


@pytest.fixture(scope="module")
def data(default_model) -> TokenData:
    return json_package_rows(default_model)


def _config(folder, steps: int, **kw) -> TrainConfig:
    return e2e_config(folder, steps, **kw)


def _train(config, model, data, branch: bool = True):
    trainer = Trainer(config, model, data)
    trainer.branch_at = branch_step(config) if branch else None
    return trainer, trainer.train()[1]


@pytest.mark.parametrize("objective", ["e2e", "e2e_ds"])
def test_a_rung_continued_from_the_shorter_ones_branch_equals_it_trained_from_scratch(
    default_model, data, tmp_path, objective, monkeypatch
):
    _train(_config(tmp_path / "t10", 10, objective=objective), default_model, data)
    assert (tmp_path / "t10" / BRANCH_FILE).is_file()  # kept at step 8, where its decay begins
    longer = _config(tmp_path / "t20", 20, objective=objective)
    assert start_from_branch(tmp_path / "t10", longer) == 8
    trained_steps = []
    real_step = Trainer._train_step
    monkeypatch.setattr(
        Trainer,
        "_train_step",
        lambda self, step: trained_steps.append(step) or real_step(self, step),
    )
    branched, got = _train(longer, default_model, data)
    assert trained_steps == list(range(8, 20))  # only the steps after the branch
    monkeypatch.setattr(Trainer, "_train_step", real_step)
    _, want = _train(_config(tmp_path / "scratch", 20, objective=objective), default_model, data)
    for key, t in want.state_dict().items():
        assert torch.equal(t, got.state_dict()[key]), key
    assert branched.branched_from == {"tokens": 10 * STEP_TOKENS, "step": 8}
    # its metrics: the shorter run's steps up to the branch, then its own
    steps = [
        json.loads(x)["step"] for x in (tmp_path / "t20" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(1, 21))


def test_a_killed_branched_rung_resumes_and_still_names_its_branch(default_model, data, tmp_path):
    _train(_config(tmp_path / "t10", 10), default_model, data)
    cut = _config(tmp_path / "t20", 20, stop_after_steps=14, checkpoint_every=2)
    start_from_branch(tmp_path / "t10", cut)
    _train(cut, default_model, data)
    resumed, got = _train(_config(tmp_path / "t20", 20), default_model, data)
    _, want = _train(_config(tmp_path / "scratch", 20), default_model, data)
    assert torch.equal(got.W_enc, want.W_enc) and torch.equal(got.W_dec, want.W_dec)
    assert resumed.branched_from == {"tokens": 10 * STEP_TOKENS, "step": 8}
    # a rung already started is never overwritten by a branch
    assert start_from_branch(tmp_path / "t10", _config(tmp_path / "t20", 20)) is None


def test_runs_whose_paths_part_before_the_branch_do_not_branch(tmp_path):
    short = _config(tmp_path / "a", 10)
    assert can_branch(short, _config(tmp_path / "b", 20))
    assert not can_branch(short, _config(tmp_path / "b", 20, k=8))  # another setting
    assert not can_branch(short, _config(tmp_path / "b", 20, warmup_steps=3))  # another warm-up
    assert not can_branch(short, _config(tmp_path / "b", 10))  # not longer
    assert not can_branch(short, _config(tmp_path / "b", 9, total_tokens=STEP_TOKENS * 9))
    # a longer run whose decay starts before the shorter run's branch step (decay over 90%)
    assert not can_branch(short, _config(tmp_path / "b", 20, decay_fraction=0.9))
    # local runs branch from an activation cache only (a buffer's refills are not saved)
    local = _config(tmp_path / "a", 10, objective="local")
    assert not can_branch(local, _config(tmp_path / "b", 20, objective="local"))
    # no branch file, or one of another run: nothing is written
    assert start_from_branch(tmp_path / "nowhere", _config(tmp_path / "c", 20)) is None
    assert not (tmp_path / "c").exists()
