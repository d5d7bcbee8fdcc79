"""GPT-2 small with SAELens SAEs: SAELens' own metrics, then a prompt's attribution graph.

Run on your own machine, with GPT-2 small and SAELens SAE folders on disk (nothing is
downloaded here):

    huggingface-cli download openai-community/gpt2 --local-dir gpt2
    # SAE folders (cfg.json + sae_weights.safetensors), e.g. from SAELens' pretrained releases
    # (`SAE.from_pretrained(...)` then `sae.save_model(folder)`) or trained with SAELens
    python examples/gpt2_saelens.py --model gpt2 --saes saes    # one SAE folder or a folder of them

One call loads the model and any peer dictionaries: the model gets the processing the SAEs were
trained under (SAELens records it: unprocessed for SAELens >= 3, folded and centred for older
files), hooks are read in TransformerLens 4 meaning, and a model name recorded as "gpt2-small"
matches the folder "gpt2". (`load_model(folder)` + `load_dictionaries(path, model=model)` does
the same for SAEs trained unprocessed, and names the call to make otherwise.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TEXT = (
    "When Mary and John went to the store, John gave a drink to Mary. "
    "The war lasted from the year 1732 to the year 1756. "
) * 8


def missing(what: str, path: str, how: str) -> int:
    """Print a clear message about weights that are not on disk; exit code 2."""
    print(f"{what} not found at {path!r}.\n{how}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2", help="GPT-2 small: a local folder")
    parser.add_argument("--saes", required=True, help="a SAELens SAE folder, or a folder of them")
    parser.add_argument(
        "--prompt", default="When Mary and John went to the store, John gave a drink to"
    )
    parser.add_argument("--tokens", help="evaluate on this token file instead of the text")
    parser.add_argument("--max-feature-nodes", type=int, default=200)
    parser.add_argument("--out", default="gpt2_saelens_out", help="output folder")
    args = parser.parse_args(argv)

    if not Path(args.model, "config.json").is_file():
        return missing(
            "GPT-2 small",
            args.model,
            "Download it once (huggingface-cli download openai-community/gpt2 --local-dir gpt2) "
            "and pass --model gpt2.",
        )
    saes_dir = Path(args.saes)
    if not any(saes_dir.glob("sae_weights.safetensors")) and not any(
        saes_dir.glob("*/sae_weights.safetensors")
    ):
        return missing(
            "A SAELens SAE (cfg.json + sae_weights.safetensors)",
            args.saes,
            "Save one with SAELens (sae.save_model(folder)) and pass its folder to --saes.",
        )

    from replacement import load_model_and_dictionaries, spliced_loss
    from replacement.evaluate_cli import read_token_file

    # processing, hooks and names come from the SAEs' own files
    model, saes = load_model_and_dictionaries(args.model, args.saes)
    print(f"model processing {model.sc_processing!r}; SAEs at {[d.in_hook for d in saes]}")

    data = read_token_file(args.tokens) if args.tokens else TEXT
    report = spliced_loss(model, saes, data, conventions="saelens", verbose=False)
    for row in report.rows:
        m = row.saelens
        print(
            f"{row.name}: explained_variance {m['explained_variance']:.4f}  "
            f"l0 {m['l0']:.2f}  ce_loss_score {m['ce_loss_score']:.4f}  "
            f"kl_div_score {m['kl_div_score']:.4f}  dead {m['dead_features']}"
        )

    trace_and_save(model, saes, args.prompt, Path(args.out), "gpt2_saelens", args.max_feature_nodes)
    return 0


def trace_and_save(
    model, dictionaries, prompt: str, out: Path, slug: str, max_feature_nodes: int
) -> None:
    """Attribute `prompt`, prune, and write the circuit-tracer/Neuronpedia JSON into `out`."""
    from circuits import attribute

    graph = attribute(
        model, dictionaries, prompt, max_feature_nodes=max_feature_nodes, verbose=False
    )
    pruned = graph.prune(node_threshold=0.8, edge_threshold=0.98)
    out.mkdir(parents=True, exist_ok=True)
    pruned.to_json(slug=slug, path=out / f"{slug}.json")
    print(f"{len(pruned.node_kind)} nodes kept; scores {pruned.scores()}; wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
