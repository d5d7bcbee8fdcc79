"""Tiny random Hugging Face models and a tokenizer trained in the test, for offline tests."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

TEXT = [
    "def add(a, b):\n    return a + b\n",
    "class Stack:\n    def push(self, item):\n        self.items.append(item)\n",
    "for i in range(10):\n    print(i * i)\n",
    "import os\nprint(os.path.join('a', 'b'))\n",
    "When Mary and John went to the store, John gave a drink to Mary.\n",
] * 20


def make_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with `<|endoftext|>` (id 0) as BOS, EOS and pad."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXT, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def make_gpt2(vocab_size: int, seed: int = 0, n_layers: int = 2, d_model: int = 32, **config):
    """A random GPT-2 (LayerNorm + GELU MLP; `config` overrides, e.g. activation_function)."""
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=64,
        n_embd=d_model,
        n_layer=n_layers,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,
        **config,
    )
    return GPT2LMHeadModel(cfg).eval()


def silence_attention_and_first_mlp(hf) -> None:
    """Zero every attention output and layer 0's MLP output of a HF GPT-2 (in place): only
    the later MLPs write to the residual stream."""
    with torch.no_grad():
        for block in hf.transformer.h:
            block.attn.c_proj.weight.zero_()
            block.attn.c_proj.bias.zero_()
        hf.transformer.h[0].mlp.c_proj.weight.zero_()
        hf.transformer.h[0].mlp.c_proj.bias.zero_()


def _gqa_sizes(vocab_size: int, n_layers: int, d_model: int) -> dict[str, int]:
    """Sizes shared by the tiny Llama and Gemma configs: 4 query heads over 2 key/value heads."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": d_model,
        "intermediate_size": 2 * d_model,
        "num_hidden_layers": n_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }


def make_llama(vocab_size: int, seed: int = 0, n_layers: int = 2, d_model: int = 32):
    """A random Llama (RMSNorm + gated SiLU MLP, grouped-query attention)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(**_gqa_sizes(vocab_size, n_layers, d_model))
    return LlamaForCausalLM(cfg).eval()


def make_gemma2(vocab_size: int, seed: int = 0, n_layers: int = 2, d_model: int = 32):
    """A random Gemma-2: RMSNorm with (1 + weight) before and after attention and MLP, embeddings
    scaled by sqrt(d_model), tanh soft-capping of attention scores and logits, a sliding window
    on every other layer (4 tokens, shorter than the test prompts), tied embeddings.

    Norm weights are drawn around 0 (Gemma initialises them to 0, an effective weight of 1), so
    that a code path which forgets the `1 +` or a post-norm changes the numbers."""
    return _gemma(Gemma2Config, Gemma2ForCausalLM, vocab_size, seed, n_layers, d_model)


def make_gemma3(vocab_size: int, seed: int = 0, n_layers: int = 2, d_model: int = 32):
    """A random Gemma-3 (text): Gemma-2's layout plus RMSNorms on queries and keys."""
    return _gemma(Gemma3TextConfig, Gemma3ForCausalLM, vocab_size, seed, n_layers, d_model)


def _gemma(config_class, model_class, vocab_size, seed, n_layers, d_model):
    torch.manual_seed(seed)
    cfg = config_class(
        **_gqa_sizes(vocab_size, n_layers, d_model),
        head_dim=d_model // 4,
        sliding_window=4,
        query_pre_attn_scalar=d_model // 4,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        pad_token_id=0,
    )
    cfg.architectures = [model_class.__name__]  # TransformerLens picks its adapter by this
    model = model_class(cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.3)
    return model


def save_hf(model, tokenizer, folder: Path) -> Path:
    """Save a model and tokenizer as a Hugging Face folder."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
