"""The compare report's loss table: each site's FVU (one site cannot hide in a mean), and every
figure with its interval (loss over sequences, graph scores over tasks and prompts)."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.compare import Comparison, SetSummary
from analysis.intervals import task_prompt_mean
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


def _graphs(per_task: dict[str, list[float]], with_prompts: bool = True) -> dict:
    """A set's stored graph scores: per task the mean and, from compare, each prompt's."""
    out = {}
    for task, values in per_task.items():
        entry = {"replacement": float(np.mean(values)), "completeness": 1.0}
        if with_prompts:
            entry["per_prompt"] = {"replacement": values, "completeness": [1.0] * len(values)}
        out[task] = entry
    return out


def test_graph_scores_are_the_task_mean_with_the_documented_bootstrap():
    per_task = {"a": [0.6, 0.9, 0.7], "b": [0.5], "c": [0.8, 0.4]}
    point, (lo, hi) = task_prompt_mean(list(per_task.values()), b=400)
    assert point == pytest.approx(np.mean([np.mean(v) for v in per_task.values()]))
    # by hand: tasks drawn with task_resamples, each drawn task's prompts with seed = its index
    values = [np.asarray(v) for v in per_task.values()]
    within = np.stack(
        [v[np.random.default_rng(j).integers(0, len(v), (400, len(v)))].mean(1)
         for j, v in enumerate(values)], 1)  # fmt: skip
    tasks = np.random.default_rng(1).integers(0, 3, (400, 3))
    want = np.percentile(within[np.arange(400)[:, None], tasks].mean(1), [2.5, 97.5])
    assert (lo, hi) == pytest.approx(tuple(want))
    assert lo < point < hi


def test_the_graph_columns_carry_their_interval_where_prompts_were_kept():
    s = SetSummary("tc", "transcoder", "local", 16.0, 0.2)
    same = _graphs({"a": [0.7, 0.7], "b": [0.7]})  # nothing varies: a zero-width interval
    older = _graphs({"a": [0.6, 0.8]}, with_prompts=False)  # a results file without them
    one = _graphs({"a": [0.65]})  # one prompt in all: no interval
    cells = []
    for graph in (same, older, one):
        comparison = Comparison([s], [], {}, {"systems": {"tc": {"graph": graph}}})
        cells.append(loss_table(comparison).splitlines()[2].split(" | ")[7])
    assert cells == ["0.700 [0.700, 0.700]", "0.700", "0.650"]


def test_the_random_control_is_the_graph_scores_paired_baseline():
    s = SetSummary("tc", "transcoder", "local", 16.0, 0.2)
    mine = _graphs({"a": [0.7, 0.9], "b": [0.6, 0.8]})
    # the control on the same prompts sits 0.3 below on every prompt: a paired difference of
    # exactly 0.3, though each figure alone varies
    control = _graphs({"a": [0.4, 0.6], "b": [0.3, 0.5]})
    systems = {"tc": {"graph": mine, "random": "r"}, "r": {"graph": control}}
    cells = loss_table(Comparison([s], [], {}, {"systems": systems})).splitlines()[2].split(" | ")
    assert cells[9].rstrip(" |") == "0.300 [0.300, 0.300]"
    assert cells[7] != "0.750 [0.750, 0.750]"  # the set's own score does vary


def test_the_note_says_how_many_prompts_the_graph_scores_read():
    from analysis.report import _loss_note

    note = _loss_note({"loss_tokens": 1000, "graph_prompts": 2})
    assert "first 2 held-out prompt(s)" in note and "random control" in note
    assert "graph columns are empty" in _loss_note({"loss_tokens": 1000, "graph_prompts": 0})
