"""Faithfulness, completeness, node ranking and the MIB area metrics (analysis package)."""

from __future__ import annotations

import pytest
import torch

from analysis.faithfulness import cmd, cpr, faithfulness_curve
from analysis.node_forward import SiteControl, node_forward
from analysis.nodes import layout_for, reference_values
from analysis.ranking import attribution_patching, integrated_gradients
from analysis.tasks import TaskBatch, prompt_metric
from replacement import load_model
from replacement.dictionary import Dictionary
from replacement.hooks import layer_hooks
from tests.attribution_helpers import random_transcoders
from tests.tiny_models import make_gpt2, save_hf, silence_attention_and_first_mlp

A, B, X, Y = 40, 41, 60, 61  # last tokens of the prompts and the two answers


def random_batch(vocab: int, n: int = 12, pos: int = 6, seed: int = 0) -> TaskBatch:
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, vocab, (n, pos), generator=gen)
    clean[:, 0] = 0
    corrupt = clean.clone()
    corrupt[:, -1] = torch.randint(1, vocab, (n,), generator=gen)
    return TaskBatch(
        clean,
        corrupt,
        torch.full((n,), pos - 1),
        torch.randint(1, vocab, (n, 1), generator=gen),
        torch.randint(1, vocab, (n, 1), generator=gen),
        "logit_diff",
    )


@pytest.fixture(scope="module")
def random_setup(tiny_gpt2):
    dicts = random_transcoders(tiny_gpt2, "relu", skip=True, n_features=48)
    return tiny_gpt2, dicts, random_batch(tiny_gpt2.cfg.d_vocab)


@pytest.mark.parametrize("ablation", ["mean", "zero", "counterfactual"])
def test_full_set_is_faithful_and_empty_set_is_not(random_setup, ablation):
    model, dicts, batch = random_setup
    scores = attribution_patching(model, dicts, batch, ablation=ablation)
    n = scores.layout.n_nodes
    curve = faithfulness_curve(model, dicts, batch, scores, sizes=[0, 5, n], ablation=ablation)
    assert curve.faithfulness[0] == pytest.approx(0.0, abs=1e-9)
    assert curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-4)
    assert curve.completeness[-1] == pytest.approx(0.0, abs=1e-4)  # nothing left outside
    assert curve.completeness[0] == pytest.approx(1.0, abs=1e-4)
    # the full node set is the original model: the error nodes make the forward exact
    with torch.no_grad():
        original = prompt_metric(model, batch).mean().item()
    assert curve.metric_full == pytest.approx(original, rel=1e-4, abs=1e-4)


def test_ablating_a_zero_effect_node_changes_nothing(random_setup):
    model, dicts, batch = random_setup
    layout = layout_for(model, dicts, batch, per_position=True)
    reference = reference_values(model, dicts, batch, "mean", True)
    scores = attribution_patching(model, dicts, batch)
    # a feature that is off on every prompt at some position: mean == clean, effect exactly 0
    with torch.no_grad(), node_forward(model, dicts, record=True) as state:
        model(batch.clean)
    acts = state.values[dicts[1].out_hook].acts  # [n, pos, F]
    dead = (acts == 0).all(0)[1:]  # [pos-1, F]
    assert dead.any()
    pos, feature = (int(i) for i in dead.nonzero()[0])
    feats, _, _ = layout.split(torch.arange(layout.n_nodes))[1]
    index = int(feats[pos, feature])
    assert layout.describe(index) == (layout.layers[1], pos + 1, feature)
    assert scores.scores[index] == 0.0

    def metric_keeping(keep: torch.Tensor) -> torch.Tensor:
        controls = {
            h: SiteControl(keep_features=f, keep_errors=e, keep_skips=k, reference=reference[h])
            for h, (f, e, k) in layout.masks(keep).items()
        }
        with torch.no_grad(), node_forward(model, dicts, controls):
            return prompt_metric(model, batch)

    keep = torch.ones(layout.n_nodes, dtype=torch.bool)
    full = metric_keeping(keep)
    keep[index] = False
    assert torch.equal(metric_keeping(keep), full)  # bit for bit
    keep[index + 1 if index + 1 < len(keep) else index - 1] = False
    with torch.no_grad():
        assert torch.allclose(full, prompt_metric(model, batch), atol=1e-5)


def test_cpr_and_cmd_match_a_hand_computed_curve():
    fractions = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    faith = [0.1, 0.2, 0.4, 0.5, 0.7, 0.9, 1.1, 1.0, 1.0, 1.0]
    by_hand_cpr = sum(
        (fractions[i + 1] - fractions[i]) * (faith[i] + faith[i + 1]) / 2 for i in range(9)
    )
    gaps = [abs(1 - f) for f in faith]
    by_hand_cmd = sum(
        (fractions[i + 1] - fractions[i]) * (gaps[i] + gaps[i + 1]) / 2 for i in range(9)
    )
    assert cpr(fractions, faith) == pytest.approx(by_hand_cpr, abs=1e-12)
    assert cmd(fractions, faith) == pytest.approx(by_hand_cmd, abs=1e-12)
    # |1 - f| is not 1 - f where the curve overshoots
    assert cmd(fractions, faith) != pytest.approx(1.0 * 0.999 - cpr(fractions, faith))


@pytest.fixture(scope="module")
def one_feature_model(tmp_path_factory, tiny_tokenizer):
    """A 2-layer GPT-2 whose answer is written by one MLP neuron of layer 1, read from the last
    token (A -> answer X, B -> answer Y); attention and layer 0's MLP write nothing."""
    hf = make_gpt2(len(tiny_tokenizer))
    d = hf.config.n_embd
    silence_attention_and_first_mlp(hf)
    with torch.no_grad():
        last = 4
        wte, wpe = hf.transformer.wte.weight, hf.transformer.wpe.weight

        def normed(tok: int) -> torch.Tensor:
            return torch.nn.functional.layer_norm(wte[tok] + wpe[last], (d,))

        direction = normed(A) - normed(B)
        mlp = hf.transformer.h[1].mlp
        mlp.c_fc.weight[:, 0] = 3.0 * direction / direction.norm()
        mlp.c_fc.bias[0] = -(3.0 * direction / direction.norm()) @ (normed(A) + normed(B)) / 2
        h_a = mlp.c_fc.weight[:, 0] @ normed(A) + mlp.c_fc.bias[0]
        fired = torch.nn.functional.gelu(h_a, approximate="tanh")
        mlp.c_proj.weight.zero_()
        mlp.c_proj.weight[0] = 1.0 * (wte[X] - wte[Y])
        # half way between the two answers when the neuron is off: B prompts then say Y
        mlp.c_proj.bias.copy_(-0.5 * fired * mlp.c_proj.weight[0])
    model = load_model(save_hf(hf, tiny_tokenizer, tmp_path_factory.mktemp("one_feature")))
    # transcoders: layer 1 feature 0 copies the neuron (ReLU for GELU); the rest are inert
    dicts = []
    for layer in range(2):
        hooks = layer_hooks(layer)
        tc = Dictionary(d, d, 16, hooks.mlp_in, hooks.mlp_out, "relu", apply_b_dec_to_input=False)
        with torch.no_grad():
            tc.W_enc.normal_(0, 0.3)
            tc.b_enc.fill_(-10.0)  # never fire
            tc.W_dec.normal_(0, 0.01)
            tc.b_dec.copy_(model.b_out[layer].detach())
            if layer == 1:
                tc.W_enc[:, 0] = model.W_in[1][:, 0].detach()
                tc.b_enc[0] = model.b_in[1][0].detach()
                tc.W_dec[0] = model.W_out[1][0].detach()
        dicts.append(tc.eval())
    gen = torch.Generator().manual_seed(1)
    n = 16
    clean = torch.randint(1, 30, (n, last + 1), generator=gen)
    clean[:, 0] = 0
    clean[:, -1] = torch.tensor([A, B] * (n // 2))
    corrupt = clean.clone()
    corrupt[:, -1] = torch.tensor([B, A] * (n // 2))
    answer = torch.tensor([[X], [Y]] * (n // 2))
    wrong = torch.tensor([[Y], [X]] * (n // 2))
    batch = TaskBatch(clean, corrupt, torch.full((n,), last), answer, wrong, "logit_diff")
    return model, dicts, batch


def test_one_feature_carrying_the_answer_is_the_size_one_circuit(one_feature_model):
    model, dicts, batch = one_feature_model
    with torch.no_grad():
        assert (prompt_metric(model, batch) > 0.1).all()  # the construction answers right
    for method in (attribution_patching, integrated_gradients):
        scores = method(model, dicts, batch)
        assert scores.top(1)[0][0] == (1, 4, 0)  # layer 1, last position, feature 0
    curve = faithfulness_curve(model, dicts, batch, scores, sizes=[0, 1, 2])
    assert curve.faithfulness[1] > 0.95
    assert curve.completeness[1] < 0.05


def test_integrated_gradients_track_the_measured_effect_better_than_one_gradient(one_feature_model):
    model, dicts, batch = one_feature_model
    layout = layout_for(model, dicts, batch, True)
    node = int(layout.split(torch.arange(layout.n_nodes))[1][0][3, 0])  # (1, 4, 0)
    keep = torch.ones(layout.n_nodes, dtype=torch.bool)
    keep[node] = False
    reference = reference_values(model, dicts, batch, "mean", True)
    controls = {
        h: SiteControl(keep_features=f, keep_errors=e, keep_skips=k, reference=reference[h])
        for h, (f, e, k) in layout.masks(keep).items()
    }
    with torch.no_grad():
        full = prompt_metric(model, batch).mean()
        with node_forward(model, dicts, controls):
            measured = float(full - prompt_metric(model, batch).mean())
    atp = float(attribution_patching(model, dicts, batch).scores[node])
    ig = float(integrated_gradients(model, dicts, batch, steps=8).scores[node])
    assert measured > 0
    assert abs(ig - measured) < abs(atp - measured)  # the metric saturates: one gradient is far off
    assert ig == pytest.approx(measured, rel=0.05)


@pytest.mark.parametrize("per_position", [True, False])
def test_empty_circuit_under_mean_ablation_is_the_model_at_its_mean_site_outputs(
    random_setup, per_position
):
    """Known answer: every node at its task mean makes each spliced site's output the clean
    mean of that site's output (decoder, skip and error are linear in the node values, and
    the ablated values do not follow upstream changes); BOS keeps its own. Zero ablation gives
    another number, so a mean that silently became zero fails here."""
    model, dicts, batch = random_setup
    sites = [d.out_hook for d in dicts]
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.clean, names_filter=lambda n: n in sites)
    valid = (torch.arange(batch.clean.shape[1])[None] >= 1) & (
        torch.arange(batch.clean.shape[1])[None] <= batch.last[:, None]
    )
    means = {}
    for site in sites:
        out = cache[site]  # [n, pos, d]
        if per_position:
            means[site] = out.mean(0, keepdim=True).expand_as(out)
        else:
            w = valid[..., None].to(out)
            means[site] = ((out * w).sum((0, 1)) / w.sum()).expand_as(out)

    def at_mean(act, hook):
        act = act.clone()
        act[:, 1:] = means[hook.name][:, 1:]
        return act

    with torch.no_grad(), model.hooks(fwd_hooks=[(s, at_mean) for s in sites]):
        expected = prompt_metric(model, batch).mean().item()
    curves = {}
    for ablation in ("mean", "zero"):
        scores = attribution_patching(
            model, dicts, batch, ablation=ablation, per_position=per_position
        )
        n = scores.layout.n_nodes
        curves[ablation] = faithfulness_curve(
            model, dicts, batch, scores, sizes=[0, n], ablation=ablation
        )
    assert curves["mean"].metric_empty == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert abs(curves["zero"].metric_empty - expected) > 0.01  # 100x the tolerance above
