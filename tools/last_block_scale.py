"""Does a dictionary spliced at the default model's last block change the residual's scale only?

    python tools/last_block_scale.py DICT.safetensors [DICT.safetensors ...] [--rows N]

For each dictionary (replacing `blocks.3.hook_mlp_out`), on the first N held-out rows of the
default corpus (BOS positions left out), it prints medians over positions of: the output's norm
over the MLP's, the last residual's norm over the original's and their cosine; FVU of the MLP
output, of the last residual and of `ln_final.hook_normalized` (the final norm's output before
its weight, which divides any scale out). For a skip transcoder it then splits the output into
its skip path `x @ W_skip` and its features, and measures how much of the excess over the MLP
output lies along the block's own residual `resid_mid`. Written for the finding in
docs/claims.md that `skip_transcoder_e2e` at layer 3 leaves the MLP's scale while its CE
increase falls.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as fn
from jaxtyping import Float
from torch import Tensor

from replacement import load_dictionary, load_model, splice
from training.data import load_token_data
from training.losses import fvu

RESID, NORMED, MLP = "blocks.3.hook_resid_post", "ln_final.hook_normalized", "blocks.3.hook_mlp_out"
IN, MID = "blocks.3.ln2.hook_normalized", "blocks.3.hook_resid_mid"


def _run(model, rows, hooks, dictionaries=()):
    """The hooks' activations (BOS dropped, positions flattened) and the CE of a forward."""
    store = {}

    def keep(name):  # keyed by the name asked for (the bridge may report an alias's target)
        def hook_fn(act, hook):
            store[name] = act[:, 1:].detach().flatten(0, 1).clone()

        return hook_fn

    with torch.no_grad(), splice(model, list(dictionaries)):
        logits = model.run_with_hooks(rows, fwd_hooks=[(h, keep(h)) for h in hooks])
    ce = fn.cross_entropy(logits[:, :-1].flatten(0, 1), rows[:, 1:].flatten()).item()
    return store, ce


def along(excess: Float[Tensor, "n d"], direction: Float[Tensor, "n d"]) -> tuple[float, float]:
    """The share of `excess`'s summed square that lies along `direction` (per row), and the
    median over rows of the coefficient c in excess ~ c * direction."""
    c = (excess * direction).sum(-1, keepdim=True) / (direction * direction).sum(-1, keepdim=True)
    share = 1 - ((excess - c * direction) ** 2).sum().item() / (excess**2).sum().item()
    return share, c.median().item()


def _median_ratio(a, b):
    return (a.norm(dim=-1) / b.norm(dim=-1)).median().item()


def main() -> None:
    """Print the scale figures of each dictionary given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dictionaries", nargs="+")
    parser.add_argument("--rows", type=int, default=48)
    args = parser.parse_args()
    model = load_model("default")
    rows = load_token_data(model).val[: args.rows]
    hooks = (RESID, NORMED, MLP, IN, MID)
    orig, ce = _run(model, rows, hooks)
    print(f"{args.rows} held-out rows, {orig[MLP].shape[0]} positions; original CE {ce:.4f}")
    for path in args.dictionaries:
        d = load_dictionary(path)
        if d.out_hook != MLP:
            raise SystemExit(f"{path}: writes {d.out_hook!r}, expected {MLP!r}")
        spliced, ce_spliced = _run(model, rows, hooks, [d])
        cos = fn.cosine_similarity(spliced[RESID], orig[RESID], dim=-1).median().item()
        print(
            f"{path}\n  CE +{ce_spliced - ce:.4f}; output/MLP norm "
            f"{_median_ratio(spliced[MLP], orig[MLP]):.2f}; last residual norm ratio "
            f"{_median_ratio(spliced[RESID], orig[RESID]):.2f}, cosine {cos:.3f}\n"
            f"  FVU: MLP output {fvu(orig[MLP], spliced[MLP]):.2f}, last residual "
            f"{fvu(orig[RESID], spliced[RESID]):.2f}, after the final norm "
            f"{fvu(orig[NORMED], spliced[NORMED]):.3f}"
        )
        if d.W_skip is None:
            continue
        with torch.no_grad():
            x, mid, mlp = orig[IN], orig[MID], orig[MLP]
            skip = d.skip(x)
            share, coefficient = along(d(x) - mlp, mid)
        print(
            f"  skip path/MLP norm {_median_ratio(skip, mlp):.2f}, cosine with resid_mid "
            f"{fn.cosine_similarity(skip, mid, dim=-1).median().item():.2f}; features/MLP norm "
            f"{_median_ratio(d(x) - skip, mlp):.2f}; excess over the MLP output along "
            f"resid_mid: {share:.0%} of its square, coefficient {coefficient:.2f}"
        )


if __name__ == "__main__":
    main()
