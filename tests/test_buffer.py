"""The activation buffer: shuffled, BOS-free, aligned across hooks, rebuilt exactly after a resume."""

from __future__ import annotations

import torch

from training.activations import ActivationBuffer, collect_activations
from training.data import TokenData, token_mask

CTX = 16
ROWS = 40
IN_HOOK, OUT_HOOK = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
HOOKS = [IN_HOOK, OUT_HOOK, "blocks.1.hook_resid_post"]


def _data() -> TokenData:
    gen = torch.Generator().manual_seed(0)
    body = torch.randint(1, 300, (ROWS, CTX - 1), generator=gen)
    body[::3, 5] = 0  # separators inside rows: masked like BOS
    train = torch.cat([torch.zeros(ROWS, 1, dtype=torch.long), body], dim=1)
    return TokenData(train=train, val=train[:2], bos=0, special_ids=[0])


def _index(model, data: TokenData) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Every (row, pos) of the training rows with its activations, for looking batches up."""
    acts = collect_activations(model, data.train, HOOKS)
    rows, pos = torch.meshgrid(torch.arange(ROWS), torch.arange(CTX), indexing="ij")
    return rows, pos, acts


def _locate(batch_vectors: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Flat (row * CTX + pos) index of each batch vector, by exact nearest match."""
    dist = torch.cdist(batch_vectors.double(), table.reshape(-1, table.shape[-1]).double())
    best = dist.min(-1)
    assert (best.values < 1e-5).all()
    return best.indices


def test_batches_are_shuffled_bos_free_and_aligned(tiny_gpt2):
    data = _data()
    rows, pos, acts = _index(tiny_gpt2, data)
    mask = token_mask(data.train, data.special_ids)
    n_valid = int(mask.sum())
    batch_tokens = 64
    buf = ActivationBuffer(
        tiny_gpt2, data, HOOKS, batch_tokens, buffer_tokens=n_valid // 2, seed=1, model_batch=8
    )
    served: list[torch.Tensor] = []
    for step in range(buf.batches_per_refill):
        batch = buf.batch(step)
        assert set(batch) == set(HOOKS)
        where = _locate(batch["blocks.1.hook_resid_post"], acts["blocks.1.hook_resid_post"])
        # the same token in every hook: a transcoder's input and target stay paired
        for hook in (IN_HOOK, OUT_HOOK):
            expected = acts[hook].reshape(-1, acts[hook].shape[-1])[where]
            assert torch.allclose(batch[hook], expected, atol=1e-5)
        # BOS and in-row separators are never served
        assert mask.reshape(-1)[where].all()
        # shuffled: a batch spreads over many rows; in stream order 64 tokens cover ~5 rows
        assert rows.reshape(-1)[where].unique().numel() >= 15
        served.append(where)
    # within one refill no token is served twice
    flat = torch.cat(served)
    assert flat.unique().numel() == flat.numel()


def test_batch_of_a_step_is_a_pure_function_of_seed_and_step(tiny_gpt2):
    data = _data()

    def buffer(seed: int) -> ActivationBuffer:
        return ActivationBuffer(tiny_gpt2, data, HOOKS, 32, buffer_tokens=96, seed=seed)

    straight = buffer(3)
    sequence = [straight.batch(step) for step in range(7)]
    resumed = buffer(3)  # a new buffer, as after a resume: jumps straight to step 5
    for step in (5, 6, 2):
        again = resumed.batch(step)
        for hook in HOOKS:
            assert torch.equal(again[hook], sequence[step][hook])
    other = buffer(4).batch(5)
    assert not torch.equal(other[OUT_HOOK], sequence[5][OUT_HOOK])
    # refills differ from one another (the data order moves on)
    assert not torch.equal(sequence[0][OUT_HOOK], sequence[3][OUT_HOOK])


def test_collect_activations_stops_after_the_last_needed_hook(tiny_gpt2):
    data = _data()
    fired: list[str] = []

    def spy(act, hook):
        fired.append(hook.name)
        return act

    later = ["blocks.1.hook_mlp_out", "ln_final.hook_normalized", "unembed.hook_out"]
    with tiny_gpt2.hooks(fwd_hooks=[(name, spy) for name in [IN_HOOK, *later]]):
        acts = collect_activations(tiny_gpt2, data.train[:4], [IN_HOOK])
    assert fired == [IN_HOOK]  # nothing after blocks.0.ln2 ran
    full = tiny_gpt2.run_with_cache(data.train[:4], names_filter=[IN_HOOK])[1][IN_HOOK]
    assert torch.equal(acts[IN_HOOK], full)
