"""The choices of `sparse-circuits compare`, importable without torch (the command line builds
its parser from them at start-up); the modules that implement each choice import them from here.
"""

LEVELS = ("nodes", "edges")
"""Circuits as node sets or as edge sets (`analysis.compare`)."""
ABLATIONS = ("mean", "zero", "counterfactual")
"""What an ablated node takes: its mean over the task, zero, or its value on the counterfactual
prompt (`analysis.nodes`)."""
METHODS = ("attribution_patching", "integrated_gradients", "graph_influence")
"""How nodes are ranked (`analysis.ranking`)."""
