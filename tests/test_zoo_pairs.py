"""The zoo's sets compared layer by layer (`analysis.zoo_pairs`): known answers, pairing, L0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analysis.zoo_ladders import ladder_tables, read_ladders
from analysis.zoo_pairs import main, paired_rows, pairs_markdown
from tests.test_zoo_ladders import TOKENS, chunks, ladder_file, rung

ROOT = Path(__file__).resolve().parents[1]
# chunks far apart in difficulty: one resampling weighs hard ones, the next easy ones
RATES = np.array([0.05, 0.4, 0.1, 0.3, 0.02, 0.25, 0.5, 0.08])


def entry(rates, converged: bool = True, l0: float = 1.0) -> dict:
    found = {**chunks(list(rates)), "l0": [l0] * len(TOKENS)}
    return {
        "rungs": [{"tokens": 2_000_000, "figures": {}, "chunks": found}],
        "converged": converged,
    }


def rows_of(tmp_path, a: dict, b: dict, draws: int = 400, baselines: dict | None = None):
    sets = {"sae_local": {"layers": {"1": a}}, "sae_e2e": {"layers": {"1": b}}}
    ladders = read_ladders([ladder_file(tmp_path / "l.json", sets, baselines)])
    return paired_rows(ladders, [("sae_local", "sae_e2e", "Braun et al.")], draws)


def test_a_constant_gap_is_exact_though_each_side_alone_spreads_widely(tmp_path):
    # B costs 0.01 nats a token less than A on every chunk: each draw weighs both alike
    (row,) = rows_of(tmp_path, entry(RATES), entry(RATES - 0.01))
    ce = row.difference["ce_increase"]
    assert (ce.estimate, ce.low, ce.high) == pytest.approx((-0.01, -0.01, -0.01), abs=1e-12)
    assert row.direction == "B lower" and row.claim == "Braun et al.: agrees"
    want = float(np.dot(RATES, TOKENS) / np.sum(TOKENS))  # pooled over tokens
    assert row.points["ce_increase"] == pytest.approx((want, want - 0.01))
    # A's own interval (the zoo table's) is far wider than the gap: pairing is what resolves it
    ladders = read_ladders([tmp_path / "l.json"])
    alone = ladder_tables(ladders, 400).ce_increase["sae_local"]["1"]
    assert alone.high - alone.low > 10 * 0.01


def test_an_unconverged_ladder_leaves_the_claim_inconclusive_whatever_the_interval(tmp_path):
    (row,) = rows_of(tmp_path, entry(RATES), entry(RATES - 0.01, converged=False))
    assert row.direction == "B lower"
    assert row.claim == "Braun et al.: inconclusive (not every run converged)"
    (row,) = rows_of(tmp_path, entry(RATES), entry(RATES + 0.01))
    assert row.direction == "B higher" and row.claim == "Braun et al.: disagrees"


def test_a_gap_that_changes_sign_between_chunks_is_unresolved(tmp_path):
    # B is 0.05 better on half the chunks and 0.05 worse on the other half (equal tokens in each
    # half's total), so the pooled gap is about zero and the draws fall on both sides of it
    signs = np.array([1, -1, -1, 1, 1, -1, 1, -1], dtype=float)
    (row,) = rows_of(tmp_path, entry(RATES + 0.06), entry(RATES + 0.06 + 0.05 * signs))
    ce = row.difference["ce_increase"]
    want = 0.05 * float(np.dot(signs, TOKENS) / np.sum(TOKENS))
    assert ce.estimate == pytest.approx(want) and ce.low < 0 < ce.high
    assert row.direction == "unresolved" and row.claim == "Braun et al.: inconclusive"


def test_unequal_l0_settles_the_claim_only_where_one_side_dominates(tmp_path):
    # fewer features and a lower CE: better on both axes, so it agrees at any L0 gap
    (row,) = rows_of(tmp_path, entry(RATES, l0=16.0), entry(RATES - 0.01, l0=8.0))
    assert row.points["l0"] == pytest.approx((16.0, 8.0))
    assert row.claim == "Braun et al.: agrees"
    # fewer features and a higher CE: a trade, not an answer at equal L0
    (row,) = rows_of(tmp_path, entry(RATES, l0=16.0), entry(RATES + 0.01, l0=8.0))
    assert row.claim == "Braun et al.: inconclusive (L0 8.0 against 16.0)"
    # within the tolerance the L0s count as equal
    (row,) = rows_of(tmp_path, entry(RATES, l0=16.0), entry(RATES + 0.01, l0=15.2))
    assert row.claim == "Braun et al.: disagrees"


def test_layers_without_both_ladders_or_their_sums_give_no_row(tmp_path):
    no_sums = {"rungs": [rung(2_000_000, 0.1, per_chunk=False)], "converged": True}
    sets = {
        "sae_local": {"layers": {"0": entry(RATES), "1": entry(RATES), "2": no_sums}},
        "sae_e2e": {"layers": {"1": entry(RATES - 0.01), "2": entry(RATES)}},
    }
    ladders = read_ladders([ladder_file(tmp_path / "l.json", sets)])
    rows = paired_rows(ladders, n_draws=50)
    assert [(r.layer, r.a, r.b) for r in rows] == [("1", "sae_local", "sae_e2e")]
    table = pairs_markdown(rows)
    assert "| 1 | `sae_e2e` - `sae_local` | 2M | 2M | -0.0100 [-0.0100, -0.0100] |" in table


def test_docs_quote_the_committed_records_pairs(capsys):
    # docs/claims.md's paired table is this command's output on the committed ladder records
    files = [ROOT / "training" / "zoo_staged" / "ladders.json",
             ROOT / "training" / "zoo_progress" / "zoo_ladders.json"]  # fmt: skip
    assert main([str(f) for f in files]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(rows) > 10  # the header and a row for each pair at each layer both sides have
    docs = (ROOT / "docs" / "claims.md").read_text()
    missing = [row for row in rows if row not in docs]
    assert not missing, f"docs/claims.md does not quote: {missing}"


def test_each_side_is_read_against_the_affine_map_on_the_same_chunks(tmp_path):
    # the map costs each chunk's rate plus 0.05: A (the rates) beats it by exactly 0.05, B
    # (0.02 above the rates) by 0.03, in every draw; without its sums the cell is "-"
    base = {"1": {"linear": {"chunks": chunks(list(RATES + 0.05))}}}
    (row,) = rows_of(tmp_path, entry(RATES), entry(RATES + 0.02), baselines=base)
    a, b = row.over_baseline
    assert (a.estimate, a.low, a.high) == pytest.approx((-0.05, -0.05, -0.05), abs=1e-12)
    assert (b.estimate, b.low, b.high) == pytest.approx((-0.03, -0.03, -0.03), abs=1e-12)
    assert "| -0.0500 [-0.0500, -0.0500]; -0.0300 [-0.0300, -0.0300] |" in pairs_markdown([row])
    (row,) = rows_of(tmp_path, entry(RATES), entry(RATES + 0.02))
    assert row.over_baseline is None
