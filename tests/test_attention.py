"""Head loadings, QK attributions and pattern attributions are exact (circuits.attention).

On tiny GPT-2 (LayerNorm, learned positions, biases), Llama (RMSNorm, rotary, grouped-query
attention) and Gemma-2 (norms before and after attention, 1 + weight, soft-capped scores, a
sliding window) models, in float64:
- head loadings: bypass_l + sum_h loading_{l,h} equals the edge (1e-5 relative); the edge
  equals the graph's; cutting one head's value path in the frozen model (autograd attribution
  with that head's `hook_z` detached) removes exactly its loading, cutting a layer's heads
  leaves the bypass; for dense and sparse graphs, SAEs and cross-layer transcoders;
- QK: the pair terms sum to the model's own score, each source's query and key vector equals
  autograd through the frozen model, the bias terms equal their closed form, and the pair matrix
  is symmetric when W_K = W_Q; pattern attributions sum to the score differences.
"""

from __future__ import annotations

import pytest
import torch

from circuits.attention import AttentionAttribution, head_loadings
from circuits.attribution.attribute import attribute
from circuits.attribution.replacement_forward import frozen_forward
from replacement import load_model
from replacement.crosslayer import CrossLayerTranscoder
from replacement.dictionary import Dictionary
from tests.attribution_helpers import random_transcoders
from tests.tiny_models import make_gemma2, make_gpt2, make_llama

PROMPT = "def add(a, b):\n    return a"
MAKERS = {"gpt2": make_gpt2, "llama": make_llama, "gemma2": make_gemma2}


def _with_random_biases(hf):
    """GPT-2 initialises its biases to zero; random ones make the bias terms testable."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") and "ln" not in name:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
            if "ln" in name and name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.1)
    return hf


@pytest.fixture(scope="module", params=list(MAKERS))
def model64(request, tiny_tokenizer):
    hf = MAKERS[request.param](len(tiny_tokenizer), seed=1).double()
    if request.param == "gpt2":
        hf = _with_random_biases(hf)
    return load_model(hf, tokenizer=tiny_tokenizer, dtype=torch.float64)


def _rel(a, b):
    return float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max()) / max(
        float(torch.as_tensor(b).abs().max()), 1e-12
    )


def _cut(model, layer, heads):
    """Hooks detaching heads of one layer at hook_z (values kept, no gradient through them)."""

    def hook(z, hook):
        z = z.clone()
        z[:, :, heads] = z[:, :, heads].detach()
        return z

    return model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])


def _check_loadings(model, dicts, graph, n_edges=12, method="auto"):
    hl = head_loadings(model, dicts, graph, top=n_edges, cross_position=True, method=method)
    assert hl.n_edges > 0
    dense = graph.adjacency.to_dense() if graph.adjacency.is_sparse else graph.adjacency
    edge = dense[hl.target, hl.source]
    assert _rel(hl.edge, edge) < 1e-5
    assert hl.max_relative_gap() < 1e-5
    # the largest loading of all: a real head path, not a zero
    e, layer, head = divmod_all(hl.heads.abs().argmax().item(), hl.heads.shape)
    assert abs(float(hl.heads[e, layer, head])) > 1e-3 * float(hl.edge.abs().max())
    t, s = int(hl.target[e]), int(hl.source[e])
    scale = float(hl.edge.abs().max())
    # node order is unchanged (same active features, every feature kept)
    cut = _edge_with_cut(model, dicts, graph, layer, [head], t, s)
    assert abs(cut - float(hl.edge[e] - hl.heads[e, layer, head])) < 1e-5 * scale
    cut = _edge_with_cut(model, dicts, graph, layer, list(range(model.cfg.n_heads)), t, s)
    assert abs(cut - float(hl.bypass[e, layer])) < 1e-5 * scale
    return hl


def _edge_with_cut(model, dicts, graph, layer, heads, t, s):
    """Edge t <- s of the graph recomputed by autograd with these heads' value paths cut."""
    with _cut(model, layer, heads):
        cut = attribute(
            model,
            dicts,
            graph.tokens,
            method="autograd",
            verbose=False,
            target_tokens=_logit_tokens(graph),
        )
    dense = cut.adjacency.to_dense() if cut.adjacency.is_sparse else cut.adjacency
    return float(dense[t, s])


def divmod_all(flat, shape):
    out = []
    for size in reversed(shape):
        out.append(flat % size)
        flat //= size
    return tuple(reversed(out))


def _logit_tokens(graph):
    return [int(graph.node_feature[i]) for i in graph.find("logit")]


def test_head_loadings_split_edges_exactly(model64):
    """The linear sweeps (transcoders): exact, and equal to the autograd method."""
    dicts = random_transcoders(model64, "relu", skip=True)
    graph = attribute(model64, dicts, PROMPT, verbose=False, max_n_logits=2)
    _check_loadings(model64, dicts, graph, method="linear")
    # every kind of edge, including same-position ones and targets below some layers
    linear = head_loadings(model64, dicts, graph, top=60, method="linear")
    reference = head_loadings(model64, dicts, graph, top=60, method="autograd")
    scale = float(reference.edge.abs().max())
    for name in ("edge", "heads", "bypass"):
        gap = (getattr(linear, name) - getattr(reference, name)).abs().max()
        assert float(gap) < 1e-5 * scale, name
    assert linear.max_relative_gap() < 1e-5


def test_head_loadings_of_a_sparse_graph(tiny_tokenizer):
    model = load_model(
        make_gpt2(len(tiny_tokenizer), seed=1).double(),
        tokenizer=tiny_tokenizer,
        dtype=torch.float64,
    )
    dicts = random_transcoders(model, "relu", skip=True)
    dense = attribute(model, dicts, PROMPT, verbose=False, max_n_logits=2)
    sparse = attribute(model, dicts, PROMPT, verbose=False, max_n_logits=2, sparse=True)
    a = head_loadings(model, dicts, dense, top=40)
    b = head_loadings(model, dicts, sparse, top=40)
    assert torch.equal(a.target, b.target) and torch.equal(a.source, b.source)
    assert _rel(b.heads, a.heads) < 1e-6 and b.max_relative_gap() < 1e-5


def test_head_loadings_saes_and_crosslayer(tiny_tokenizer):
    model = load_model(
        _with_random_biases(make_gpt2(len(tiny_tokenizer), seed=2).double()),
        tokenizer=tiny_tokenizer,
        dtype=torch.float64,
    )
    gen = torch.Generator().manual_seed(5)
    saes = []
    for layer in range(model.cfg.n_layers):
        hook = f"blocks.{layer}.hook_resid_mid"
        sae = Dictionary(32, 32, 40, hook, hook, "relu", dtype=torch.float64)
        with torch.no_grad():
            sae.W_enc.copy_(torch.randn(32, 40, generator=gen, dtype=torch.float64) / 5)
            sae.b_enc.fill_(0.1)
            sae.W_dec.copy_(torch.randn(40, 32, generator=gen, dtype=torch.float64) / 5)
        saes.append(sae.eval())
    graph = attribute(model, saes, PROMPT, verbose=False, max_n_logits=2)
    _check_loadings(model, saes, graph, n_edges=8)
    torch.manual_seed(0)
    clt = CrossLayerTranscoder(2, 32, [40, 24], "relu", skip=True).double()
    with torch.no_grad():
        for p in clt.parameters():
            p.normal_(0, 0.2)
    graph = attribute(model, [clt], PROMPT, verbose=False, max_n_logits=2)
    _check_loadings(model, [clt], graph, n_edges=8, method="linear")


# ---- QK ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qk_setup(model64):
    dicts = random_transcoders(model64, "relu", skip=True)
    return model64, dicts, AttentionAttribution(model64, dicts, PROMPT)


def test_qk_pairs_sum_to_the_models_scores(qk_setup):
    model, _, att = qk_setup
    n = att.tokens.numel()
    checked = 0
    for layer in range(model.cfg.n_layers):
        scores = att.stream.get(layer, "attn.hook_attn_scores")
        for head in range(model.cfg.n_heads):
            for query in (n - 1, n - 3):
                for key in range(query + 1):
                    if not torch.isfinite(scores[head, query, key]):
                        continue
                    a = att.qk(layer, head, query, key)
                    # relative to the row's score scale: Hugging Face's RMSNorm normalises in
                    # float32 even in a float64 model, so a near-zero score has no 1e-5 digits
                    row = float(
                        scores[head, query][torch.isfinite(scores[head, query])].abs().max()
                    )
                    assert abs(float(a.pairs().sum()) - a.total) < 1e-5 * row
                    assert abs(float(a.query_totals().sum()) - a.total) < 1e-5 * row
                    checked += 1
            pat = att.pattern(layer, head, n - 1)
            for key in pat.keys.tolist():
                d = pat.for_key(key)
                assert abs(float(d.pairs().sum()) - d.total) < 1e-5 * float(pat.scores.abs().max())
            # attention-weighted differences average to zero (the pattern sums to 1 in float32)
            assert abs(float((pat.pattern * pat.differences).sum())) < 1e-6 * float(
                pat.scores.abs().max()
            )
    assert checked > 20


def test_qk_vectors_equal_autograd(qk_setup):
    """u_i (v_j) of every graph source equals d query (key) / d source in the frozen model."""
    model, dicts, att = qk_setup
    layer, head, query, key = model.cfg.n_layers - 1, 1, att.tokens.numel() - 1, 3
    att.prepare([layer])
    q_all, k_all, index = att._maps[layer]
    n_src = att.sources.n_sources
    for side, pos, vectors, head_ in (
        ("q", query, q_all, head),
        ("k", key, k_all, head // 2 if k_all.shape[2] < q_all.shape[2] else head),
    ):
        name = f"blocks.{layer}.attn.hook_rot_{side}"
        name = name if name in model.hook_dict else f"blocks.{layer}.attn.hook_{side}"
        seen = {}

        def keep(act, hook, seen=seen):
            seen["v"] = act
            return act

        e = model.cfg.d_head
        with frozen_forward(model, dicts, [(name, keep)]) as state, torch.enable_grad():
            model(att.tokens.unsqueeze(0).expand(e, -1))
            target = seen["v"][torch.arange(e), pos, head_, torch.arange(e)].sum()
            outputs = [state.outputs[d.out_hook] for d in att.dictionaries]
            grads = torch.autograd.grad(target, [*outputs, state.embed], allow_unused=True)
        rows = att.sources.rows_from_grads(list(grads[:-1]), grads[-1], e).double()  # [e, n_src]
        mine = torch.zeros(n_src, e, dtype=torch.float64)
        for row, i in enumerate(index):
            if i < n_src:
                mine[i] = vectors[row, pos, head_]
        assert _rel(mine.T, rows) < 1e-5, side
        assert rows.abs().max() > 1e-3


def test_qk_bias_terms_and_attention_constants(model64, qk_setup):
    model, _, att = qk_setup
    layer = 1
    att.prepare([layer])
    q_all = att._maps[layer][0]
    W_Q = model.W_Q[layer].double()
    b1 = att.stream.ln1_bias(layer)
    try:
        b_q = model.b_Q[layer].double()
    except AttributeError:
        b_q = torch.zeros(W_Q.shape[0], W_Q.shape[2], dtype=torch.float64)
    expected = torch.einsum("d,hde->he", b1, W_Q) + b_q
    if "blocks.1.attn.hook_cos" not in model.hook_dict:  # GPT-2: no rotation of the bias row
        assert _rel(q_all[-1, 0], expected) < 1e-9
        assert expected.abs().max() > 1e-2  # the random biases are there
        # the attention constant is (b_ln1 W_V + b_V) W_O + b_O at every position
        st = att.stream
        resid = st.get(layer, "hook_resid_pre").unsqueeze(0)
        const = st.get(layer, "hook_attn_out") - st.attention(resid, layer)[0]
        W_V, W_O = model.W_V[layer].double(), model.W_O[layer].double()
        closed = (
            torch.einsum(
                "he,hed->d", torch.einsum("d,hde->he", b1, W_V) + model.b_V[layer].double(), W_O
            )
            + model.b_O[layer].double()
        )
        assert _rel(const, closed.expand_as(const)) < 1e-9


def test_qk_symmetric_when_queries_and_keys_share_weights(tiny_tokenizer):
    hf = _with_random_biases(make_gpt2(len(tiny_tokenizer), seed=4).double())
    with torch.no_grad():
        for block in hf.transformer.h:
            w, b = block.attn.c_attn.weight, block.attn.c_attn.bias
            d = w.shape[0]
            w[:, d : 2 * d] = w[:, :d]
            b[d : 2 * d] = b[:d]
    model = load_model(hf, tokenizer=tiny_tokenizer, dtype=torch.float64)
    dicts = random_transcoders(model, "relu", skip=True)
    att = AttentionAttribution(model, dicts, PROMPT)
    a = att.qk(1, 2, 6, 6)
    assert a.query_labels[:-1] == a.key_labels[:-1]
    pairs = a.pairs() / att.score_scale(1)
    assert _rel(pairs, pairs.T) < 1e-9
    assert _rel(pairs[-1], pairs[:, -1]) < 1e-9  # the bias row and column too
    assert not torch.allclose(pairs, torch.zeros_like(pairs))


def test_masked_keys_and_bad_arguments_are_refused(tiny_tokenizer):
    from replacement.errors import SparseCircuitsError

    model = load_model(
        make_gemma2(len(tiny_tokenizer), seed=1).double(),
        tokenizer=tiny_tokenizer,
        dtype=torch.float64,
    )
    att = AttentionAttribution(model, random_transcoders(model, "relu"), PROMPT)
    with pytest.raises(SparseCircuitsError, match="sliding window"):
        att.qk(0, 0, 9, 1)  # layer 0 of the tiny Gemma-2 has a 4-token window
    with pytest.raises(SparseCircuitsError, match="causal"):
        att.qk(1, 0, 2, 5)
    with pytest.raises(SparseCircuitsError, match="layer 7"):
        att.qk(7, 0, 2, 1)
    # SAEs leave the MLPs in the map: not linear in the sources, refused by name
    sae = Dictionary(32, 32, 8, "blocks.0.hook_resid_mid", "blocks.0.hook_resid_mid", "relu")
    with pytest.raises(SparseCircuitsError, match="linear in its sources.*SAE"):
        AttentionAttribution(model, [sae.double()], PROMPT)
    # a custom target direction is not stored in the graph: its edges cannot be split
    dicts = random_transcoders(model, "relu")
    graph = attribute(model, dicts, PROMPT, verbose=False, target_direction=(5, 6))
    with pytest.raises(SparseCircuitsError, match="custom direction"):
        head_loadings(model, dicts, graph, (graph.find("logit"), graph.find("token", pos=3)))
