"""splice: exact with the error term, equal to a hand computation without it, hooks cleaned up."""

from __future__ import annotations

import pytest
import torch

from replacement.dictionary import Dictionary
from replacement.splice import splice

TOKENS = torch.randint(1, 300, (2, 12), generator=torch.Generator().manual_seed(0))


def _dict(
    in_hook, out_hook, activation="relu", skip=False, seed=0, d=32, F=64, dtype=torch.float32
):
    torch.manual_seed(seed)
    params = {"k": 6} if activation == "topk" else {}
    dic = Dictionary(d, d, F, in_hook, out_hook, activation, skip=skip, activation_params=params)
    with torch.no_grad():
        for p in dic.parameters():
            p.normal_(0, 0.2)
    return dic.to(dtype)


def _mixed():
    return [
        _dict("blocks.0.hook_resid_pre", "blocks.0.hook_resid_pre", seed=1),
        _dict("blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out", "topk", skip=True, seed=2),
        _dict("blocks.1.hook_mlp_out", "blocks.1.hook_mlp_out", seed=3),
        _dict("blocks.1.ln2.hook_normalized", "blocks.1.hook_resid_post", seed=4),
    ]


def test_error_term_is_exact(tiny_model):
    base = tiny_model(TOKENS)
    dicts = _mixed()
    with splice(tiny_model, dicts, error_term=True) as state:
        out = tiny_model(TOKENS)
    torch.testing.assert_close(out, base, atol=1e-5, rtol=0)
    with splice(tiny_model, dicts) as state:
        changed = tiny_model(TOKENS)
    assert (changed - base).abs().max() > 1e-3
    assert state.acts == {}  # record=False keeps nothing


@pytest.mark.parametrize("keep_bos", [True, False])
def test_without_error_term_equals_hand_computation(tiny_model, keep_bos):
    d = _dict("blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out", "topk", skip=True)
    _, cache = tiny_model.run_with_cache(TOKENS)
    x = cache["blocks.0.ln2.hook_normalized"]
    pre = x @ d.W_enc + d.b_enc
    top = pre.topk(6, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    y_hat = (acts @ d.W_dec + d.b_dec + x @ d.W_skip).detach()
    if keep_bos:  # position 0 keeps the model's own MLP output
        y_hat[:, 0] = cache["blocks.0.hook_mlp_out"][:, 0]
    expected = tiny_model.run_with_hooks(
        TOKENS, fwd_hooks=[("blocks.0.hook_mlp_out", lambda act, hook: y_hat)]
    )
    with splice(tiny_model, [d], record=True, keep_bos=keep_bos) as state:
        out = tiny_model(TOKENS)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state.acts["blocks.0.hook_mlp_out"], acts, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        state.targets["blocks.0.hook_mlp_out"], cache["blocks.0.hook_mlp_out"]
    )


def test_sparse_option_equals_dense(tiny_gpt2):
    dicts = _mixed()
    with splice(tiny_gpt2, dicts):
        dense = tiny_gpt2(TOKENS)
    with splice(tiny_gpt2, dicts, sparse=True, record=True) as state:
        sparse = tiny_gpt2(TOKENS)
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)
    assert state.acts["blocks.0.hook_mlp_out"].n_tokens == TOKENS.numel()


def test_hooks_removed_after_exit_and_error(tiny_model):
    base = tiny_model(TOKENS)
    with splice(tiny_model, _mixed()):
        tiny_model(TOKENS)
    torch.testing.assert_close(tiny_model(TOKENS), base)
    with pytest.raises(RuntimeError, match="boom"):
        with splice(tiny_model, _mixed()):
            tiny_model(TOKENS)
            raise RuntimeError("boom")
    torch.testing.assert_close(tiny_model(TOKENS), base)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dictionary_dtype_is_converted(tiny_gpt2, dtype):
    d32 = _dict("blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out", skip=True)
    d_other = _dict("blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out", skip=True, dtype=dtype)
    with splice(tiny_gpt2, [d32]):
        reference = tiny_gpt2(TOKENS)
    with splice(tiny_gpt2, [d_other], record=True) as state:
        out = tiny_gpt2(TOKENS)
    assert (
        out.dtype == torch.float32 and state.recons["blocks.0.hook_mlp_out"].dtype == torch.float32
    )
    tol = 1e-4 if dtype == torch.float64 else 0.2
    torch.testing.assert_close(out, reference, atol=tol, rtol=tol)
    base = tiny_gpt2(TOKENS)
    with splice(tiny_gpt2, [d_other], error_term=True):
        torch.testing.assert_close(tiny_gpt2(TOKENS), base, atol=1e-5, rtol=0)


def test_record_fills_state(tiny_llama):
    dicts = _mixed()
    with splice(tiny_llama, dicts, record=True) as state:
        tiny_llama(TOKENS)
    assert set(state.acts) == {d.out_hook for d in dicts}
    for d in dicts:
        assert state.acts[d.out_hook].shape == (*TOKENS.shape, 64)
        recon = state.recons[d.out_hook]
        torch.testing.assert_close(
            recon[:, 1:], d(state.inputs[d.out_hook])[:, 1:], atol=1e-5, rtol=1e-5
        )
        assert torch.equal(recon[:, 0], state.targets[d.out_hook][:, 0])  # BOS kept
