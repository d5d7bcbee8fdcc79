"""A 2-process gloo run reading an activation cache (each rank its own shards) matches one process."""

from __future__ import annotations

import os

import torch
import torch.multiprocessing as mp

from replacement.formats.native import load_native
from tests.test_distributed import _free_port
from training.activation_cache import write_activation_cache
from training.config import TrainConfig
from training.data import load_token_data


def _config(cache: str, out_dir: str, activation: str) -> TrainConfig:
    return TrainConfig(
        activations=cache,
        kind="skip_transcoder",
        activation=activation,
        layers=[0, 2],
        n_features=96,
        k=6,
        batch_tokens=300,
        total_tokens=300 * 10,
        ctx_len=48,
        warmup_steps=2,
        lr=3e-3,
        checkpoint_every=0,
        dead_after_tokens=600,
        adam_eps=1e-3,  # see tests/test_distributed.py: rounding-noise gradients of b_dec
        evaluate=False,
        verbose=False,
        out_dir=out_dir,
    )


def _worker(rank: int, world: int, port: int, cache: str, out_dir: str, activation: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    from training.trainer import Trainer

    try:
        trainer = Trainer(_config(cache, out_dir, activation))
        # this rank reads only its own shards
        assert trainer.batches.shards == list(range(rank, 4, world))
        trainer.train()
    finally:
        torch.distributed.destroy_process_group()


def test_two_ranks_reading_their_shards_match_one_process(default_model, tmp_path):
    # TopK through the sparse path (BatchTopK's global rule is tested in test_distributed.py)
    activation = "topk"
    from tests.test_distributed import _texts
    from training.trainer import Trainer

    cache = tmp_path / "acts"
    if not cache.exists():
        data = load_token_data(default_model, _texts(), 48)
        hooks = ["blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"]
        hooks += ["blocks.2.ln2.hook_normalized", "blocks.2.hook_mlp_out"]
        write_activation_cache(default_model, data, hooks, cache, n_shards=4, verbose=False)
    single = Trainer(_config(str(cache), str(tmp_path / "one"), activation)).train()
    out = tmp_path / "two"
    mp.spawn(_worker, args=(2, _free_port(), str(cache), str(out), activation), nprocs=2, join=True)
    for layer, d in single.items():
        other = load_native(out / f"layer_{layer}")
        for name, tensor in d.state_dict().items():
            assert torch.allclose(tensor, other.state_dict()[name], atol=1e-5, rtol=0), name
        assert d.W_dec.abs().max() > 1e-3
