"""Why attention attends: head loadings of edges, QK attributions of attention scores and
pattern attributions, in the frozen local replacement model (see docs/attention.md)."""

from circuits.attention.head_loadings import HeadLoadings, head_loadings, strongest_edges

__all__ = ["HeadLoadings", "head_loadings", "strongest_edges"]
