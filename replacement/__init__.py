"""Models, sparse dictionaries, splicing and spliced-model loss.

`replacement` is the bottom layer of sparse-circuits: it imports none of the other packages.
"""

from replacement.crosslayer import CrossLayerTranscoder
from replacement.dictionary import Dictionary, SparseActs
from replacement.formats.detect import (
    load_dictionaries,
    load_dictionary,
    load_model_and_dictionaries,
)
from replacement.hooks import LayerHooks, check_hook, layer_hooks
from replacement.loss import SplicedLossReport, spliced_loss
from replacement.model import DEFAULT_MODEL_DIR, load_model, to_tokens
from replacement.splice import splice

__all__ = [
    "DEFAULT_MODEL_DIR",
    "CrossLayerTranscoder",
    "SplicedLossReport",
    "Dictionary",
    "LayerHooks",
    "SparseActs",
    "check_hook",
    "layer_hooks",
    "load_dictionaries",
    "load_dictionary",
    "load_model_and_dictionaries",
    "load_model",
    "splice",
    "spliced_loss",
    "to_tokens",
]
