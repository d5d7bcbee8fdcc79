"""Claims no other test pinned down: the error term's gradients, BOS in graphs, safe exports.

- `splice(error_term=True)`: the forward is exact, and gradients reach the inputs and the
  dictionary's weights only through the dictionary (the error term is detached), equal to
  autograd through the dictionary alone.
- Attribution graphs hold no feature or error node at position 0 (BOS), although features
  fire there.
- An export killed or interrupted mid-write leaves the previous file as it was.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from circuits.attribution.attribute import attribute
from replacement.splice import splice
from tests.attribution_helpers import random_transcoders

PROMPT = "def add(a, b):\n    return a + b"


def _tokens(model):
    return model.to_tokens(PROMPT)


def _spliced_grads(model, tc, tokens, keep_bos):
    """Gradients of a fixed loss through the model with `tc` spliced in with its error term.

    The transcoder's input is made a leaf, so its gradient shows every path that reaches it
    (the dictionary's, and the MLP's if the error term leaked). Returns (logits, grad of the
    input, grads of the dictionary's weights, grad arriving at the spliced output).
    """
    leaf: dict[str, torch.Tensor] = {}

    def make_leaf(act, hook):
        leaf["x"] = act.detach().requires_grad_(True)
        return leaf["x"]

    def keep_output(act, hook):
        act.retain_grad()
        leaf["out"] = act
        return act

    # hooks run in the order they were added: the leaf first, then splice, then the capture
    with model.hooks(fwd_hooks=[(tc.in_hook, make_leaf)]):
        with splice(model, [tc], error_term=True, keep_bos=keep_bos):
            with model.hooks(fwd_hooks=[(tc.out_hook, keep_output)]):
                logits = model(tokens)
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
    (logits * weights).sum().backward()
    params = {n: p.grad.clone() for n, p in tc.named_parameters()}
    return logits.detach(), leaf["x"].grad, params, leaf["out"].grad


@pytest.mark.parametrize("keep_bos", [False, True])
def test_error_term_gradients_flow_only_through_the_dictionary(tiny_gpt2, keep_bos):
    tc = random_transcoders(tiny_gpt2, n_features=24)[0]
    tc.requires_grad_(True)
    tokens = _tokens(tiny_gpt2)
    with torch.no_grad():
        clean = tiny_gpt2(tokens)
    logits, x_grad, param_grads, g = _spliced_grads(tiny_gpt2, tc, tokens, keep_bos)
    torch.testing.assert_close(logits, clean, atol=1e-5, rtol=0)  # the error term is exact

    # autograd through the dictionary alone, fed the gradient that reached the spliced output
    tc.zero_grad()
    with torch.no_grad():
        _, cache = tiny_gpt2.run_with_cache(tokens, names_filter=[tc.in_hook])
    x = cache[tc.in_hook].detach().requires_grad_(True)
    y_hat = tc(x)
    if keep_bos:  # position 0 keeps the model's own activation: nothing reaches the dictionary
        g = torch.cat([torch.zeros_like(g[:, :1]), g[:, 1:]], dim=1)
    (y_hat * g).sum().backward()
    expected_x = x.grad
    if keep_bos:  # ...but the model's own MLP path at position 0 still carries gradient
        expected_x = torch.cat([x_grad[:, :1], expected_x[:, 1:]], dim=1)
    torch.testing.assert_close(x_grad, expected_x, atol=1e-6, rtol=1e-5)
    for name, p in tc.named_parameters():
        torch.testing.assert_close(param_grads[name], p.grad, atol=1e-6, rtol=1e-5)
        assert p.grad.abs().sum() > 0, name  # the dictionary is on the gradient's path


def test_no_feature_or_error_nodes_at_bos(tiny_gpt2):
    tcs = random_transcoders(tiny_gpt2, n_features=24)
    tokens = _tokens(tiny_gpt2)
    with torch.no_grad():
        _, cache = tiny_gpt2.run_with_cache(tokens, names_filter=[tc.in_hook for tc in tcs])
        at_bos = sum(int((tc.encode(cache[tc.in_hook][0, 0]) > 0).sum()) for tc in tcs)
    assert at_bos > 0  # features fire at BOS, so leaving them out is a real choice
    graph = attribute(tiny_gpt2, tcs, PROMPT, verbose=False)
    for kind in ("feature", "error"):
        positions = graph.node_pos[graph.mask(kind)]
        assert len(positions) > 0 and int(positions.min()) >= 1, kind


@pytest.fixture(scope="module")
def small_graph(tiny_gpt2):
    tcs = random_transcoders(tiny_gpt2, n_features=24)
    # few nodes: the export validates every link against the schema
    return attribute(tiny_gpt2, tcs, PROMPT, max_feature_nodes=8, max_n_logits=2, verbose=False)


def test_export_interrupted_mid_write_keeps_previous_file(small_graph, tmp_path, monkeypatch):
    path = tmp_path / "graph.json"
    small_graph.to_json(slug="first", path=path)
    before = path.read_bytes()

    def half_then_interrupt(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        small_graph.to_json(slug="second", path=path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.json"]  # no temporary left


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (POSIX)")
def test_export_killed_mid_write_keeps_previous_file(small_graph, tmp_path):
    path = tmp_path / "graph.json"
    small_graph.to_json(slug="first", path=path)
    before = path.read_bytes()
    pid = os.fork()
    if pid == 0:
        try:

            def half_then_die(self, text, *args, **kwargs):
                with open(self, "w") as f:
                    f.write(text[: len(text) // 2])
                os.kill(os.getpid(), signal.SIGKILL)

            Path.write_text = half_then_die
            small_graph.to_json(slug="second", path=path)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert path.read_bytes() == before
    assert json.loads(before)["metadata"]["slug"] == "first"
