"""The embedded zoo's recipe: its sets, the settings they share, and what each card records.

Read by `training.build_zoo` (which trains by it), `training.zoo_ship` (which ships and
measures the sets and writes their cards) and `training.zoo_cards` (which checks a card
against it). docs/claims.md describes it.
"""

from __future__ import annotations

from typing import Any

ZOO_LR = 4e-3
"""Adam lr of every set, local and e2e alike (the claims sweep's `SWEEP_LR`): objectives then
differ in their loss only. The F-scaled default (8e-4 at F=1024) is tuned for far longer runs:
on layer 3's skip transcoder after 1M tokens it left FVU 0.328, against 0.273 at 2e-3, 0.243 at
4e-3 and 0.221 at 8e-3 (batch 4096)."""
ZOO_SETS: dict[str, dict[str, Any]] = {
    "sae_local": {"kind": "sae", "site": "hook_mlp_out", "objective": "local"},
    "sae_e2e": {"kind": "sae", "site": "hook_mlp_out", "objective": "e2e"},
    "sae_e2e_ds": {"kind": "sae", "site": "hook_mlp_out", "objective": "e2e_ds"},
    "transcoder": {"kind": "transcoder", "objective": "local"},
    "skip_transcoder": {"kind": "skip_transcoder", "objective": "local"},
    "skip_transcoder_e2e": {"kind": "skip_transcoder", "objective": "e2e"},
}
COMMON: dict[str, Any] = {
    "model": "default",
    "activation": "topk",
    "layers": [0, 1, 2, 3],
    "n_features": 1024,
    "k": 16,
    "ctx_len": 128,
    "batch_tokens": 4096,
    "lr": ZOO_LR,
    "seed": 0,
}
RECIPE = (
    "each layer trained alone (e2e: spliced alone, the other layers original); Adam lr "
    f"{ZOO_LR:g} for every objective; BOS keeps the model's activation; seed 0; budgets doubling "
    "until the layer's held-out CE increase changed by less than 2% (or 5e-4 nats) over the last "
    "doubling"
)
"""The recipe in one sentence, written on every card."""
RECIPE_FIELDS = (
    "steps",
    "lr",
    "seed",
    "converged",
    "convergence",
    "baselines",
    "machine",
    "trained_as",
)
"""Per-layer card fields of the recipe, carried from the ladders onto the shipped card."""
MACHINE_PATHS = ("out_dir", "activations")
"""Training-config fields that name folders of the machine a run trained on: not shipped."""
LADDER_FILE = "zoo_ladders.json"
"""Per set and layer, every rung's figures (under --runs)."""
