"""Benchmark: our `attribute` against circuit-tracer 0.5.0 itself, on identical weights.

Run: python tests/benchmarks/bench_vs_circuit_tracer.py [--arch gpt2 llama gemma2]
     [--lengths 16 21 63 128 256] [--repeats 3] [--threads 2] [--features 512]
     [--processing none] [--check-processings none folded fold_ln centred] [--ct-python PATH]
     [--device cpu]

What it does, per architecture:
1. GPT-2: the embedded default model (a 4-layer d128 GPT-2), written as a TransformerLens-2
   `HookedTransformer` state dict (the processed weights our bridge runs, LayerNorm weights 1
   and biases 0). Llama (grouped-query attention, Llama-3 rope scaling) and Gemma-2 (norms
   after attention and MLP, soft-caps, an 8-token sliding window): random Hugging Face models
   of the same size with norm weights away from 1, saved as a folder; circuit-tracer's side
   builds its HookedTransformer by TransformerLens 2's own weight conversion of them, ours
   loads the folder with `load_model(folder, processing=--processing)`. Random JumpReLU skip
   transcoders on every layer in circuit-tracer's own layout (`config.yaml` +
   `layer_{i}.safetensors`) with its own hook names (Llama: `mlp.hook_in -> mlp.hook_out`, as
   its Llama-3.2-1B transcoders; GPT-2 and Gemma-2: `ln2.hook_normalized -> hook_mlp_out`),
   which our `load_dictionaries(path, model=m)` reads and converts to the model's processing.
2. For every repeat and prompt length, interleaved, runs one process of each tool (ours in
   this interpreter's environment, circuit-tracer in its own venv). Each process loads,
   warms up on a short prompt, then times one `attribute` call with the tool's defaults
   (full graph up to 63 tokens; `--budget` feature rows for longer prompts) and samples its
   resident memory every 2 ms during the call (peak minus the level before the call).
3. Checks that the edges agree on the nodes both graphs hold (features both kept, errors and
   tokens at positions >= 1, logits) and prints per length the median seconds and peak MB of
   each tool and their ratios.

circuit-tracer's venv: `--ct-python`, else /work/peer-venvs/circuit_tracer/bin/python, else one
built here (tests/benchmarks/.venv_circuit_tracer: the CPU torch first, then circuit-tracer
0.5.0 with transformer-lens 2.16.1, pyarrow < 21 so that it imports with numpy 1.x).
Timings on a shared machine are noisy: compare the ratios, measured in the same run.

Measured (2026-12-03, 2 threads, under the shared CPU lock, load 0.4-3, venv built by this
script): ours / circuit-tracer time 0.10x / 0.12x / 0.09x / 0.07x / 0.07x and peak memory
0.27x / 0.35x / 0.26x / 0.25x / 0.18x at 16 / 21 / 63 / 128 / 256 tokens (circuit-tracer
1.69 / 2.51 / 19.4 / 19.3 / 90.2 s); edges agree to 4.9e-7 .. 1.9e-6 of the largest edge.
Single repeats of ours varied up to 7x (21 tokens: 0.26-1.95 s) under the other agents' load.
Re-run on the final code of that day (after the memory commits 8d5210d, 2608031): time
0.11x / 0.11x / 0.12x / 0.07x / 0.07x, memory 0.28x / 0.33x / 0.26x / 0.24x / 0.18x, same edge errors.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
CT_VENV = Path("/work/peer-venvs/circuit_tracer")
LOCAL_VENV = HERE.parent / ".venv_circuit_tracer"
INPUT_HOOK, OUTPUT_HOOK = "ln2.hook_normalized", "hook_mlp_out"
# circuit-tracer's own hook names per architecture (TL2 meaning): GPT-2 and GemmaScope
# transcoders read ln2.hook_normalized, its Llama-3.2-1B transcoders wrap the MLP
CT_HOOKS = {
    "gpt2": (INPUT_HOOK, OUTPUT_HOOK),
    "llama": ("mlp.hook_in", "mlp.hook_out"),
    "gemma2": (INPUT_HOOK, OUTPUT_HOOK),
}
# the tiny Llama and Gemma-2 of the benchmark: the default GPT-2's width, depth and vocabulary
SIZES = {"d_model": 128, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "d_mlp": 512, "n_ctx": 512}


# ---- shared by both workers (no imports of either tool here) ---------------------------------
class PeakRSS:
    """Samples this process's resident memory in a thread; `peak_mb` is the growth over `start`."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.base) / 2**20


# ---- preparing the shared weights (our environment) -------------------------------------------
def prepare(folder: Path, n_features: int, lengths: list[int], arch: str, seed: int = 0) -> None:
    """Write the model, the transcoders in circuit-tracer's layout, and the prompts."""
    import torch

    torch.manual_seed(seed)
    model = _prepare_gpt2(folder) if arch == "gpt2" else _prepare_hf(folder, arch, seed)
    _write_transcoders(folder, model, n_features, *CT_HOOKS[arch])
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    prompts = {}
    for n in lengths:
        ids = torch.randint(1, cfg.d_vocab, (n,), generator=gen)
        ids[0] = model.tokenizer.bos_token_id
        prompts[str(n)] = ids.tolist()
    (folder / "prompts.json").write_text(json.dumps(prompts))


def _prepare_hf(folder: Path, arch: str, seed: int):
    """A random Llama (GQA, Llama-3 rope scaling) or Gemma-2 (post-norms, soft-caps, a sliding
    window) with norm weights away from 1, saved as a Hugging Face folder, and the TL2 config
    circuit-tracer's HookedTransformer needs for it. Returns our unprocessed bridge of it."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    from replacement import load_model
    from tests.tiny_models import make_tokenizer

    tok = make_tokenizer()
    s = SIZES
    d_head = s["d_model"] // s["n_heads"]
    common = {
        "vocab_size": len(tok),
        "hidden_size": s["d_model"],
        "intermediate_size": s["d_mlp"],
        "num_hidden_layers": s["n_layers"],
        "num_attention_heads": s["n_heads"],
        "num_key_value_heads": s["n_kv_heads"],
        "max_position_embeddings": s["n_ctx"],
        "bos_token_id": 0,
        "eos_token_id": 0,
    }
    tl = {
        "n_layers": s["n_layers"],
        "d_model": s["d_model"],
        "n_ctx": s["n_ctx"],
        "d_head": d_head,
        "n_heads": s["n_heads"],
        "n_key_value_heads": s["n_kv_heads"],
        "d_mlp": s["d_mlp"],
        "d_vocab": len(tok),
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "rotary_dim": d_head,
        "final_rms": True,
        "gated_mlp": True,
    }
    torch.manual_seed(seed)
    if arch == "llama":
        rope = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        }
        hf = LlamaForCausalLM(LlamaConfig(**common, rope_scaling={**rope, "rope_theta": 5e5}))
        tl.update(
            eps=hf.config.rms_norm_eps,
            act_fn="silu",
            rotary_adjacent_pairs=False,
            rotary_base=5e5,
            use_NTK_by_parts_rope=True,
            NTK_by_parts_factor=8.0,
            NTK_by_parts_low_freq_factor=1.0,
            NTK_by_parts_high_freq_factor=4.0,
            NTK_original_ctx_len=32,
            original_architecture="LlamaForCausalLM",
        )
    else:
        window = 8  # shorter than the prompts: it binds
        hf = Gemma2ForCausalLM(
            Gemma2Config(
                **common,
                head_dim=d_head,
                sliding_window=window,
                query_pre_attn_scalar=d_head,
                pad_token_id=0,
                attn_logit_softcapping=50.0,
                final_logit_softcapping=30.0,
            )
        )
        # Hugging Face's Gemma-2 slides on even layers (0, 2, ...)
        types = ["local" if t == "sliding_attention" else "global" for t in hf.config.layer_types]
        tl.update(
            eps=hf.config.rms_norm_eps,
            act_fn="gelu_pytorch_tanh",
            rotary_base=10000.0,
            use_attn_scale=True,
            window_size=window,
            use_local_attn=True,
            attn_types=types,
            attn_scores_soft_cap=50.0,
            output_logits_soft_cap=30.0,
            use_normalization_before_and_after=True,
            original_architecture="Gemma2ForCausalLM",
        )
        hf.config.architectures = ["Gemma2ForCausalLM"]
    with torch.no_grad():  # norm weights away from their identity (1, or 0 under Gemma's 1 + w)
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    hf.eval().save_pretrained(folder / "hf")
    tok.save_pretrained(folder / "hf")
    (folder / "tl_config.json").write_text(json.dumps(tl))
    _save_tokenizer(folder, tok)
    return load_model(folder / "hf", processing="none")


def _save_tokenizer(folder: Path, tok) -> None:
    tok.save_pretrained(folder / "tokenizer")
    special = {"bos_token": tok.bos_token, "eos_token": tok.eos_token}
    (folder / "tokenizer" / "special.json").write_text(json.dumps(special))


def _prepare_gpt2(folder: Path):
    """The embedded default model's (folded) weights as a TL2 state dict and config."""
    from safetensors.torch import save_file

    from replacement import load_model

    model = load_model("default")
    cfg = model.cfg
    d = cfg.d_model
    state = {"embed.W_E": model.W_E, "pos_embed.W_pos": model.W_pos}
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}"
        for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
            state[f"{b}.attn.{name}"] = getattr(model, name)[layer]
        for name in ("W_in", "b_in", "W_out", "b_out"):
            state[f"{b}.mlp.{name}"] = getattr(model, name)[layer]
        for ln in ("ln1", "ln2"):
            norm = getattr(model.blocks[layer], ln)
            state[f"{b}.{ln}.w"], state[f"{b}.{ln}.b"] = norm.w, norm.b
    state["ln_final.w"], state["ln_final.b"] = model.ln_final.w, model.ln_final.b
    state["unembed.W_U"], state["unembed.b_U"] = model.W_U, model.b_U
    state = {k: v.detach().float().contiguous().clone() for k, v in state.items()}
    save_file(state, str(folder / "model.safetensors"))
    tl_cfg = {
        "n_layers": cfg.n_layers,
        "d_model": d,
        "n_ctx": cfg.n_ctx,
        "d_head": cfg.d_head,
        "n_heads": cfg.n_heads,
        "d_mlp": cfg.d_mlp,
        "d_vocab": cfg.d_vocab,
        "act_fn": cfg.act_fn,
        "normalization_type": "LN",
        "eps": cfg.eps,
        "positional_embedding_type": "standard",
        "original_architecture": "GPT2LMHeadModel",
    }
    (folder / "tl_config.json").write_text(json.dumps(tl_cfg))
    _save_tokenizer(folder, model.tokenizer)
    return model


def _write_transcoders(folder: Path, model, n_features: int, in_hook: str, out_hook: str) -> None:
    """JumpReLU skip transcoders in circuit-tracer's layout; thresholds put about 30 features
    per token and layer above, measured where they read (the TL2 name in TL4 meaning)."""
    import torch
    import yaml
    from safetensors.torch import save_file

    from replacement.hook_table import from_tl2, norm_facts

    cfg, d = model.cfg, model.cfg.d_model
    read = from_tl2(in_hook, fold_ln=False, layernorm=norm_facts(model).layernorm)
    tc = folder / "transcoders"
    tc.mkdir()
    tokens = torch.randint(1, cfg.d_vocab, (1, 64))
    names = [f"blocks.{layer}.{read}" for layer in range(cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    for layer in range(cfg.n_layers):
        x = cache[names[layer]][0, 1:].float()
        W_enc = torch.randn(n_features, d) / d**0.5
        b_enc = torch.randn(n_features) * 0.1
        pre = x @ W_enc.T + b_enc
        threshold = pre.quantile(1 - 30 / n_features, dim=0).clamp_min(0.01)
        tensors = {
            "W_enc": W_enc,
            "b_enc": b_enc,
            "W_dec": torch.randn(n_features, d) * 0.1,
            "b_dec": torch.randn(d) * 0.01,
            "W_skip": torch.randn(d, d) * 0.2 / d**0.5,
            "activation_function.threshold": threshold,
        }
        save_file(
            {k: v.contiguous() for k, v in tensors.items()}, str(tc / f"layer_{layer}.safetensors")
        )
    (tc / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "model_kind": "transcoder_set",
                "model_name": "bench",
                "feature_input_hook": in_hook,
                "feature_output_hook": out_hook,
                "transcoders": [f"layer_{i}.safetensors" for i in range(cfg.n_layers)],
            }
        )
    )


# ---- workers: one attribution, timed, in a fresh process --------------------------------------
def worker_ours(
    folder: Path, n: int, budget: int | None, threads: int, device: str, arch: str, processing: str
) -> dict:
    import torch

    torch.set_num_threads(threads)
    from circuits.attribution.attribute import attribute
    from replacement import load_model
    from replacement.formats.circuit_tracer import load_circuit_tracer_set
    from replacement.formats.detect import load_dictionaries
    from replacement.model import model_name

    if arch == "gpt2":
        model = load_model("default", device=device)
        dicts = [d.to(device) for d in load_circuit_tracer_set(folder / "transcoders")]
        for d in dicts:
            # circuit-tracer's format records processing "none", but both tools here run the
            # same folded weights (`prepare` writes them with LayerNorm weights 1 and biases 0),
            # so these transcoders read the folded model's activations
            d.metadata["processing"] = model.sc_processing
            d.model_name = model_name(model)
    else:  # as a user loads circuit-tracer's files: converted to the processing asked for
        model = load_model(folder / "hf", device=device, processing=processing)
        dicts = load_dictionaries(folder / "transcoders", model=model)
    ids = torch.tensor(json.loads((folder / "prompts.json").read_text())[str(n)], device=device)
    attribute(model, dicts, ids[:8], verbose=False)  # warm-up
    with PeakRSS() as mem:
        start = time.perf_counter()
        graph = attribute(model, dicts, ids, verbose=False, max_feature_nodes=budget)
        _sync(device)
        seconds = time.perf_counter() - start
    keys = []
    for kind, layer, pos, feat in zip(
        graph.node_kind,
        graph.node_layer.tolist(),
        graph.node_pos.tolist(),
        graph.node_feature.tolist(),
        strict=True,
    ):
        keys.append(_key(kind, layer, pos, feat))
    torch.save({"keys": keys, "adjacency": graph.adjacency}, folder / f"ours_{n}.pt")
    return {
        "seconds": seconds,
        "peak_mb": mem.peak_mb,
        "features": graph.node_kind.count("feature"),
        "method": graph.metadata.get("method"),
        "batch": graph.metadata.get("batch_size"),
    }


def worker_ct(
    folder: Path, n: int, budget: int | None, threads: int, device: str, arch: str, processing: str
) -> dict:
    import torch

    torch.set_num_threads(threads)
    from circuit_tracer import attribute
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel,
    )
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformerConfig
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cfg = HookedTransformerConfig(
        **json.loads((folder / "tl_config.json").read_text()), device=device
    )
    n_layers = cfg.n_layers
    paths = {i: str(folder / "transcoders" / f"layer_{i}.safetensors") for i in range(n_layers)}
    tcs = load_transcoder_set(
        paths,
        "bench",
        *CT_HOOKS[arch],
        device=torch.device(device),
        lazy_encoder=False,
        lazy_decoder=False,
    )
    # read the tokenizer.json directly: transformers 4.x cannot read a 5.x tokenizer config
    special = json.loads((folder / "tokenizer" / "special.json").read_text())
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer" / "tokenizer.json"), **special
    )
    tok.save_pretrained(folder / "ct_tokenizer")  # TransformerLens wants one loaded by name
    tok = AutoTokenizer.from_pretrained(folder / "ct_tokenizer")
    model = TransformerLensReplacementModel.from_config(cfg, tcs, tokenizer=tok)
    # circuit-tracer wraps each MLP and the unembedding in a module of its own
    state = load_file(folder / "model.safetensors") if arch == "gpt2" else _tl2_state(folder, cfg)
    state = {
        k.replace(".mlp.", ".mlp.old_mlp.").replace("unembed.", "unembed.old_unembed."): v
        for k, v in state.items()
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    model.eval()
    ids = torch.tensor(json.loads((folder / "prompts.json").read_text())[str(n)], device=device)
    attribute(ids[:8], model, verbose=False)  # warm-up
    with PeakRSS() as mem:
        start = time.perf_counter()
        graph = attribute(ids, model, verbose=False, max_feature_nodes=budget)
        _sync(device)
        seconds = time.perf_counter() - start
    feats = graph.active_features[graph.selected_features].tolist()
    keys = [_key("feature", lay, pos, f) for lay, pos, f in feats]
    keys += [_key("error", lay, pos, -1) for lay in range(n_layers) for pos in range(len(ids))]
    keys += [_key("token", -1, pos, int(ids[pos])) for pos in range(len(ids))]
    keys += [_key("logit", n_layers, len(ids) - 1, int(t.vocab_idx)) for t in graph.logit_targets]
    torch.save({"keys": keys, "adjacency": graph.adjacency_matrix.cpu()}, folder / f"ct_{n}.pt")
    return {"seconds": seconds, "peak_mb": mem.peak_mb, "features": len(feats)}


def _tl2_state(folder: Path, cfg) -> dict:
    """TransformerLens 2's own conversion of the saved Hugging Face weights (circuit-tracer's
    environment: transformers 4.x builds the model from the sizes, then takes the tensors)."""
    import torch
    from safetensors.torch import load_file
    from transformer_lens.pretrained.weight_conversions import (
        convert_gemma_weights,
        convert_llama_weights,
    )
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_cfg = AutoConfig.from_pretrained(folder / "hf")
    with torch.device("cpu"):
        hf = AutoModelForCausalLM.from_config(hf_cfg)
    missing, unexpected = hf.load_state_dict(
        load_file(folder / "hf" / "model.safetensors"), strict=False
    )
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    hf.tie_weights()
    if cfg.original_architecture == "LlamaForCausalLM":
        return convert_llama_weights(hf, cfg)
    return convert_gemma_weights(hf, cfg)


def _key(kind: str, layer: int, pos: int, feat: int) -> str:
    if kind == "feature":
        return f"f{layer}.{pos}.{feat}"
    if kind == "error":
        return f"e{layer}.{pos}"
    return f"t{pos}" if kind == "token" else f"l{feat}"


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---- the driver -----------------------------------------------------------------------------
def ct_python(given: str | None) -> str:
    """The circuit-tracer interpreter: given, the shared venv, or one built here."""
    if given:
        return given
    if (CT_VENV / "bin" / "python").exists():
        return str(CT_VENV / "bin" / "python")
    python = LOCAL_VENV / "bin" / "python"
    if not python.exists():
        print(f"building circuit-tracer's venv in {LOCAL_VENV} (a few minutes)")
        subprocess.run([sys.executable, "-m", "venv", str(LOCAL_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run(
            [*pip, "torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu"],
            check=True,
        )
        subprocess.run(
            [*pip, "circuit-tracer==0.5.0", "transformer-lens==2.16.1", "pyarrow<21"], check=True
        )
    return str(python)


def run_worker(python: str, which: str, folder: Path, n: int, args, arch: str) -> dict:
    cmd = [
        python,
        str(HERE),
        "--worker",
        which,
        "--folder",
        str(folder),
        "--n",
        str(n),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--arch",
        arch,
        "--processing",
        args.processing,
    ]
    if n > args.full_up_to:
        cmd += ["--max-feature-nodes", str(args.budget)]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "TQDM_DISABLE": "1",
    }
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{which} worker failed on {n} tokens:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(folder: Path, n: int) -> tuple[float, int, int]:
    """Largest edge difference relative to the largest edge, over the nodes both graphs hold."""
    import torch

    ours, ct = torch.load(folder / f"ours_{n}.pt"), torch.load(folder / f"ct_{n}.pt")
    index_ct = {k: i for i, k in enumerate(ct["keys"])}
    shared = [(i, index_ct[k]) for i, k in enumerate(ours["keys"]) if k in index_ct]
    a = torch.tensor([i for i, _ in shared])
    b = torch.tensor([j for _, j in shared])
    mine = ours["adjacency"][a][:, a].double()
    theirs = ct["adjacency"][b][:, b].double()
    scale = max(theirs.abs().max().item(), 1e-30)
    n_feat = sum(k.startswith("f") for k in ours["keys"] if k in index_ct)
    return (mine - theirs).abs().max().item() / scale, len(shared), n_feat


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", nargs="+", default=["gpt2", "llama", "gemma2"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 21, 63, 128, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--features", type=int, default=512, help="features per transcoder")
    parser.add_argument("--full-up-to", type=int, default=63, help="full graphs up to this length")
    parser.add_argument("--budget", type=int, default=2048, help="max_feature_nodes beyond it")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ct-python", default=None)
    parser.add_argument(
        "--processing", default="none", help="our model's processing in the timed runs"
    )
    parser.add_argument(
        "--check-processings",
        nargs="*",
        default=["none", "folded", "fold_ln", "centred"],
        help="Llama/Gemma-2: compare our graph under each processing with circuit-tracer's "
        "(shortest length, once)",
    )
    parser.add_argument("--worker", choices=["ours", "ct"])
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--n", type=int)
    parser.add_argument("--max-feature-nodes", type=int, default=None)
    args = parser.parse_args()
    if args.worker:
        fn = worker_ours if args.worker == "ours" else worker_ct
        result = fn(
            args.folder,
            args.n,
            args.max_feature_nodes,
            args.threads,
            args.device,
            args.arch[0],
            args.processing,
        )
        print(json.dumps(result))
        return
    python = ct_python(args.ct_python)
    for arch in args.arch:
        with tempfile.TemporaryDirectory() as tmp:
            run_arch(Path(tmp), arch, python, args)


def run_arch(folder: Path, arch: str, python: str, args) -> None:
    """Timed, interleaved runs of both tools on one architecture, and the edge checks."""
    prepare(folder, args.features, args.lengths, arch)
    results: dict[int, dict[str, list[dict]]] = {n: {"ours": [], "ct": []} for n in args.lengths}
    for rep in range(args.repeats):
        for n in args.lengths:  # interleaved: each length, each tool, every repeat
            results[n]["ours"].append(run_worker(sys.executable, "ours", folder, n, args, arch))
            results[n]["ct"].append(run_worker(python, "ct", folder, n, args, arch))
            if rep == 0:
                err, n_shared, n_feat = compare(folder, n)
                results[n]["check"] = [{"err": err, "shared": n_shared, "feat": n_feat}]
            print(
                f"{arch} repeat {rep} tokens {n}: ours {results[n]['ours'][-1]}, "
                f"circuit-tracer {results[n]['ct'][-1]}",
                flush=True,
            )
    checks = {}
    if arch != "gpt2":  # our graph under every processing against circuit-tracer's
        n = args.lengths[0]
        run_worker(python, "ct", folder, n, args, arch)
        for processing in args.check_processings:
            one = argparse.Namespace(**{**vars(args), "processing": processing})
            got = run_worker(sys.executable, "ours", folder, n, one, arch)
            err, n_shared, _ = compare(folder, n)
            checks[processing] = (err, n_shared, got["method"])
    print(
        f"\n{arch}: threads {args.threads}, device {args.device}, {args.features} features per "
        f"layer, median of {args.repeats}; budget {args.budget} above {args.full_up_to} tokens; "
        f"hooks {CT_HOOKS[arch][0]} -> {CT_HOOKS[arch][1]}; ours on processing {args.processing!r}"
    )
    print(
        f"{'tokens':>6} {'features':>8} {'ct s':>7} {'ours s':>7} {'time':>6} "
        f"{'ct MB':>7} {'ours MB':>7} {'mem':>6} {'edge err':>9} {'shared nodes':>12} method"
    )
    for n in args.lengths:
        med = {
            t: {k: statistics.median(r[k] for r in results[n][t]) for k in ("seconds", "peak_mb")}
            for t in ("ours", "ct")
        }
        check = results[n]["check"][0]
        print(
            f"{n:>6} {results[n]['ct'][0]['features']:>8} {med['ct']['seconds']:>7.2f} "
            f"{med['ours']['seconds']:>7.2f} {med['ours']['seconds'] / med['ct']['seconds']:>5.2f}x "
            f"{med['ct']['peak_mb']:>7.0f} {med['ours']['peak_mb']:>7.0f} "
            f"{med['ours']['peak_mb'] / max(med['ct']['peak_mb'], 1e-9):>5.2f}x "
            f"{check['err']:>9.1e} {check['shared']:>12} {results[n]['ours'][0]['method']}"
        )
    for processing, (err, n_shared, method) in checks.items():
        print(
            f"{arch} {args.lengths[0]} tokens, ours on {processing!r} ({method}) vs circuit-tracer:"
            f" edge err {err:.1e} over {n_shared} shared nodes"
        )


if __name__ == "__main__":
    main()
