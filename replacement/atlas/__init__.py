"""The feature atlas: what each feature of a dictionary set fires on and what it promotes.

Data about dictionaries, kept beside them (the zoo ships atlases of its sets), so that
`circuits` can label graph nodes and show feature cards without importing `analysis`.
"""

from replacement.atlas.atlas import FeatureAtlas, FeatureView, LayerAtlas, dictionary_fingerprint
from replacement.atlas.build import AtlasSettings, build_atlas
from replacement.atlas.labels import feature_label

__all__ = [
    "AtlasSettings",
    "FeatureAtlas",
    "FeatureView",
    "LayerAtlas",
    "build_atlas",
    "dictionary_fingerprint",
    "feature_label",
]
