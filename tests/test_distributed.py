"""Data-parallel training (torchrun-style, gloo on CPU) matches a single-process run.

BatchTopK included: its batch rule is global, so the ranks must agree on one threshold.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from replacement.activations import BatchTopK
from replacement.formats.native import load_native
from training.config import TrainConfig
from training.distributed import DistContext, GlobalBatchTopK

CTX = 64


def _config(out_dir: str, **case) -> TrainConfig:
    """The shared configuration with a case's overrides (objective, activation, ...)."""
    base = dict(
        kind="skip_transcoder",
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
        # Adam divides by sqrt(v) + eps: with the default 1e-6, gradients that are zero up to
        # rounding (b_dec's right after its mean initialisation) become lr-sized steps of
        # random sign, and the two runs part by ~1e-5 for reasons unrelated to sharding
        adam_eps=1e-3,
    )
    return TrainConfig(**{**base, **case})


def _texts() -> list[str]:
    from training.default_model.corpus import stdlib_dir

    return [p.read_text() for p in sorted((stdlib_dir() / "json").glob("*.py"))]


# Cases of the two-rank comparison: name -> overrides of `_config`. Both use BatchTopK, whose
# batch rule is global: the ranks must agree on one threshold. (A per-token TopK case added a
# fifth of this file's time and no sharding path that these two lack.) The local case's 10
# steps of 504 tokens refill its 4032-token buffer; the e2e case runs 4 rows a step (2 a rank):
# its steps run the model forward and backward, so their cost grows with the rows.
# To add a case, add a line here: the one spawn below runs every case in turn.
CASES: dict[str, dict] = {
    "local-batchtopk": dict(objective="local", activation="batchtopk"),
    "e2e-batchtopk": dict(
        objective="e2e",
        activation="batchtopk",
        batch_tokens=4 * (CTX - 1),
        total_tokens=40 * (CTX - 1),
    ),
}


def _train(config: TrainConfig, model) -> dict:
    from training.trainer import Trainer

    return Trainer(config, model, _texts()).train()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank: the global BatchTopK rule on its shard, then every training case in turn.

    One spawn for all of it: starting a rank (torch import, model load) costs more than a case.
    The first Trainer joins the process group (WORLD_SIZE > 1); the later ones reuse it.
    """
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    try:
        _rule_shard(rank, f"{out}/rule")
        from replacement import load_model

        model = load_model("default")
        for name, case in CASES.items():
            _train(_config(f"{out}/{name}", **case), model)
    finally:
        torch.distributed.destroy_process_group()


@dataclass
class TwoRanks:
    """Results of the module's one two-rank spawn and of the same cases in one process."""

    out: Path
    """Each case's two-rank dictionaries (`<case>/layer_<i>`), the rule's outputs (`rule/`)."""
    single: dict[str, dict]
    """Each case's dictionaries trained in this process: layer -> Dictionary."""


@pytest.fixture(scope="module")
def two_ranks(default_model, tmp_path_factory) -> TwoRanks:
    out = tmp_path_factory.mktemp("two_ranks")
    (out / "rule").mkdir()
    ranks = mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=False)
    try:
        # the single-process runs overlap the ranks' start-up (imports, model load)
        single = {
            name: _train(_config(str(out / "one" / name), **case), default_model)
            for name, case in CASES.items()
        }
    finally:
        while not ranks.join():
            pass
    return TwoRanks(out, single)


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_match_one_process(two_ranks, case):
    activation = CASES[case]["activation"]
    for layer, d in two_ranks.single[case].items():
        other = load_native(two_ranks.out / case / f"layer_{layer}")
        for name, tensor in d.state_dict().items():
            assert torch.allclose(tensor, other.state_dict()[name], atol=1e-5, rtol=0), name
        # and it moved away from the initialisation (the comparison is not vacuous)
        assert d.W_dec.abs().max() > 1e-3
        if activation == "batchtopk":
            # the inference threshold (a buffer, compared above) was learned, not left at 0
            assert d.activation.threshold > 1e-3


# ---- the global BatchTopK rule on its own ------------------------------------------------------
K_BATCH = 3


def _pre() -> torch.Tensor:
    """A batch of 10 tokens whose largest values all sit in the first 4 tokens (rank 0's
    shard below), with a tie at the 30th largest value."""
    gen = torch.Generator().manual_seed(0)
    pre = torch.randn(10, 16, generator=gen) - 1.0
    pre[:4] += 6.0
    pre[1, 3] = pre[0, 0] = pre[:4].flatten().sort(descending=True).values[K_BATCH * 10 - 1]
    return pre


def _rule_shard(rank: int, out: str) -> None:
    """Rank `rank`'s part of the rule in a two-rank group (run by `_worker`)."""
    ctx = DistContext(rank, 2)
    act = GlobalBatchTopK(K_BATCH, ctx, momentum=0.5).train()
    shard = _pre()[[slice(0, 4), slice(4, 10)][rank]]
    torch.save({"acts": act(shard), "threshold": act.threshold}, f"{out}/rank{rank}.pt")


def test_global_batchtopk_keeps_what_one_process_keeps(two_ranks):
    pre = _pre()
    single = GlobalBatchTopK(K_BATCH, DistContext(), momentum=0.5).train()
    acts = single(pre)
    # the k*B largest of ReLU(pre), plus the one value tied with the (k*B)-th: kept as well
    kept = acts > 0
    assert int(kept.sum()) == K_BATCH * 10 + 1 and bool(kept[0, 0]) and bool(kept[1, 3])
    assert torch.equal(acts[kept], pre[kept]) and pre[~kept].max() <= pre[0, 0]
    # without ties, the rule is BatchTopK's own, running threshold included (also when
    # fewer than k*B values are positive)
    few = torch.full((10, 16), -1.0)
    few[2, :5] = torch.arange(1.0, 6.0)
    for batch in (pre + torch.arange(pre.numel()).reshape(pre.shape) * 1e-4, few):
        plain = BatchTopK(K_BATCH, momentum=0.5).train()
        ours = GlobalBatchTopK(K_BATCH, DistContext(), momentum=0.5).train()
        assert torch.equal(ours(batch), plain(batch))
        assert torch.equal(ours.threshold, plain.threshold) and plain.threshold > 0
    # two ranks: rank 0 holds every kept value (its own top k*B_local would be 12, not 30)
    parts = [torch.load(two_ranks.out / "rule" / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(torch.cat([p["acts"] for p in parts]), acts)
    for p in parts:
        assert torch.equal(p["threshold"], single.threshold) and single.threshold > 0
