"""The zoo's ladder tables (`analysis.zoo_ladders`): known answers, merging, and the docs' tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from analysis.zoo_ladders import (
    curves_markdown,
    ended_at,
    ladder_tables,
    main,
    read_ladders,
    tables_markdown,
)

ROOT = Path(__file__).resolve().parents[1]
SETUP = {
    "start_tokens": 1_000_000,
    "cap_tokens": 4_000_000,
    "eval_tokens": 1000,
    "n_chunks": 8,
    "rows_sha256": "ab" * 32,
}
TOKENS = [90.0, 110.0, 100.0, 130.0, 70.0, 120.0, 95.0, 105.0]


def chunks(per_token: float | list[float]) -> dict[str, list[float]]:
    """Per-chunk sums whose CE increase per token is `per_token` in each chunk."""
    rate = np.broadcast_to(np.asarray(per_token, dtype=float), (len(TOKENS),))
    ones = [1.0] * len(TOKENS)
    return {
        "tokens": TOKENS,
        "ce_orig": [3.0 * t for t in TOKENS],
        "ce_spliced": [(3.0 + r) * t for r, t in zip(rate, TOKENS, strict=True)],
        **{k: ones for k in ("positions", "l0", "sq_err", "sq_dev", "dot", "sq_hat")},
        **{k: ones for k in ("down_err", "down_dev")},
    }


def rung(tokens: int, ce: float, per_chunk: bool = True) -> dict:
    found = {"tokens": tokens, "figures": {"ce_increase": ce}}
    return {**found, "chunks": chunks(ce)} if per_chunk else found


def ladder_file(path: Path, sets: dict, baselines: dict | None = None, **setup) -> Path:
    path.write_text(
        json.dumps({"setup": {**SETUP, **setup}, "baselines": baselines or {}, "sets": sets})
    )
    return path


def test_a_constant_increase_has_that_value_and_a_zero_width_interval(tmp_path):
    # every chunk costs 0.1 nats a token (the affine map 0.3): each resampling gives the same
    sets = {"a": {"layers": {"0": {"rungs": [rung(1_000_000, 0.1)], "converged": False}}}}
    base = {"0": {"linear": {"chunks": chunks(0.3)}, "mean_ablation": {"chunks": chunks(2.0)}}}
    tables = ladder_tables(read_ladders([ladder_file(tmp_path / "l.json", sets, base)]), 200)
    ce, diff = tables.ce_increase["a"]["0"], tables.minus_affine["a"]["0"]
    assert (ce.estimate, ce.low, ce.high) == pytest.approx((0.1, 0.1, 0.1), abs=1e-12)
    assert (diff.estimate, diff.low, diff.high) == pytest.approx((-0.2, -0.2, -0.2), abs=1e-12)
    assert tables.baselines["mean ablation"]["0"].estimate == pytest.approx(2.0)


def test_the_estimate_is_token_weighted_and_the_interval_holds_it(tmp_path):
    rates = [0.1, 0.3, 0.2, 0.1, 0.5, 0.2, 0.4, 0.1]
    entry = {"rungs": [{"tokens": 1_000_000, "figures": {}, "chunks": chunks(rates)}]}
    path = ladder_file(tmp_path / "l.json", {"a": {"layers": {"0": {**entry, "converged": True}}}})
    ce = ladder_tables(read_ladders([path]), 500).ce_increase["a"]["0"]
    want = float(np.dot(rates, TOKENS) / np.sum(TOKENS))  # the pooled CE increase, not the mean
    assert ce.estimate == pytest.approx(want)
    assert min(rates) < ce.low < want < ce.high < max(rates)


def test_ended_at_reads_the_ladder_rule():
    converged = {"rungs": [rung(1_000_000, 0.2), rung(2_000_000, 0.199)], "converged": True}
    assert ended_at(SETUP, converged) == "2M"
    capped = [rung(1_000_000, 0.3), rung(2_000_000, 0.2), rung(4_000_000, 0.21)]
    assert ended_at(SETUP, {"rungs": capped, "converged": False}) == "4M, at the cap (+5.0%)"
    falling = [rung(1_000_000, 0.3), rung(2_000_000, 0.2), rung(4_000_000, 0.19)]
    assert ended_at(SETUP, {"rungs": falling, "converged": False}) == "4M, at the cap (-5.0%)"
    assert ended_at(SETUP, {"rungs": capped[:2], "converged": False}) == "2M so far"


def test_merging_keeps_the_longer_ladder_and_refuses_other_rows(tmp_path):
    long = {"rungs": [rung(1_000_000, 0.3, False), rung(2_000_000, 0.2)], "converged": False}
    short = {"rungs": [rung(1_000_000, 0.25)], "converged": False}
    a = ladder_file(tmp_path / "a.json", {"s": {"layers": {"0": long}}})
    b = ladder_file(tmp_path / "b.json", {"s": {"layers": {"0": short, "1": short}}})
    merged = read_ladders([a, b])
    assert merged.sets["s"]["0"] is not None and len(merged.sets["s"]["0"]["rungs"]) == 2
    assert len(merged.sets["s"]["1"]["rungs"]) == 1
    other = ladder_file(tmp_path / "c.json", {}, rows_sha256="cd" * 32)
    with pytest.raises(ValueError, match="differ in rows_sha256"):
        read_ladders([a, other])
    with pytest.raises(SystemExit):  # the command names the problem and exits 2
        main([str(a), str(other)])


def test_a_latest_rung_without_chunk_sums_has_no_interval(tmp_path):
    entry = {"rungs": [rung(1_000_000, 0.3, per_chunk=False)], "converged": False}
    tables = ladder_tables(
        read_ladders([ladder_file(tmp_path / "l.json", {"s": {"layers": {"0": entry}}})])
    )
    assert tables.ce_increase["s"]["0"] is None
    assert "| `s` | - |" in tables_markdown(tables)


def test_docs_quote_the_staged_ladders_tables():
    # docs/claims.md's zoo tables are this command's output on the committed ladder record
    docs = (ROOT / "docs" / "claims.md").read_text()
    staged = read_ladders([ROOT / "training" / "zoo_staged" / "ladders.json"])
    lines = tables_markdown(ladder_tables(staged)).splitlines()
    rows = [
        line
        for line in lines
        if line.startswith("| `") or line.startswith("| mean") or line.startswith("| affine")
    ]
    assert len(rows) == 4 * 3 + 2
    missing = [row for row in rows if row not in docs]
    assert not missing, f"docs/claims.md does not quote: {missing}"


def test_docs_quote_the_e2e_ladders_rows_from_the_committed_progress():
    # docs/claims.md's e2e tables are this command's rows for the e2e sets, on both records:
    # budget, CE increase, last doubling and minus affine (the downstream figures are in prose)
    docs = (ROOT / "docs" / "claims.md").read_text()
    files = [ROOT / "training" / "zoo_staged" / "ladders.json",
             ROOT / "training" / "zoo_progress" / "zoo_ladders.json"]  # fmt: skip
    text = tables_markdown(ladder_tables(read_ladders(files))).split("Downstream FVU")[0]
    e2e = tuple(f"| `{name}`" for name in ("sae_e2e", "sae_e2e_ds", "skip_transcoder_e2e"))
    rows = [line for line in text.splitlines() if line.startswith(e2e)]
    assert len(rows) == 3 * 4
    missing = [row for row in rows if row not in docs]
    assert not missing, f"docs/claims.md does not quote: {missing}"


def test_the_curve_lists_every_rung_and_each_doublings_change(tmp_path):
    rungs = [rung(1_000_000, 0.5, False), rung(2_000_000, 0.4, False), rung(4_000_000, 0.41)]
    path = ladder_file(
        tmp_path / "l.json", {"s": {"layers": {"2": {"rungs": rungs, "converged": False}}}}
    )
    text = curves_markdown(read_ladders([path]))
    assert text == "- `s` layer 2: 1M 0.5000, 2M 0.4000 (-20.0%), 4M 0.4100 (+2.5%)\n"


def test_the_downstream_table_reads_plain_and_normalised_fvu_where_the_sums_are(tmp_path):
    # a last-block dictionary that rescales the stream: plain downstream FVU 2, normalised 0.05
    scaled = {**chunks(0.1), "down_err": [2.0] * 8, "down_norm_err": [0.05] * 8,
              "down_norm_dev": [1.0] * 8}  # fmt: skip
    old = {"rungs": [rung(1_000_000, 0.2)], "converged": False}  # recorded before the normed sums
    new = {"rungs": [{"tokens": 1_000_000, "figures": {}, "chunks": scaled}], "converged": False}
    sets = {"old": {"layers": {"3": old}}, "new": {"layers": {"3": new}}}
    base = {"3": {"mean_ablation": {"chunks": {**chunks(2.0), "down_err": [3.0] * 8}}}}
    tables = ladder_tables(read_ladders([ladder_file(tmp_path / "l.json", sets, base)]), 100)
    assert tables.downstream["new"]["3"] == "2.0000 [2.0000, 2.0000] / 0.0500 [0.0500, 0.0500]"
    assert tables.downstream["old"]["3"] == "1.0000 [1.0000, 1.0000] / -"
    text = tables_markdown(tables)
    assert "| `new` | 2.0000 [2.0000, 2.0000] / 0.0500 [0.0500, 0.0500] |" in text
    assert "| mean ablation | 3.0000 [3.0000, 3.0000] / - |" in text  # the baseline beside it
    only_old = ladder_tables(read_ladders([ladder_file(tmp_path / "o.json", {"old": sets["old"]})]))
    assert "Downstream FVU" not in tables_markdown(only_old)


def test_the_last_doubling_is_paired_over_the_chunks(tmp_path):
    # every chunk falls by 10%: each draw weighs both rungs alike, so the change is -10% exactly
    rates = np.array([0.1, 0.3, 0.2, 0.1, 0.5, 0.2, 0.4, 0.1])
    falls = [{"tokens": t, "figures": {}, "chunks": chunks(list(r))}
             for t, r in ((1_000_000, rates), (2_000_000, 0.9 * rates))]  # fmt: skip
    # the second ladder's chunks move apart (two rise, the rest fall): a spread around its change
    mixed = 0.9 * rates * np.array([1.3, 1, 1, 1, 1, 1, 1.2, 1])
    spread = [falls[0], {"tokens": 2_000_000, "figures": {}, "chunks": chunks(list(mixed))}]
    sets = {
        "steady": {"layers": {"0": {"rungs": falls, "converged": False}}},
        "mixed": {"layers": {"0": {"rungs": spread, "converged": False}}},
        "one": {"layers": {"0": {"rungs": [rung(1_000_000, 0.1)], "converged": False}}},
    }
    tables = ladder_tables(read_ladders([ladder_file(tmp_path / "l.json", sets)]), 300)
    steady = tables.last_doubling["steady"]["0"]
    assert (steady.estimate, steady.low, steady.high) == pytest.approx((-0.1, -0.1, -0.1))
    assert tables.last_doubling["one"]["0"] is None
    got = tables.last_doubling["mixed"]["0"]
    want = np.dot(mixed, TOKENS) / np.dot(rates, TOKENS) - 1  # the pooled change
    assert got.estimate == pytest.approx(want) and got.low < want < got.high
    assert got.high - got.low > 0.01
    text = tables_markdown(tables)
    assert "| `steady` | -10.0% [-10.0%, -10.0%] |" in text and "| `one` | - |" in text
