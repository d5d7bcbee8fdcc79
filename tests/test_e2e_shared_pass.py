"""e2e training's KL with its own backward, and e2e runs trained together on one original pass."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.tiny_e2e import CTX, e2e_config, json_package_rows
from training.config import ConfigError, TrainConfig
from training.data import TokenData
from training.kl_loss import Reference, kl_to_reference
from training.together import train_many
from training.trainer import Trainer


def _autograd_kl(logits, reference_logits, weights):
    logp_ref = torch.log_softmax(reference_logits, -1)
    logp = torch.log_softmax(logits, -1)
    return (weights * (logp_ref.exp() * (logp_ref - logp)).sum(-1)).sum()


def test_kl_and_its_gradient_equal_autograds_through_log_softmax():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(50, 300, generator=gen) * 4
    ref[3, 7] = 80.0  # a near one-hot reference and a large logit on the spliced side
    z = (torch.randn(50, 300, generator=gen) * 4).requires_grad_()
    with torch.no_grad():
        z[5, 2] = 90.0
    w = torch.rand(50, generator=gen)
    want = _autograd_kl(z.double(), ref.double(), w.double())
    (want_grad,) = torch.autograd.grad(want, z)
    got = kl_to_reference(z, Reference.of(ref), w)
    (got_grad,) = torch.autograd.grad(got, z)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.allclose(got_grad, want_grad.float(), atol=1e-7, rtol=1e-4)


def test_kl_has_its_known_values():
    # equal distributions (logits differing by a constant per token): 0, and no gradient
    ref = torch.randn(4, 10)
    z = (ref + torch.arange(4.0)[:, None]).requires_grad_()
    kl = kl_to_reference(z, Reference.of(ref), torch.ones(4))
    kl.backward()
    assert abs(kl.item()) < 1e-5 and z.grad.abs().max() < 1e-6
    # two outcomes: KL((1/2, 1/2) || (p, 1 - p)) = -log 2 - (log p + log(1 - p)) / 2
    p = 0.2
    z = torch.tensor([[math.log(p), math.log(1 - p)]], requires_grad=True)
    kl = kl_to_reference(z, Reference.of(torch.zeros(1, 2)), torch.ones(1))
    assert kl.item() == pytest.approx(-math.log(2) - (math.log(p) + math.log(1 - p)) / 2, rel=1e-6)
    # d KL / d z = softmax(z) - reference
    kl.backward()
    assert torch.allclose(z.grad, torch.tensor([[p - 0.5, 0.5 - p]]), atol=1e-6)
    with pytest.raises(ValueError, match="same"):
        kl_to_reference(torch.zeros(2, 3), Reference.of(torch.zeros(2, 4)), torch.ones(2))


@pytest.fixture(scope="module")
def data(default_model) -> TokenData:
    return json_package_rows(default_model)


def _config(folder, **kw) -> TrainConfig:
    return e2e_config(folder, **kw)


def test_e2e_runs_trained_together_equal_each_trained_alone(default_model, data, tmp_path):
    runs = {
        "topk": {},
        "ds_relu": {"objective": "e2e_ds", "activation": "relu", "l1_coefficient": 0.1},
        "longer": {"k": 8, "total_tokens": 4 * (CTX - 1) * 12},
        "resumed": {"k": 2},
    }
    # the last run was stopped after 3 steps: it joins the others at its own step
    Trainer(
        _config(tmp_path / "together" / "resumed", stop_after_steps=3, checkpoint_every=3, k=2),
        default_model,
        data,
    ).train()
    together = train_many(
        [_config(tmp_path / "together" / n, **kw) for n, kw in runs.items()], default_model, data
    )
    last = {}
    for name, kw in runs.items():
        alone = Trainer(_config(tmp_path / "alone" / name, **kw), default_model, data).train()[1]
        for key, t in alone.state_dict().items():
            assert torch.equal(t, together[list(runs).index(name)][1].state_dict()[key]), (
                name,
                key,
            )
        lines = (tmp_path / "together" / name / "metrics.jsonl").read_text().splitlines()
        last[name] = json.loads(lines[-1])
    assert last["longer"]["step"] == 12 and last["resumed"]["step"] == 8


def test_runs_trained_together_share_one_original_pass_per_step(default_model, data, tmp_path):
    from training import original_pass

    computed = []
    real = original_pass.OriginalPasses._compute

    def counting(self, tokens, mask):
        computed.append(tokens.clone())
        return real(self, tokens, mask)

    configs = [_config(tmp_path / f"r{i}", k=2 + i, seed=5) for i in range(3)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(original_pass.OriginalPasses, "_compute", counting)
        train_many(configs, default_model, data)
    assert len(computed) == 8  # one per step, not one per run and step
    # each sharer is charged a third of the pass's time; only the first spent it
    passes = original_pass.OriginalPasses(default_model)
    passes.sharers = 3
    tokens = data.train[:2]
    mask = torch.ones_like(tokens, dtype=torch.bool)
    first, spent, charged = passes.at(0, tokens, mask)
    assert spent > 0 and charged == pytest.approx(spent / 3)
    again = passes.at(0, tokens, mask)
    assert again[0] is first and again[1:] == (0.0, charged)
    # other tokens at the same step, or another step: computed anew
    assert passes.at(0, data.train[2:4], mask)[0] is not first
    assert passes.at(1, tokens, mask)[1] > 0


def test_train_many_refuses_runs_that_cannot_share_their_batches(tmp_path):
    with pytest.raises(ConfigError, match="one seed"):
        train_many([_config(tmp_path / "a"), _config(tmp_path / "b", seed=1)])
    with pytest.raises(ConfigError, match="not both"):
        train_many([_config(tmp_path / "a"), _config(tmp_path / "b", objective="local")])
    assert train_many([]) == []  # nothing to train (every run of a batch finished): no error


def test_the_train_commands_sweep_trains_e2e_runs_together(tmp_path, capsys, monkeypatch):
    from replacement.formats.native import load_native
    from sparse_circuits_cli import main
    from training.default_model.corpus import stdlib_dir

    monkeypatch.setenv("SPARSE_CIRCUITS_CACHE", str(tmp_path / "token_cache"))
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted((stdlib_dir() / "json").glob("*.py")):
        (src / p.name).write_text(p.read_text())
    (tmp_path / "sweep.yaml").write_text(
        f"- {{k: 4, out_dir: {tmp_path / 'a'}}}\n"
        f"- {{k: 8, objective: e2e_ds, out_dir: {tmp_path / 'b'}}}\n"
    )
    argv = ["train", "--objective", "e2e", "--data", str(src), "--layers", "1"]
    argv += ["--n-features", "32", "--batch-tokens", "124", "--tokens", "496", "--ctx-len", "32"]
    argv += ["--sweep", str(tmp_path / "sweep.yaml"), "--quiet"]
    assert main(argv) == 0
    assert load_native(tmp_path / "a" / "layer_1").activation.k == 4
    assert load_native(tmp_path / "b" / "layer_1").activation.k == 8
    assert "trained 2 runs together, one original-model pass per step" in capsys.readouterr().out


def test_ctrl_c_stops_runs_trained_together_at_one_step_and_they_resume_exactly(
    default_model, data, tmp_path, monkeypatch
):
    import os
    import signal

    from training.interrupts import TrainingInterrupted

    def configs(root):
        return [_config(root / "a"), _config(root / "b", k=2)]

    uninterrupted = train_many(configs(tmp_path / "whole"), default_model, data)
    real_step = Trainer._train_step

    def interrupt_at_3(self, step):
        if step == 3 and self.config.k == 4:
            os.kill(os.getpid(), signal.SIGINT)  # delivered now, handled between steps
        return real_step(self, step)

    monkeypatch.setattr(Trainer, "_train_step", interrupt_at_3)
    with pytest.raises(TrainingInterrupted, match="interrupted after step 4 of 8"):
        train_many(configs(tmp_path / "cut"), default_model, data)
    monkeypatch.setattr(Trainer, "_train_step", real_step)
    for name in ("a", "b"):  # both stopped after the same whole step
        state = torch.load(tmp_path / "cut" / name / "checkpoint.pt", weights_only=False)
        assert state["step"] == 4
    resumed = train_many(configs(tmp_path / "cut"), default_model, data)
    for whole, again in zip(uninterrupted, resumed, strict=True):
        for key, t in whole[1].state_dict().items():
            assert torch.equal(t, again[1].state_dict()[key]), key
