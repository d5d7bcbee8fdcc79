"""Dictionary activations: the sparse path equals the dense one; JumpReLU STE; BatchTopK count."""

from __future__ import annotations

import pytest
import torch

from replacement.dictionary import Dictionary, GatedDictionary

ACTIVATIONS = ["relu", "topk", "batchtopk", "jumprelu", "gated"]


def _random(activation: str, d_in=16, d_out=16, n=48, seed=0, **kw) -> Dictionary:
    torch.manual_seed(seed)
    params = {"k": 5} if activation in ("topk", "batchtopk") else {}
    if activation == "gated":
        d = GatedDictionary(d_in, d_out, n, "a", "a" if d_in == d_out else "b", **kw)
    else:
        d = Dictionary(d_in, d_out, n, "a", "b", activation, activation_params=params, **kw)
    with torch.no_grad():
        for p in d.parameters():
            p.normal_(0, 0.3)
        d.b_enc.fill_(-0.01)  # so that a zero input row has no active feature
        if activation == "jumprelu":
            d.activation.log_threshold.copy_(torch.rand(n).mul(0.3).add(0.01).log())
        if activation == "batchtopk":
            d.activation.threshold.fill_(0.2)
    return d.eval()


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("chunk_size", [7, 64])
def test_sparse_path_equals_dense(activation, chunk_size):
    d = _random(activation)
    x = torch.randn(37, 16) * 2
    # empty rows (pre-activations = b_enc < 0), also at a chunk border and at the end
    x[[0, 11, 36]] = d.b_dec.detach() if d.apply_b_dec_to_input else 0.0
    dense = d.encode(x)
    assert (dense[[0, 11, 36]] == 0).all() and (dense != 0).any()
    sp = d.encode_sparse(x, chunk_size=chunk_size)
    assert sp.n_tokens == 37
    # same support exactly; values equal up to matmul blocking of a different shape
    assert torch.equal(sp.to_dense() != 0, dense != 0)
    torch.testing.assert_close(sp.to_dense(), dense, rtol=1e-5, atol=1e-6)
    assert (sp.token_idx[1:] >= sp.token_idx[:-1]).all()
    y_sparse, sp2 = d.forward_sparse(x, chunk_size=chunk_size)
    torch.testing.assert_close(y_sparse, d(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sp2.l0(), (dense != 0).sum(-1).float())


def test_sparse_path_with_skip_and_no_tokens():
    d = Dictionary(8, 6, 20, "a", "b", "topk", skip=True, activation_params={"k": 3})
    with torch.no_grad():
        for p in d.parameters():
            p.normal_()
    x = torch.randn(10, 8)
    y, _ = d.forward_sparse(x, chunk_size=3)
    torch.testing.assert_close(y, d(x), rtol=1e-5, atol=1e-5)
    empty = d.encode_sparse(torch.zeros(0, 8))
    assert empty.n_tokens == 0 and empty.values.numel() == 0


def test_jumprelu_ste_gradient_matches_formula():
    d = _random("jumprelu", n=12)
    theta = d.activation.threshold.detach()
    pre = d.pre_acts(torch.randn(200, 16)).detach()
    # put many pre-activations inside the rectangle kernel around theta
    pre[:50] = theta + (torch.rand(50, 12) - 0.5) * 0.06
    pre.requires_grad_(True)
    weights = torch.randn(200, 12)
    (d.activation(pre) * weights).sum().backward()
    bw = d.activation.bandwidth
    near = ((pre.detach() - theta).abs() < bw / 2).float()
    expected = (-(theta / bw) * near * weights * theta).sum(0)
    assert near.sum() > 20
    torch.testing.assert_close(d.activation.log_threshold.grad, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pre.grad, weights * (pre.detach() > theta))


def test_batchtopk_keeps_k_times_batch_in_training():
    d = _random("batchtopk", n=40).train()
    with torch.no_grad():
        d.b_enc.fill_(5.0)  # every pre-activation positive: exactly k*B must survive
    x = torch.randn(9, 16)
    acts = d.encode(x)
    assert int((acts != 0).sum()) == 5 * 9
    # per-token counts vary (the rule is global over the batch)
    kept = acts[acts != 0]
    assert kept.min() >= d.pre_acts(x).flatten().topk(45).values.min() - 1e-6
    with pytest.raises(RuntimeError, match="eval mode"):
        d.encode_sparse(x)


def test_two_names_of_one_tensor_make_an_sae_and_splice_like_one(tiny_gpt2):
    """A dictionary whose input and output hooks name the same tensor on every architecture is
    an SAE (it subtracts b_dec, splices where it reads); one whose names coincide only on some
    architectures stays a transcoder."""
    from replacement.splice import splice

    d = tiny_gpt2.cfg.d_model
    alias = Dictionary(d, d, 16, "blocks.0.hook_resid_post", "blocks.0.hook_out", "relu")
    assert alias.out_hook == alias.in_hook and alias.kind == "sae"
    assert alias.apply_b_dec_to_input
    torch.manual_seed(0)
    for p in alias.parameters():
        p.data.normal_(0, 0.1)
    one = Dictionary(d, d, 16, "blocks.0.hook_resid_post", activation="relu")
    one.load_state_dict(alias.state_dict())
    tokens = torch.randint(0, tiny_gpt2.cfg.d_vocab, (2, 6))
    with torch.no_grad():
        with splice(tiny_gpt2, [alias]):
            a = tiny_gpt2(tokens)
        with splice(tiny_gpt2, [one]):
            b = tiny_gpt2(tokens)
        plain = tiny_gpt2(tokens)
    assert torch.equal(a, b) and not torch.allclose(a, plain)
    # pre-norm models: the same tensor; Gemma-2's post-norm sits between them
    partial = Dictionary(d, d, 16, "blocks.0.mlp.hook_out", "blocks.0.hook_mlp_out", "relu")
    assert partial.kind == "transcoder" and not partial.apply_b_dec_to_input
