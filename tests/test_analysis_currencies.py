"""Node currencies, attention-head nodes, baselines, splits and intervals (analysis.units,
analysis.circuit_eval, analysis.intervals), each on a case with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.circuit_eval import grid_sizes, measure, node_effects, order_of, record, references
from analysis.intervals import (
    faithfulness_rows,
    interval,
    nodes_for,
    pair_resamples,
    split_pairs,
)
from analysis.tasks import prompt_metric
from analysis.units import CURRENCIES, Layout, NodeSystem, system_for
from replacement import load_model
from replacement.dictionary import Dictionary
from replacement.hooks import layer_hooks
from tests.attribution_helpers import random_transcoders
from tests.test_analysis_faithfulness import random_batch
from tests.tiny_models import make_gpt2, save_hf, silence_attention_and_first_mlp


def curve(model, dicts, batch, currency, baseline=None, ablation="mean", sizes=None):
    """(sizes, per-pair metric [sizes, n], model metric [n], layout) of the AtP-ranked circuits,
    ranked and measured on the same pairs."""
    system = system_for(model, dicts, "x", currency, baseline=baseline)
    clean, model_metric = record(system, model, batch)
    corrupt = record(system, model, batch, True)[0] if ablation == "counterfactual" else None
    reference = references(clean, batch, ablation, corrupt=corrupt)
    layout = Layout(system.counted, batch.clean.shape[1])
    scores = layout.flatten(node_effects(system, model, batch, reference))
    sizes = sizes or grid_sizes(layout.n_nodes)
    metric = measure(system, model, batch, reference, layout, order_of(scores), sizes)
    return sizes, metric.numpy(), model_metric.numpy(), layout, scores


def faith(metric, model_metric):
    return faithfulness_rows(metric, model_metric, np.arange(len(model_metric)))[0]


def ablated_model_metric(model, batch, reference_of) -> float:
    """The metric with every attention head's z and every MLP output replaced (positions
    1..) by `reference_of(hook, live)`: the fully ablated model, by plain hooks."""

    def hook(act, hook):
        out = act.clone()
        out[:, 1:] = reference_of(hook.name, act)[:, 1:]
        return out

    hooks = []
    for layer in range(model.cfg.n_layers):
        hooks += [(f"blocks.{layer}.attn.hook_z", hook), (f"blocks.{layer}.hook_mlp_out", hook)]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        return float(prompt_metric(model, batch).mean())


def hook_means(model, batch) -> dict[str, torch.Tensor]:
    _, cache = model.run_with_cache(batch.clean)
    names = [
        n
        for layer in range(model.cfg.n_layers)
        for n in (f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_mlp_out")
    ]
    return {n: cache[n].mean(0, keepdim=True) for n in names}


@pytest.fixture(scope="module")
def skip_setup(tiny_gpt2):
    dicts = random_transcoders(tiny_gpt2, "relu", skip=True, n_features=24)
    return tiny_gpt2, dicts, random_batch(tiny_gpt2.cfg.d_vocab, n=10)


@pytest.mark.parametrize("currency", CURRENCIES)
def test_all_nodes_give_one_and_none_zero_in_every_currency(skip_setup, currency):
    model, dicts, batch = skip_setup
    sizes, metric, model_metric, layout, _ = curve(model, dicts, batch, currency)
    assert any(p.name == "heads" for p in layout.parts)  # attention heads are nodes
    means = hook_means(model, batch)
    fully_ablated = ablated_model_metric(model, batch, lambda h, a: means[h].expand_as(a))
    f = faith(metric, model_metric)
    assert f[0] == pytest.approx(0.0, abs=1e-9)
    with torch.no_grad():
        original = float(prompt_metric(model, batch).mean())
    assert model_metric.mean() == pytest.approx(original, abs=1e-4)
    if currency == "features-dense-live":
        # every node kept is the model; the empty circuit keeps the dense paths live
        assert f[-1] == pytest.approx(1.0, abs=1e-4)
        assert metric[0].mean() != pytest.approx(fully_ablated, abs=1e-3)
    else:
        # the empty circuit is the fully ablated model (heads and MLP outputs at their mean)
        assert metric[0].mean() == pytest.approx(fully_ablated, abs=1e-4)
        if currency == "all":
            assert f[-1] == pytest.approx(1.0, abs=1e-4)
        else:  # all features: the share they carry, which random features do not make whole
            assert abs(f[-1] - 1.0) > 1e-2
    # within the currency, keeping all its nodes is 1 and none is 0
    within = (metric.mean(1) - metric[0].mean()) / (metric[-1].mean() - metric[0].mean())
    assert within[0] == 0.0 and within[-1] == pytest.approx(1.0)


def test_mean_and_zero_ablation_give_the_fully_ablated_models_they_name(skip_setup):
    model, dicts, batch = skip_setup
    means = hook_means(model, batch)
    b_dec = {d.out_hook: d.b_dec.detach() for d in dicts}

    def zero_dict(hook, act):  # zero features, error and skip: the decoder bias is left
        return b_dec[hook].expand_as(act) if hook in b_dec else torch.zeros_like(act)

    expected = {
        ("mean", "mlp"): ablated_model_metric(model, batch, lambda h, a: means[h].expand_as(a)),
        ("zero", "mlp"): ablated_model_metric(model, batch, lambda h, a: torch.zeros_like(a)),
        ("zero", None): ablated_model_metric(model, batch, zero_dict),
    }
    expected[("mean", None)] = expected[("mean", "mlp")]  # decode is affine: mean of the output
    assert expected[("mean", "mlp")] != pytest.approx(expected[("zero", "mlp")], abs=1e-2)
    assert expected[("zero", None)] != pytest.approx(expected[("zero", "mlp")], abs=1e-2)
    for (ablation, baseline), value in expected.items():
        d = dicts if baseline is None else None
        _, metric, _, _, _ = curve(model, d, batch, "all", baseline, ablation, sizes=[0])
        assert metric[0].mean() == pytest.approx(value, abs=1e-4), (ablation, baseline)


@pytest.fixture(scope="module")
def skip_carries_task(tmp_path_factory, tiny_tokenizer):
    """A 2-layer GPT-2 whose attention and layer-0 MLP write nothing and whose layer-1 MLP is
    linear on the task's inputs (pre-activations far above zero, where GELU is the identity),
    with skip transcoders whose skip path is that linear map and whose features fire but
    write nothing: the skip path carries the whole task."""
    hf = make_gpt2(len(tiny_tokenizer))
    silence_attention_and_first_mlp(hf)
    with torch.no_grad():
        mlp = hf.transformer.h[1].mlp
        mlp.c_fc.weight.mul_(0.05)
        mlp.c_fc.bias.fill_(20.0)
        mlp.c_proj.weight.mul_(5.0)
    model = load_model(save_hf(hf, tiny_tokenizer, tmp_path_factory.mktemp("skip_task")))
    d = model.cfg.d_model
    dicts = []
    for layer in range(2):
        hooks = layer_hooks(layer)
        tc = Dictionary(d, d, 16, hooks.mlp_in, hooks.mlp_out, "relu", skip=True,
                        apply_b_dec_to_input=False)  # fmt: skip
        with torch.no_grad():
            tc.W_enc.normal_(0, 0.5)
            tc.b_enc.fill_(0.5)  # features fire ...
            tc.W_dec.zero_()  # ... and write nothing
            W_in, W_out = model.W_in[layer].detach(), model.W_out[layer].detach()
            tc.W_skip.copy_(W_in @ W_out)
            tc.b_dec.copy_(model.b_in[layer].detach() @ W_out + model.b_out[layer].detach())
        dicts.append(tc.eval())
    batch = random_batch(model.cfg.d_vocab, n=12, pos=5, seed=3)
    return model, dicts, batch


def test_features_of_a_dictionary_whose_skip_carries_the_task_are_worth_nothing(skip_carries_task):
    model, dicts, batch = skip_carries_task
    system = system_for(model, dicts, "x", "all")
    clean, _ = record(system, model, batch)
    err = clean[f"{dicts[1].out_hook}|error"][:, 1:]
    assert err.abs().max() < 1e-4  # the skip path is exact: nothing is left for the error
    sizes, metric, model_metric, _, _ = curve(model, dicts, batch, "features")
    f = faith(metric, model_metric)
    assert np.abs(f).max() < 1e-5  # at every size, all features included
    assert len(sizes) > 5
    # counted as nodes, the skip path of the answer position is the whole task
    _, metric_all, model_all, layout, scores = curve(model, dicts, batch, "all")
    top = layout.describe(int(order_of(scores)[0]))
    assert top[0] == "skip" and top[1:3] == (1, 4)
    f_all = faith(metric_all, model_all)
    assert f_all[1] == pytest.approx(1.0, abs=1e-2)


@pytest.fixture(scope="module")
def relu_model(tmp_path_factory, tiny_tokenizer):
    """A 2-layer ReLU GPT-2 and transcoders whose features are its MLP neurons."""
    hf = make_gpt2(len(tiny_tokenizer), seed=1, activation_function="relu")
    model = load_model(save_hf(hf, tiny_tokenizer, tmp_path_factory.mktemp("relu_gpt2")))
    d, d_mlp = model.cfg.d_model, model.cfg.d_mlp
    dicts = []
    for layer in range(2):
        hooks = layer_hooks(layer)
        tc = Dictionary(d, d, d_mlp, hooks.mlp_in, hooks.mlp_out, "relu",
                        apply_b_dec_to_input=False)  # fmt: skip
        with torch.no_grad():
            tc.W_enc.copy_(model.W_in[layer].detach())
            tc.b_enc.copy_(model.b_in[layer].detach())
            tc.W_dec.copy_(model.W_out[layer].detach())
            tc.b_dec.copy_(model.b_out[layer].detach())
        dicts.append(tc.eval())
    return model, dicts, random_batch(model.cfg.d_vocab, n=10, seed=5)


def test_a_dictionary_of_the_mlp_neurons_equals_the_neuron_baseline(relu_model):
    model, dicts, batch = relu_model
    assert model.cfg.act_fn == "relu"
    sizes, metric, model_metric, layout, scores = curve(model, dicts, batch, "features")
    b_sizes, b_metric, _, b_layout, b_scores = curve(model, None, batch, "all", "neurons")
    assert layout.n_nodes == b_layout.n_nodes and sizes == b_sizes
    assert torch.allclose(scores, b_scores, atol=1e-5)
    np.testing.assert_allclose(
        faith(metric, model_metric), faith(b_metric, model_metric), atol=1e-4
    )
    # and the neuron baseline is not the MLP-output baseline
    m_sizes, m_metric, _, _, _ = curve(model, None, batch, "all", "mlp")
    assert m_sizes != sizes


def test_discovery_and_heldout_splits_are_disjoint_and_cover_the_pairs():
    for n, share in ((64, 0.5), (9, 0.5), (10, 0.3)):
        disc, held = split_pairs(n, share, seed=4)
        assert not set(disc) & set(held)
        assert sorted([*disc, *held]) == list(range(n))
        assert len(held) == round(share * n)
    a, b = split_pairs(64, 0.5, seed=0), split_pairs(64, 0.5, seed=1)
    assert not np.array_equal(a[0], b[0])  # seeded: another seed, another split


def test_bootstrap_intervals_cover_the_true_faithfulness():
    """Per-pair metrics with known means and variance: the 95% interval of the faithfulness
    (a ratio of means) covers its true value in >= 90% of 200 draws."""
    rng = np.random.default_rng(0)
    n, truth, covered = 48, 0.6, 0
    for draw in range(200):
        empty = rng.normal(0.0, 0.5, n)
        circuit = rng.normal(0.6, 0.5, n)
        model = rng.normal(1.0, 0.5, n)
        metric = np.stack([empty, circuit])
        idx = pair_resamples(n, 400, seed=draw)
        lo, hi = interval(faithfulness_rows(metric, model, idx)[:, 1])
        covered += lo <= truth <= hi
    assert covered >= 180, covered
    # and a wrong (too narrow) interval would not: half the spread misses often
    assert covered < 200


def test_nodes_for_a_level_interpolates_in_log_size():
    sizes = [0, 1, 10, 100, 1000]
    f = np.array([0.0, 0.2, 0.6, 1.0, 1.0])
    # 0.8 lies half way from 10 (0.6) to 100 (1.0): sqrt(10 * 100) in log size
    assert nodes_for(sizes, f, 0.8) == pytest.approx(np.sqrt(10 * 100))
    assert nodes_for(sizes, f, 0.1) == pytest.approx(0.5)  # linear between 0 and 1
    assert np.isnan(nodes_for(sizes, f, 1.5))
    assert nodes_for(sizes, np.stack([f, f]), 0.8).shape == (2,)


def test_integrated_gradients_of_a_source_add_up_to_its_ablation_effect(skip_setup):
    """With many path points, a source's IG effects sum to the metric change of moving that
    source's nodes from the reference to their live values (the completeness axiom)."""
    model, dicts, batch = skip_setup
    system = system_for(model, dicts, "x", "all")
    clean, model_metric = record(system, model, batch)
    reference = references(clean, batch, "mean")
    effects = node_effects(system, model, batch, reference, "integrated_gradients", steps=48)
    source = system.sources[1]  # the first dictionary site
    keys = [p.key for p in source.parts]
    total = sum(float(effects[k].sum()) for k in keys)
    from analysis.units import PartControl

    controls = {k: PartControl(replace=reference[k].expand_as(clean[k])) for k in keys}
    with torch.no_grad(), system.forward(model, controls):
        ablated = float(prompt_metric(model, batch).mean())
    assert total == pytest.approx(float(model_metric.mean()) - ablated, rel=0.02, abs=1e-3)
    atp = node_effects(system, model, batch, reference)
    assert not torch.allclose(atp[keys[0]], effects[keys[0]])  # a real difference to AtP


@pytest.mark.parametrize(
    "currency, ablation", [*((c, "mean") for c in CURRENCIES), ("all", "counterfactual")]
)
def test_joint_integrated_gradients_add_up_to_the_whole_circuit(skip_setup, currency, ablation):
    """With many path points, the joint IG scores of all counted nodes sum to m(all nodes)
    - m(no nodes), both measured as circuits (completeness on the circuit's own function)."""
    model, dicts, batch = skip_setup
    system = system_for(model, dicts, "x", currency)
    clean, _ = record(system, model, batch)
    corrupt = record(system, model, batch, True)[0] if ablation == "counterfactual" else None
    reference = references(clean, batch, ablation, corrupt=corrupt)
    layout = Layout(system.counted, batch.clean.shape[1])
    effects = node_effects(system, model, batch, reference, "joint_integrated_gradients", 48)
    total = float(layout.flatten(effects).sum())
    order = torch.arange(layout.n_nodes)
    ends = measure(system, model, batch, reference, layout, order, [0, layout.n_nodes])
    expected = float(ends[1].mean() - ends[0].mean())
    assert abs(expected) > 0.005  # the circuit does something to add up
    assert total == pytest.approx(expected, rel=0.01, abs=1e-4)


def test_unknown_currency_is_refused(skip_setup):
    model, dicts, _ = skip_setup
    with pytest.raises(Exception, match="currency 'features-only' is unknown"):
        NodeSystem("x", system_for(model, dicts, "x").sources, "features-only")


def test_compare_reports_heldout_figures_with_intervals(skip_setup, tiny_tokenizer):
    """compare on a toy task: splits disjoint, every currency and baseline present, and the
    summary's intervals contain their point values."""
    from analysis.compare import compare
    from analysis.summary import summarize
    from analysis.tasks import task_from_dicts

    model, dicts, random = skip_setup

    def tokens(text):
        return tiny_tokenizer(text, add_special_tokens=False)["input_ids"]

    vocab = [tiny_tokenizer.decode([i]) for i in range(len(tiny_tokenizer))]
    words = [w for w in vocab if w.startswith(" ") and w[1:].isalpha() and len(tokens(w)) == 1]
    pairs = []
    for i in range(4 * len(words)):
        a, b, x, y = (words[(i * k + k) % len(words)] for k in (1, 2, 3, 5))
        clean, corrupt = f"{a}{b}{a}", f"{a}{b}{x}"
        if len(tokens(clean)) == len(tokens(corrupt)) == 3:
            pairs.append({"clean": clean, "corrupt": corrupt, "answer": b, "wrong": y})
        if len(pairs) == 12:
            break
    assert len(pairs) == 12
    task = task_from_dicts("toy", pairs)
    c = compare(model, {"tc": dicts}, [task], graph_prompts=2, verbose=False,
                compare_rankings=1, ig_steps=2, loss_tokens=random.clean)  # fmt: skip
    # each of the first two held-out prompts' own attribution graph, in order, gives its scores
    from analysis.tasks import target_direction, tokenize_task
    from circuits.attribution.attribute import attribute

    graph = c.settings["systems"]["tc"]["graph"]["toy"]
    batch = tokenize_task(model, task)
    held = c.tasks[0]["heldout"][:2]
    for b, row in enumerate(held):
        one = batch.rows(slice(row, row + 1))
        own = attribute(model, dicts, one.clean[0, : int(one.last[0]) + 1], verbose=False,
                        target_direction=target_direction(model, one), max_feature_nodes=128)  # fmt: skip
        scores = own.scores()
        assert graph["per_prompt"]["replacement"][b] == pytest.approx(scores.replacement)
        assert graph["per_prompt"]["completeness"][b] == pytest.approx(scores.completeness)
    assert graph["replacement"] == pytest.approx(np.mean(graph["per_prompt"]["replacement"]))
    t = c.tasks[0]
    assert not set(t["discovery"]) & set(t["heldout"])
    assert set(c.results) == {"tc", "random_skip_transcoder", "neurons", "mlp"}
    sites = c.sets[0].fvu_sites  # one per dictionary, and the summary's FVU is their mean
    assert len(sites) == len(dicts)
    assert sum(sites.values()) / len(sites) == pytest.approx(c.sets[0].fvu)
    lo, hi = c.sets[0].ce_increase_interval  # over the loss tokens' sequences
    assert lo < c.sets[0].ce_increase < hi
    lo, hi = c.sets[0].frac_recovered_interval
    assert lo < c.sets[0].frac_recovered < hi
    for name, (lo, hi) in c.sets[0].fvu_sites_interval.items():
        assert lo < sites[name] < hi
    lo, hi = c.sets[0].l0_interval
    assert lo < c.sets[0].l0 < hi
    s = summarize(c, b=100)
    got = s["graph"]["tc"]["replacement"]  # results.json carries the report's graph figure
    assert got["value"] == pytest.approx(graph["replacement"])
    # the random control is traced on the same prompts; the set is compared with it, paired
    control = c.settings["systems"]["random_skip_transcoder"]["graph"]["toy"]["per_prompt"]
    diff = s["graph"]["tc"]["replacement_minus_random"]
    want = np.mean(np.subtract(graph["per_prompt"]["replacement"], control["replacement"]))
    assert diff["value"] == pytest.approx(want) and diff["lo"] <= diff["value"] <= diff["hi"]
    assert got["lo"] <= got["value"] <= got["hi"]
    for currency in CURRENCIES:
        e = s["currencies"][currency]["systems"]["tc"]
        for split in ("heldout", "discovery"):
            at = e[split]["faithfulness_at"]["10"]
            assert at["lo"] <= at["hi"]
        assert set(e["vs"]) == {"random_skip_transcoder", "neurons", "mlp"}
    ranks = s["currencies"]["all"]["rankings"]["tc"]
    assert ranks["reference"] == "joint_integrated_gradients"  # the default ranking
    assert set(ranks["versus"]) == {"attribution_patching", "integrated_gradients"}
    assert all(v["top_overlap"] > 0 for v in ranks["versus"].values())
    # a results.json of two rankings with one flat agreement (written before joint IG) reads
    import json

    from analysis.compare import Comparison

    old = json.loads(json.dumps(c.to_dict()))
    old["settings"]["method"] = "attribution_patching"
    for t in old["tasks"]:
        t["rankings"] = ["attribution_patching", "integrated_gradients"]
    for per_currency in old["results"].values():
        for per_task in per_currency.values():
            for e in per_task.values():
                e["rankings"].pop("joint_integrated_gradients")
                e["agreement"] = {"spearman": 0.5, "top_overlap": 0.6, "top": 50}
    read = summarize(Comparison.from_dict(old), b=20)["currencies"]["all"]["rankings"]["tc"]
    assert read["reference"] == "attribution_patching"
    assert read["versus"]["integrated_gradients"]["spearman"] == 0.5


def test_an_attention_output_sae_stands_for_the_heads_of_its_layer(skip_setup):
    model, dicts, batch = skip_setup
    d = model.cfg.d_model
    sae = Dictionary(d, d, 16, "blocks.0.hook_attn_out", activation="relu")
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.W_dec.normal_(0, 0.3)
    sizes, metric, model_metric, layout, _ = curve(model, [sae.eval(), *dicts], batch, "all")
    heads = [p.layer for p in layout.parts if p.name == "heads"]
    assert heads == list(range(1, model.cfg.n_layers))  # layer 0's attention is the SAE's
    f = faith(metric, model_metric)
    assert f[0] == 0.0 and f[-1] == pytest.approx(1.0, abs=1e-4)
    means = hook_means(model, batch)
    assert metric[0].mean() == pytest.approx(
        ablated_model_metric(model, batch, lambda h, a: means[h].expand_as(a)), abs=1e-4
    )
