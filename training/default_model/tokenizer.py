"""Train the default model's byte-level BPE tokenizer and turn documents into token streams."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jaxtyping import UInt16
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from training.default_model.corpus import Document

EOT = "<|endoftext|>"
"""The only special token; id 0. Serves as BOS, EOS and padding."""
EOT_ID = 0
"""Id of ``EOT``."""


def train_tokenizer(texts: Sequence[str], vocab_size: int = 4096) -> Tokenizer:
    """Train a GPT-2 style byte-level BPE tokenizer.

    The result depends only on ``texts`` and ``vocab_size``: the BPE trainer counts words
    (order-free) and breaks ties between equally frequent pairs by the pair itself.

    Args:
        texts: training documents, in a fixed order.
        vocab_size: size of the vocabulary including the 256 byte tokens and ``EOT``.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],  # first special token gets id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer, length=len(texts))
    if tok.token_to_id(EOT) != EOT_ID:
        raise RuntimeError(f"expected {EOT!r} to get id {EOT_ID}, got {tok.token_to_id(EOT)}")
    return tok


def save_tokenizer(tok: Tokenizer, out_dir: Path, model_max_length: int = 256) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``.

    Goes through ``PreTrainedTokenizerFast`` so ``AutoTokenizer`` (and so TransformerLens)
    sees ``EOT`` as bos/eos/unk/pad token. No post-processor adds BOS: like GPT-2, the
    caller (TransformerLens ``to_tokens``) prepends it once.
    """
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        unk_token=EOT,
        pad_token=EOT,
        model_max_length=model_max_length,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    # transformers 5 records its own class name, which transformers 4 cannot load; the
    # generic fast class loads the same tokenizer.json under both.
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg.pop("backend", None)
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def encode_documents(tok: Tokenizer, docs: Sequence[Document]) -> list[list[int]]:
    """Token ids of each document (no special tokens added)."""
    return [enc.ids for enc in tok.encode_batch([d.text for d in docs], add_special_tokens=False)]


def to_stream(token_lists: Sequence[Sequence[int]]) -> UInt16[np.ndarray, " n_tokens"]:
    """Concatenate documents, each followed by ``EOT`` (so ``EOT`` separates documents)."""
    parts = []
    for ids in token_lists:
        parts.append(np.asarray(ids, dtype=np.uint16))
        parts.append(np.array([EOT_ID], dtype=np.uint16))
    if not parts:
        return np.zeros(0, dtype=np.uint16)
    return np.concatenate(parts)
