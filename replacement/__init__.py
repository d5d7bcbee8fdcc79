"""Models, sparse dictionaries, splicing and spliced-model loss.

`replacement` is the bottom layer of sparse-circuits: it imports none of the other packages.
The public names load on first use (PEP 562), so that `import replacement.errors` (the command
line does it to start) does not pull in torch and TransformerLens.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from replacement.lazy import lazy_package

# tqdm.auto (imported by transformers and huggingface_hub) warns in a notebook without
# ipywidgets and then draws text bars, which is all we need: the warning is noise there.
warnings.filterwarnings("ignore", message="IProgress not found")

_HOMES = {
    "CrossLayerTranscoder": "replacement.crosslayer",
    "Dictionary": "replacement.dictionary",
    "SparseActs": "replacement.dictionary",
    "load_dictionaries": "replacement.formats.detect",
    "load_dictionary": "replacement.formats.detect",
    "load_model_and_dictionaries": "replacement.formats.detect",
    "LayerHooks": "replacement.hooks",
    "check_hook": "replacement.hooks",
    "layer_hooks": "replacement.hooks",
    "SplicedLossReport": "replacement.loss_report",
    "spliced_loss": "replacement.loss",
    "DEFAULT_MODEL_DIR": "replacement.model",
    "load_model": "replacement.model",
    "to_tokens": "replacement.model",
    "splice": "replacement.splice",
}

if TYPE_CHECKING:
    from replacement.crosslayer import CrossLayerTranscoder
    from replacement.dictionary import Dictionary, SparseActs
    from replacement.formats.detect import (
        load_dictionaries,
        load_dictionary,
        load_model_and_dictionaries,
    )
    from replacement.hooks import LayerHooks, check_hook, layer_hooks
    from replacement.loss import spliced_loss
    from replacement.loss_report import SplicedLossReport
    from replacement.model import DEFAULT_MODEL_DIR, load_model, to_tokens
    from replacement.splice import splice

lazy_package(__name__, _HOMES)

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
