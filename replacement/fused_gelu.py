"""Swap Hugging Face's Python tanh-GELU for torch's fused kernel of the same formula.

GPT-2-style models (`activation_function="gelu_new"`) run `NewGELUActivation`, which spells
0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) out in five Python-level tensor ops; in the
compatibility-mode bridge that was about 9% of a forward on the default model. torch's
`gelu(approximate="tanh")` is the same function (equal to 1e-15 in float64, a few float32 ulps
apart), in one kernel. The swap leaves every hook in place: the bridge hooks the MLP's input and
the projection's input, not the activation module.
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor, nn


class FusedTanhGELU(nn.Module):
    """GELU with the tanh approximation, in torch's fused kernel."""

    def forward(self, x: Float[Tensor, "..."]) -> Float[Tensor, "..."]:
        return nn.functional.gelu(x, approximate="tanh")


def fuse_tanh_gelu(model: nn.Module) -> int:
    """Replace every `transformers` `NewGELUActivation` inside `model` by `FusedTanhGELU`, in
    place; the number replaced."""
    try:
        from transformers.activations import NewGELUActivation
    except ImportError:  # an older transformers: nothing of that class to replace
        return 0
    targets = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is NewGELUActivation
    ]
    for parent, name in targets:
        setattr(parent, name, FusedTanhGELU())
    return len(targets)
