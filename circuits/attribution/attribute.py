"""Prompt attribution graphs: `attribute(model, dictionaries, prompt) -> AttributionGraph`.

Method (REFERENCE.md, "Prompt attribution graphs"): in the frozen local replacement model
(`circuits.attribution.replacement_forward`), every edge is linear, so

    A[t, s] = (source vector of s) . d(readout of t) / d(activation at s's out_hook)

with the readout of a feature target its encoder column at its in_hook, and of a logit target
the demeaned unembedding column at the final norm's output after its weight and bias
(`ln_final.hook_out`, the unembedding's input, so logit rows are exact on unprocessed models
too; last position). A model that soft-caps its logits (Gemma-2: cap * tanh(logit / cap))
gets rows of the logits before the cap, which are linear in the frozen model; circuit-tracer
does the same (it checks its Gemma graphs with the cap set to 0), while the probabilities that
choose the logit targets are the model's own, capped ones. Sources are the active features (a_s W_dec[s]), the error nodes
(y - y_hat, per layer and position) and the token embeddings. Target rows are computed many
at a time: the prompt is repeated along the batch, each batch row reads out a different
target, and one backward pass gives all rows.

Position 0 (BOS) has a token node but no feature or error nodes, and is never a target.
Rows go to the CPU as soon as they are computed; the dense adjacency never sits on the
accelerator.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from circuits.attribution.crosslayer_slices import expand_crosslayer
from circuits.attribution.feature_rows import (
    all_feature_rows,
    budgeted_feature_rows,
    sparse_feature_rows,
)
from circuits.attribution.linear_rows import LinearRowEngine, auto_batch_size, linear_path_problem
from circuits.attribution.row_engine import RowEngine
from circuits.attribution.sources import collect_sources
from circuits.graph.attribution_graph import AttributionGraph
from circuits.graph.sparse_rows import RowSparsity
from replacement.crosslayer import CrossLayerTranscoder
from replacement.dictionary import Dictionary
from replacement.errors import ShapeError, SparseCircuitsError
from replacement.hook_table import canonical, norm_facts
from replacement.hooks import hook_layer
from replacement.model import to_tokens
from replacement.splice import check_compatible


def prompt_tokens(model: Any, prompt: str | Tensor) -> Int[Tensor, " pos"]:
    """Token ids of a prompt with BOS at position 0 (prepended when missing), within n_ctx."""
    if isinstance(prompt, str):
        tokens = to_tokens(model, prompt)[0]
    else:
        tokens = torch.as_tensor(prompt)
        if tokens.dim() == 2 and tokens.shape[0] == 1:
            tokens = tokens[0]
        if tokens.dim() != 1 or tokens.is_floating_point() or tokens.is_complex():
            raise ShapeError(
                f"a prompt tensor should hold integer token ids of shape [n] or [1, n]; got "
                f"{tuple(tokens.shape)} {tokens.dtype} (attribute one prompt at a time)"
            )
        if tokens.numel() and not 0 <= int(tokens.min()) <= int(tokens.max()) < model.cfg.d_vocab:
            raise SparseCircuitsError(
                f"prompt token ids span {int(tokens.min())}..{int(tokens.max())}; the model's "
                f"vocabulary has {model.cfg.d_vocab} tokens"
            )
        tokens = tokens.long().to(model.cfg.device)
        bos = getattr(model.tokenizer, "bos_token_id", None)
        if bos is not None and (tokens.numel() == 0 or int(tokens[0]) != bos):
            tokens = torch.cat([tokens.new_tensor([bos]), tokens])
    if tokens.numel() > model.cfg.n_ctx:
        raise SparseCircuitsError(
            f"the prompt has {tokens.numel()} tokens (BOS included), more than the model's "
            f"context n_ctx={model.cfg.n_ctx}"
        )
    if tokens.numel() < 2:
        raise SparseCircuitsError("the prompt needs at least one token after BOS")
    return tokens


def _choose_method(
    model: Any, dictionaries: list[Dictionary], method: str, verbose: bool = True
) -> str:
    """The row engine, "linear" or "autograd", that `method` ("auto", ...) asks for; "auto"
    falling back to autograd says why in one line on stderr (unless `verbose` is False)."""
    if method not in ("auto", "linear", "autograd"):
        raise SparseCircuitsError(
            f"method {method!r} is not known; expected 'auto', 'linear' or 'autograd'"
        )
    if method == "autograd":
        return method
    problem = linear_path_problem(model, dictionaries)
    if problem is None:
        return "linear"
    if method == "linear":
        raise SparseCircuitsError(f"method='linear' does not apply: {problem}")
    if verbose:
        print(
            f"attribute: autograd engine, the linear one does not apply: {problem}", file=sys.stderr
        )
    return "autograd"


def _ordered(
    model: Any, dictionaries: Sequence[Dictionary | CrossLayerTranscoder]
) -> list[Dictionary]:
    """Dictionaries in layer order (a cross-layer transcoder as one slice per layer), checked:
    hooks exist, one dictionary per out_hook."""
    if len(dictionaries) == 0:
        raise SparseCircuitsError("attribute needs at least one dictionary")
    if isinstance(dictionaries, (Dictionary, CrossLayerTranscoder)):
        dictionaries = [dictionaries]
    dictionaries = expand_crosslayer(dictionaries)
    seen: dict[str, str] = {}
    facts = norm_facts(model)
    for d in dictionaries:
        # hooks, widths and processing, with the errors `splice` gives (not a matmul error)
        check_compatible(model, d)
        tensor = canonical(d.out_hook, facts)  # aliases such as mlp.hook_out = hook_mlp_out
        if tensor in seen:
            raise SparseCircuitsError(
                f"two dictionaries write to {d.out_hook!r} (the tensor of {seen[tensor]!r}); "
                "expected at most one per out_hook"
            )
        seen[tensor] = d.out_hook
    return sorted(dictionaries, key=lambda d: (hook_layer(d.out_hook), d.out_hook))


def _logit_targets(
    model: Any,
    probs: Float[Tensor, " vocab"],
    max_n_logits: int,
    desired_logit_prob: float,
    target_tokens: Sequence[int | str] | None,
) -> list[int]:
    if target_tokens is not None:
        ids = []
        for tok in target_tokens:
            if isinstance(tok, str):
                enc = model.tokenizer(tok, add_special_tokens=False)["input_ids"]
                if len(enc) != 1:
                    raise SparseCircuitsError(
                        f"target {tok!r} is {len(enc)} tokens; expected exactly one"
                    )
                tok = enc[0]
            ids.append(int(tok))
        return ids
    order = probs.argsort(descending=True)[:max_n_logits]
    cumulative = probs[order].cumsum(0)
    n = int((cumulative < desired_logit_prob).sum().item()) + 1
    return order[: min(n, max_n_logits)].tolist()


def attribute(
    model: Any,
    dictionaries: Sequence[Dictionary | CrossLayerTranscoder],
    prompt: str | Int[Tensor, " pos"],
    *,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    target_tokens: Sequence[int | str] | None = None,
    target_direction: Float[Tensor, " d_model"] | tuple[int | str, int | str] | None = None,
    max_feature_nodes: int | None = None,
    batch_size: int | None = None,
    verbose: bool = True,
    offload_rows_to_cpu: bool = True,
    method: str = "auto",
    sparse: bool = False,
    row_top_k: int | None = None,
    row_min_abs: float = 0.0,
) -> AttributionGraph:
    """Attribution graph of `prompt` through the dictionaries spliced into `model`.

    Args:
        model: a `TransformerBridge` from `replacement.load_model`.
        dictionaries: transcoders or skip transcoders (MLP input -> MLP output), cross-layer
            transcoders (a layer-l feature writes to every later MLP output) or SAEs, one
            per out_hook. The MLP of a layer without a transcoder is differentiated through
            (a local linear estimate, not a node), as is the MLP under an SAE.
        prompt: text or token ids; BOS is prepended when it is not already at position 0.
        max_n_logits, desired_logit_prob: logit targets are the most probable next tokens, up
            to `max_n_logits` or until their cumulative probability reaches the desired value.
        target_tokens: explicit logit targets (ids or single-token strings) instead.
        target_direction: a custom target instead of logits: a [d_model] direction read at the
            final norm's output, or a pair of tokens (a, b) for logit(a) - logit(b).
        max_feature_nodes: keep at most this many feature nodes, chosen in order of influence
            on the targets, estimated from the rows computed so far; None keeps every active one.
        batch_size: target rows per pass; None chooses it from the prompt length and the
            memory at hand (linear path) or takes 64 (autograd path, which repeats the prompt
            this many times).
        verbose: show a progress bar.
        offload_rows_to_cpu: move each batch of rows to the CPU as it is computed (the
            default); False keeps the visited rows on the model's device until the end, which
            is faster on an accelerator with memory to spare. The returned adjacency is
            always on the CPU.
        method: "linear" computes rows by the transposed frozen linear map
            (`circuits.attribution.linear_rows`: no MLPs, no autograd graph); "autograd" by backward passes
            through the frozen model (the reference); "auto" (default) takes "linear" wherever
            it applies (every MLP replaced by a transcoder) and "autograd" elsewhere (SAEs,
            layers without a transcoder). The method used is in `graph.metadata["method"]`.
        sparse: return the adjacency as a sparse COO tensor, built from each batch of rows as
            it is computed (`circuits.graph.sparse_rows`), never a dense [n_nodes, n_nodes] or
            [budget, n_sources] matrix: for long prompts whose dense adjacency does not fit.
            With no threshold it holds every non-zero entry and equals the dense graph.
        row_top_k, row_min_abs: keep of each row only the entries with |a| >= row_min_abs, and
            of those the row_top_k largest (setting either implies `sparse`). Influence
            estimates, pruning and scores then see the dropped entries as zeros.

    Raises:
        SparseCircuitsError: prompt longer than n_ctx, a missing hook, two dictionaries on
            one out_hook, or a target token that is not a single token.
    """
    start = time.perf_counter()
    rule = RowSparsity(row_top_k, row_min_abs)
    sparse = sparse or rule != RowSparsity()
    if batch_size is not None and batch_size < 1:
        raise SparseCircuitsError(f"batch_size must be at least 1, got {batch_size}")
    if max_n_logits < 1 or not 0 < desired_logit_prob <= 1:
        raise SparseCircuitsError(
            f"max_n_logits must be >= 1 and desired_logit_prob in (0, 1], got {max_n_logits} "
            f"and {desired_logit_prob}"
        )
    dictionaries = _ordered(model, dictionaries)
    method = _choose_method(model, dictionaries, method, verbose)
    tokens = prompt_tokens(model, prompt)
    n_pos = tokens.numel()
    sources = collect_sources(model, dictionaries, tokens)
    if batch_size is None:
        batch_size = (
            auto_batch_size(n_pos, model.cfg.d_model, sources.n_sources, tokens.device)
            if method == "linear"
            else 64
        )
    probs = sources.logits[-1].float().softmax(-1)

    W_U = model.W_U.detach()
    demeaned = W_U - W_U.mean(dim=1, keepdim=True)
    if target_direction is not None:
        if isinstance(target_direction, tuple):
            a, b = _logit_targets(model, probs, 2, 1.0, list(target_direction))
            direction = (W_U[:, a] - W_U[:, b]).float()
            label = (
                f"logit({model.tokenizer.decode([a])!r}) - logit({model.tokenizer.decode([b])!r})"
            )
        else:
            direction = torch.as_tensor(target_direction, dtype=torch.float32).detach()
            if direction.shape != (model.cfg.d_model,):
                raise SparseCircuitsError(
                    f"target_direction has shape {tuple(direction.shape)}; expected "
                    f"({model.cfg.d_model},) (d_model) or a pair of tokens"
                )
            label = "custom direction"
        logit_dirs = direction.reshape(1, -1)
        logit_ids, logit_weights, logit_labels = [-1], torch.ones(1), [label]
    else:
        logit_ids = _logit_targets(model, probs, max_n_logits, desired_logit_prob, target_tokens)
        logit_dirs = demeaned[:, logit_ids].T.float()
        logit_weights = probs[logit_ids].cpu()
        logit_labels = [
            f"logit {model.tokenizer.decode([t])!r} p={probs[t].item():.3f}" for t in logit_ids
        ]

    n_feat = sources.n_features
    n_logit = len(logit_ids)
    budget = n_feat if max_feature_nodes is None else min(max_feature_nodes, n_feat)
    row_device = torch.device("cpu") if offload_rows_to_cpu else tokens.device
    bar = tqdm(total=n_logit + budget, desc="attribution rows", disable=not verbose, leave=False)
    # no wider a batch than the most rows one backward pass will read
    batch_size = min(batch_size, max(n_logit, budget))
    engine_class = LinearRowEngine if method == "linear" else RowEngine
    with engine_class(model, dictionaries, tokens, sources, batch_size) as engine:
        # rows: logits first, then features in order of estimated influence
        logit_rows = engine.rows_for_logits(logit_dirs).to(row_device)  # [n_logit, n_src]
        bar.update(n_logit)
        if sparse:
            keep, adjacency = sparse_feature_rows(
                engine, logit_rows, logit_weights, n_feat, budget, batch_size, rule, bar
            )
        elif budget == n_feat:
            # every feature is kept: no ordering needed, rows go straight to their place
            keep, adjacency = all_feature_rows(engine, logit_rows, n_feat, batch_size, bar)
        else:
            keep, adjacency = budgeted_feature_rows(
                engine, logit_rows, logit_weights, n_feat, budget, batch_size, row_device, bar
            )
    bar.close()
    del logit_rows

    token_strs = [model.tokenizer.decode([t]) for t in tokens.tolist()]
    graph = _assemble(
        model,
        dictionaries,
        tokens,
        token_strs,
        sources,
        keep,
        adjacency,
        logit_ids,
        logit_weights,
        logit_labels,
    )
    graph.metadata.update(
        {
            "max_n_logits": max_n_logits,
            "desired_logit_prob": desired_logit_prob,
            "max_feature_nodes": max_feature_nodes,
            "n_active_features": n_feat,
            "batch_size": batch_size,
            "method": method,
            "seconds": time.perf_counter() - start,
            "n_pos": n_pos,
        }
    )
    if sparse:
        graph.metadata.update(
            {"row_top_k": row_top_k, "row_min_abs": row_min_abs, "nnz": adjacency._nnz()}
        )
    return graph


def _assemble(
    model,
    dictionaries,
    tokens,
    token_strs,
    sources,
    keep,
    adjacency,
    logit_ids,
    logit_weights,
    logit_labels,
) -> AttributionGraph:
    """Build the node table in the order features, errors, tokens, logits."""
    from replacement.hooks import hook_layer

    n_pos = tokens.numel()
    layers = [hook_layer(d.out_hook) for d in dictionaries]
    kinds, layer_col, pos_col, feat_col, act_col, labels = [], [], [], [], [], []
    for i in keep.tolist():
        k, p, f = int(sources.feat_dict[i]), int(sources.feat_pos[i]), int(sources.feat_index[i])
        kinds.append("feature")
        layer_col.append(layers[k])
        pos_col.append(p)
        feat_col.append(f)
        act_col.append(float(sources.feat_act[i]))
        labels.append(f"L{layers[k]} F{f} @{p} {token_strs[p]!r}")
    for k, layer in enumerate(layers):
        for p in range(1, n_pos):
            kinds.append("error")
            layer_col.append(layer)
            pos_col.append(p)
            feat_col.append(-1)
            act_col.append(float(sources.error_norm[k, p - 1]))
            labels.append(f"L{layer} error @{p} {token_strs[p]!r}")
    for p in range(n_pos):
        kinds.append("token")
        layer_col.append(-1)
        pos_col.append(p)
        feat_col.append(int(tokens[p]))
        act_col.append(0.0)
        labels.append(f"{token_strs[p]!r} @{p}")
    for tok, weight, label in zip(logit_ids, logit_weights.tolist(), logit_labels, strict=True):
        kinds.append("logit")
        layer_col.append(model.cfg.n_layers)
        pos_col.append(n_pos - 1)
        feat_col.append(tok)
        act_col.append(weight)
        labels.append(label)
    names = [
        str(d.metadata.get("source", f"{d.kind}/{d.activation_name} {d.out_hook}"))
        for d in dictionaries
    ]
    return AttributionGraph(
        prompt=model.tokenizer.decode(tokens[1:].tolist()),
        tokens=tokens.cpu(),
        token_strs=token_strs,
        node_kind=kinds,
        node_layer=torch.tensor(layer_col, dtype=torch.long),
        node_pos=torch.tensor(pos_col, dtype=torch.long),
        node_feature=torch.tensor(feat_col, dtype=torch.long),
        node_activation=torch.tensor(act_col, dtype=torch.float32),
        node_label=labels,
        adjacency=adjacency,
        n_layers=model.cfg.n_layers,
        model_name=str(getattr(model.cfg, "model_name", "")),
        dictionary_names=names,
        metadata={},
    )
