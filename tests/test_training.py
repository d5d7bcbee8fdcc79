"""The training package: data, losses, every kind and objective, resume, NaN stop, CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

from replacement.dictionary import Dictionary, GatedDictionary
from replacement.formats.native import load_native
from training.activations import collect_activations
from training.config import ConfigError, TrainConfig
from training.data import (
    TokenData,
    chunk_documents,
    load_token_data,
    sample_indices,
    token_mask,
)
from training.default_model.corpus import stdlib_dir
from training.losses import LossScale, auxk_loss, fvu, sparsity_loss, step_l0
from training.together import train_many
from training.trainer import Trainer, TrainingDivergedError

CTX = 64
K = 8
F = 128


@pytest.fixture(scope="module")
def texts() -> list[str]:
    files = sorted((stdlib_dir() / "json").glob("*.py"))
    return [p.read_text() for p in files]


@pytest.fixture(scope="module")
def token_data(default_model, texts) -> TokenData:
    return load_token_data(default_model, texts, CTX)


def _config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        layers=[0, 1],
        n_features=F,
        k=K,
        batch_tokens=512,
        total_tokens=512 * 60,
        ctx_len=CTX,
        buffer_tokens=4096,
        out_dir=str(tmp_path / "run"),
        verbose=False,
        evaluate=False,
        warmup_steps=5,
        lr=3e-3,
        checkpoint_every=0,
        log_every=5,
    )
    base.update(kw)
    return TrainConfig(**base)


def _metrics(config: TrainConfig) -> list[dict]:
    with open(f"{config.out_dir}/metrics.jsonl") as f:
        return [json.loads(line) for line in f]


# ---- data ------------------------------------------------------------------------------------------
def test_chunking_puts_bos_first_and_between_documents():
    rows = chunk_documents([[1, 2, 3], [4, 5], [0, 6, 7], [], [8]], bos=0, ctx_len=4)
    assert rows.tolist() == [[0, 1, 2, 3], [0, 0, 4, 5], [0, 0, 6, 7]]
    mask = token_mask(rows, [0])
    assert not mask[:, 0].any()
    assert not mask[rows == 0].any()
    assert mask[rows != 0].all()


def test_token_data_rows_and_split(default_model, texts, token_data):
    bos = token_data.bos
    assert (token_data.train[:, 0] == bos).all() and (token_data.val[:, 0] == bos).all()
    assert token_data.train.shape[1] == CTX
    again = load_token_data(default_model, texts, CTX)
    assert torch.equal(again.val, token_data.val) and torch.equal(again.train, token_data.train)
    train_rows = {tuple(r) for r in token_data.train.tolist()}
    assert not any(tuple(r) in train_rows for r in token_data.val.tolist())
    from_tensor = load_token_data(default_model, token_data.train, CTX)
    assert from_tensor.train.shape[1] == CTX and (from_tensor.train[:, 0] == bos).all()


def test_sample_indices_is_a_pure_function_of_position():
    whole = sample_indices(10, 0, 35, seed=3)
    parts = torch.cat([sample_indices(10, s, 5, seed=3) for s in range(0, 35, 5)])
    assert torch.equal(whole, parts)
    for epoch in range(3):
        assert sorted(whole[epoch * 10 : epoch * 10 + 10].tolist()) == list(range(10))
    assert not torch.equal(whole, sample_indices(10, 0, 35, seed=4))


def test_sample_indices_kept_permutations_give_the_drawn_ones_and_stay_unchanged():
    """Epoch permutations are kept between calls (a 2M-token shard took 50 ms a draw): the
    stream equals fresh draws, and a caller writing into its indices changes nothing later."""
    from training.data import _epoch_permutation

    fresh = torch.cat([torch.randperm(1000, generator=torch.Generator().manual_seed(7 * 1_000_003 + e))
                       for e in range(2)])  # fmt: skip
    first = sample_indices(1000, 900, 200, seed=7)
    assert torch.equal(first, fresh[900:1100])
    first[:] = -1  # a caller sorting or writing in place
    assert torch.equal(sample_indices(1000, 900, 200, seed=7), fresh[900:1100])
    assert _epoch_permutation.cache_info().hits > 0


# ---- losses ----------------------------------------------------------------------------------------
def test_gated_aux_gives_no_gradient_to_the_decoder():
    torch.manual_seed(0)
    d = GatedDictionary(16, 16, 32, "blocks.0.hook_mlp_out")
    with torch.no_grad():
        for p in (d.W_enc, d.W_dec, d.b_dec, d.b_enc):
            p.normal_()
    x = torch.randn(20, 16)
    terms = sparsity_loss(
        d,
        x,
        x,
        d(x),
        d.encode(x),
        LossScale.of(x),
        l1_coefficient=0.0,
        l0_coefficient=0.0,
        aux_k_coefficient=0.0,
    )
    terms["gate_aux_loss"].backward()
    assert d.W_dec.grad is None or torch.count_nonzero(d.W_dec.grad) == 0
    assert d.b_dec.grad is not None  # reaches b_dec only through the encoder input (x - b_dec)
    assert torch.count_nonzero(d.W_enc.grad) > 0


def test_auxk_gradient_reaches_only_dead_latents():
    torch.manual_seed(0)
    d = Dictionary(
        16,
        16,
        40,
        "blocks.0.ln2.hook_normalized",
        "blocks.0.hook_mlp_out",
        "topk",
        activation_params={"k": 4},
    )
    with torch.no_grad():
        for p in (d.W_enc, d.W_dec, d.b_enc):
            p.normal_()
    x, y = torch.randn(30, 16), torch.randn(30, 16)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[:12] = True
    loss = auxk_loss(d, d.pre_acts(x), y, d(x), dead, LossScale.of(y))
    loss.backward()
    assert torch.count_nonzero(d.W_enc.grad[:, ~dead]) == 0
    assert torch.count_nonzero(d.b_enc.grad[~dead]) == 0
    assert torch.count_nonzero(d.W_dec.grad[~dead]) == 0
    assert torch.count_nonzero(d.W_dec.grad[dead]) > 0
    assert torch.count_nonzero(d.W_enc.grad[:, dead]) > 0


def test_jumprelu_l0_straight_through_gradient():
    log_theta = torch.tensor([0.5, 1.0]).log().requires_grad_()
    pre = torch.tensor([[0.51, 0.2], [0.6, 1.01], [0.49, 3.0]])
    l0 = step_l0(pre, log_theta, 0.05)
    assert float(l0.detach()) == 4.0  # 0.51, 0.6, 1.01, 3.0 exceed their thresholds
    l0.backward()
    # d/dtheta = -(1/bw) * (#pre within bw/2 of theta); d/dlog theta = theta * that
    expected = torch.tensor([-(1 / 0.05) * 2 * 0.5, -(1 / 0.05) * 1 * 1.0])
    assert torch.allclose(log_theta.grad, expected)


# ---- training by kind and objective ------------------------------------------------------------------
# Every run below is a few hundred steps on the default model, one dictionary per layer, logging every
# step: metrics row 0 is the untrained dictionary (the loss is computed before the first update),
# the mean of the last TAIL rows is the trained one. Thresholds were measured with two seeds.
# Local runs take 150 steps (warm-up 5): every local assertion below held with seeds 0 and 1 at
# 150 steps (closest: SAE relu FVU 0.47 < 0.5, L0 15 < 2k; jumprelu weak/strong L0 ratio 0.54-0.55
# < 0.6). e2e runs keep 300 steps: at 150 the e2e_ds FVU drop (0.87 > 0.85 x start) is not there yet.
STEPS = 150
E2E_STEPS = 300
TAIL = 10


@dataclass
class Run:
    """A finished training run: its dictionaries, metrics rows and held-out measurements."""

    config: TrainConfig
    dicts: dict[int, Dictionary]
    rows: list[dict]
    val_fvu: dict[int, float]
    """FVU of each layer's dictionary (eval mode) on the validation rows."""
    val_l0: dict[int, Tensor]
    """Active features per validation token of each layer's dictionary (eval mode)."""

    def first(self, layer: int, key: str) -> float:
        """Metric of the untrained dictionary."""
        return self.rows[0][f"layer_{layer}"][key]

    def last(self, layer: int, key: str) -> float:
        """Metric averaged over the last TAIL steps."""
        return sum(r[f"layer_{layer}"][key] for r in self.rows[-TAIL:]) / TAIL

    def kl(self) -> tuple[float, float]:
        """KL(original || spliced) at the start and over the last TAIL steps (e2e objectives)."""
        return self.rows[0]["kl"], sum(r["kl"] for r in self.rows[-TAIL:]) / TAIL


@pytest.fixture(scope="module")
def trained(default_model, token_data, tmp_path_factory):
    """train(**config overrides) -> Run, each distinct configuration trained once per module."""
    cache: dict[str, Run] = {}
    val = token_data.val
    mask = token_mask(val, token_data.special_ids)

    def measured(cfg: TrainConfig, dicts: dict[int, Dictionary]) -> Run:
        hooks = sorted({h for d in dicts.values() for h in (d.in_hook, d.out_hook)})
        acts = collect_activations(default_model, val, hooks)
        val_fvu, val_l0 = {}, {}
        for layer, d in dicts.items():
            assert not d.training
            x, y = acts[d.in_hook][mask], acts[d.out_hook][mask]
            with torch.no_grad():
                val_l0[layer] = (d.encode(x) > 0).sum(-1).float()
                val_fvu[layer] = fvu(y, d(x))
        return Run(cfg, dicts, _metrics(cfg), val_fvu, val_l0)

    def config(kw: dict) -> TrainConfig:
        kw = {"log_every": 1, "warmup_steps": 10, **kw}
        return _config(tmp_path_factory.mktemp("train"), **kw)

    def train(**kw) -> Run:
        key = repr(sorted(kw.items()))
        if key not in cache:
            cfg = config(kw)
            cache[key] = measured(cfg, Trainer(cfg, default_model, token_data).train())
        return cache[key]

    def train_together(runs: list[dict]) -> None:
        """Train the runs not trained yet in one `train_many` (e2e runs share the original
        model's pass of each step; the result equals each trained alone, test_e2e_shared_pass)."""
        todo = {repr(sorted(kw.items())): kw for kw in runs}
        todo = {key: kw for key, kw in todo.items() if key not in cache}
        configs = [config(kw) for kw in todo.values()]
        results = train_many(configs, default_model, token_data)
        for key, cfg, dicts in zip(todo, configs, results, strict=True):
            cache[key] = measured(cfg, dicts)

    train.together = train_together
    return train


def _local(trained, kind: str, activation: str, **kw) -> Run:
    return trained(
        kind=kind,
        activation=activation,
        layers=[1],
        batch_tokens=256,
        total_tokens=256 * STEPS,
        warmup_steps=5,
        **kw,
    )


def _e2e_kw(kind: str, activation: str, objective: str, layers: list[int]) -> dict:
    # two sequences (126 predicted tokens) a step keep e2e affordable; lr 3e-3 kills features
    return dict(
        kind=kind,
        activation=activation,
        objective=objective,
        layers=layers,
        batch_tokens=2 * (CTX - 1),
        total_tokens=2 * (CTX - 1) * E2E_STEPS,
        lr=1e-3,
    )


def _e2e(trained, kind: str, activation: str, objective: str, layers: list[int]) -> Run:
    """The e2e run of these settings; the first call trains every run of this module's e2e
    tests together, on one original pass per step."""
    trained.together(
        [_e2e_kw(*case[:2], "e2e", case[2]) for case in E2E_CASES]
        + [_e2e_kw("skip_transcoder", "batchtopk", "e2e_ds", [1, 2])]
    )
    return trained(**_e2e_kw(kind, activation, objective, layers))


def _assert_l0_near_target(run: Run, layer: int) -> None:
    """topk: <= k per token and ~k on average; batchtopk: k on average (training: exactly k per
    token of the batch; inference: the learned threshold); penalised activations: between k/4
    and 2k (far below F) with coefficients chosen for an L0 near k."""
    act = run.config.activation
    train_l0, val_l0 = run.last(layer, "l0"), run.val_l0[layer]
    info = (act, layer, train_l0, float(val_l0.mean()), int(val_l0.max()))
    if act == "topk":
        assert val_l0.max() <= K and val_l0.mean() > 0.85 * K and train_l0 > 0.85 * K, info
    elif act == "batchtopk":
        assert abs(train_l0 - K) < 0.25 * K and 0.5 * K < val_l0.mean() < 1.5 * K, info
    else:
        assert K / 4 < train_l0 < 2 * K and K / 4 < val_l0.mean() < 2 * K, info


# (kind, activation, sparsity coefficient): every valid combination; coefficients give L0 ~ k.
LOCAL_CASES = [
    ("sae", "relu", {"l1_coefficient": 0.25}),
    ("sae", "gated", {"l1_coefficient": 0.4}),
    ("sae", "jumprelu", {"l0_coefficient": 1e-2}),
    ("sae", "topk", {}),
    ("sae", "batchtopk", {}),
    ("transcoder", "relu", {"l1_coefficient": 0.08}),
    ("transcoder", "jumprelu", {"l0_coefficient": 1e-3}),
    ("transcoder", "topk", {}),
    ("transcoder", "batchtopk", {}),
    ("skip_transcoder", "relu", {"l1_coefficient": 0.04}),
    ("skip_transcoder", "jumprelu", {"l0_coefficient": 3e-4}),
    ("skip_transcoder", "topk", {"dead_after_tokens": 2048}),  # AuxK active
    ("skip_transcoder", "batchtopk", {}),
]


@pytest.mark.parametrize(("kind", "activation", "extra"), LOCAL_CASES)
def test_local_training_reduces_fvu_and_keeps_l0(trained, kind, activation, extra):
    run = _local(trained, kind, activation, **extra)
    first, last = run.first(1, "fvu"), run.last(1, "fvu")
    # untrained: 0.71-0.82 (SAE, W_enc = W_dec^T) or 1.0 (transcoders, W_dec = 0)
    assert last < 0.7 * first and last < 0.5, (first, last)
    assert run.val_fvu[1] < 0.6, run.val_fvu[1]
    _assert_l0_near_target(run, 1)
    if activation in ("relu", "gated"):
        assert run.last(1, "l0") < run.first(1, "l0") / 3  # ~F/2 at the start
    if activation == "jumprelu":
        assert abs(run.first(1, "l0") - K) < 1  # thresholds start at the k/F quantile
    if kind == "sae":
        assert torch.allclose(run.dicts[1].W_dec.norm(dim=-1), torch.ones(F), atol=1e-5)


@pytest.mark.parametrize(
    ("activation", "name", "weak", "strong"),
    [("relu", "l1_coefficient", 0.25, 0.6), ("jumprelu", "l0_coefficient", 1e-2, 3e-2)],
)
def test_stronger_sparsity_penalty_trades_fvu_for_l0(trained, activation, name, weak, strong):
    low = _local(trained, "sae", activation, **{name: weak})  # shared with the test above
    high = _local(trained, "sae", activation, **{name: strong})
    assert high.last(1, "l0") < 0.6 * low.last(1, "l0"), (low.last(1, "l0"), high.last(1, "l0"))
    assert high.last(1, "fvu") > low.last(1, "fvu")


E2E_CASES = [
    ("sae", "topk", [1]),
    ("transcoder", "topk", [1]),
    ("skip_transcoder", "batchtopk", [1, 2]),
]


@pytest.mark.parametrize(("kind", "activation", "layers"), E2E_CASES)
def test_e2e_training_reduces_kl_and_keeps_l0(trained, kind, activation, layers):
    run = _e2e(trained, kind, activation, "e2e", layers)
    first, last = run.kl()
    assert last < 0.6 * first, (first, last)
    for layer in layers:
        _assert_l0_near_target(run, layer)
    # No FVU assertion: KL alone does not ask for reconstruction, and the FVU of plain e2e
    # dictionaries stays near (SAE, transcoder) or rises far above (skip_transcoder) its start.


def test_e2e_ds_reduces_fvu_kl_and_downstream_error(trained):
    run = _e2e(trained, "skip_transcoder", "batchtopk", "e2e_ds", [1, 2])
    plain = _e2e(trained, "skip_transcoder", "batchtopk", "e2e", [1, 2])  # shared with above
    hooks = [k for k in run.rows[0] if k.startswith("ds_")]
    assert len(hooks) == 3  # resid_post of blocks 1..3
    ds_first = sum(run.rows[0][h] for h in hooks)
    ds_last = sum(r[h] for r in run.rows[-TAIL:] for h in hooks) / TAIL
    assert ds_last < 0.7 * ds_first, (ds_first, ds_last)
    first, last = run.kl()
    assert last < 0.6 * first, (first, last)
    for layer in (1, 2):
        fvu_first, fvu_last = run.first(layer, "fvu"), run.last(layer, "fvu")
        assert fvu_last < 0.85 * fvu_first and run.val_fvu[layer] < 0.9, (fvu_first, fvu_last)
        # the downstream terms are what buys reconstruction over plain e2e
        assert fvu_last < 0.9 * plain.last(layer, "fvu"), (fvu_last, plain.last(layer, "fvu"))
        _assert_l0_near_target(run, layer)


# ---- resume and failure ----------------------------------------------------------------------------
class _Killed(Exception):
    pass


# local: 504 tokens a step, so the 4096-token activation buffer refills within the 24 steps and
# the resumed run must rebuild its contents; e2e: two sequences a step (no buffer; a step runs
# the model forward and backward, so its cost grows with the rows).
@pytest.mark.parametrize(
    ("objective", "activation", "batch_tokens"),
    [("local", "batchtopk", 504), ("e2e", "jumprelu", 2 * (CTX - 1))],
)
def test_killed_and_resumed_run_equals_uninterrupted(
    default_model, token_data, tmp_path, objective, activation, batch_tokens
):
    kw = dict(
        kind="transcoder",
        activation=activation,
        objective=objective,
        layers=[1],
        total_tokens=batch_tokens * 24,
        batch_tokens=batch_tokens,
        checkpoint_every=10,
    )
    full = Trainer(_config(tmp_path / "a", **kw), default_model, token_data).train()

    killed = Trainer(_config(tmp_path / "b", **kw), default_model, token_data)
    step_fn = killed._train_step

    def dying(step):
        if step == 17:
            raise _Killed
        return step_fn(step)

    killed._train_step = dying
    with pytest.raises(_Killed):
        killed.train()
    state = torch.load(tmp_path / "b" / "run" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 10 and state["train_seconds"] > 0
    resumed = Trainer(_config(tmp_path / "b", **kw), default_model, token_data)
    out = resumed.train()
    # steps 1-10 of the killed process are counted, steps 11-17 it lost are not
    assert resumed.train_seconds > state["train_seconds"]
    again = Trainer(_config(tmp_path / "b", **kw), default_model, token_data)
    again.train()  # finished: nothing trained, the time of the run kept
    assert again.train_seconds == resumed.train_seconds
    for name, tensor in full[1].state_dict().items():
        assert torch.equal(tensor, out[1].state_dict()[name]), name
    assert _metrics(resumed.config) == _metrics(_config(tmp_path / "a", **kw))


def test_a_run_killed_after_its_last_step_writes_the_same_card(default_model, token_data, tmp_path):
    """Killed after the final checkpoint but before its outputs: the rerun writes the card the
    uninterrupted run wrote (the last step's training figures included), training nothing."""
    import json

    kw = dict(kind="transcoder", activation="topk", layers=[1], total_tokens=504 * 6,
              batch_tokens=504, checkpoint_every=1, evaluate=False)  # fmt: skip
    cfg = _config(tmp_path / "a", **kw)
    Trainer(cfg, default_model, token_data).train()
    folder = Path(cfg.out_dir)
    card = json.loads((folder / "card.json").read_text())
    assert card["layers"][0]["train_fvu"] is not None
    for name in ("card.json", "layer_1.json", "layer_1.safetensors"):
        (folder / name).unlink()
    again = Trainer(_config(tmp_path / "a", **kw), default_model, token_data)
    again.train()
    assert json.loads((folder / "card.json").read_text()) == card


def test_nan_loss_stops_and_keeps_last_checkpoint(default_model, token_data, tmp_path):
    cfg = _config(
        tmp_path,
        kind="sae",
        activation="topk",
        layers=[0],
        checkpoint_every=5,
        total_tokens=512 * 20,
    )
    trainer = Trainer(cfg, default_model, token_data)
    local = trainer._local_loss

    def poisoned(step):
        loss, metrics, n = local(step)
        return (loss * float("nan") if step == 7 else loss), metrics, n

    trainer._local_loss = poisoned
    ckpt = tmp_path / "run" / "checkpoint.pt"
    with pytest.raises(TrainingDivergedError, match="checkpoint"):
        trainer.train()
    state = torch.load(ckpt, weights_only=False)
    assert state["step"] == 5
    assert all(torch.isfinite(t).all() for t in state["dictionaries"][0].values())
    resumed = Trainer(cfg, default_model, token_data)
    resumed.train()
    assert resumed.step == cfg.total_steps


# ---- configuration and CLI ----------------------------------------------------------------------------
def test_config_file_errors(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"kind": "sae", "n_featurs": 3}))
    with pytest.raises(ConfigError, match="n_featurs"):
        TrainConfig.from_file(path)
    path.write_text(json.dumps({"activation": "softmax"}))
    with pytest.raises(ConfigError, match="activation"):
        TrainConfig.from_file(path)
    assert TrainConfig(n_features=2**14).learning_rate == pytest.approx(2e-4)


def test_cli_with_config_file(default_model, texts, tmp_path, capsys):
    from sparse_circuits_cli import main

    data_dir = tmp_path / "text"
    data_dir.mkdir()
    for i, text in enumerate(texts):
        (data_dir / f"doc{i}.txt").write_text(text)
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(
        f"model: default\ndata: {data_dir}\nkind: skip_transcoder\nactivation: topk\n"
        f"layers: [0]\nn_features: 64\nk: 4\nctx_len: {CTX}\nbatch_tokens: 256\n"
        "total_tokens: 100000\nbuffer_tokens: 2048\nval_tokens: 6400\nwarmup_steps: 2\n"
    )
    out = tmp_path / "out"
    rc = main(
        [
            "train",
            "--config",
            str(cfg_path),
            "--tokens",
            "5120",
            "--layers",
            "0,1",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    for layer in (0, 1):
        d = load_native(out / f"layer_{layer}")
        assert d.kind == "skip_transcoder" and d.n_features == 64
        assert d.metadata["training"]["total_tokens"] == 5120
        assert d.metadata["training"]["n_features"] == 64  # from the file
        assert d.metadata["metrics"]["training_tokens"] == 5120
        assert 0 < d.metadata["metrics"]["fvu"] < 1
    report = json.loads((out / "report.json").read_text())
    assert any(r["name"] == "all" for r in report["rows"])
    card = json.loads((out / "card.json").read_text())
    assert [row["layer"] for row in card["layers"]] == [0, 1]
    # one final line with the card's figures and its path
    last = capsys.readouterr().out.strip().splitlines()[-1]
    fvu = sum(row["fvu"] for row in card["layers"]) / 2
    n = card["eval_predictions"]
    assert n == report["n_predictions"]
    lo, hi = card["fvu_mean_interval"]  # the mean over both layers, resampled jointly
    assert lo < fvu < hi
    assert last.startswith(
        f"final ({n:,} held-out predictions): FVU {fvu:.4f} [{lo:.4f}, {hi:.4f}]"
    )
    lo, hi = card["all"]["ce_increase_interval"]  # over the evaluated sequences
    assert f"CE increase {card['all']['ce_increase']:+.4f} [{lo:+.4f}, {hi:+.4f}] nats" in last
    assert last.endswith(f"card {out / 'card.json'}")


def test_end_evaluation_is_sized_to_the_run(default_model):
    from training.data import TokenData
    from training.trainer import Trainer

    rows = torch.ones(600, CTX, dtype=torch.long)
    data = TokenData(train=rows, val=rows.clone(), bos=0, special_ids=[0])
    # an eighth of the training tokens, at least 4 sequences, at most val_tokens (32768)
    for total, expected in [(5120, 10), (1024, 4), (10**7, 512)]:
        config = TrainConfig(
            model="default", layers=[0], n_features=16, activation="topk", k=4, ctx_len=CTX,
            batch_tokens=256, total_tokens=total, buffer_tokens=2048,
        )  # fmt: skip
        assert len(Trainer(config, default_model, data).validation_tokens()) == expected
