"""Virtual weights: exact against an independent autograd edge, blocked top-k against dense,
the path breakdown against the total, and data-weighted connections against averaged prompt
attribution on the default model."""

from __future__ import annotations

import pytest
import torch

from circuits.virtual_weights import (
    blocked_topk,
    top_partners,
    topk_graph,
    virtual_weights,
)
from replacement import load_model, to_tokens
from replacement.errors import SparseCircuitsError
from tests.attribution_helpers import random_transcoders
from tests.tiny_models import make_gpt2, save_hf


@pytest.fixture(scope="module")
def gpt2_3layer(tmp_path_factory, tiny_tokenizer):
    """Our own 3-layer tiny GPT-2 (hooks and dictionaries are set per test)."""
    folder = save_hf(
        make_gpt2(len(tiny_tokenizer), seed=3, n_layers=3),
        tiny_tokenizer,
        tmp_path_factory.mktemp("gpt2_3layer"),
    )
    return load_model(folder)


def _zero(act, hook):
    return torch.zeros_like(act)


def _detach(act, hook):
    return act.detach()


def _frozen_edge(model, dicts, tokens, pos, src_layer, i, dst_layer, j, extra_hooks):
    """d pre_j(dst_layer, pos) / d a_i(src_layer, pos) in the frozen local replacement model,
    by autograd through a scalar added along d_i at the source's output, times a_i."""
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
    a_i = dicts[src_layer].encode(clean[dicts[src_layer].in_hook][0, pos])[i]
    a_i = float(a_i.detach())
    return float(grad) * a_i, a_i


def _active(d, x, pos):
    return d.encode(x[0, pos]).nonzero().flatten().tolist()


def test_virtual_weight_equals_frozen_edge_and_attribution(gpt2_3layer, tiny_tokenizer):
    model = gpt2_3layer
    dicts = random_transcoders(model, n_features=40, seed=1)
    zero = [("blocks.1.hook_attn_out", _zero), ("blocks.2.hook_attn_out", _zero)]
    tokens = torch.tensor([[0] + tiny_tokenizer("def add(a, b): return")["input_ids"]])
    pos = tokens.shape[1] - 2
    with model.hooks(fwd_hooks=zero):
        _, cache = model.run_with_cache(tokens)
    src = _active(dicts[0], cache["blocks.0.ln2.hook_normalized"], pos)[:3]
    dst = _active(dicts[2], cache["blocks.2.ln2.hook_normalized"], pos)[:3]
    assert src and dst
    scales = {m: cache[f"blocks.{m}.ln2.hook_scale"][0, pos, 0] for m in (1, 2)}
    vw = virtual_weights(dicts, model, 0, 2, norm=scales).total

    from circuits.attribute import attribute

    with model.hooks(fwd_hooks=zero):
        graph = attribute(model, dicts, tokens[0], batch_size=32, verbose=False)
    for i in src:
        for j in dst:
            edge, a_i = _frozen_edge(model, dicts, tokens, pos, 0, i, 2, j, zero)
            assert abs(edge) > 1e-6
            assert vw[i, j].item() * a_i == pytest.approx(edge, rel=1e-4, abs=1e-7)
            t = graph.find("feature", layer=2, pos=pos, feature=j)
            s = graph.find("feature", layer=0, pos=pos, feature=i)
            assert len(t) == len(s) == 1
            assert graph.adjacency[t[0], s[0]].item() == pytest.approx(edge, rel=1e-4, abs=1e-7)
    # without the exact scales the weights differ: the norm treatment matters
    ignored = virtual_weights(dicts, model, 0, 2, norm="ignore").total
    assert not torch.allclose(ignored[src][:, dst], vw[src][:, dst], rtol=1e-2)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_single_head_paths_times_pattern_are_exact(arch, request, tiny_tokenizer):
    """Between adjacent layers the only attention is layer l' itself: the edge is the residual
    term plus each head's term times that head's self-attention weight (GQA for Llama)."""
    model = request.getfixturevalue(f"tiny_{arch}")
    dicts = random_transcoders(model, n_features=32, seed=2)
    tokens = torch.tensor([[0] + tiny_tokenizer("class Stack:")["input_ids"]])
    pos = tokens.shape[1] - 1
    _, cache = model.run_with_cache(tokens)
    scales = {
        "blocks.1.ln1.hook_scale": cache["blocks.1.ln1.hook_scale"][0, pos, 0],
        "blocks.1.ln2.hook_scale": cache["blocks.1.ln2.hook_scale"][0, pos, 0],
    }
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
    torch.testing.assert_close(vw.total, summed, rtol=1e-5, atol=1e-6)


def test_breakdown_sums_to_total(gpt2_3layer):
    model = gpt2_3layer
    dicts = random_transcoders(model, n_features=24, seed=4)
    vw = virtual_weights(dicts, model, 0, 2, norm={1: 1.7, 2: 0.6}, breakdown=True)
    assert set(vw.paths) == {(), (1,)}
    torch.testing.assert_close(sum(vw.paths.values()), vw.total, rtol=1e-5, atol=1e-6)
    # the direct term is d_i . N e_j
    d = model.cfg.d_model
    centre = torch.eye(d) - 1.0 / d
    direct = dicts[0].W_dec @ centre @ dicts[2].W_enc / 0.6
    torch.testing.assert_close(vw.paths[()], direct, rtol=1e-4, atol=1e-6)
    assert vw.paths[(1,)].abs().max() > 1e-3  # the skip path is really there


def test_blocked_topk_equals_dense(gpt2_3layer):
    model = gpt2_3layer
    dicts = random_transcoders(model, n_features=50, seed=5)
    k, block = 4, 16  # blocks smaller than F: many merges
    graph = topk_graph(dicts, model, k, block, norm={1: 1.3, 2: 0.8}, verbose=False)
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        dense = virtual_weights(dicts, model, a, b, norm={1: 1.3, 2: 0.8}).total
        ref_v, ref_i = dense.abs().topk(k, dim=1)
        sparse = graph.pair(a, b).to_dense()
        assert int((sparse != 0).sum()) == dense.shape[0] * k
        picked = torch.zeros_like(dense, dtype=torch.bool).scatter_(1, ref_i, True)
        assert torch.equal(sparse != 0, picked)
        torch.testing.assert_close(sparse[picked], dense[picked])
    # one feature, both directions
    down = top_partners(dicts, model, 1, 7, k, "down", block, norm={1: 1.3, 2: 0.8})
    dense = virtual_weights(dicts, model, 1, 2, norm={1: 1.3, 2: 0.8}).total[7]
    assert down[2].indices.tolist() == dense.abs().topk(k).indices.tolist()
    up = top_partners(dicts, model, 2, 9, k, "up", block, norm={1: 1.3, 2: 0.8})
    assert set(up) == {0, 1}
    col = virtual_weights(dicts, model, 0, 2, norm={1: 1.3, 2: 0.8}).total[:, 9]
    assert up[0].indices.tolist() == col.abs().topk(k).indices.tolist()
    torch.testing.assert_close(up[0].values, col[up[0].indices])
    # blocked_topk itself on random data, including k > block
    left, right = torch.randn(37, 8), torch.randn(8, 45)
    v, i = blocked_topk(left, right, 20, 7)
    ref = (left @ right).abs().topk(20, dim=1)
    assert torch.equal(i, ref.indices)


def test_bad_arguments(gpt2_3layer):
    model = gpt2_3layer
    dicts = random_transcoders(model, n_features=8, seed=6)
    with pytest.raises(SparseCircuitsError, match="layer_from"):
        virtual_weights(dicts, model, 2, 1)
    with pytest.raises(SparseCircuitsError, match="no transcoder at layer"):
        virtual_weights(dicts[:2], model, 0, 2)
    with pytest.raises(SparseCircuitsError, match="tokens"):
        virtual_weights(dicts, model, 0, 2, norm="mean")
    with pytest.raises(SparseCircuitsError, match="ln2"):
        virtual_weights(dicts, model, 0, 2, norm={1: 1.0})
    with pytest.raises(SparseCircuitsError, match="direction"):
        top_partners(dicts, model, 0, 0, 3, direction="sideways")


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = torch.stack([a.argsort().argsort(), b.argsort().argsort()]).float()
    return float(torch.corrcoef(ranks)[0, 1])


def test_data_weighted_agrees_with_averaged_attribution(default_model):
    """E_t[a_i v_ij 1[a_j > 0]] ranks the strongest connections like the average over prompts
    of the same-position attribution edges (measured: Spearman 0.95 over the top 100 pairs;
    with feature indices permuted: about 0.02)."""
    import sysconfig
    from pathlib import Path

    from circuits.attribute import attribute
    from circuits.global_graph import data_weighted_weights, global_graph

    model = default_model
    dicts = random_transcoders(model, n_features=64, seed=7)
    text = (Path(sysconfig.get_paths()["stdlib"]) / "bisect.py").read_text()
    ids = model.tokenizer(text)["input_ids"]
    length, n_prompts, bos = 16, 8, int(to_tokens(model, "x")[0, 0])
    tokens = torch.tensor([[bos] + ids[k * length : (k + 1) * length] for k in range(n_prompts)])
    avg = torch.zeros(64, 64)
    for row in tokens:
        graph = attribute(model, dicts, row, batch_size=64, verbose=False)
        feats = torch.tensor(graph.find("feature"))
        layer, pos = graph.node_layer[feats], graph.node_pos[feats]
        for p in range(1, length + 1):
            src, dst = feats[(layer == 0) & (pos == p)], feats[(layer == 1) & (pos == p)]
            rows, cols = graph.node_feature[src], graph.node_feature[dst]
            avg[rows[:, None], cols[None, :]] += graph.adjacency[dst][:, src].T
    avg /= n_prompts * length
    dw = data_weighted_weights(dicts, model, tokens, 0, 1, norm="mean")
    assert dw.n_tokens == n_prompts * length
    dense = dw.to_dense()
    top = avg.abs().flatten().argsort(descending=True)[:100]
    shuffled = dense[:, torch.randperm(64, generator=torch.Generator().manual_seed(0))]
    assert _spearman(avg.flatten()[top], dense.flatten()[top]) > 0.8
    assert abs(_spearman(avg.flatten()[top], shuffled.flatten()[top])) < 0.3

    # the global graph holds the same weights as a real AttributionGraph
    graph = global_graph(dicts, model, 0, 1, 3, data_weighted=True, tokens=tokens, norm="mean")
    i, j = divmod(int(dense.abs().argmax()), 64)
    s, t = graph.find("feature", 0, 0, i), graph.find("feature", 1, 0, j)
    assert graph.adjacency[t[0], s[0]].item() == pytest.approx(dense[i, j].item(), rel=1e-5)
    assert graph.to_networkx().number_of_edges() == int((graph.adjacency != 0).sum())
    assert len(graph.to_json()["links"]) <= 64 * 3
