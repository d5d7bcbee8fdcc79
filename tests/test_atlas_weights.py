"""The atlas's weight-based lists on unprocessed and post-norm models, against the Hugging Face
weights written out by hand: the final norm's weight (and Gemma's 1 + w), Gemma's scaled
embedding and post-MLP norm all change which tokens a feature promotes or is excited by."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from replacement import load_model
from replacement.atlas.weights import input_tokens, logit_effects
from replacement.dictionary import Dictionary
from tests.tiny_models import make_gemma2, make_gpt2

K = 8


def _perturb_norms(hf: torch.nn.Module) -> None:
    """Norm weights and biases away from their initial 1 / 0, so that forgetting them shows."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "ln_" in name or "norm" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)


def _dictionary(d: int, in_hook: str, out_hook: str) -> Dictionary:
    gen = torch.Generator().manual_seed(5)
    dic = Dictionary(d, d, 40, in_hook, out_hook, "relu", skip=False)
    with torch.no_grad():
        dic.W_enc.copy_(torch.randn(d, 40, generator=gen))
        dic.b_enc.copy_(torch.randn(40, generator=gen) * 0.1)
        dic.W_dec.copy_(torch.randn(40, d, generator=gen))
    return dic.eval()


def _expected(arch: str, hf: torch.nn.Module, dic: Dictionary):
    """(logit scores [F, vocab], input scores [F, vocab]) from the HF weights by hand."""
    d_dec = dic.W_dec.detach()
    ids = torch.arange(hf.config.vocab_size)
    if arch == "gpt2":
        t = hf.transformer
        final_w, W_U = t.ln_f.weight, hf.lm_head.weight.T
        to_res = d_dec - d_dec.mean(-1, keepdim=True)  # the final LayerNorm centres
        x = F.layer_norm(t.wte(ids), (t.wte.weight.shape[1],), eps=hf.config.layer_norm_epsilon)
    else:
        m = hf.model
        final_w, W_U = 1 + m.norm.weight, hf.lm_head.weight.T
        to_res = d_dec
        if dic.out_hook.endswith("mlp.hook_out"):  # through the post-MLP norm first
            to_res = to_res * (1 + m.layers[0].post_feedforward_layernorm.weight)
        e = m.embed_tokens(ids)  # scaled by sqrt(d_model)
        x = e * torch.rsqrt(e.pow(2).mean(-1, keepdim=True) + hf.config.rms_norm_eps)
    logits = (to_res * final_w) @ W_U
    inputs = (x @ dic.W_enc + dic.b_enc).T
    return logits - logits.mean(-1, keepdim=True), inputs


@pytest.mark.parametrize(
    "arch,out_hook",
    [
        ("gpt2", "blocks.0.hook_mlp_out"),
        ("gemma2", "blocks.0.hook_mlp_out"),
        ("gemma2", "blocks.0.mlp.hook_out"),
    ],
)
@torch.no_grad()
def test_weight_lists_follow_the_models_own_norms(tiny_tokenizer, arch, out_hook):
    make = make_gpt2 if arch == "gpt2" else make_gemma2
    hf = make(len(tiny_tokenizer), seed=1)
    _perturb_norms(hf)
    model = load_model(hf, tokenizer=tiny_tokenizer, processing="none")
    dic = _dictionary(model.cfg.d_model, "blocks.0.ln2.hook_normalized", out_hook)
    want_logits, want_inputs = _expected(arch, hf, dic)

    promoted, suppressed = logit_effects(dic, model, K)
    for got, largest in ((promoted, True), (suppressed, False)):
        top = want_logits.topk(K, dim=1, largest=largest)
        assert torch.equal(got.ids, top.indices)
        torch.testing.assert_close(got.values, top.values, rtol=1e-4, atol=1e-4)
    inputs = input_tokens(dic, model, K)
    top = want_inputs.topk(K, dim=1)
    assert torch.equal(inputs.ids, top.indices)
    torch.testing.assert_close(inputs.values, top.values, rtol=1e-4, atol=1e-4)
