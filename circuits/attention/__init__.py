"""Why attention attends: head loadings of edges, QK attributions of attention scores and
pattern attributions, in the frozen local replacement model (see docs/attention.md)."""

from circuits.attention.head_loadings import HeadLoadings, head_loadings, strongest_edges
from circuits.attention.qk import (
    AttentionAttribution,
    Pair,
    PatternAttribution,
    QKAttribution,
    top_pairs_of,
)

__all__ = [
    "AttentionAttribution",
    "HeadLoadings",
    "Pair",
    "PatternAttribution",
    "QKAttribution",
    "head_loadings",
    "strongest_edges",
    "top_pairs_of",
]
