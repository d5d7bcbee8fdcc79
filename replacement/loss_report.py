"""The result of `spliced_loss`: one row of figures per dictionary and for all of them, as a
table for the terminal and as JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SplicedLossRow:
    """Figures of one dictionary spliced alone, or of all dictionaries together (name "all")."""

    name: str
    """The dictionary's out_hook (a CLT: `clt:<first>..<last>`), or "all"."""
    hooks: list[str]
    """The hooks this row replaces."""
    ce_spliced: float | None = None
    """Mean CE of the spliced model (None when this row's spliced pass was not run)."""
    ce_increase: float | None = None
    """ce_spliced - ce_original."""
    ce_increase_interval: list[float] | None = None
    """95% bootstrap interval of ce_increase over sequences (`replacement.loss_intervals`;
    None with one sequence)."""
    kl: float | None = None
    """Mean over tokens of KL(p_original || p_spliced), in nats."""
    kl_interval: list[float] | None = None
    """95% bootstrap interval of kl over sequences."""
    ce_zero_ablated: float | None = None
    """Mean CE with the same hooks set to zero."""
    ce_mean_ablated: float | None = None
    """Mean CE with the same hooks set to their mean over the evaluated tokens."""
    recovered_zero: float | None = None
    """Fraction of loss recovered against zero ablation."""
    recovered_mean: float | None = None
    """Fraction of loss recovered against mean ablation."""
    recovered_zero_interval: list[float] | None = None
    """95% bootstrap interval of recovered_zero over sequences (the same resamples as every
    other interval of the report, so differences between rows are paired)."""
    recovered_mean_interval: list[float] | None = None
    """95% bootstrap interval of recovered_mean over sequences."""
    fvu: float | None = None
    """Fraction of variance unexplained on the original activations (None for "all")."""
    fvu_interval: list[float] | None = None
    """95% bootstrap interval of fvu over sequences (each resample's FVU from its own sums,
    the variance around its own mean)."""
    explained_variance: float | None = None
    """1 - FVU."""
    l0: float | None = None
    """Mean number of active features per token (summed over a CLT's layers)."""
    l0_interval: list[float] | None = None
    """95% bootstrap interval of l0 over sequences."""
    dead_share: float | None = None
    """Share of features that never fired on the evaluated tokens."""
    shrinkage: float | None = None
    """E||y_hat||^2 / E<y, y_hat>; 1 means no shrinkage."""
    saelens: dict[str, float] | None = None
    """With `conventions="saelens"`: SAELens' `run_evals` metrics under SAELens' names."""


@dataclass
class SplicedLossReport:
    """Result of `spliced_loss`: the original CE and one row per dictionary plus "all"."""

    ce_original: float
    """Mean CE of the unspliced model on the evaluated predictions."""
    n_predictions: int
    """Number of next-token predictions evaluated (position 0 and padding excluded)."""
    n_sequences: int
    """Number of sequences (after chunking text to ctx_len)."""
    keep_bos: bool = True
    """Whether position 0 kept the model's own activation in the spliced and ablated passes."""
    rows: list[SplicedLossRow] = field(default_factory=list)
    """Per-dictionary rows, then "all" when there are several dictionaries."""
    mean_fvu_interval: list[float] | None = None
    """95% bootstrap interval of the mean FVU over the dictionaries' rows (the same resamples
    as every row's intervals)."""
    mean_l0_interval: list[float] | None = None
    """95% bootstrap interval of the mean L0 over the dictionaries' rows."""

    def row(self, name: str) -> SplicedLossRow:
        """The row called `name` (an out_hook, a CLT name, or "all")."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no row {name!r}; rows: {[r.name for r in self.rows]}")

    @property
    def all(self) -> SplicedLossRow:
        """The row of every dictionary spliced together."""
        return self.row("all") if len(self.rows) > 1 else self.rows[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (NaN becomes None)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, list):
                return [clean(v) for v in value]
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value

        return clean(asdict(self))

    def __str__(self) -> str:
        columns = [
            ("name", "name"),
            ("CE", "ce_spliced"),
            ("dCE", "ce_increase"),
            ("dCE 95%", "ce_increase_interval"),
            ("KL", "kl"),
            ("rec0", "recovered_zero"),
            ("recmean", "recovered_mean"),
            ("FVU", "fvu"),
            ("FVU 95%", "fvu_interval"),
            ("EV", "explained_variance"),
            ("L0", "l0"),
            ("dead", "dead_share"),
            ("gamma", "shrinkage"),
        ]
        table = [[title for title, _ in columns]]
        for row in self.rows:
            cells = []
            for _, key in columns:
                value = getattr(row, key)
                if isinstance(value, list):
                    cells.append(f"[{_fmt(value[0])}, {_fmt(value[1])}]")
                else:
                    cells.append(value if isinstance(value, str) else _fmt(value))
            table.append(cells)
        widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
        lines = [
            f"original CE {self.ce_original:.4f} nats over {self.n_predictions} predictions "
            f"({self.n_sequences} sequences); position 0 "
            + ("kept exact" if self.keep_bos else "spliced and ablated too")
        ]
        for i, cells in enumerate(table):
            first = cells[0].ljust(widths[0])
            rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
            lines.append("  ".join([first, *rest]))
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
