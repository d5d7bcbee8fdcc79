"""Models, sparse dictionaries, splicing and spliced-model loss.

`replacement` is the bottom layer of sparse-circuits: it imports none of the other packages.
"""

from replacement.dictionary import Dictionary, SparseActs
from replacement.hooks import LayerHooks, check_hook, layer_hooks
from replacement.model import DEFAULT_MODEL_DIR, load_model, to_tokens

__all__ = [
    "DEFAULT_MODEL_DIR",
    "Dictionary",
    "LayerHooks",
    "SparseActs",
    "check_hook",
    "layer_hooks",
    "load_model",
    "to_tokens",
]
