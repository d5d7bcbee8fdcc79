"""The activation buffer: a mixing pool, BOS-free, aligned across hooks, rebuilt exactly after a resume."""

from __future__ import annotations

import torch

from training.activations import ActivationBuffer, collect_activations
from training.data import TokenData, sample_indices, token_mask

CTX = 16
ROWS = 40
IN_HOOK, OUT_HOOK = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
HOOKS = [IN_HOOK, OUT_HOOK, "blocks.1.hook_resid_post"]


def _data(separators: bool = True) -> TokenData:
    gen = torch.Generator().manual_seed(0)
    body = torch.randint(1, 300, (ROWS, CTX - 1), generator=gen)
    # distinct first tokens: no two rows share a context, so activations locate their token
    body[:, 0] = torch.randperm(299, generator=gen)[:ROWS] + 1
    if separators:
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
    for step in range(buf.batches_per_refill):  # the batches of one phase
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
    # within one phase no token is served twice
    flat = torch.cat(served)
    assert flat.unique().numel() == flat.numel()


def test_batches_mix_refills_and_serve_each_token_once(tiny_gpt2):
    data = _data(separators=False)  # 15 tokens in every row: no refill falls short
    rows, _, acts = _index(tiny_gpt2, data)
    table = acts["blocks.1.hook_resid_post"]
    # 4 batches of 30 tokens per phase; refills of 120 tokens (8 rows), two in the pool
    buf = ActivationBuffer(tiny_gpt2, data, HOOKS, 30, buffer_tokens=240, seed=2, model_batch=8)
    assert (buf.batches_per_refill, buf.rows_per_refill) == (4, 8)
    refill_of_row = torch.empty(ROWS, dtype=torch.long)
    refill_of_row[sample_indices(ROWS, 0, ROWS, seed=2)] = torch.arange(ROWS) // 8
    served = []
    for phase in range(4):  # refills 0..4 all come from the first epoch of rows
        for j in range(4):
            where = _locate(buf.batch(phase * 4 + j)["blocks.1.hook_resid_post"], table)
            refills = refill_of_row[rows.reshape(-1)[where]]
            # every batch mixes the two refills in the pool, the older leaving, the newer staying
            assert set(refills.tolist()) == {phase, phase + 1}
            assert min((refills == phase).sum(), (refills == phase + 1).sum()) >= 5
            served.append(where)
    flat = torch.cat(served)
    assert flat.unique().numel() == flat.numel()  # no token twice
    # every token of refills 1..3 served once (refill 0's first half is never due, refill 4's
    # second half is due in phase 4)
    by_refill = refill_of_row[rows.reshape(-1)[flat]]
    valid = token_mask(data.train, data.special_ids).reshape(-1)
    for r in (1, 2, 3):
        in_refill = valid & (refill_of_row[rows.reshape(-1)] == r)
        assert set(flat[by_refill == r].tolist()) == set(in_refill.nonzero().squeeze(1).tolist())
    assert (by_refill == 0).sum() == (by_refill == 4).sum() == 60


def test_batch_of_a_step_is_a_pure_function_of_seed_and_step(tiny_gpt2):
    data = _data()

    def buffer(seed: int) -> ActivationBuffer:
        return ActivationBuffer(tiny_gpt2, data, HOOKS, 32, buffer_tokens=192, seed=seed)

    straight = buffer(3)
    assert straight.batches_per_refill == 3
    sequence = [straight.batch(step) for step in range(9)]
    resumed = buffer(3)  # a new buffer, as after a resume: starts mid-phase at step 4
    for step in (*range(4, 9), 2):
        again = resumed.batch(step)
        for hook in HOOKS:
            assert torch.equal(again[hook], sequence[step][hook])
    other = buffer(4).batch(5)
    assert not torch.equal(other[OUT_HOOK], sequence[5][OUT_HOOK])
    # phases differ from one another (the data order moves on)
    assert not torch.equal(sequence[0][OUT_HOOK], sequence[6][OUT_HOOK])


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


def test_direct_forward_equals_the_bridge_and_is_used(default_model, tiny_llama):
    """The plain-HF twin gives the bridge's activations (folded default model: it is taken)."""
    tokens = torch.randint(1, 300, (3, CTX), generator=torch.Generator().manual_seed(1))
    hooks = [IN_HOOK, OUT_HOOK, "blocks.1.hook_resid_post"]
    for model in (default_model, tiny_llama):
        fast = collect_activations(model, tokens, hooks)
        slow = collect_activations(model, tokens, hooks, direct_ok=False)
        for h in hooks:
            assert torch.allclose(fast[h], slow[h], atol=1e-5 * (1 + slow[h].abs().max())), h
    assert default_model._sc_direct[tuple(sorted(hooks))] is not None


def test_direct_forward_follows_in_place_weight_edits(tiny_gpt2_dir):
    """Editing an attention weight in place between two runs (a head ablation) reaches the
    fast path: GPT-2's twin holds a copy of the fused q/k/v weight, which went stale before."""
    from replacement import load_model

    model = load_model(tiny_gpt2_dir, processing="folded")  # a private copy: it is edited
    tokens = torch.randint(1, 300, (2, 8), generator=torch.Generator().manual_seed(3))
    hook = "blocks.1.hook_resid_post"
    before = collect_activations(model, tokens, [hook])[hook]
    assert model._sc_direct[(hook,)] is not None  # the fast path was taken
    with torch.no_grad():
        model.blocks[0].attn.v.original_component.weight.mul_(3.0)
    after = collect_activations(model, tokens, [hook])[hook]
    bridge = collect_activations(model, tokens, [hook], direct_ok=False)[hook]
    assert (after - before).abs().max() > 1e-3  # the edit matters
    assert torch.allclose(after, bridge, atol=1e-5)
