"""Cross-layer transcoders seen as one dictionary per layer, for attribution and interventions.

Layer l of a CLT reads `in_hook(l)` with its own encoder and writes `acts @ W_dec[l][0]` to
`out_hook(l)` plus `acts @ W_dec[l][j]` to `out_hook(l + j)` for every later layer. A
`CrossLayerSlice` is a `Dictionary` for layer l (encoder, own-layer decoder, b_dec[l],
W_skip[l]) that also lists its `later_decoders`, so code written for per-layer dictionaries
needs only to add those later writes. Slices share the CLT's tensors (no copies).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from replacement.crosslayer import CrossLayerTranscoder
from replacement.dictionary import Dictionary


class CrossLayerSlice(Dictionary):
    """Layer `layer` of a cross-layer transcoder as a per-layer dictionary."""

    def __init__(self, clt: CrossLayerTranscoder, layer: int):
        nn.Module.__init__(self)
        self.clt_layer = layer
        self.d_in = self.d_out = clt.d_model
        self.n_features = clt.n_features[layer]
        self.in_hook, self.out_hook = clt.in_hook(layer), clt.out_hook(layer)
        self.model_name = clt.model_name
        self.metadata = {**clt.metadata, "layer": layer}
        self.apply_b_dec_to_input = False
        self.W_enc = clt.W_enc[layer]
        self.b_enc = clt.b_enc[layer]
        self.W_dec = clt.W_dec[layer][0]
        self.activation = clt.activations[layer]
        # views into the CLT's stacked tensors: plain attributes, not parameters of the slice
        object.__setattr__(self, "b_dec", clt.b_dec[layer])
        object.__setattr__(self, "W_skip", None if clt.W_skip is None else clt.W_skip[layer])
        self.later_decoders: list[tuple[str, Tensor]] = [
            (clt.out_hook(layer + j), clt.W_dec[layer][j]) for j in range(1, clt.n_layers - layer)
        ]
        """(out_hook written, W_dec [F, d]) for every later layer."""

    @property
    def kind(self) -> str:
        return "crosslayer_transcoder"


def expand_crosslayer(
    dictionaries: Sequence[Dictionary | CrossLayerTranscoder],
) -> list[Dictionary]:
    """Replace each cross-layer transcoder by its per-layer slices; others pass through."""
    out: list[Dictionary] = []
    for d in dictionaries:
        if isinstance(d, CrossLayerTranscoder):
            out.extend(CrossLayerSlice(d, layer) for layer in range(d.n_layers))
        else:
            out.append(d)
    return out


def later_decoders(d: Dictionary) -> list[tuple[str, Tensor]]:
    """Writes of `d` into later layers' out_hooks (empty for a per-layer dictionary)."""
    return list(getattr(d, "later_decoders", ()))
