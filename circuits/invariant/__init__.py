"""Input-invariant feature graphs between two dictionaries: virtual weights (virtual_weights.py),
their top-k partners without the full matrix (topk_graph.py), and the global graph built from
either, optionally weighted by data (global_graph.py).
"""
