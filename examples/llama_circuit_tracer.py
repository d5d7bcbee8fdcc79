"""A Llama or Gemma model with circuit-tracer transcoders: a prompt's attribution graph.

Run on your own machine, with the model and a circuit-tracer transcoder folder on disk
(nothing is downloaded here):

    huggingface-cli download meta-llama/Llama-3.2-1B --local-dir llama-3.2-1b
    huggingface-cli download mntss/transcoder-Llama-3.2-1B --local-dir llama-transcoders
    python examples/llama_circuit_tracer.py --model llama-3.2-1b --transcoders llama-transcoders

The folder holds circuit-tracer's `config.yaml` (`model_kind: transcoder_set`, hooks) and
`layer_{i}.safetensors`. circuit-tracer runs the model unprocessed and reads TransformerLens 2's
`ln2.hook_normalized`, the norm's output; the loader records both, so the same call as for
any dictionary gives circuit-tracer's edges.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpt2_saelens import missing  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3.2-1b", help="a local model folder")
    parser.add_argument("--transcoders", required=True, help="circuit-tracer transcoder folder")
    parser.add_argument("--prompt", default="The capital of the state containing Dallas is")
    parser.add_argument("--max-feature-nodes", type=int, default=1000)
    parser.add_argument("--out", default="llama_circuit_tracer_out", help="output folder")
    args = parser.parse_args(argv)

    if not Path(args.model, "config.json").is_file():
        return missing(
            "The model",
            args.model,
            "Download it once (e.g. huggingface-cli download meta-llama/Llama-3.2-1B "
            "--local-dir llama-3.2-1b) and pass its folder to --model.",
        )
    if not Path(args.transcoders, "config.yaml").is_file():
        return missing(
            "A circuit-tracer transcoder folder (config.yaml + layer_{i}.safetensors)",
            args.transcoders,
            "Download one (e.g. huggingface-cli download mntss/transcoder-Llama-3.2-1B "
            "--local-dir llama-transcoders) and pass it to --transcoders.",
        )

    from circuits import attribute
    from replacement import load_model_and_dictionaries

    # the same call as for SAELens SAEs (examples/gpt2_saelens.py)
    model, transcoders = load_model_and_dictionaries(args.model, args.transcoders)
    print(
        f"model processing {model.sc_processing!r}; {len(transcoders)} transcoders "
        f"{transcoders[0].in_hook} -> {transcoders[0].out_hook}"
    )
    graph = attribute(
        model, transcoders, args.prompt, max_feature_nodes=args.max_feature_nodes, verbose=False
    )
    pruned = graph.prune(node_threshold=0.8, edge_threshold=0.98)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pruned.to_json(slug="llama_circuit_tracer", path=out / "llama_circuit_tracer.json")
    print(f"{len(pruned.node_kind)} nodes kept; scores {pruned.scores()}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
