"""spliced_loss: perfect and zero dictionaries, CE against a manual computation, position 0 left out."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from replacement.dictionary import Dictionary
from replacement.eval_tokens import prepare_tokens
from replacement.loss import spliced_loss

TOKENS = torch.randint(1, 300, (3, 16), generator=torch.Generator().manual_seed(2))


def _identity(hook: str, d: int = 32, shift: float = 20.0) -> Dictionary:
    """y_hat == y: relu((x - b_dec) I) I + b_dec with b_dec = -shift (inputs stay above -shift)."""
    sae = Dictionary(d, d, d, hook)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_dec.fill_(-shift)
    return sae


def _zero(layer: int) -> Dictionary:
    return Dictionary(
        32, 32, 8, f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
    )


def _manual_ce(logits: torch.Tensor, tokens: torch.Tensor) -> float:
    """Mean CE of predictions made at positions 1..T-2 (position 0 left out)."""
    logp = F.log_softmax(logits[:, 1:-1].double(), -1)
    return float(-logp.gather(-1, tokens[:, 2:, None]).mean())


def test_identity_dictionary_is_perfect(tiny_model):
    report = spliced_loss(tiny_model, [_identity("blocks.1.hook_resid_pre")], TOKENS, verbose=False)
    row = report.all
    assert abs(row.ce_increase) < 1e-5 and abs(row.kl) < 1e-6
    assert abs(row.fvu) < 1e-6 and abs(row.explained_variance - 1) < 1e-6
    assert abs(row.recovered_zero - 1) < 1e-4 and abs(row.recovered_mean - 1) < 1e-4
    assert abs(row.shrinkage - 1) < 1e-5


def _replaced(value: torch.Tensor, keep_bos: bool):
    """A hook writing `value` (broadcast to the activation), position 0 kept if asked."""

    def hook(act: torch.Tensor, hook) -> torch.Tensor:
        out = value.expand_as(act).clone()
        if keep_bos:
            out[:, 0] = act[:, 0]
        return out

    return hook


@pytest.mark.parametrize("keep_bos", [True, False])
def test_zero_dictionary_recovers_nothing_and_ce_is_manual(tiny_gpt2, keep_bos):
    report = spliced_loss(
        tiny_gpt2, [_zero(0)], TOKENS, batch_size=2, verbose=False, keep_bos=keep_bos
    )
    row = report.all
    assert row.recovered_zero == 0.0 and row.l0 == 0.0 and row.dead_share == 1.0
    assert report.n_predictions == 3 * 14 and report.keep_bos == keep_bos
    assert abs(report.ce_original - _manual_ce(tiny_gpt2(TOKENS), TOKENS)) < 1e-5
    zeroed = tiny_gpt2.run_with_hooks(
        TOKENS, fwd_hooks=[("blocks.0.hook_mlp_out", _replaced(torch.zeros(32), keep_bos))]
    )
    assert abs(row.ce_spliced - _manual_ce(zeroed, TOKENS)) < 1e-5
    # mean ablation: the mean of mlp_out over positions >= 1
    _, cache = tiny_gpt2.run_with_cache(TOKENS)
    mean = cache["blocks.0.hook_mlp_out"][:, 1:].reshape(-1, 32).mean(0)
    meaned = tiny_gpt2.run_with_hooks(
        TOKENS, fwd_hooks=[("blocks.0.hook_mlp_out", _replaced(mean, keep_bos))]
    )
    assert abs(row.ce_mean_ablated - _manual_ce(meaned, TOKENS)) < 1e-5
    logp_o = F.log_softmax(tiny_gpt2(TOKENS)[:, 1:-1].double(), -1)
    logp_s = F.log_softmax(zeroed[:, 1:-1].double(), -1)
    kl = float((logp_o.exp() * (logp_o - logp_s)).sum(-1).mean())
    assert abs(row.kl - kl) < 1e-5


def test_position_zero_is_left_out(tiny_gpt2):
    """Changing only what position 0 predicts (token 1 of a 3-token row) changes no figure."""
    a = torch.tensor([[0, 5, 7]] * 2)
    b = a.clone()
    b[:, 1] = 9  # also changes the prediction at position 1 -> keep the CE difference on it
    ra = spliced_loss(tiny_gpt2, [_zero(0)], a, verbose=False)
    assert ra.n_predictions == 2
    logits = tiny_gpt2(a)
    ce_pos1 = float(-F.log_softmax(logits[:, 1], -1).gather(-1, a[:, 2:3]).mean())
    ce_with_pos0 = float(-F.log_softmax(logits[:, :2], -1).gather(-1, a[:, 1:3, None]).mean())
    assert abs(ra.ce_original - ce_pos1) < 1e-5 and abs(ra.ce_original - ce_with_pos0) > 1e-3


def test_text_inputs_per_layer_rows_and_json(tiny_llama, capsys):
    text = "def f(x):\n    return x + 1\n" * 6
    tokens, lengths = prepare_tokens(tiny_llama, [text, "a b"], ctx_len=20)
    assert tokens.shape[1] <= 20 and (tokens[:, 0] == tiny_llama.tokenizer.bos_token_id).all()
    dicts = [_zero(0), _identity("blocks.1.hook_resid_post")]
    report = spliced_loss(tiny_llama, dicts, [text, "a b"], ctx_len=20, batch_size=3, verbose=False)
    assert capsys.readouterr().err == ""
    assert report.n_predictions == int((lengths - 2).clamp_min(0).sum())
    assert [r.name for r in report.rows] == [
        "blocks.0.hook_mlp_out",
        "blocks.1.hook_resid_post",
        "all",
    ]
    assert abs(report.row("blocks.1.hook_resid_post").ce_increase) < 1e-5
    assert abs(report.all.ce_spliced - report.row("blocks.0.hook_mlp_out").ce_spliced) < 1e-5
    data = json.loads(json.dumps(report.to_dict()))
    assert data["rows"][2]["fvu"] is None
    assert "blocks.0.hook_mlp_out" in str(report) and "recmean" in str(report)
    long = spliced_loss(tiny_llama, dicts, text, ctx_len=20, verbose=False, per_layer=False)
    assert long.rows[0].ce_spliced is None and long.all.ce_spliced is not None


def test_no_hook_left_behind(tiny_gpt2):
    """The mean pass stops forward passes early by raising inside a hook; hooks must be gone."""
    base = tiny_gpt2(TOKENS)
    spliced_loss(tiny_gpt2, [_zero(0), _zero(1)], TOKENS, verbose=False)
    torch.testing.assert_close(tiny_gpt2(TOKENS), base, rtol=0, atol=0)


class _Measured(Exception):
    """Raised by the spy once it has seen what evaluate passes on (skips the computation)."""


def test_evaluate_defaults_to_the_dictionaries_training_context(monkeypatch, capsys):
    """The zoo was trained (and is reported) at 128 tokens on a 256-context model: `evaluate`
    without --ctx-len measures at 128, not at n_ctx (which gave a CE increase of 0.69 against
    the 0.24 that `info` and `compare` report)."""
    import replacement.loss as loss_module
    import sparse_circuits_cli

    seen = {}

    def spy(model, dictionaries, tokens, **kw):
        seen.update(kw, width=tokens.shape[1], n_ctx=int(model.cfg.n_ctx))
        raise _Measured

    monkeypatch.setattr(loss_module, "spliced_loss", spy)
    monkeypatch.setenv("SPARSE_CIRCUITS_TRACEBACK", "1")  # let the spy's exception through
    argv = ["evaluate", "--dictionaries", "skip_transcoder", "--tokens", "300", "--quiet"]
    with pytest.raises(_Measured):
        sparse_circuits_cli.main(argv)
    assert seen["n_ctx"] == 256
    assert seen["ctx_len"] == 128 and seen["width"] == 128
    assert "ctx_len 128: the dictionaries' training context" in capsys.readouterr().out
    with pytest.raises(_Measured):  # a given --ctx-len wins
        sparse_circuits_cli.main([*argv, "--ctx-len", "64"])
    assert seen["ctx_len"] == 64 and seen["width"] == 64
