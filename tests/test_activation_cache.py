"""Activation cache, training from it (single runs, sweeps, resume), sparse TopK path, token cache."""

from __future__ import annotations

import json

import pytest
import torch

from replacement.activations import TopK
from replacement.formats.native import load_native
from training.activation_cache import (
    ActivationCache,
    ActivationCacheError,
    CachedBatches,
    rank_shards,
    token_source_hash,
    write_activation_cache,
)
from training.activations import collect_activations
from training.config import TrainConfig
from training.data import TokenData, load_token_data, token_mask
from training.fused_topk import topk_reconstruct
from training.together import train_many
from training.trainer import Trainer

CTX = 32
HOOKS = ["blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"]


@pytest.fixture(scope="module")
def small_data(default_model) -> TokenData:
    from training.default_model.corpus import stdlib_dir

    texts = [p.read_text() for p in sorted((stdlib_dir() / "json").glob("*.py"))]
    return load_token_data(default_model, texts, CTX)


@pytest.fixture(scope="module")
def cache_dir(default_model, small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("acts") / "cache"
    return write_activation_cache(
        default_model, small_data, HOOKS, out, dtype="float16", n_shards=4, verbose=False
    )


def _config(out_dir, cache_dir, **kw) -> TrainConfig:
    base = dict(
        activations=None if cache_dir is None else str(cache_dir),
        kind="skip_transcoder",
        activation="topk",
        layers=[1],
        n_features=64,
        k=4,
        batch_tokens=256,
        total_tokens=256 * 12,
        ctx_len=CTX,
        warmup_steps=2,
        lr=3e-3,
        checkpoint_every=0,
        log_every=1,
        dead_after_tokens=512,
        evaluate=False,
        verbose=False,
        out_dir=str(out_dir),
    )
    return TrainConfig(**{**base, **kw})


def test_cache_holds_the_models_activations_and_describes_them(
    default_model, small_data, cache_dir
):
    cache = ActivationCache(cache_dir)
    m = cache.manifest
    assert m["model"] == "sparse-circuits-default" and m["dtype"] == "float16"
    assert m["token_source_sha256"] == token_source_hash(small_data.train)
    assert m["processing"] == "folded"  # the embedded model's processing (replacement.processing)
    assert cache.n_shards == 4 and m["hooks"] == {h: 128 for h in HOOKS}
    # shard 2 holds the masked tokens of its block of rows, in order, as float16
    bounds = [small_data.train.shape[0] * s // 4 for s in range(5)]
    rows = small_data.train[bounds[2] : bounds[3]]
    acts = collect_activations(default_model, rows, HOOKS)
    mask = token_mask(rows, small_data.special_ids)
    for h in HOOKS:
        stored = torch.from_numpy(cache.shard(2, h)[:].copy()).float()
        assert torch.equal(stored, acts[h][mask].half().float())
    with pytest.raises(ActivationCacheError, match="blocks.0.hook_mlp_out"):
        cache.check(["blocks.0.hook_mlp_out"])
    with pytest.raises(ActivationCacheError, match="not of 'gpt2'"):
        cache.check(HOOKS, "gpt2")


def test_bfloat16_cache_and_missing_folder(default_model, small_data, tmp_path):
    rows = TokenData(small_data.train[:6], small_data.val, small_data.bos, small_data.special_ids)
    folder = write_activation_cache(
        default_model, rows, HOOKS[:1], tmp_path / "bf", dtype="bfloat16", n_shards=2, verbose=False
    )
    cache = ActivationCache(folder)
    acts = collect_activations(default_model, rows.train[:3], HOOKS[:1])[HOOKS[0]]
    want = acts[token_mask(rows.train[:3], rows.special_ids)].bfloat16().float()
    got = cache.rows(0, HOOKS[0], torch.arange(cache.shard_tokens[0]))
    assert torch.equal(got, want)
    with pytest.raises(ActivationCacheError, match="sparse-circuits cache"):
        ActivationCache(tmp_path / "nowhere")


def test_rank_shards_together_make_the_single_process_batch(cache_dir):
    cache = ActivationCache(cache_dir)
    one = CachedBatches(cache, HOOKS, 250, seed=3).batch(7)
    parts = [CachedBatches(cache, HOOKS, 250, 3, rank_shards(4, r, 2)).batch(7) for r in range(2)]
    for h in HOOKS:
        assert one[h].shape == (250, 128)
        rows = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
        assert rows(torch.cat([p[h] for p in parts])) == rows(one[h])
    # different steps draw different tokens; the same step the same ones
    assert not torch.equal(one[HOOKS[0]], CachedBatches(cache, HOOKS, 250, 3).batch(8)[HOOKS[0]])
    assert torch.equal(one[HOOKS[0]], CachedBatches(cache, HOOKS, 250, 3).batch(7)[HOOKS[0]])
    with pytest.raises(ActivationCacheError, match="at least 8"):
        rank_shards(4, 0, 8)


def test_training_from_the_cache_learns_resumes_exactly_and_sweeps(cache_dir, tmp_path):
    full = Trainer(_config(tmp_path / "full", cache_dir)).train()[1]
    lines = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["layer_1"]["fvu"] < 0.7 * lines[0]["layer_1"]["fvu"]
    # killed after 5 steps, resumed: the same weights bit for bit
    Trainer(_config(tmp_path / "cut", cache_dir, stop_after_steps=5, checkpoint_every=5)).train()
    resumed = Trainer(_config(tmp_path / "cut", cache_dir)).train()[1]
    for name, t in full.state_dict().items():
        assert torch.equal(t, resumed.state_dict()[name]), name
    # a sweep over k and width in one pass equals each run on its own
    sweep = [
        _config(tmp_path / "k8", cache_dir, k=8),
        _config(tmp_path / "wide", cache_dir, n_features=96, activation="relu"),
        _config(tmp_path / "full2", cache_dir),
    ]
    together = train_many(sweep)
    alone = Trainer(_config(tmp_path / "k8_alone", cache_dir, k=8)).train()[1]
    for name, t in alone.state_dict().items():
        assert torch.equal(t, together[0][1].state_dict()[name]), name
    assert together[1][1].n_features == 96
    assert torch.equal(together[2][1].W_dec, full.W_dec)
    assert load_native(tmp_path / "wide" / "layer_1").n_features == 96


def test_cache_refuses_other_objectives(cache_dir, tmp_path):
    with pytest.raises(Exception, match="local objective only"):
        Trainer(_config(tmp_path / "e", cache_dir, objective="e2e"))


@pytest.mark.parametrize("subtract_b_dec", [False, True])
def test_sparse_topk_path_matches_the_dense_gradients(subtract_b_dec):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=gen)
    w_enc = torch.randn(8, 32, generator=gen).requires_grad_()
    b_enc = torch.randn(32, generator=gen).requires_grad_()
    w_dec = torch.randn(32, 8, generator=gen).requires_grad_()
    b_dec = torch.randn(8, generator=gen).requires_grad_(subtract_b_dec)
    y = torch.randn(50, 8, generator=gen)
    params = [w_enc, b_enc, w_dec] + ([b_dec] if subtract_b_dec else [])

    def grads(fn):
        for p in params:
            p.grad = None
        x_enc = x - b_dec if subtract_b_dec else x
        (fn(x_enc) - y).pow(2).sum().backward()
        return [p.grad.clone() for p in params]

    dense = grads(lambda xe: TopK(5)(xe @ w_enc + b_enc) @ w_dec)
    sparse = grads(lambda xe: topk_reconstruct(xe, w_enc, b_enc, w_dec, 5).y)
    for a, b in zip(dense, sparse, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
        assert a.abs().max() > 0
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            sparse, grads(lambda xe: topk_reconstruct(xe, w_enc, b_enc, w_dec, 5).y), strict=True
        )
    )


def test_token_cache_skips_tokenizing_on_the_second_run(default_model, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE_CIRCUITS_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "a.py").write_text("def f(x):\n    return x + 1\n" * 40)
    (src / "b.py").write_text("import os\nprint(os.getcwd())\n" * 40)
    first = load_token_data(default_model, str(src), CTX)

    def refuse(*a, **k):
        raise AssertionError("tokenized again")

    monkeypatch.setattr("training.data.tokenize_documents", refuse)
    second = load_token_data(default_model, str(src), CTX)
    assert torch.equal(first.train, second.train) and torch.equal(first.val, second.val)
    # a changed source is a new entry
    (src / "b.py").write_text("x = 1\n" * 200)
    with pytest.raises(AssertionError, match="tokenized again"):
        load_token_data(default_model, str(src), CTX)


def test_e2e_spliced_pass_from_the_first_spliced_block_changes_nothing(
    default_model, small_data, tmp_path
):
    def run(skip: bool):
        cfg = _config(
            tmp_path / f"e2e{skip}", None, objective="e2e", layers=[2], total_tokens=62 * 3
        )
        cfg.batch_tokens = 62
        trainer = Trainer(cfg, default_model, small_data)
        trainer.skip_unspliced_blocks = skip
        return trainer.train()[2]

    a, b = run(True), run(False)
    for name, t in a.state_dict().items():
        assert torch.allclose(t, b.state_dict()[name], atol=1e-6), name
    assert a.W_dec.abs().max() > 0


def test_cache_and_sweep_commands(tmp_path, capsys, monkeypatch):
    from sparse_circuits_cli import main

    monkeypatch.setenv("SPARSE_CIRCUITS_CACHE", str(tmp_path / "token_cache"))
    src = tmp_path / "src"
    src.mkdir()
    from training.default_model.corpus import stdlib_dir

    for p in sorted((stdlib_dir() / "json").glob("*.py")):
        (src / p.name).write_text(p.read_text())
    acts = tmp_path / "acts"
    argv = ["cache", "--data", str(src), "--layers", "2", "--ctx-len", "32", "--tokens", "3000"]
    assert main([*argv, "--shards", "2", "--dtype", "bfloat16", "--out", str(acts), "--quiet"]) == 0
    cache = ActivationCache(acts)
    assert cache.manifest["dtype"] == "bfloat16" and cache.n_shards == 2
    assert sorted(cache.hooks) == ["blocks.2.hook_mlp_out", "blocks.2.ln2.hook_normalized"]
    assert 3000 <= cache.n_tokens < 3200
    (tmp_path / "base.json").write_text(json.dumps({"evaluate": False}))
    (tmp_path / "sweep.yaml").write_text(
        f"- {{k: 4, out_dir: {tmp_path / 'a'}}}\n- {{k: 8, out_dir: {tmp_path / 'b'}}}\n"
    )
    argv = ["train", "--config", str(tmp_path / "base.json"), "--activations", str(acts)]
    argv += ["--layers", "2", "--n-features", "64", "--batch-tokens", "200", "--tokens", "1000"]
    argv += ["--ctx-len", "32", "--sweep", str(tmp_path / "sweep.yaml"), "--quiet"]
    assert main(argv) == 0
    assert load_native(tmp_path / "a" / "layer_2").activation.k == 4
    assert load_native(tmp_path / "b" / "layer_2").activation.k == 8
    assert "trained 2 runs in one pass" in capsys.readouterr().out


def test_sparse_auxk_equals_the_dense_one():
    from replacement.dictionary import Dictionary
    from training.losses import LossScale, auxk_loss_dead, auxk_loss_sparse

    gen = torch.Generator().manual_seed(1)
    d = Dictionary(8, 8, 40, "a", "b", "topk", activation_params={"k": 3})
    with torch.no_grad():
        for p in (d.W_enc, d.b_enc, d.W_dec):
            p.copy_(torch.randn(p.shape, generator=gen))
    x, y = torch.randn(30, 8, generator=gen), torch.randn(30, 8, generator=gen)
    dead_idx = torch.tensor([1, 5, 6, 7, 20, 33, 39])
    y_hat, scale = d(x).detach(), LossScale.of(y)

    def grads(loss):
        d.zero_grad()
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in (d.W_enc, d.b_enc, d.W_dec)]

    dead_pre = x @ d.W_enc[:, dead_idx] + d.b_enc[dead_idx]
    dense = grads(auxk_loss_dead(d, dead_pre, dead_idx, y, y_hat, scale))
    sparse = grads(auxk_loss_sparse(d, x, dead_idx, y, y_hat, scale))
    assert abs(dense[0] - sparse[0]) < 1e-5 * dense[0]
    for a, b in zip(dense[1], sparse[1], strict=True):
        assert torch.allclose(a, b, atol=1e-5) and a.abs().max() > 0


def _numbered_cache(folder, shard_tokens: list[int]) -> ActivationCache:
    """A cache whose row i (over all shards, in order) holds the value i: rows name themselves."""
    import numpy as np

    shards, first = [], 0
    for s, n in enumerate(shard_tokens):
        (folder / f"shard_{s:04d}").mkdir(parents=True)
        ids = np.arange(first, first + n, dtype=np.float32)[:, None].repeat(2, 1)
        np.save(folder / f"shard_{s:04d}" / f"{HOOKS[0]}.npy", ids)
        shards.append({"folder": f"shard_{s:04d}", "tokens": n, "rows": n})
        first += n
    manifest = {"format": "sparse-circuits-activations", "version": 1, "dtype": "float32"}
    manifest.update(hooks={HOOKS[0]: 2}, shards=shards, ctx_len=CTX, model="m")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return ActivationCache(folder)


def test_an_epoch_of_the_cache_sampler_visits_each_row_exactly_once(tmp_path):
    """Shards of 60, 40 and 20 tokens give 10 tokens each to a 30-token batch: every run of
    n_s / 10 steps is one epoch of shard s (2, 3 and 6 epochs in 12 steps), in which each of
    its rows comes exactly once; the next epoch is another order of the same rows."""
    sizes = [60, 40, 20]
    cache = _numbered_cache(tmp_path / "numbered", sizes)
    batches = CachedBatches(cache, HOOKS[:1], 30, seed=5)
    seen = [batches.batch(step)[HOOKS[0]][:, 0].long() for step in range(12)]
    starts = [sum(sizes[:s]) for s in range(3)]
    for s, n in enumerate(sizes):
        per_step = [ids[(ids >= starts[s]) & (ids < starts[s] + n)] for ids in seen]
        assert all(len(p) == 10 for p in per_step)
        steps = n // 10
        orders = []
        for epoch in range(12 // steps):
            visited = torch.cat(per_step[epoch * steps : (epoch + 1) * steps])
            assert sorted(visited.tolist()) == list(range(starts[s], starts[s] + n))
            orders.append(
                torch.cat(
                    [batches.indices(t, s) for t in range(epoch * steps, (epoch + 1) * steps)]
                )
            )
        assert not torch.equal(orders[0], orders[1])  # epochs are reshuffled


def test_a_cache_is_checked_against_the_run_before_any_step(
    default_model, small_data, cache_dir, tmp_path, tiny_gpt2
):
    """Evaluation after a cache run reads validation rows at the cache's ctx_len (the same
    split, so never the cache's training rows); a cache of other rows or another model is
    refused before the first step, not after training."""
    from training.data import TokenData

    run = Trainer(
        _config(tmp_path / "r", cache_dir, ctx_len=128), model=default_model, data=small_data
    )
    assert run.ctx_len == CTX and run.data.train.shape[1] == CTX
    cached = ActivationCache(cache_dir).manifest["token_source_sha256"]
    assert token_source_hash(run.data.train) == cached  # the cache's own training rows
    assert run.validation_tokens().shape[1] == CTX
    train_rows = {tuple(r) for r in run.data.train.tolist()}
    assert not any(tuple(r) in train_rows for r in run.validation_tokens().tolist())
    shuffled = TokenData(
        small_data.train.flip(0), small_data.val, small_data.bos, small_data.special_ids
    )
    for other in (shuffled, None):  # other rows; the default corpus
        with pytest.raises(ActivationCacheError, match="other token rows"):
            Trainer(_config(tmp_path / "o", cache_dir), model=default_model, data=other)
    with pytest.raises(ActivationCacheError, match="not of"):
        Trainer(_config(tmp_path / "m", cache_dir), model=tiny_gpt2)
    assert not (tmp_path / "o").exists() and not (tmp_path / "m").exists()


def test_validation_rows_of_a_cache_run_are_never_its_training_rows(default_model, tmp_path):
    """A cache of a text file at ctx_len 32 and a run whose own ctx_len is 128: the run splits
    the file at the cache's 32 (the split the cache was made with), so no validation row is a
    cached training row (at 128 the random split was another one, and rows leaked)."""
    from training.default_model.corpus import stdlib_dir

    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(p.read_text() for p in sorted((stdlib_dir() / "json").glob("*.py"))))
    data = load_token_data(default_model, str(text), CTX)
    folder = write_activation_cache(
        default_model, data, HOOKS, tmp_path / "c", n_shards=1, verbose=False
    )
    run = Trainer(_config(tmp_path / "r", folder, ctx_len=128, data=str(text)), model=default_model)
    val = run.validation_tokens()
    assert val.shape[1] == CTX
    cached = {tuple(r) for r in data.train.tolist()}
    assert not any(tuple(r) in cached for r in val.tolist())
