"""A Llama or Gemma model with circuit-tracer transcoders: a prompt's attribution graph.

Run on your own machine, with the model and a circuit-tracer transcoder folder on disk
(nothing is downloaded here):

    huggingface-cli download meta-llama/Llama-3.2-1B --local-dir llama-3.2-1b
    huggingface-cli download mntss/transcoder-Llama-3.2-1B --local-dir llama-transcoders
    python examples/llama_circuit_tracer.py --model llama-3.2-1b --transcoders llama-transcoders

The folder holds circuit-tracer's `config.yaml` (`model_kind: transcoder_set`, hooks) and
`layer_{i}.safetensors`. circuit-tracer runs the model unprocessed under TransformerLens 2 hook
names (Llama transcoders read `hook_resid_mid`; GemmaScope ones TL2's `ln2.hook_normalized`,
which on an RMSNorm model is the normalized input before the norm's weight); the loader records
both and renames hooks for the model it is given, so the same call as for any dictionary gives
circuit-tracer's edges.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpt2_saelens import missing, trace_and_save  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3.2-1b", help="a local model folder")
    parser.add_argument("--transcoders", required=True, help="circuit-tracer transcoder folder")
    parser.add_argument("--prompt", default="The capital of the state containing Dallas is")
    parser.add_argument("--max-feature-nodes", type=int, default=1000)
    parser.add_argument("--out", default="llama_circuit_tracer_out", help="output folder")
    args = parser.parse_args(argv)

    needed = [
        (args.model, "config.json", "The model", "meta-llama/Llama-3.2-1B", "--model"),
        (
            args.transcoders,
            "config.yaml",
            "A circuit-tracer transcoder folder (config.yaml + layer_{i}.safetensors)",
            "mntss/transcoder-Llama-3.2-1B",
            "--transcoders",
        ),
    ]
    for folder, marker, what, repo, flag in needed:
        if not Path(folder, marker).is_file():
            how = f"Download it once (e.g. huggingface-cli download {repo} --local-dir DIR)"
            return missing(what, folder, f"{how} and pass DIR to {flag}.")

    from replacement import load_model_and_dictionaries

    # the same call as for SAELens SAEs (examples/gpt2_saelens.py)
    model, transcoders = load_model_and_dictionaries(args.model, args.transcoders)
    print(
        f"model processing {model.sc_processing!r}; {len(transcoders)} transcoders "
        f"{transcoders[0].in_hook} -> {transcoders[0].out_hook}"
    )
    out = Path(args.out)
    trace_and_save(
        model, transcoders, args.prompt, out, "llama_circuit_tracer", args.max_feature_nodes
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
