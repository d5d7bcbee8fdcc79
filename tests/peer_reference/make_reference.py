"""Write the peer reference files of `tests/test_peer_reference.py`, with the peers' own code.

Three steps, each run in its own environment (no download anywhere):

    python tests/peer_reference/make_reference.py model          # any env with transformers
    /work/venvs/saelens/bin/python tests/peer_reference/make_reference.py saelens
    /work/venvs/circuit_tracer/bin/python tests/peer_reference/make_reference.py circuit_tracer
    /work/venvs/sparsify/bin/python tests/peer_reference/make_reference.py sparsify

1. `model`: a seeded 3-layer GPT-2-style model (d_model 32, LayerNorm weights and biases away
   from 1 and 0, so that folding them matters) and a byte-level BPE tokenizer trained here,
   saved with `save_pretrained` to `tiny-gpt2/`, plus `tokens.safetensors` (evaluation ids).
2. `saelens` (SAELens 6.54, TransformerLens 2): a ReLU SAE at `blocks.1.hook_resid_pre` and a
   TopK SAE at `blocks.2.hook_mlp_out`, trained by SAELens' own training runner on the
   unprocessed model SAELens loads (`from_pretrained_no_processing`), saved by SAELens into
   `saelens/<name>/`; `saelens.json` records SAELens' `run_evals` metrics on the token file.
3. `circuit_tracer` (circuit-tracer 0.5): a skip-transcoder set reading TL2's
   `ln2.hook_normalized` (the LayerNorm output on circuit-tracer's unprocessed model), written
   in circuit-tracer's layout into `circuit_tracer/`, loaded by circuit-tracer, and
   `circuit_tracer.json` records its attribution graph of one prompt (active features with
   activations, the adjacency, logit tokens and probabilities).

4. `sparsify` (EleutherAI sparsify): a skip transcoder on `transformer.h.1.mlp` trained by
   sparsify's own Trainer on the Hugging Face model, its hookpoint folder copied to
   `sparsify/`, and sparsify's own forward (reconstruction, top-k latents, FVU) on the
   evaluation tokens' MLP inputs and outputs (BOS left out) in `sparsify_reference.safetensors`
   and `sparsify.json`.

The model is built once; TransformerLens 2 receives it as weights converted by TL2's own
GPT-2 conversion, exactly as `from_pretrained(_no_processing)` would load it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MODEL_DIR = HERE / "tiny-gpt2"
TOKENS_FILE = HERE / "tokens.safetensors"
PROMPT = "def add(a, b):"
TEXT = [
    "def add(a, b):\n    return a + b\n",
    "class Stack:\n    def push(self, item):\n        self.items.append(item)\n",
    "for i in range(10):\n    print(i * i)\n",
    "import os\nprint(os.path.join('a', 'b'))\n",
    "def main():\n    x = [i for i in range(3)]\n    return sum(x)\n",
    "with open(path) as f:\n    data = f.read()\n",
] * 30
CTX = 24


# ---- step 1: model, tokenizer, tokens -------------------------------------------------------
def make_model() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXT, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=3,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=0.15,  # livelier than 0.02: peaked logits, activations far from 0
    )
    model = GPT2LMHeadModel(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(MODEL_DIR)
    tokenizer.save_pretrained(MODEL_DIR)

    # evaluation tokens: BOS + CTX - 1 text tokens per row, no other special token
    ids = [t for text in TEXT[::-1] for t in tokenizer(text)["input_ids"]]
    rows = [[0, *ids[i : i + CTX - 1]] for i in range(0, 16 * (CTX - 1), CTX - 1)]
    from safetensors.torch import save_file

    save_file({"tokens": torch.tensor(rows, dtype=torch.long)}, str(TOKENS_FILE))


def training_rows(tokenizer) -> list[list[int]]:
    """The training text as rows of BOS + CTX - 1 tokens."""
    ids = [t for text in TEXT for t in tokenizer(text)["input_ids"]]
    return [[0, *ids[i : i + CTX - 1]] for i in range(0, len(ids) - CTX, CTX - 1)]


def load_tokens() -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(TOKENS_FILE))["tokens"]


def tl2_model(cls=None, fold_value_biases: bool = False):
    """The tiny model as a TransformerLens 2 model, unprocessed (as SAELens/circuit-tracer load)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import AutoTokenizer, GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(MODEL_DIR).eval()
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer,
        d_model=c.n_embd,
        d_head=c.n_embd // c.n_head,
        n_heads=c.n_head,
        d_mlp=4 * c.n_embd,
        d_vocab=c.vocab_size,
        n_ctx=c.n_positions,
        act_fn="gelu_new",
        normalization_type="LN",
        eps=c.layer_norm_epsilon,
        model_name="tiny-gpt2",
        original_architecture="GPT2LMHeadModel",
        default_prepend_bos=True,
        tokenizer_prepends_bos=False,
    )
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = (cls or HookedTransformer)(cfg, tokenizer=tokenizer)
    model.load_and_process_state_dict(
        convert_gpt2_weights(hf, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=fold_value_biases,
        refactor_factored_attn_matrices=False,
    )
    return model.eval()


class _FixedTokens:
    """The part of SAELens' ActivationsStore that `run_evals` uses, serving the token file."""

    def __init__(self, tokens: torch.Tensor):
        self.tokens = tokens
        self.context_size = tokens.shape[1]
        self.store_batch_size_prompts = tokens.shape[0]

    def get_batch_tokens(self, batch_size: int) -> torch.Tensor:
        assert batch_size == self.tokens.shape[0]
        return self.tokens

    def reset_input_dataset(self) -> None:
        pass


# ---- step 2: SAELens --------------------------------------------------------------------------
def make_saelens() -> None:
    from datasets import Dataset
    from sae_lens import (
        LanguageModelSAERunnerConfig,
        LanguageModelSAETrainingRunner,
        LoggingConfig,
        StandardTrainingSAEConfig,
        TopKTrainingSAEConfig,
    )
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.saes.sae import SAE
    from sae_lens.training.activation_scaler import ActivationScaler

    torch.manual_seed(0)
    model = tl2_model()
    train = Dataset.from_dict({"input_ids": training_rows(model.tokenizer)})
    out_root = HERE / "saelens"
    results = {}
    specs = {
        "resid_pre_1": (
            "blocks.1.hook_resid_pre",
            StandardTrainingSAEConfig(d_in=32, d_sae=128, l1_coefficient=0.02),
        ),
        "mlp_out_2": ("blocks.2.hook_mlp_out", TopKTrainingSAEConfig(d_in=32, d_sae=96, k=8)),
    }
    for name, (hook, sae_cfg) in specs.items():
        cfg = LanguageModelSAERunnerConfig(
            sae=sae_cfg,
            model_name="tiny-gpt2",
            hook_name=hook,
            dataset_path="local",
            is_dataset_tokenized=True,
            streaming=False,
            context_size=CTX,
            prepend_bos=True,
            training_tokens=40_000,
            train_batch_size_tokens=128,
            store_batch_size_prompts=16,
            n_batches_in_buffer=16,
            lr=3e-3,
            device="cpu",
            seed=0,
            logger=LoggingConfig(log_to_wandb=False),
            n_checkpoints=0,
            checkpoint_path=None,
            output_path=str(out_root / name),
            verbose=False,
            n_batches_for_norm_estimate=10,
        )
        runner = LanguageModelSAETrainingRunner(cfg, override_dataset=train, override_model=model)
        runner.run()
        sae = SAE.load_from_disk(str(out_root / name), device="cpu")
        tokens = load_tokens()
        store = _FixedTokens(tokens)
        metrics, feature_metrics = run_evals(
            sae,
            store,
            model,
            ActivationScaler(),
            EvalConfig(
                batch_size_prompts=tokens.shape[0],
                n_eval_reconstruction_batches=1,
                n_eval_sparsity_variance_batches=1,
                compute_kl=True,
                compute_ce_loss=True,
                compute_l2_norms=True,
                compute_sparsity_metrics=True,
                compute_variance_metrics=True,
                compute_featurewise_density_statistics=True,
            ),
        )
        flat = {k: v for group in metrics.values() for k, v in group.items()}
        flat["dead_features"] = int(
            sum(1 for density in feature_metrics["feature_density"] if density == 0)
        )
        results[name] = {"hook": hook, "metrics": flat}
    (HERE / "saelens.json").write_text(json.dumps(results, indent=1, sort_keys=True))


# ---- step 3: circuit-tracer --------------------------------------------------------------------
def _stub_datasets_if_broken() -> None:
    """Let TransformerLens 2 import where `datasets` cannot (pyarrow built for another NumPy).

    TL2 imports `datasets` at module level but step 3 never uses it; a stub with the two names
    TL2 imports keeps the environment itself untouched.
    """
    import types

    import transformers  # noqa: F401  (its optional-package probes must see no stub)

    try:
        import datasets  # noqa: F401
    except ImportError:
        stub = types.ModuleType("datasets")
        for sub in ("arrow_dataset", "load"):
            mod = types.ModuleType(f"datasets.{sub}")
            setattr(stub, sub, mod)
            sys.modules[f"datasets.{sub}"] = mod
        stub.arrow_dataset.Dataset = type("Dataset", (), {})
        stub.load.load_dataset = stub.load_dataset = lambda *a, **k: None
        sys.modules["datasets"] = stub


def make_circuit_tracer() -> None:
    _stub_datasets_if_broken()
    import torch.nn.functional as F
    import yaml
    from circuit_tracer.attribution.attribute import attribute
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel,
    )
    from circuit_tracer.transcoder.single_layer_transcoder import (
        SingleLayerTranscoder,
        load_transcoder_set,
    )
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = tl2_model()
    tokenizer = model.tokenizer
    rows = torch.tensor(training_rows(tokenizer))
    n_layers, d = model.cfg.n_layers, model.cfg.d_model
    # TL2 `ln2.hook_normalized` on this unprocessed model is the LayerNorm output
    names = [f"blocks.{i}.ln2.hook_normalized" for i in range(n_layers)]
    names += [f"blocks.{i}.hook_mlp_out" for i in range(n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(rows, names_filter=lambda n: n in names)
    out_dir = HERE / "circuit_tracer"
    out_dir.mkdir(exist_ok=True)
    n_features = 48
    for layer in range(n_layers):
        x = cache[f"blocks.{layer}.ln2.hook_normalized"][:, 1:].reshape(-1, d)
        y = cache[f"blocks.{layer}.hook_mlp_out"][:, 1:].reshape(-1, d)
        tc = SingleLayerTranscoder(
            d, n_features, F.relu, layer, skip_connection=True, device="cpu", dtype=torch.float32
        )
        with torch.no_grad():
            tc.W_enc.normal_(0, d**-0.5)
            tc.W_dec.copy_(tc.W_enc * 0.1)
            tc.b_dec.copy_(y.mean(0))
        opt = torch.optim.Adam(tc.parameters(), lr=3e-3)
        for _ in range(400):
            batch = torch.randint(0, x.shape[0], (256,))
            acts = tc.encode(x[batch])
            recon = tc.decode(acts, x[batch])  # circuit-tracer's own forward, skip included
            loss = (recon - y[batch]).pow(2).sum(-1).mean() + 8e-2 * (
                acts * tc.W_dec.norm(dim=-1)
            ).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        tc.to_safetensors(str(out_dir / f"layer_{layer}.safetensors"))
    config = {
        "model_name": "tiny-gpt2",
        "model_kind": "transcoder_set",
        "feature_input_hook": "ln2.hook_normalized",
        "feature_output_hook": "hook_mlp_out",
        "scan": "tiny-gpt2-skip-transcoders",
    }
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config))

    transcoders = load_transcoder_set(
        {i: str(out_dir / f"layer_{i}.safetensors") for i in range(n_layers)},
        scan=config["scan"],
        feature_input_hook=config["feature_input_hook"],
        feature_output_hook=config["feature_output_hook"],
        device=torch.device("cpu"),
        dtype=torch.float32,
        lazy_encoder=False,
        lazy_decoder=False,
    )
    # as from_pretrained_and_transcoders loads it: no folding, no centring, value biases folded
    replacement = tl2_model(TransformerLensReplacementModel, fold_value_biases=True)
    replacement._configure_replacement_model(transcoders)
    # token ids with BOS in front: circuit-tracer 0.5 cannot prepend a BOS whose id is 0
    prompt_ids = torch.tensor([0, *tokenizer(PROMPT)["input_ids"]])
    graph = attribute(
        prompt_ids, replacement, max_n_logits=5, desired_logit_prob=0.95, batch_size=64
    )
    save_file(
        {
            "adjacency": graph.adjacency_matrix.float().contiguous(),
            "active_features": graph.active_features.long().contiguous(),
            "activation_values": graph.activation_values.float().contiguous(),
            "selected_features": graph.selected_features.long().contiguous(),
            "input_tokens": graph.input_tokens.long().contiguous(),
            "logit_tokens": graph.logit_token_ids.long().contiguous(),
            "logit_probabilities": graph.logit_probabilities.float().contiguous(),
        },
        str(HERE / "circuit_tracer_graph.safetensors"),
    )
    n_feat = len(graph.selected_features)
    summary = {
        "prompt": PROMPT,
        "n_layers": n_layers,
        "n_pos": int(graph.input_tokens.numel()),
        "n_features": n_feat,
        "node_order": "features (selected_features of active_features), errors [layer, pos], "
        "tokens [pos], logits",
    }
    (HERE / "circuit_tracer.json").write_text(json.dumps(summary, indent=1))


# ---- step 4: sparsify ---------------------------------------------------------------------------
def make_sparsify() -> None:
    import shutil

    from datasets import Dataset
    from sparsify import SparseCoder, TrainConfig, Trainer, TranscoderConfig
    from transformers import AutoTokenizer, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel.from_pretrained(MODEL_DIR).eval()
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    rows = training_rows(tokenizer) * 8  # sparsify trains one epoch
    data = Dataset.from_dict({"input_ids": rows}).with_format("torch")
    hookpoint = "h.1.mlp"  # (names inside the base model) a skip transcoder from the MLP's input to its output
    run = HERE / "sparsify_run"
    cfg = TrainConfig(
        TranscoderConfig(num_latents=64, k=6, skip_connection=True),
        hookpoints=[hookpoint],
        batch_size=8,
        lr=2e-3,
        lr_warmup_steps=10,
        log_to_wandb=False,
        save_every=10_000,
        save_dir=str(run),
        run_name="tiny",
    )
    Trainer(cfg, data, hf).fit()
    out = HERE / "sparsify" / hookpoint
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(run / "tiny" / hookpoint, out)  # the per-hookpoint folder sparsify wrote
    shutil.rmtree(run)

    # sparsify's own forward on the MLP inputs and outputs of the evaluation tokens
    coder = SparseCoder.load_from_disk(out, device="cpu")
    seen = {}
    mlp = hf.transformer.h[1].mlp
    handle = mlp.register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    with torch.no_grad():
        hf(load_tokens())
        handle.remove()
        x = seen["x"][:, 1:].reshape(-1, seen["x"].shape[-1])  # BOS left out
        y = seen["y"][:, 1:].reshape(-1, seen["y"].shape[-1])
        result = coder(x, y)
    from safetensors.torch import save_file

    save_file(
        {
            "sae_out": result.sae_out.float().contiguous(),
            "latent_acts": result.latent_acts.float().contiguous(),
            "latent_indices": result.latent_indices.long().contiguous(),
        },
        str(HERE / "sparsify_reference.safetensors"),
    )
    (HERE / "sparsify.json").write_text(
        json.dumps({"hookpoint": hookpoint, "fvu": float(result.fvu)}, indent=1)
    )


if __name__ == "__main__":
    step = sys.argv[1] if len(sys.argv) > 1 else ""
    if step == "model":
        make_model()
    elif step == "saelens":
        make_saelens()
    elif step == "circuit_tracer":
        make_circuit_tracer()
    elif step == "sparsify":
        make_sparsify()
    else:
        raise SystemExit("usage: make_reference.py model|saelens|circuit_tracer|sparsify")
