"""Data-parallel training (torchrun-style, gloo on CPU) matches a single-process run."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from replacement.formats.native import load_native
from training.config import TrainConfig

CTX = 64


def _config(out_dir: str, objective: str) -> TrainConfig:
    return TrainConfig(
        kind="skip_transcoder",
        activation="topk",
        objective=objective,
        layers=[0, 2],
        n_features=128,
        k=8,
        batch_tokens=504,
        total_tokens=504 * 10,
        ctx_len=CTX,
        buffer_tokens=4032,
        out_dir=out_dir,
        verbose=False,
        evaluate=False,
        warmup_steps=2,
        lr=3e-3,
        checkpoint_every=0,
        log_every=1,
        dead_after_tokens=1000,
    )


def _texts() -> list[str]:
    from training.default_model.corpus import stdlib_dir

    return [p.read_text() for p in sorted((stdlib_dir() / "json").glob("*.py"))]


def _worker(rank: int, world: int, port: int, out_dir: str, objective: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    from replacement import load_model
    from training.trainer import Trainer

    model = load_model("default")
    try:
        Trainer(_config(out_dir, objective), model, _texts()).train()
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("objective", ["local", "e2e"])
def test_two_ranks_match_one_process(default_model, tmp_path, objective):
    from training.trainer import Trainer

    single = Trainer(_config(str(tmp_path / "one"), objective), default_model, _texts()).train()
    out = tmp_path / "two"
    mp.spawn(_worker, args=(2, _free_port(), str(out), objective), nprocs=2, join=True)
    for layer, d in single.items():
        other = load_native(out / f"layer_{layer}")
        for name, tensor in d.state_dict().items():
            assert torch.allclose(tensor, other.state_dict()[name], atol=1e-5, rtol=0), name
        # and it moved away from the initialisation (the comparison is not vacuous)
        assert d.W_dec.abs().max() > 1e-3
