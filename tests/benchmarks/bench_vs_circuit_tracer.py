"""Benchmark: our `attribute` against circuit-tracer 0.5.0 itself, on identical weights.

Run: python tests/benchmarks/bench_vs_circuit_tracer.py [--lengths 16 21 63 128 256]
     [--repeats 3] [--threads 2] [--features 512] [--ct-python PATH] [--device cpu]

What it does:
1. Takes the embedded default model (a 4-layer d128 GPT-2) and random JumpReLU skip
   transcoders on every layer (circuit-tracer's loader knows ReLU and JumpReLU), and writes
   both once: the model as a TransformerLens-2 `HookedTransformer` state dict (the processed
   weights our bridge runs, LayerNorm weights 1 and biases 0), the transcoders in
   circuit-tracer's own layout (`config.yaml` + `layer_{i}.safetensors`), which our
   `load_dictionaries` reads back, so both tools see the same numbers.
2. For every repeat and prompt length, interleaved, runs one process of each tool (ours in
   this interpreter's environment, circuit-tracer in its own venv). Each process loads,
   warms up on a short prompt, then times one `attribute` call with the tool's defaults
   (full graph up to 63 tokens; `--budget` feature rows for longer prompts) and samples its
   resident memory every 2 ms during the call (peak minus the level before the call).
3. Checks that the edges agree on the nodes both graphs hold (features both kept, errors and
   tokens at positions >= 1, logits) and prints per length the median seconds and peak MB of
   each tool and their ratios.

circuit-tracer's venv: `--ct-python`, else /work/venvs/circuit_tracer/bin/python, else one
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
CT_VENV = Path("/work/venvs/circuit_tracer")
LOCAL_VENV = HERE.parent / ".venv_circuit_tracer"
INPUT_HOOK, OUTPUT_HOOK = "ln2.hook_normalized", "hook_mlp_out"


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
def prepare(folder: Path, n_features: int, lengths: list[int], seed: int = 0) -> None:
    """Write the model, the transcoders in circuit-tracer's layout, and the prompts."""
    import torch
    import yaml
    from safetensors.torch import save_file

    from replacement import load_model

    torch.manual_seed(seed)
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
    model.tokenizer.save_pretrained(folder / "tokenizer")
    special = {"bos_token": model.tokenizer.bos_token, "eos_token": model.tokenizer.eos_token}
    (folder / "tokenizer" / "special.json").write_text(json.dumps(special))

    # JumpReLU skip transcoders; thresholds put about 30 features per token and layer above
    tc = folder / "transcoders"
    tc.mkdir()
    tokens = torch.randint(1, cfg.d_vocab, (1, 64))
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(INPUT_HOOK))
    for layer in range(cfg.n_layers):
        x = cache[f"blocks.{layer}.{INPUT_HOOK}"][0, 1:]
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
                "model_name": "default",
                "feature_input_hook": INPUT_HOOK,
                "feature_output_hook": OUTPUT_HOOK,
                "transcoders": [f"layer_{i}.safetensors" for i in range(cfg.n_layers)],
            }
        )
    )
    gen = torch.Generator().manual_seed(seed)
    prompts = {}
    for n in lengths:
        ids = torch.randint(1, cfg.d_vocab, (n,), generator=gen)
        ids[0] = model.tokenizer.bos_token_id
        prompts[str(n)] = ids.tolist()
    (folder / "prompts.json").write_text(json.dumps(prompts))


# ---- workers: one attribution, timed, in a fresh process --------------------------------------
def worker_ours(folder: Path, n: int, budget: int | None, threads: int, device: str) -> dict:
    import torch

    torch.set_num_threads(threads)
    from circuits.attribution.attribute import attribute
    from replacement import load_model
    from replacement.formats.circuit_tracer import load_circuit_tracer_set
    from replacement.model import model_name

    model = load_model("default", device=device)
    dicts = [d.to(device) for d in load_circuit_tracer_set(folder / "transcoders")]
    for d in dicts:
        # circuit-tracer's format records processing "none", but both tools here run the same
        # folded weights (`prepare` writes them with LayerNorm weights 1 and biases 0), so
        # these transcoders read the folded model's activations
        d.metadata["processing"] = model.sc_processing
        d.model_name = model_name(model)
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


def worker_ct(folder: Path, n: int, budget: int | None, threads: int, device: str) -> dict:
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
        INPUT_HOOK,
        OUTPUT_HOOK,
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
    state = {
        k.replace(".mlp.", ".mlp.old_mlp.").replace("unembed.", "unembed.old_unembed."): v
        for k, v in load_file(folder / "model.safetensors").items()
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


def run_worker(python: str, which: str, folder: Path, n: int, args) -> dict:
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
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 21, 63, 128, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--features", type=int, default=512, help="features per transcoder")
    parser.add_argument("--full-up-to", type=int, default=63, help="full graphs up to this length")
    parser.add_argument("--budget", type=int, default=2048, help="max_feature_nodes beyond it")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ct-python", default=None)
    parser.add_argument("--worker", choices=["ours", "ct"])
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--n", type=int)
    parser.add_argument("--max-feature-nodes", type=int, default=None)
    args = parser.parse_args()
    if args.worker:
        fn = worker_ours if args.worker == "ours" else worker_ct
        result = fn(args.folder, args.n, args.max_feature_nodes, args.threads, args.device)
        print(json.dumps(result))
        return
    python = ct_python(args.ct_python)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(folder, args.features, args.lengths)
        results: dict[int, dict[str, list[dict]]] = {
            n: {"ours": [], "ct": []} for n in args.lengths
        }
        for rep in range(args.repeats):
            for n in args.lengths:  # interleaved: each length, each tool, every repeat
                results[n]["ours"].append(run_worker(sys.executable, "ours", folder, n, args))
                results[n]["ct"].append(run_worker(python, "ct", folder, n, args))
                if rep == 0:
                    err, n_shared, n_feat = compare(folder, n)
                    results[n]["check"] = [{"err": err, "shared": n_shared, "feat": n_feat}]
                print(
                    f"repeat {rep} tokens {n}: ours {results[n]['ours'][-1]}, "
                    f"circuit-tracer {results[n]['ct'][-1]}",
                    flush=True,
                )
        print(
            f"\nthreads {args.threads}, device {args.device}, {args.features} features per "
            f"layer, median of {args.repeats}; budget {args.budget} above {args.full_up_to} tokens"
        )
        print(
            f"{'tokens':>6} {'features':>8} {'ct s':>7} {'ours s':>7} {'time':>6} "
            f"{'ct MB':>7} {'ours MB':>7} {'mem':>6} {'edge err':>9} {'shared nodes':>12}"
        )
        for n in args.lengths:
            med = {
                t: {
                    k: statistics.median(r[k] for r in results[n][t])
                    for k in ("seconds", "peak_mb")
                }
                for t in ("ours", "ct")
            }
            check = results[n]["check"][0]
            print(
                f"{n:>6} {results[n]['ct'][0]['features']:>8} {med['ct']['seconds']:>7.2f} "
                f"{med['ours']['seconds']:>7.2f} {med['ours']['seconds'] / med['ct']['seconds']:>5.2f}x "
                f"{med['ct']['peak_mb']:>7.0f} {med['ours']['peak_mb']:>7.0f} "
                f"{med['ours']['peak_mb'] / max(med['ct']['peak_mb'], 1e-9):>5.2f}x "
                f"{check['err']:>9.1e} {check['shared']:>12}"
            )


if __name__ == "__main__":
    main()
