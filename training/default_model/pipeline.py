"""The default model's pipeline: prepare data, train, evaluate, write the card.

The stages can run on different machines: ``prepare`` where the corpus interpreter is,
``train`` where the accelerator is (it needs only torch, transformers and the arrays),
``finish`` back on any machine with the data folder.
"""

from __future__ import annotations

import json
import platform
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from training.default_model.card import CARD_JSON, write_card
from training.default_model.data import SEQ_LEN, load_prepared, prepare_data
from training.default_model.evaluate import (
    LossSum,
    frequent_tokens,
    hf_logits_fn,
    induction_test,
    ngram_baselines,
    segment_loss,
    targets_with_context,
)
from training.default_model.train import ModelShape, TrainConfig, train_model

TRAIN_STATS_FILE = "train_stats.json"
INDUCTION_POOL = 512
"""Random tokens of the induction test come from this many most frequent training tokens."""
_DROP_FILES = ("generation_config.json", TRAIN_STATS_FILE)


def prepare(out: Path, data_dir: Path, vocab_size: int = 4096, verbose: bool = True) -> None:
    """Stage 1: tokenizer files into ``out``, token arrays into ``data_dir``."""
    prepare_data(data_dir, out, vocab_size=vocab_size, verbose=verbose)


def train(
    out: Path,
    data_dir: Path,
    seed: int = 0,
    tokens: int = TrainConfig.tokens,
    device: str = "cpu",
    verbose: bool = True,
    **overrides: Any,
) -> None:
    """Stage 2: train and write ``config.json``, ``model.safetensors``, ``train_stats.json``.

    Args:
        out: model folder.
        data_dir: folder written by ``prepare``.
        seed: seeds initialisation and data order.
        tokens: training tokens.
        device: ``"cpu"`` or ``"cuda"``.
        verbose: progress bar.
        **overrides: further ``TrainConfig`` fields (``batch_size``, ``lr``, ...).
    """
    data = load_prepared(data_dir)
    cfg = TrainConfig(
        seed=seed, tokens=tokens, shape=ModelShape(vocab_size=data.meta.vocab_size), **overrides
    )
    model, stats = train_model(data.train, cfg, device=device, verbose=verbose)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    (out / TRAIN_STATS_FILE).write_text(json.dumps(asdict(stats), indent=2) + "\n")
    if verbose:
        print(f"trained {stats.tokens:,} tokens in {stats.wall_time_s:.0f} s on {stats.hardware}")


def _training_stats(out: Path) -> dict[str, Any]:
    """Statistics of the training stage: its json, or (on a re-run) the card's copy."""
    if (out / TRAIN_STATS_FILE).is_file():
        return json.loads((out / TRAIN_STATS_FILE).read_text())
    if (out / CARD_JSON).is_file():
        card = json.loads((out / CARD_JSON).read_text())
        return {**card["training"], "loss_curve": card["loss_curve"]}
    raise FileNotFoundError(f"training statistics not found: expected {out / TRAIN_STATS_FILE}")


def finish(out: Path, data_dir: Path, verbose: bool = True) -> dict[str, Any]:
    """Stage 3: re-save the weights with this machine's transformers, evaluate, write the card.

    Returns:
        The card as a dict (also written as ``model_card.json``).
    """
    from transformers import GPT2LMHeadModel

    data = load_prepared(data_dir)
    stats = _training_stats(out)
    model = GPT2LMHeadModel.from_pretrained(str(out)).float().eval()
    model.save_pretrained(str(out))  # normalise config.json to this transformers version
    for name in _DROP_FILES:
        (out / name).unlink(missing_ok=True)

    logits_fn = hf_logits_fn(model)
    segments = data.heldout_segments()
    per_file = []
    pooled = LossSum(0.0, 0)
    for f, seg in zip(data.meta.heldout_files, segments, strict=True):
        ls = segment_loss(logits_fn, seg)
        pooled = LossSum(pooled.total + ls.total, pooled.n + ls.n)
        per_file.append({**asdict(f), "loss": round(ls.mean, 4)})
        if verbose:
            print(f"  {f.path}: {ls.mean:.3f} ({ls.n} tokens)")
    prev, target = targets_with_context(segments)
    base = ngram_baselines(data.train, prev, target, data.meta.vocab_size)
    pool = frequent_tokens(data.train, data.meta.vocab_size, k=INDUCTION_POOL)
    ind = induction_test(logits_fn, data.meta.vocab_size, pool=pool)
    ind_all = induction_test(logits_fn, data.meta.vocab_size)
    cfg = model.config
    card = {
        "name": "sparse-circuits default model",
        "architecture": {
            "family": "gpt2",
            "n_layer": cfg.n_layer,
            "d_model": cfg.n_embd,
            "n_head": cfg.n_head,
            "d_mlp": cfg.n_inner,
            "n_positions": cfg.n_positions,
            "vocab_size": cfg.vocab_size,
            "activation": cfg.activation_function,
            "tied_embeddings": True,
            "n_parameters": sum(p.numel() for p in model.parameters()),
        },
        "data": {
            "python_version": data.meta.python_version,
            "n_train_documents": data.meta.n_train_documents,
            "n_train_tokens": data.meta.n_train_tokens,
            "n_heldout_tokens": data.meta.n_heldout_tokens,
            "seq_len": SEQ_LEN,
            "heldout_files": per_file,
        },
        "training": {k: v for k, v in stats.items() if k != "loss_curve"},
        "loss_curve": stats["loss_curve"],
        "evaluation": {
            "heldout_loss": round(pooled.mean, 4),
            "heldout_targets": pooled.n,
            "unigram_loss": round(base.unigram, 4),
            "bigram_loss": round(base.bigram, 4),
            "induction": {
                **asdict(ind),
                "first_copy": round(ind.first_copy, 4),
                "second_copy": round(ind.second_copy, 4),
                "pool": pool,
            },
            "induction_full_vocab": {
                **asdict(ind_all),
                "first_copy": round(ind_all.first_copy, 4),
                "second_copy": round(ind_all.second_copy, 4),
            },
        },
        "reproduce": (
            f"python -m training.default_model --seed {stats['seed']} --tokens {stats['tokens']}"
            " --device cuda --out replacement/zoo/default_model"
        ),
        "evaluated_with": {"python": platform.python_version(), "torch": torch.__version__},
    }
    write_card(out, card)
    if verbose:
        e = card["evaluation"]
        print(
            f"held-out {e['heldout_loss']:.3f}, bigram {e['bigram_loss']:.3f}, "
            f"unigram {e['unigram_loss']:.3f}, induction {ind.first_copy:.2f} -> "
            f"{ind.second_copy:.2f} (full vocab {ind_all.first_copy:.2f} -> "
            f"{ind_all.second_copy:.2f})"
        )
    return card


def train_default_model(
    out: str | Path,
    seed: int = 0,
    device: str = "cpu",
    tokens: int = TrainConfig.tokens,
    vocab_size: int = 4096,
    data_dir: str | Path | None = None,
    verbose: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Retrain the embedded default model from scratch and write it to ``out``.

    Builds the corpus from this interpreter's standard library, trains the tokenizer,
    trains the model, evaluates it and writes the model card.

    Args:
        out: model folder (e.g. ``replacement/zoo/default_model``).
        seed: seeds everything random.
        device: ``"cpu"`` or ``"cuda"``.
        tokens: training tokens.
        vocab_size: tokenizer vocabulary size.
        data_dir: where to keep the token arrays; a temporary folder when ``None``.
        verbose: progress output.
        **overrides: further ``TrainConfig`` fields.

    Returns:
        The model card as a dict.
    """
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="default_model_data_") as tmp:
        ddir = Path(data_dir) if data_dir is not None else Path(tmp)
        prepare(out, ddir, vocab_size=vocab_size, verbose=verbose)
        train(out, ddir, seed=seed, tokens=tokens, device=device, verbose=verbose, **overrides)
        return finish(out, ddir, verbose=verbose)
