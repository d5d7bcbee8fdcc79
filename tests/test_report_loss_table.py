"""The compare report's loss table shows each site's FVU, so one site cannot hide in a mean."""

from __future__ import annotations

from analysis.compare import Comparison, SetSummary
from analysis.report import loss_table


def _table(*sets: SetSummary) -> list[str]:
    comparison = Comparison(list(sets), [], {}, {"systems": {}})
    return loss_table(comparison).splitlines()


def test_each_sites_fvu_is_shown_where_one_site_dominates_the_mean():
    # a last-block e2e skip transcoder: three sites near 0.5 and one at 44 (mean 11.4)
    sites = {"blocks.0": 0.2, "blocks.1": 0.6, "blocks.2": 0.8, "blocks.3": 44.0}
    e2e = SetSummary("e2e", "skip_transcoder", "e2e", 16.0, 11.4, sites, 0.1, 0.9)
    lines = _table(e2e)
    assert "FVU per site" in lines[0]
    assert lines[2].split(" | ")[4] == "0.200 / 0.600 / 0.800 / 44.000"


def test_a_results_file_from_before_per_site_fvu_shows_its_mean():
    older = SetSummary(**{"name": "old", "kind": "sae", "objective": "local", "l0": 16.0,
                          "fvu": 0.159, "ce_increase": 0.43, "frac_recovered": 0.945})  # fmt: skip
    assert _table(older)[2].split(" | ")[4] == "0.159"


def test_intervals_are_shown_beside_their_figures():
    s = SetSummary("local", "sae", "local", 16.0, 0.2, {"blocks.0": 0.2}, 0.0431, 0.951)
    s.ce_increase_interval, s.frac_recovered_interval = [0.0402, 0.0463], [0.945, 0.957]
    cells = _table(s)[2].split(" | ")
    assert cells[5:7] == ["0.043 [0.040, 0.046]", "0.951 [0.945, 0.957]"]


def test_l0_and_each_sites_fvu_carry_their_intervals():
    s = SetSummary("local", "sae", "local", 16.0, 0.3, {"blocks.0": 0.2, "blocks.1": 0.4}, 0.04)
    s.l0_interval, s.fvu_sites_interval = [15.2, 16.9], {"blocks.0": [0.19, 0.21], "blocks.1": None}
    cells = _table(s)[2].split(" | ")
    assert cells[3:5] == ["16.0 [15.2, 16.9]", "0.200 [0.190, 0.210] / 0.400"]


def test_the_tables_note_names_the_held_out_tokens_baseline_and_intervals():
    from analysis.report import _loss_note

    note = _loss_note({"loss_tokens": 126_976})
    assert "126,976 held-out tokens" in note and "zero ablation" in note and "95%" in note
    assert "No loss evaluation" in _loss_note({"loss_tokens": None})
