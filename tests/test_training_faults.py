"""Faults during training: SIGKILL at random points, Ctrl-C, and what a resumed run gives.

SIGKILL trials fork the test process (a fresh interpreter costs seconds of imports), let the
child train and kill itself with SIGKILL at a random step and a random phase: mid-step (the
weights changed, not yet saved), while writing the checkpoint, while appending metrics, or
right after a checkpoint. The parent then resumes in-process; the weights must equal those of
an uninterrupted run bit for bit.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
import torch

import sparse_circuits_cli
import training.trainer as trainer_module
from training.config import TrainConfig
from training.data import load_token_data
from training.interrupts import TrainingInterrupted
from training.run_files import METRICS_FILE
from training.trainer import Trainer

TEXT = (
    "def add(a, b):\n    return a + b\n\nclass Stack:\n    def push(self, item):\n        pass\n"
    * 40
)
STEPS = 8
PHASES = ("mid_step", "mid_checkpoint", "mid_metrics", "after_checkpoint")


def _config(out, **kw) -> TrainConfig:
    base = dict(
        layers=[0],
        n_features=16,
        k=4,
        ctx_len=16,
        batch_tokens=64,
        total_tokens=64 * STEPS,
        buffer_tokens=256,
        val_tokens=64,
        checkpoint_every=1,
        log_every=1,
        warmup_steps=2,
        verbose=False,
        evaluate=False,
        out_dir=str(out),
    )
    return TrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def data(tiny_gpt2):
    return load_token_data(tiny_gpt2, [TEXT], ctx_len=16)


@pytest.fixture(scope="module")
def reference(tiny_gpt2, data, tmp_path_factory):
    """Weights of the uninterrupted run."""
    out = Trainer(_config(tmp_path_factory.mktemp("ref")), tiny_gpt2, data).train()
    return {k: v.clone() for k, v in out[0].state_dict().items()}


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(trainer: Trainer, step: int, phase: str) -> None:
    """Make the trainer SIGKILL itself at `step` in `phase` (runs in the forked child only)."""
    if phase == "mid_step":
        original = trainer._train_step

        def step_then_die(s):
            record = original(s)
            if s + 1 == step:
                _die()
            return record

        trainer._train_step = step_then_die
    elif phase == "mid_checkpoint":
        save = torch.save

        def partial_save(obj, path):
            if obj["step"] == step:
                with open(path, "wb") as f:
                    f.write(b"PK\x03\x04 half a checkpoint")
                    f.flush()
                _die()
            save(obj, path)

        trainer_module.torch.save = partial_save
    elif phase == "mid_metrics":
        append = trainer._append_metrics

        def half_line(record):
            if record["step"] == step:
                with open(trainer.out_dir / METRICS_FILE, "a") as f:
                    f.write('{"step": ' + str(step) + ', "loss')
                _die()
            append(record)

        trainer._append_metrics = half_line
    else:
        save_checkpoint = trainer.save_checkpoint

        def save_then_die():
            path = save_checkpoint()
            if trainer.step == step:
                _die()
            return path

        trainer.save_checkpoint = save_then_die


def _killed_child(config: TrainConfig, model, data, step: int, phase: str) -> None:
    pid = os.fork()
    if pid == 0:  # child: train until the armed fault kills it
        try:
            torch.set_num_threads(1)  # OpenMP thread pools do not survive fork
            trainer = Trainer(config, model, data)
            _arm(trainer, step, phase)
            trainer.train()
        finally:
            os._exit(3)  # reached only if the fault did not fire
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail(f"child training hung ({phase} at step {step})")
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (phase, step)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (POSIX)")
def test_sigkill_at_random_points_resumes_exactly(tiny_gpt2, data, reference, tmp_path):
    rng = random.Random(15)
    trials = [(rng.randrange(1, STEPS), PHASES[i % len(PHASES)]) for i in range(10)]
    for i, (step, phase) in enumerate(trials):
        config = _config(tmp_path / f"trial_{i}")
        _killed_child(config, tiny_gpt2, data, step, phase)
        out = Trainer(config, tiny_gpt2, data).train()
        for name, tensor in reference.items():
            assert torch.equal(out[0].state_dict()[name], tensor), (phase, step, name)
        steps = [
            int(line.split(",")[0].split(":")[1])
            for line in (tmp_path / f"trial_{i}" / "metrics.jsonl").read_text().splitlines()
        ]
        assert steps == list(range(1, STEPS + 1)), (phase, step)


def test_ctrl_c_saves_checkpoint_and_says_how_to_resume(tiny_gpt2, data, reference, tmp_path):
    """SIGINT mid-run: a checkpoint of the last whole step, the resume command, exit 130."""
    out = tmp_path / "interrupted"
    config = _config(out)
    trainer = Trainer(config, tiny_gpt2, data)
    original = trainer._train_step

    def interrupt_at_3(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # delivered now, handled between steps
        return original(step)

    trainer._train_step = interrupt_at_3
    with pytest.raises(TrainingInterrupted, match="interrupted after step 4 of 8"):
        trainer.train()
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 4
    resumed = Trainer(config, tiny_gpt2, data).train()
    for name, tensor in reference.items():
        assert torch.equal(resumed[0].state_dict()[name], tensor), name


def test_ctrl_c_before_the_first_step(tiny_gpt2_dir, tmp_path, capsys, monkeypatch):
    """Ctrl-C while the run is being set up (model, data) is one line and the resume hint.

    (Ctrl-C between steps through the CLI is a row of tests/test_cli_errors.py.)
    """

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "__init__", interrupted)
    argv = ["train", "--model", str(tiny_gpt2_dir), "--no-resume", "--out", str(tmp_path / "r")]
    code = sparse_circuits_cli.main(argv)
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err and "train: interrupted" in err
    resume = err.split("resume with: ")[1].strip()
    assert resume == f"sparse-circuits train --model {tiny_gpt2_dir} --out {tmp_path / 'r'}"
