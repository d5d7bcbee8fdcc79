"""Write the default model's card: ``MODEL_CARD.md`` and ``model_card.json``."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder, then rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; package data must be world-readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_markdown(card: dict[str, Any]) -> str:
    """The human-readable card made from the same dict as ``model_card.json``."""
    a, d, t, e = card["architecture"], card["data"], card["training"], card["evaluation"]
    ind, ind_all = e["induction"], e["induction_full_vocab"]
    lines = [
        "# sparse-circuits default model",
        "",
        "A small GPT-2 style causal language model trained by sparse-circuits itself on text",
        "every machine has: the Python standard library of the training interpreter. It is",
        "the embedded default model of the toolkit, so tests, examples and the main job run",
        "offline. It is a research fixture, not a useful generator of text.",
        "",
        "## Architecture",
        "",
        f"- GPT-2 block (`transformers.GPT2LMHeadModel`): {a['n_layer']} layers, "
        f"d_model {a['d_model']}, {a['n_head']} heads, d_mlp {a['d_mlp']}, "
        f"context {a['n_positions']}, activation `{a['activation']}`, tied embeddings",
        f"- {a['n_parameters']:,} parameters, stored in fp32 (`model.safetensors`)",
        f"- Tokenizer: byte-level BPE trained with `tokenizers`, vocabulary {a['vocab_size']}; "
        "`<|endoftext|>` (id 0) is BOS, EOS and padding. TransformerLens `to_tokens` "
        "prepends it once.",
        "",
        "## Data",
        "",
        f"- Python {d['python_version']} standard library: every `*.py` file outside "
        "`site-packages` (sorted relative paths, utf-8 with replacement), plus the English "
        "help topics of `pydoc_data.topics`",
        f"- {d['n_train_documents']:,} training documents, {d['n_train_tokens']:,} tokens; "
        "documents are separated by `<|endoftext|>`, training sequences are "
        f"`<|endoftext|>` + {a['n_positions'] - 1} tokens",
        f"- {len(d['heldout_files'])} held-out files (`heldout_files.txt`), "
        f"{d['n_heldout_tokens']:,} tokens, excluded from tokenizer and model training",
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        f"| seed | {t['seed']} |",
        f"| training tokens | {t['tokens']:,} ({t['epochs']} passes over the data) |",
        f"| steps | {t['steps']:,} |",
        f"| batch | {t['batch_size']} sequences x {t['seq_len']} tokens |",
        f"| optimizer | AdamW, betas (0.9, 0.95), weight decay {t['weight_decay']}, "
        "grad clip 1.0 |",
        f"| learning rate | {t['lr']} peak, {t['warmup_steps']} warmup steps, cosine to "
        f"{t['min_lr_ratio']} x peak |",
        f"| precision | {t['precision']} |",
        f"| wall time | {t['wall_time_s']:.0f} s ({t['tokens_per_s'] / 1e6:.2f} M tokens/s) |",
        f"| hardware | {t['hardware']} (Python {t['host_python']}, torch {t['torch_version']}) |",
        f"| final training loss | {t['final_train_loss']:.3f} |",
        "",
        "## Evaluation (nats per token)",
        "",
        "On the held-out tokens (each file chunked like the training data):",
        "",
        "| model | loss |",
        "|---|---|",
        f"| this model | **{e['heldout_loss']:.3f}** |",
        f"| bigram, Witten-Bell interpolated, fit on the training tokens | {e['bigram_loss']:.3f} |",
        f"| unigram, add-one smoothed, fit on the training tokens | {e['unigram_loss']:.3f} |",
        "",
        f"Induction: {ind['n_sequences']} sequences of {ind['length']} random tokens, each "
        f"sequence repeated twice after BOS (seed {ind['seed']}).",
        "",
        "| random tokens drawn from | first copy | second copy |",
        "|---|---|---|",
        f"| the {ind['pool_size']} most frequent training tokens (`pool` in the json) | "
        f"**{ind['first_copy']:.3f}** | **{ind['second_copy']:.3f}** |",
        f"| the whole vocabulary except `<|endoftext|>` | {ind_all['first_copy']:.3f} | "
        f"{ind_all['second_copy']:.3f} |",
        "",
        "The first copy is unpredictable and the model is confidently wrong on it (above",
        "log(vocab)); the drop on the second copy is in-context copying. The model copies",
        "rarely seen tokens less well (second row), so the headline test uses frequent ones.",
        "",
        "Per-file held-out losses are in `model_card.json` (with each file's sha256, so a",
        "check on another Python version compares only files that are the same).",
        "",
        "## Reproduce",
        "",
        "```",
        card["reproduce"],
        "```",
        "",
        "Tokenizer and token data are deterministic for a given interpreter; the training run",
        "is seeded (GPU kernels may still differ in the last bits).",
        "",
    ]
    return "\n".join(lines)


def write_card(out_dir: Path, card: dict[str, Any]) -> None:
    """Write both card files into ``out_dir`` (atomically)."""
    _atomic_write(out_dir / CARD_JSON, json.dumps(card, indent=2) + "\n")
    _atomic_write(out_dir / CARD_MD, render_markdown(card))


def read_card(model_dir: Path) -> dict[str, Any]:
    """Load ``model_card.json`` from a model folder.

    Raises:
        FileNotFoundError: the folder has no card.
    """
    path = model_dir / CARD_JSON
    if not path.is_file():
        raise FileNotFoundError(f"model card not found: expected {path}")
    return json.loads(path.read_text(encoding="utf-8"))
