"""Every processing x hook naming x engine gives the unprocessed model's graph, or a refusal by
name: one MLP transcoder set per naming, trained (randomly) on the unprocessed model, loaded the
way a user loads it (`load_dictionaries(path, model=m)` for circuit-tracer files), attributed
on the model under each processing with the linear and the autograd engine.

- GPT-2 (LayerNorm), Llama (RMSNorm, grouped-query attention, Llama-3 rope scaling) and Gemma-2
  (1 + w norms before and after attention and MLP, a 4-token sliding window shorter than the
  prompt, attention and logit soft-caps), norm weights away from 1 and biases away from 0;
- namings: circuit-tracer's `ln2.hook_normalized -> hook_mlp_out` (GemmaScope),
  `mlp.hook_in -> mlp.hook_out` (its Llama-3.2 transcoders) and `hook_resid_mid -> hook_mlp_out`
  (TL2 names, from its files); TL4's `ln2.hook_out -> hook_mlp_out` and
  `ln2.hook_normalized -> mlp.hook_out` (before Gemma's post-MLP norm);
- the reference graph (unprocessed model, autograd) is checked by hand against the Hugging Face
  model's activations: feature activations, and the direct edges of the last layer's features
  and error into every logit through the frozen final norm (and Gemma's post-MLP norm); on
  Llama also every mid-graph edge from a layer-0 feature or error into a layer-1 feature,
  through the residual stream and layer 1's attention (frozen pattern, GQA) and norms.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from circuits import attribute
from replacement import Dictionary, load_model
from replacement.formats.detect import _fit_to_model, load_dictionaries
from replacement.hook_table import canonical, norm_facts
from replacement.processing import ProcessingError, fit_problem
from tests.test_processing import _random_norms
from tests.tiny_models import _gqa_sizes, make_gemma2, make_gpt2

PROCESSINGS = ("none", "folded", "fold_ln", "centred")
IDS = torch.tensor([0, 5, 17, 42, 9, 100])  # longer than Gemma's 4-token window
F = 16
NAMINGS = {  # name: (source, in, out)
    "ct_normalized": ("circuit_tracer", "ln2.hook_normalized", "hook_mlp_out"),
    "ct_mlp": ("circuit_tracer", "mlp.hook_in", "mlp.hook_out"),
    "ct_resid_mid": ("circuit_tracer", "hook_resid_mid", "hook_mlp_out"),
    "tl4_norm_out": ("native", "ln2.hook_out", "hook_mlp_out"),
    "tl4_normalized_raw": ("native", "ln2.hook_normalized", "mlp.hook_out"),
}


def make_llama_scaled(vocab_size: int, seed: int = 0):
    """A tiny Llama with grouped-query attention and Llama-3 rope scaling."""
    torch.manual_seed(seed)
    rope = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 4,
        "rope_theta": 10000.0,
    }
    return LlamaForCausalLM(LlamaConfig(**_gqa_sizes(vocab_size, 2, 32), rope_scaling=rope)).eval()


@pytest.fixture(scope="module", params=["gpt2", "llama", "gemma2"])
def arch(request, tiny_tokenizer):
    make = {"gpt2": make_gpt2, "llama": make_llama_scaled, "gemma2": make_gemma2}[request.param]
    hf = _random_norms(make(len(tiny_tokenizer), seed=4).double(), seed=1)
    models = {
        p: load_model(
            copy.deepcopy(hf), tokenizer=tiny_tokenizer, dtype=torch.float64, processing=p
        )
        for p in PROCESSINGS
    }
    return SimpleNamespace(name=request.param, hf=hf, models=models)


def _tensors(d: int, layer: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed * 10 + layer)
    return {
        "W_enc": torch.randn(F, d, generator=gen, dtype=torch.float64) / d**0.5,
        "b_enc": torch.rand(F, generator=gen, dtype=torch.float64) * 0.3,
        "W_dec": torch.randn(F, d, generator=gen, dtype=torch.float64) * 0.1,
        "b_dec": torch.randn(d, generator=gen, dtype=torch.float64) * 0.05,
        "W_skip": torch.randn(d, d, generator=gen, dtype=torch.float64) * 0.2 / d**0.5,
    }


def _circuit_tracer_files(folder, n_layers, d, in_hook, out_hook):
    folder.mkdir(parents=True, exist_ok=True)
    for layer in range(n_layers):
        save_file(_tensors(d, layer, 7), str(folder / f"layer_{layer}.safetensors"))
    config = {
        "model_kind": "transcoder_set",
        "feature_input_hook": in_hook,
        "feature_output_hook": out_hook,
        "transcoders": [f"layer_{i}.safetensors" for i in range(n_layers)],
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def _native(n_layers, d, in_hook, out_hook):
    out = []
    for layer in range(n_layers):
        t = _tensors(d, layer, 7)
        tc = Dictionary(
            d,
            d,
            F,
            f"blocks.{layer}.{in_hook}",
            f"blocks.{layer}.{out_hook}",
            "relu",
            skip=True,
            metadata={"processing": "none"},
            dtype=torch.float64,
        )
        with torch.no_grad():
            tc.W_enc.copy_(t["W_enc"].T)
            tc.W_dec.copy_(t["W_dec"])
            tc.b_enc.copy_(t["b_enc"])
            tc.b_dec.copy_(t["b_dec"])
            tc.W_skip.copy_(t["W_skip"].T)  # circuit-tracer's files hold W_skip^T
        out.append(tc.eval())
    return out


def _loader(arch, naming, tmp_path):
    """`load(model)`: the naming's transcoders fitted to `model` as a user loads them."""
    source, in_hook, out_hook = NAMINGS[naming]
    cfg = arch.models["none"].cfg
    if source == "circuit_tracer":
        folder = _circuit_tracer_files(
            tmp_path / naming, cfg.n_layers, cfg.d_model, in_hook, out_hook
        )
        return lambda model: load_dictionaries(folder, model=model)
    dicts = _native(cfg.n_layers, cfg.d_model, in_hook, out_hook)
    return lambda model: [_fit_to_model(copy.deepcopy(d), model, None) for d in dicts]


def _refused(arch_name: str, processing: str, naming: str) -> bool:
    """Where the algebra has no exact conversion: an uncentred residual read on a centred
    LayerNorm model (the per-token mean is gone)."""
    return arch_name == "gpt2" and processing in ("folded", "centred") and naming == "ct_resid_mid"


def _same_graph(graph, ref, what):
    assert graph.node_label == ref.node_label, what
    scale = ref.adjacency.abs().max()
    assert (graph.adjacency - ref.adjacency).abs().max() <= 1e-5 * scale, what


@pytest.mark.parametrize("naming", list(NAMINGS))
def test_every_processing_and_engine_gives_the_unprocessed_graph(arch, naming, tmp_path):
    load = _loader(arch, naming, tmp_path)
    ref_dicts = load(arch.models["none"])
    ref = attribute(arch.models["none"], ref_dicts, IDS, verbose=False, method="autograd")
    _check_by_hand(arch, ref_dicts, ref)
    if arch.name == "llama":
        _check_mid_graph_by_hand(arch, ref_dicts, ref)
    for processing in PROCESSINGS:
        model = arch.models[processing]
        if _refused(arch.name, processing, naming):
            with pytest.raises(ProcessingError, match=r"load_model\(source, processing='none'\)"):
                load(model)
            continue
        dicts = load(model)
        assert all(d.metadata["processing"] == processing for d in dicts)
        for method in ("linear", "autograd"):
            graph = attribute(model, dicts, IDS, verbose=False, method=method)
            _same_graph(graph, ref, (processing, method))


# ---- the hand recomputation from the Hugging Face model ---------------------------------------
def _parts(hf):
    body = hf.transformer if hasattr(hf, "transformer") else hf.model
    layers = body.h if hasattr(body, "h") else body.layers
    final = body.ln_f if hasattr(body, "ln_f") else body.norm
    return layers, final


def _pre_mlp_norm(layer):
    for name in ("ln_2", "pre_feedforward_layernorm", "post_attention_layernorm"):
        if hasattr(layer, name):
            return getattr(layer, name)
    raise AssertionError("no norm before the MLP")


def _weight(norm) -> torch.Tensor:
    """A norm's effective weight (Gemma's RMSNorm multiplies by 1 + weight)."""
    w = norm.weight.detach()
    return 1.0 + w if type(norm).__name__.startswith("Gemma") else w


def _normalize(x, norm, layernorm: bool):
    """x before the norm's weight, and the norm's scale."""
    eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", None)
    if layernorm:
        x = x - x.mean(-1, keepdim=True)
    scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return x / scale, scale


@torch.no_grad()
def _hf_activations(hf):
    layers, final = _parts(hf)
    seen = {}

    def keep(name, inputs=False):
        def hook(module, args, out):
            seen[name] = (args[0] if inputs else (out[0] if isinstance(out, tuple) else out))[0]

        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(_pre_mlp_norm(layer).register_forward_hook(keep(f"{i}.resid_mid", True)))
        handles.append(layer.mlp.register_forward_hook(keep(f"{i}.mlp_in", True)))
        handles.append(layer.mlp.register_forward_hook(keep(f"{i}.mlp_out")))
        if hasattr(layer, "post_feedforward_layernorm"):
            post = layer.post_feedforward_layernorm
            handles.append(post.register_forward_hook(keep(f"{i}.mlp_written")))
    handles.append(final.register_forward_hook(keep("final_in", True)))
    try:
        hf(IDS[None])
    finally:
        for h in handles:
            h.remove()
    return seen


@torch.no_grad()
def _check_by_hand(arch, dicts, graph):
    """Feature activations, and the last layer's feature and error edges into every logit."""
    hf, model = arch.hf, arch.models["none"]
    facts = norm_facts(model)
    seen = _hf_activations(hf)
    layers, final = _parts(hf)
    last = len(layers) - 1
    for layer, d in enumerate(dicts):
        resid = seen[f"{layer}.resid_mid"]
        read = canonical(d.in_hook, facts).split(".", 2)[2]
        x = {
            "hook_resid_mid": resid,
            "ln2.hook_out": seen[f"{layer}.mlp_in"],
            "ln2.hook_normalized": _normalize(resid, _pre_mlp_norm(layers[layer]), facts.layernorm)[
                0
            ],
        }[read]
        acts = d.encode(x)
        nodes = graph.find("feature", layer=layer)
        by_hand = acts[graph.node_pos[nodes], graph.node_feature[nodes]]
        # (Llama and Gemma norms compute in float32 inside a float64 model)
        assert (graph.node_activation[nodes] - by_hand).abs().max() <= 1e-5 * acts.max()
        assert len(nodes) == int((acts[1:] > 0).sum())
    # direct edges into logits: v at the last layer's out_hook, last position, through the frozen
    # post-MLP norm (writes before it) and final norm: v . C(w_f * u) / s_f
    d, p = dicts[last], len(IDS) - 1
    raw = canonical(d.out_hook, facts).endswith("mlp.hook_out") and facts.post_norms
    y = seen[f"{last}.mlp_out"] if raw or not facts.post_norms else seen[f"{last}.mlp_written"]
    x_read = d.encode(_read_for_hand(d, seen, layers, facts, last))
    error = y[p] - d(_read_for_hand(d, seen, layers, facts, last))[p]
    _, s_final = _normalize(seen["final_in"][p], final, facts.layernorm)
    W = hf.get_output_embeddings().weight.detach()
    u = W - W.mean(0, keepdim=True)
    logit_nodes = graph.find("logit")
    g = _weight(final)[None] * u[graph.node_feature[logit_nodes]]
    if facts.layernorm:
        g = g - g.mean(-1, keepdim=True)
    g = g / s_final
    if raw:
        post = layers[last].post_feedforward_layernorm
        _, s_post = _normalize(y[p], post, False)
        g = g * _weight(post) / s_post
    sources = {graph.find("error", layer=last, pos=p)[0]: error}
    for i in graph.find("feature", layer=last, pos=p):
        f = int(graph.node_feature[i])
        sources[i] = x_read[p, f] * d.W_dec[f]
    for i, v in sources.items():
        by_hand = g @ v
        edges = graph.adjacency[logit_nodes, i].double()
        scale = by_hand.abs().max()
        assert scale > 1e-6
        assert (edges - by_hand).abs().max() <= 1e-5 * max(scale, 1e-3)


@torch.no_grad()
def _check_mid_graph_by_hand(arch, dicts, graph):
    """Llama: every edge from a layer-0 feature or error node into a layer-1 feature, from the
    Hugging Face model's weights and activations. The source vector v (a W_dec row, or the
    error) enters the residual stream at its position k; layer 1's attention carries it to
    query q through the frozen pattern P and ln1 scale s1: v[q] + sum_h P_h[q, k] OV_h(w1 v /
    s1[k]); the target reads that at `hook_resid_mid`, or through the frozen ln2 scale s2[q]
    (`ln2.hook_normalized`), and ln2's weight (`ln2.hook_out`); the edge is that read . W_enc."""
    hf = arch.hf
    facts = norm_facts(arch.models["none"])
    layers, _ = _parts(hf)
    block, attn = layers[1], layers[1].self_attn
    seen = _hf_activations(hf)
    got = {}

    def keep(name):
        def hook(module, args, out):
            got[name] = (args[0][0], out)

        return hook

    modules = {"ln1": block.input_layernorm, "q": attn.q_proj, "k": attn.k_proj}
    modules["rope"] = hf.model.rotary_emb
    handles = [m.register_forward_hook(keep(name)) for name, m in modules.items()]
    try:
        hf(IDS[None])
    finally:
        for h in handles:
            h.remove()
    pattern = _llama_pattern(got, attn)  # [head, q, k]
    _, s1 = _normalize(got["ln1"][0], block.input_layernorm, False)  # ln1's input: resid_pre
    _, s2 = _normalize(seen["1.resid_mid"], block.post_attention_layernorm, False)
    w1, w2 = _weight(block.input_layernorm), _weight(block.post_attention_layernorm)
    n_heads, n_kv, d_head = pattern.shape[0], attn.config.num_key_value_heads, attn.head_dim
    W_v = attn.v_proj.weight.detach().view(n_kv, d_head, -1)  # [kv head, e, d]
    W_o = attn.o_proj.weight.detach().view(-1, n_heads, d_head)  # [d, head, e]
    group = n_heads // n_kv  # grouped-query attention: head h reads kv head h // group
    ov = torch.stack([W_v[h // group].T @ W_o[:, h].T for h in range(n_heads)])  # [h, d, d]
    first, second = dicts
    x0 = _read_for_hand(first, seen, layers, facts, 0)
    acts0, error0 = first.encode(x0), seen["0.mlp_out"] - first(x0)
    read = canonical(second.in_hook, facts).split(".", 2)[2]
    sources = [*graph.find("feature", layer=0), *graph.find("error", layer=0)]
    targets = graph.find("feature", layer=1)
    assert len(sources) > 5 and len(targets) > 5
    by_hand = torch.zeros(len(targets), len(sources), dtype=torch.float64)
    for j, s in enumerate(sources):
        k, f = int(graph.node_pos[s]), int(graph.node_feature[s])
        v = acts0[k, f] * first.W_dec[f] if graph.node_kind[s] == "feature" else error0[k]
        carried = torch.einsum("hq,hd->qd", pattern[:, :, k], (w1 * v / s1[k]) @ ov)  # [q, d]
        carried[k] += v
        if read != "hook_resid_mid":
            carried = carried / s2
            carried = carried * w2 if read == "ln2.hook_out" else carried
        q, t = graph.node_pos[targets], graph.node_feature[targets]
        by_hand[:, j] = (carried[q] * second.W_enc[:, t].T).sum(-1)
    edges = graph.adjacency[targets][:, sources].double()
    scale = by_hand.abs().max()
    assert scale > 1e-3 and (edges != 0).float().mean() > 0.5
    assert (edges - by_hand).abs().max() <= 1e-5 * scale


def _llama_pattern(got, attn):
    """Llama's attention pattern from its query and key projections and rotary cos/sin."""
    cos, sin = (t[0, :, None] for t in got["rope"][1])  # [pos, 1, d_head]
    d_head, n_pos = attn.head_dim, len(IDS)

    def rotated(x):
        x = x.view(n_pos, -1, d_head)
        half = torch.cat([-x[..., d_head // 2 :], x[..., : d_head // 2]], -1)
        return x * cos + half * sin

    q, k = rotated(got["q"][1][0]), rotated(got["k"][1][0])
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # grouped-query attention
    scores = torch.einsum("qhe,khe->hqk", q, k) / d_head**0.5
    causal = torch.ones(n_pos, n_pos, dtype=torch.bool).tril()
    return scores.masked_fill(~causal, -torch.inf).softmax(-1)


def _read_for_hand(d, seen, layers, facts, layer):
    read = canonical(d.in_hook, facts).split(".", 2)[2]
    resid = seen[f"{layer}.resid_mid"]
    if read == "hook_resid_mid":
        return resid
    if read == "ln2.hook_out":
        return seen[f"{layer}.mlp_in"]
    return _normalize(resid, _pre_mlp_norm(layers[layer]), facts.layernorm)[0]


def test_auto_says_in_one_line_why_it_falls_back(tiny_gpt2, capsys):
    d = tiny_gpt2.cfg.d_model
    saes = [Dictionary(d, d, 16, f"blocks.{i}.hook_mlp_out") for i in range(2)]
    graph = attribute(tiny_gpt2, saes, IDS, verbose=False)
    assert graph.metadata["method"] == "autograd" and capsys.readouterr().err == ""
    attribute(tiny_gpt2, saes, IDS, verbose=True)
    lines = [x for x in capsys.readouterr().err.splitlines() if "linear one does not apply" in x]
    assert len(lines) == 1 and "SAE at 'blocks.0.hook_mlp_out'" in lines[0]


def test_aliases_of_one_tensor_are_one_out_hook(tiny_llama):
    """`mlp.hook_out` is `hook_mlp_out` on Llama: two dictionaries there are refused by name."""
    d = tiny_llama.cfg.d_model
    a = Dictionary(d, d, 8, "blocks.0.mlp.hook_in", "blocks.0.mlp.hook_out")
    b = Dictionary(d, d, 8, "blocks.0.ln2.hook_out", "blocks.0.hook_mlp_out")
    with pytest.raises(Exception, match="the tensor of 'blocks.0.mlp.hook_out'"):
        attribute(tiny_llama, [a, b], IDS, verbose=False)


@pytest.mark.parametrize(
    "in_hook,out_hook,problem",
    [
        ("blocks.0.mlp.hook_in", "blocks.0.mlp.hook_in", "writes the norm output"),
        ("blocks.0.attn.hook_result", "blocks.0.attn.hook_result", "no exact conversion"),
        ("blocks.0.attn.o.hook_in", "blocks.0.hook_attn_out", "holds the value bias"),
        ("blocks.0.hook_in", "blocks.0.mlp.hook_out", "per-token mean this model does not keep"),
    ],
)
def test_no_conversion_is_refused_by_name(in_hook, out_hook, problem):
    """What has no exact conversion is refused with the reason (aliases included)."""
    found = fit_problem(in_hook, out_hook, False, "none", "folded", True, True)
    assert found is not None and problem in found


def test_atlas_reads_an_alias_like_its_canonical_hook(tiny_llama):
    """A feature atlas' direct path from the embeddings: `mlp.hook_in` is `ln2.hook_out`."""
    from replacement.atlas.weights import _direct_input

    d = tiny_llama.cfg.d_model
    alias = Dictionary(d, d, 8, "blocks.0.mlp.hook_in", "blocks.0.mlp.hook_out")
    plain = Dictionary(d, d, 8, "blocks.0.ln2.hook_out", "blocks.0.hook_mlp_out")
    got, want = _direct_input(alias, tiny_llama), _direct_input(plain, tiny_llama)
    assert got is not None and torch.equal(got, want)


@pytest.mark.parametrize("processing", ["none", "folded"])
def test_table_aliases_hold_the_same_tensor(arch, processing):
    """Every alias the table names holds its canonical hook's activation on the bridge, and
    a norm's output before and after its weight differ unless the model is folded."""
    from replacement import hook_table

    model = arch.models[processing]
    facts = norm_facts(model)
    with torch.no_grad():
        _, cache = model.run_with_cache(IDS[None])
    aliases = [h for h in cache if hook_table.canonical(h, facts) != h]
    assert any(h.endswith("mlp.hook_in") for h in aliases)
    for hook in aliases:
        torch.testing.assert_close(cache[hook], cache[hook_table.canonical(hook, facts)])
    before, after = cache["blocks.1.ln2.hook_normalized"], cache["blocks.1.ln2.hook_out"]
    assert torch.allclose(before, after) == (processing == "folded")
