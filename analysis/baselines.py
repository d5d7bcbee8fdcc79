"""Baselines for the circuit comparison: random dictionaries with a trained set's shapes.

A random dictionary copies a trained one's hooks, widths, activation (for TopK the same k, so
the same sparsity), encoder biases and decoder bias, and draws its encoder and decoder
directions (and skip matrix) at random with the trained norms. Built in memory from a seed,
never saved. Sets with the same shapes share one random set (`random_baselines`). The neuron
and MLP-output baselines are node systems without dictionaries (`analysis.units.system_for`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence

import torch

from replacement.dictionary import Dictionary


def _signature(dictionaries: Sequence[Dictionary]) -> str:
    return json.dumps(
        sorted(
            [d.kind, d.in_hook, d.out_hook, d.n_features, d.activation_name,
             d.activation.params()]
            for d in dictionaries
        ),
        default=str,
    )  # fmt: skip


@torch.no_grad()
def random_like(d: Dictionary, seed: int) -> Dictionary:
    """A random dictionary with `d`'s shapes, activation and biases (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    r = copy.deepcopy(d).float()
    r.metadata = {**d.metadata, "random_baseline": True, "seed": seed}

    def directions(shape: tuple[int, ...], norms: torch.Tensor, dim: int) -> torch.Tensor:
        w = torch.randn(*shape, generator=gen)
        return w / w.norm(dim=dim, keepdim=True) * norms

    r.W_enc.copy_(directions(tuple(d.W_enc.shape), d.W_enc.float().norm(dim=0, keepdim=True), 0))
    r.W_dec.copy_(directions(tuple(d.W_dec.shape), d.W_dec.float().norm(dim=1, keepdim=True), 1))
    r.b_enc.copy_(d.b_enc.float()[torch.randperm(d.n_features, generator=gen)])
    if d.W_skip is not None:
        w = torch.randn(*d.W_skip.shape, generator=gen)
        r.W_skip.copy_(w / w.norm() * d.W_skip.float().norm())
    return r.eval()


def random_baselines(
    sets: Mapping[str, Sequence[Dictionary]], seed: int = 0
) -> tuple[dict[str, list[Dictionary]], dict[str, str]]:
    """One random set per distinct shape among `sets`: (name -> dictionaries, set -> its random
    set's name). Names are random_<kind>, numbered when two shapes share a kind."""
    by_sig: dict[str, str] = {}
    out: dict[str, list[Dictionary]] = {}
    of_set: dict[str, str] = {}
    for name, dictionaries in sets.items():
        sig = _signature(dictionaries)
        if sig not in by_sig:
            kind = "+".join(sorted({d.kind for d in dictionaries}))
            base = f"random_{kind}"
            label, i = base, 2
            while label in out:
                label, i = f"{base}_{i}", i + 1
            by_sig[sig] = label
            out[label] = [random_like(d, seed * 1000 + j) for j, d in enumerate(dictionaries)]
        of_set[name] = by_sig[sig]
    return out, of_set
