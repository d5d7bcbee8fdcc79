"""What defines a claims sweep (`SweepSettings`), checked before any work, and which of its
points a process takes (`--points`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase
from typing import Any

from replacement.errors import SparseCircuitsError
from training.claims_plan import CLAIMS, SweepPoint, claim_points
from training.convergence import DEFAULT_FLOOR, DEFAULT_TOLERANCE
from training.token_rows import check_rows

CACHE_CHOICES = ("float32", "float16", "bfloat16", "none")


@dataclass
class SweepSettings:
    """What defines a claims sweep; a resumed sweep must match the recorded one."""

    out: str = "runs/claims"
    """Folder of the runs and of claims_sweep.json."""
    claims: tuple[str, ...] = CLAIMS
    """Which claims to sweep."""
    points: tuple[str, ...] = ()
    """Glob patterns on point names (`braun/e2e*`): this process trains only the matching
    points (and the lr-tuning runs they need); empty for all. Splits a sweep across machines."""
    layer: int = 1
    """Block whose dictionaries are trained (each alone)."""
    seeds: int = 2
    """Seeds per point (>= 2 gives a spread)."""
    start_tokens: int = 1_000_000
    """First rung of every ladder (training tokens); no run of the pilot or the first sweep had
    settled below 1M, and each rung costs a full held-out evaluation (about 90 s on 2 cores)."""
    cap_tokens: int = 64_000_000
    """Largest budget a run may train for (its last rung). It may be raised on resume (to a
    doubling of the recorded cap): 32M until local TopK at k >= 16 was found unsettled there."""
    tolerance: float = DEFAULT_TOLERANCE
    """Converged when CE increase changed by less than this (relative) over the last doubling."""
    floor: float = DEFAULT_FLOOR
    """... or by less than this many nats (absolute), for runs whose CE increase is near zero."""
    tune_tokens: int = 1_000_000
    """Budget of the lr-tuning runs (gated claim)."""
    eval_tokens: int = 1_000_000
    """Held-out evaluation tokens (at least)."""
    n_chunks: int = 64
    """Chunks of the evaluation rows: the bootstrap's units."""
    n_features: int = 1024
    """Dictionary width."""
    batch_tokens: int = 4096
    """Tokens per optimiser step."""
    ctx_len: int = 128
    """Row length of training and evaluation."""
    activation_cache: str = "float32"
    """dtype of the local runs' activation cache, or "none" to run the model on every step."""
    device: str = "cpu"
    """Where to train."""
    together: int = 20
    """e2e and e2e+ds ladders of one seed trained together by this process, rung by rung,
    sharing the original model's pass of each step (the results equal training each alone;
    about 1.6x the tokens/s per run for 4 together on one CPU thread); 1 trains each alone."""
    up_to: int | None = None
    """Largest budget this process trains, or None for --cap-tokens: the ladders stay open (no
    ladder ends here unless it converged), so a later run without it goes on. Brings every
    ladder to one budget before any goes further, for a reading at a common budget soonest."""
    rows: str | None = None
    """Token rows file (`training.token_rows`) to train and evaluate on instead of reading the
    default corpus: a machine with another Python reads another standard library, so a sweep
    split across machines carries this machine's rows."""

    def validate(self) -> SweepSettings:
        """Raise `SparseCircuitsError` naming the first bad setting; returns self."""
        unknown = sorted(set(self.claims) - set(CLAIMS))
        if unknown or not self.claims:
            raise SparseCircuitsError(
                f"--claims: unknown {unknown}; expected some of {list(CLAIMS)}"
            )
        for name, low in (
            ("layer", 0),
            ("seeds", 1),
            ("start_tokens", self.batch_tokens),
            ("eval_tokens", self.ctx_len),
            ("n_chunks", 2),
            ("n_features", 1),
            ("tune_tokens", self.batch_tokens),
            ("together", 1),
        ):
            if getattr(self, name) < low:
                raise SparseCircuitsError(
                    f"--{name.replace('_', '-')} must be >= {low}; got {getattr(self, name)}"
                )
        if self.cap_tokens < self.start_tokens:
            raise SparseCircuitsError(
                f"--cap-tokens {self.cap_tokens} is below --start-tokens {self.start_tokens}"
            )
        if self.up_to is not None and self.up_to < self.start_tokens:
            raise SparseCircuitsError(
                f"--up-to {self.up_to} is below --start-tokens {self.start_tokens}: it would "
                "train nothing"
            )
        if not 0 < self.tolerance < 1:
            raise SparseCircuitsError(f"--tolerance must be in (0, 1); got {self.tolerance}")
        if not 0 <= self.floor < 1:
            raise SparseCircuitsError(f"--floor must be in [0, 1) nats; got {self.floor}")
        selected_points(claim_points(self.claims, self.layer), self.points)
        if self.rows is not None:
            check_rows(self.rows)
        if self.activation_cache not in CACHE_CHOICES:
            raise SparseCircuitsError(
                f"--activation-cache {self.activation_cache!r} is unknown; expected one of "
                f"{list(CACHE_CHOICES)}"
            )
        return self

    def recorded(self) -> dict[str, Any]:
        """The settings that make results comparable (the folder, the device and which points
        this process takes are not)."""
        out = asdict(self)
        out["claims"] = list(self.claims)
        for name in ("out", "device", "claims", "points", "rows", "together", "up_to"):
            out.pop(name)
        return out


def selected_points(points: list[SweepPoint], patterns: tuple[str, ...]) -> list[SweepPoint]:
    """The points whose names match one of the glob `patterns` (all when there are none), plus
    the lr-tuning points of the selected points' claims and arms, which they need.

    Raises `SparseCircuitsError` naming a pattern that matches no point.
    """
    if not patterns:
        return points
    for pattern in patterns:
        if not any(fnmatchcase(p.name, pattern) for p in points):
            raise SparseCircuitsError(
                f"--points {pattern!r} matches no point of this sweep; its points are "
                f"{[p.name for p in points]}"
            )
    chosen = [p for p in points if any(fnmatchcase(p.name, pat) for pat in patterns)]
    tuned = {(p.claim, p.arm) for p in chosen if p.fields.get("lr") == "tuned"}
    return [p for p in points if p in chosen or (p.stage == "tune" and (p.claim, p.arm) in tuned)]
