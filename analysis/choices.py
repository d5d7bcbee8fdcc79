"""The choices of `sparse-circuits compare`, importable without torch (the command line builds
its parser from them at start-up); the modules that implement each choice import them from here.
"""

LEVELS = ("nodes", "edges")
"""Circuits as node sets (compare) or as edge sets (`analysis.edges` only)."""
ABLATIONS = ("mean", "zero", "counterfactual")
"""What an ablated node takes: its mean over the task's discovery pairs, zero, or its value on
the counterfactual prompt (`analysis.circuit_eval`)."""
RANKINGS = ("attribution_patching", "integrated_gradients", "joint_integrated_gradients")
"""How nodes are ranked (`analysis.circuit_eval`)."""
METHODS = RANKINGS
"""The rankings under their older name."""
DEFAULT_RANKING = "joint_integrated_gradients"
"""The ranking the report's figures use (see docs/faithfulness.md for why)."""
CURRENCIES = ("all", "features", "features-dense-live")
"""Node currencies (`analysis.units`)."""
BASELINES = ("random", "neurons", "mlp")
"""Baseline node systems: random dictionaries, MLP neurons, whole MLP outputs."""
BOOTSTRAP = 1000
"""Bootstrap resamples by default (`analysis.intervals`)."""
