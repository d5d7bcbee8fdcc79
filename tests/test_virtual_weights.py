"""Virtual weights: exact against an independent autograd edge and `attribute`, per-head paths
times the attention weight (GPT-2 and GQA Llama), residual SAEs as endpoints and in between,
mean norm scales, the path breakdown against the total, and blocked top-k against dense."""

from __future__ import annotations

import pytest
import torch

from circuits.invariant.topk_graph import blocked_topk, top_partners, topk_graph
from circuits.invariant.virtual_weights import mean_norm_scales, virtual_weights
from replacement import load_model
from replacement.dictionary import Dictionary
from replacement.errors import SparseCircuitsError
from tests.attribution_helpers import frozen_effect, random_transcoders
from tests.tiny_models import make_gpt2, save_hf


@pytest.fixture(scope="module")
def gpt2_4layer(tmp_path_factory, tiny_tokenizer):
    """Our own 4-layer tiny GPT-2 (hooks and dictionaries are set per test)."""
    folder = save_hf(
        make_gpt2(len(tiny_tokenizer), seed=3, n_layers=4),
        tiny_tokenizer,
        tmp_path_factory.mktemp("gpt2_4layer"),
    )
    return load_model(folder)


def _zero(act, hook):
    return torch.zeros_like(act)


def _detach(act, hook):
    return act.detach()


def _zero_attention(layers):
    return [(f"blocks.{m}.hook_attn_out", _zero) for m in layers]


def _frozen_edge(model, dicts, tokens, pos, src_layer, i, dst_layer, j, extra_hooks):
    """a_i * d pre_j(dst_layer, pos) / d a_i(src_layer, pos) in the frozen local replacement
    model, by autograd through a scalar added along d_i at the source's output."""
    with model.hooks(fwd_hooks=list(extra_hooks)):
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: "ln2.hook_normalized" in n)
    clean = {d.in_hook: cache[d.in_hook] for d in dicts}
    alpha = torch.zeros((), requires_grad=True)
    seen = {}
    hooks = list(extra_hooks)
    hooks += [(n, _detach) for n in model.hook_dict if n.endswith(("hook_scale", "hook_pattern"))]
    for d in dicts:
        layer = int(d.in_hook.split(".")[1])

        def read(act, hook, d=d):
            seen[d.in_hook] = act
            return act

        def write(act, hook, d=d, layer=layer):
            # frozen MLP: clean output, but the skip path follows the live input
            out = act.detach() - d.skip(clean[d.in_hook]) + d.skip(seen[d.in_hook])
            if layer == src_layer:
                bump = torch.zeros_like(out)
                bump[0, pos] = d.W_dec[i].detach()
                out = out + alpha * bump
            return out

        hooks += [(d.in_hook, read), (d.out_hook, write)]
    with model.hooks(fwd_hooks=hooks):
        model(tokens)
    pre = seen[dicts[dst_layer].in_hook][0, pos] @ dicts[dst_layer].W_enc[:, j]
    (grad,) = torch.autograd.grad(pre, alpha)
    a_i = float(dicts[src_layer].encode(clean[dicts[src_layer].in_hook][0, pos])[i].detach())
    return float(grad) * a_i, a_i


def _active(d, x, pos):
    return d.encode(x[0, pos]).nonzero().flatten().tolist()


def _prompt(tokenizer, text="def add(a, b): return"):
    return torch.tensor([[0] + tokenizer(text)["input_ids"]])


def test_virtual_weight_equals_frozen_edge_and_attribution(gpt2_4layer, tiny_tokenizer):
    """Attention zeroed in layers 1-3: the edge L0 -> L3 is exactly a_i v_ij, with v_ij through
    the residual and both intermediate skip paths (in order), at the prompt's norm scales."""
    from circuits.attribution.attribute import attribute

    model = gpt2_4layer
    dicts = random_transcoders(model, n_features=40, seed=1)
    zero = _zero_attention([1, 2, 3])
    tokens = _prompt(tiny_tokenizer)
    pos = tokens.shape[1] - 2
    with model.hooks(fwd_hooks=zero):
        _, cache = model.run_with_cache(tokens)
    src = _active(dicts[0], cache["blocks.0.ln2.hook_normalized"], pos)[:3]
    dst = _active(dicts[3], cache["blocks.3.ln2.hook_normalized"], pos)[:3]
    assert src and dst
    scales = {m: cache[f"blocks.{m}.ln2.hook_scale"][0, pos, 0] for m in (1, 2, 3)}
    vw = virtual_weights(dicts, model, 0, 3, norm=scales).total

    with model.hooks(fwd_hooks=zero):
        graph = attribute(model, dicts, tokens[0], batch_size=32, verbose=False)
    for i in src:
        for j in dst:
            edge, a_i = _frozen_edge(model, dicts, tokens, pos, 0, i, 3, j, zero)
            assert abs(edge) > 1e-6
            assert vw[i, j].item() * a_i == pytest.approx(edge, rel=1e-4, abs=1e-7)
            t = graph.find("feature", layer=3, pos=pos, feature=j)
            s = graph.find("feature", layer=0, pos=pos, feature=i)
            assert len(t) == len(s) == 1
            assert graph.adjacency[t[0], s[0]].item() == pytest.approx(edge, rel=1e-4, abs=1e-7)
    # without the exact scales the weights differ: the norm treatment matters
    ignored = virtual_weights(dicts, model, 0, 3, norm="ignore").total
    assert not torch.allclose(ignored[src][:, dst], vw[src][:, dst], rtol=1e-2)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2"])
def test_single_head_paths_times_pattern_are_exact(arch, request, tiny_tokenizer):
    """Between adjacent layers the only attention is layer l' itself: the edge is the residual
    term plus each head's term times that head's self-attention weight (GQA for Llama; Gemma's
    norm after attention, with its prompt scale, on every head path)."""
    model = request.getfixturevalue(f"tiny_{arch}")
    dicts = random_transcoders(model, n_features=32, seed=2)
    tokens = _prompt(tiny_tokenizer, "class Stack:")
    pos = tokens.shape[1] - 1
    _, cache = model.run_with_cache(tokens)
    scales = {
        "blocks.1.ln1.hook_scale": cache["blocks.1.ln1.hook_scale"][0, pos, 0],
        "blocks.1.ln2.hook_scale": cache["blocks.1.ln2.hook_scale"][0, pos, 0],
    }
    if arch == "gemma2":
        scales["blocks.1.ln1_post.hook_scale"] = cache["blocks.1.ln1_post.hook_scale"][0, pos, 0]
    vw = virtual_weights(dicts, model, 0, 1, norm=scales, include_attention=True)
    pattern = cache["blocks.1.attn.hook_pattern"][0, :, pos, pos]  # [head]
    assert len(vw.heads) == model.cfg.n_heads
    src = _active(dicts[0], cache["blocks.0.ln2.hook_normalized"], pos)[:3]
    dst = _active(dicts[1], cache["blocks.1.ln2.hook_normalized"], pos)[:3]
    assert src and dst
    for i in src:
        for j in dst:
            edge, a_i = _frozen_edge(model, dicts, tokens, pos, 0, i, 1, j, [])
            predicted = vw.residual[i, j] + sum(
                pattern[h] * vw.heads[(1, h)][i, j] for h in range(model.cfg.n_heads)
            )
            assert float(predicted) * a_i == pytest.approx(edge, rel=1e-4, abs=1e-7)
    summed = vw.residual + sum(vw.heads.values())
    torch.testing.assert_close(vw.total, summed, rtol=1e-5, atol=1e-5)  # float32 sums


def _residual_sae(model, hook, n_features, seed):
    gen = torch.Generator().manual_seed(seed)
    d = model.cfg.d_model
    sae = Dictionary(d, d, n_features, hook, hook)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d, n_features, generator=gen) / d**0.5)
        sae.b_enc.copy_(torch.rand(n_features, generator=gen) * 0.5)
        sae.W_dec.copy_(torch.randn(n_features, d, generator=gen) * 0.1)
    return sae.eval()


def test_residual_sae_endpoints_and_cut(gpt2_4layer, tiny_tokenizer):
    """An SAE at blocks.1.hook_resid_post among transcoders at every layer (attention zeroed
    in layers 1-3): edges into and out of it are exact against the shared frozen-model
    intervention; with `cut_at_saes` it blocks L0 -> L3, as the frozen model does."""
    model = gpt2_4layer
    sae_hook = "blocks.1.hook_resid_post"
    dicts = [
        *random_transcoders(model, n_features=40, seed=8),
        _residual_sae(model, sae_hook, 30, 9),
    ]
    zero = _zero_attention([1, 2, 3])
    tokens = _prompt(tiny_tokenizer, "for i in range(10):")
    pos = tokens.shape[1] - 2
    with model.hooks(fwd_hooks=zero):
        _, cache = model.run_with_cache(tokens)
    scales = {m: cache[f"blocks.{m}.ln2.hook_scale"][0, pos, 0] for m in range(4)}
    acts = {k: dicts[k].encode(cache[dicts[k].in_hook][0, pos]).detach() for k in (0, 4)}
    into = virtual_weights(dicts, model, 0, sae_hook, norm=scales).total  # through MLP 1 skip
    out_of = virtual_weights(dicts, model, sae_hook, 3, norm=scales).total  # MLP 2 skip, ln2 3
    src0 = _active(dicts[0], cache[dicts[0].in_hook], pos)[:2]
    sae_src = sae_dst = acts[4].nonzero().flatten().tolist()[:2]
    dst3 = _active(dicts[3], cache[dicts[3].in_hook], pos)[:2]
    assert src0 and sae_src and dst3
    with model.hooks(fwd_hooks=zero):
        for i in src0:
            targets = [("feature", 4, pos, j) for j in sae_dst] + [
                ("feature", 3, pos, j) for j in dst3
            ]
            moved = frozen_effect(model, dicts, tokens[0], ("feature", 0, pos, i), 0.5, targets)
            want = [float(into[i, j] * acts[0][i]) for j in sae_dst] + [0.0] * len(dst3)  # cut
            torch.testing.assert_close(moved.float(), torch.tensor(want), rtol=1e-4, atol=1e-6)
        for i in sae_src:
            targets = [("feature", 3, pos, j) for j in dst3]
            moved = frozen_effect(model, dicts, tokens[0], ("feature", 4, pos, i), 0.5, targets)
            want = torch.stack([out_of[i, j] * acts[4][i] for j in dst3])
            torch.testing.assert_close(moved.float(), want, rtol=1e-4, atol=1e-6)
    cut = virtual_weights(dicts, model, 0, 3, norm=scales, cut_at_saes=True, breakdown=True)
    assert cut.total.abs().max() == 0 and all(p.abs().max() == 0 for p in cut.paths.values())
    # transparent by default: the same as leaving the SAE out
    torch.testing.assert_close(
        virtual_weights(dicts, model, 0, 3, norm=scales).total,
        virtual_weights(dicts[:4], model, 0, 3, norm=scales).total,
    )
    with pytest.raises(SparseCircuitsError, match="several dictionaries"):
        virtual_weights(dicts, model, 0, 1)


def test_mean_norm_scales_average_the_inverse(gpt2_4layer, tiny_tokenizer):
    model = gpt2_4layer
    tokens = torch.cat(
        [_prompt(tiny_tokenizer)[:, :7], _prompt(tiny_tokenizer, "x = [1, 2, 3] + y")[:, :7]]
    )
    scales = mean_norm_scales(model, tokens, batch_size=1)
    _, cache = model.run_with_cache(tokens)
    for name in ("blocks.2.ln1.hook_scale", "blocks.3.ln2.hook_scale"):
        inverse = cache[name][:, 1:].double().reciprocal().mean()
        assert scales[name] == pytest.approx(1 / float(inverse), rel=1e-6)
    dicts = random_transcoders(model, n_features=16, seed=3)
    torch.testing.assert_close(
        virtual_weights(
            dicts, model, 0, 3, norm="mean", tokens=tokens, include_attention=True
        ).total,
        virtual_weights(dicts, model, 0, 3, norm=scales, include_attention=True).total,
    )


def test_breakdown_sums_to_total(gpt2_4layer):
    model = gpt2_4layer
    dicts = random_transcoders(model, n_features=24, seed=4)
    norm = {1: 1.7, 2: 0.6, 3: 1.2}
    vw = virtual_weights(dicts, model, 0, 3, norm=norm, breakdown=True)
    assert set(vw.paths) == {(), (1,), (2,), (1, 2)}
    torch.testing.assert_close(sum(vw.paths.values()), vw.total, rtol=1e-5, atol=1e-6)
    d = model.cfg.d_model
    n = {m: (torch.eye(d) - 1.0 / d) / s for m, s in norm.items()}  # LayerNorm: centred
    dec, enc = dicts[0].W_dec, dicts[3].W_enc
    torch.testing.assert_close(vw.paths[()], dec @ n[3] @ enc, rtol=1e-4, atol=1e-6)
    two = dec @ n[1] @ dicts[1].W_skip @ n[2] @ dicts[2].W_skip @ n[3] @ enc  # in layer order
    torch.testing.assert_close(vw.paths[(1, 2)], two, rtol=1e-4, atol=1e-6)
    for term in vw.paths.values():
        assert term.abs().max() > 1e-4  # every path is really there
    # a transcoder reading the raw resid_mid: its skip path has no norm in front
    raw = Dictionary(32, 32, 24, "blocks.1.hook_resid_mid", dicts[1].out_hook, skip=True)
    raw.load_state_dict(dicts[1].state_dict())
    via_raw = virtual_weights([dicts[0], raw, dicts[3]], model, 0, 3, norm=norm, breakdown=True)
    one = dec @ dicts[1].W_skip @ n[3] @ enc
    torch.testing.assert_close(via_raw.paths[(1,)], one, rtol=1e-4, atol=1e-6)
    # transcoders without W_skip: only the direct term
    plain = random_transcoders(model, skip=False, n_features=24, seed=4)
    assert set(virtual_weights(plain, model, 0, 3, norm=norm, breakdown=True).paths) == {()}


def test_blocked_topk_equals_dense(gpt2_4layer):
    model = gpt2_4layer
    dicts = random_transcoders(model, n_features=50, seed=5)
    k, block = 4, 16  # blocks smaller than F: many merges
    norm = {1: 1.3, 2: 0.8, 3: 1.1}
    graph = topk_graph(dicts, model, k, block, norm=norm, verbose=False)
    assert len(graph.weight) == 6 * 50 * k  # 6 layer pairs
    for a in range(4):
        for b in range(a + 1, 4):
            dense = virtual_weights(dicts, model, a, b, norm=norm).total
            ref_v, ref_i = dense.abs().topk(k, dim=1)
            sparse = graph.pair(a, b).to_dense()
            picked = torch.zeros_like(dense, dtype=torch.bool).scatter_(1, ref_i, True)
            assert torch.equal(sparse != 0, picked)
            torch.testing.assert_close(sparse[picked], dense[picked])
    # one feature, both directions, with attention paths included
    norm |= {f"blocks.{m}.ln1.hook_scale": 0.9 + 0.1 * m for m in range(4)}
    down = top_partners(dicts, model, 1, 7, k, "down", block, norm=norm, include_attention=True)
    assert list(down) == ["blocks.2.hook_mlp_out", "blocks.3.hook_mlp_out"]
    for b in (2, 3):
        row = virtual_weights(dicts, model, 1, b, norm=norm, include_attention=True).total[7]
        got = down[f"blocks.{b}.hook_mlp_out"]
        assert got.indices.tolist() == row.abs().topk(k).indices.tolist()
        torch.testing.assert_close(got.values, row[got.indices])
    up = top_partners(dicts, model, 2, 9, k, "up", block, norm=norm)
    assert [p.layer for p in up.values()] == [0, 1]
    col = virtual_weights(dicts, model, 0, 2, norm=norm).total[:, 9]
    assert up["blocks.0.hook_mlp_out"].indices.tolist() == col.abs().topk(k).indices.tolist()
    torch.testing.assert_close(
        up["blocks.0.hook_mlp_out"].values, col[up["blocks.0.hook_mlp_out"].indices]
    )
    # blocked_topk itself on random data, including k > block and a ragged last block
    left, right = torch.randn(37, 8), torch.randn(8, 45)
    v, i = blocked_topk(left, right, 20, 7)
    ref = (left @ right).abs().topk(20, dim=1)
    assert torch.equal(i, ref.indices)
    torch.testing.assert_close(v, (left @ right).gather(1, i))
    # wide blocks take the chunked search (3100 columns, k=5: 40 chunks of 77 + a tail of 20)
    left, right = torch.randn(40, 16), torch.randn(16, 6000)
    ref = (left @ right).abs().topk(5, dim=1)
    for block in (3100, 1000, 500):
        v, i = blocked_topk(left, right, 5, block)
        assert torch.equal(i, ref.indices)


def test_bad_arguments(gpt2_4layer):
    model = gpt2_4layer
    dicts = random_transcoders(model, n_features=8, seed=6)
    with pytest.raises(SparseCircuitsError, match="does not write before"):
        virtual_weights(dicts, model, 2, 1)
    with pytest.raises(SparseCircuitsError, match="no dictionary at 2"):
        virtual_weights(dicts[:2], model, 0, 2)
    with pytest.raises(SparseCircuitsError, match="tokens"):
        virtual_weights(dicts, model, 0, 2, norm="mean")
    with pytest.raises(SparseCircuitsError, match="ln2"):
        virtual_weights(dicts, model, 0, 2, norm={1: 1.0})
    with pytest.raises(SparseCircuitsError, match="unknown norm"):
        virtual_weights(dicts, model, 0, 2, norm="median")
    with pytest.raises(SparseCircuitsError, match="direction"):
        top_partners(dicts, model, 0, 0, 3, direction="sideways")
    with pytest.raises(SparseCircuitsError, match="no feature 8"):
        top_partners(dicts, model, 0, 8, 3)
    mlp_sae = _residual_sae(model, "blocks.1.hook_mlp_out", 8, 0)
    with pytest.raises(SparseCircuitsError, match="no input-invariant path"):
        virtual_weights([dicts[0], mlp_sae], model, 0, 1)
    with pytest.raises(SparseCircuitsError, match="two dictionaries write"):
        virtual_weights([dicts[0], dicts[0]], model, 0, 1)
