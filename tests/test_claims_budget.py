"""The Braun TopK comparison read at the e2e ladders' common budget: known answers."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from analysis.claims import claims, shipped_form
from analysis.claims_budget import braun_readings, common_budget, rung_at
from tests.test_claims import N_CHUNKS, _rung
from training.claims_plan import claim_points

SETUP = {"layer": 1, "seeds": 2, "cap_tokens": 10**9}
LOCAL_CE = {4: 0.15, 8: 0.11, 16: 0.065, 32: 0.04}


def _noise(seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, 0.002, N_CHUNKS)
    return noise - noise.mean()  # a seed's chunk mean is exact: the estimate is the known value


def _ladder(k: int, seed: int, ces: dict[int, float], converged: bool) -> dict:
    rungs = []
    for i, (tokens, ce) in enumerate(sorted(ces.items())):
        rungs.append({**_rung(float(k), ce, _noise(100 * k + 10 * seed + i)), "tokens": tokens})
    return {"rungs": rungs, "converged": converged}


def _ds_ladder(k: int, seed: int, figures: dict[int, tuple[float, float]]) -> dict:
    """An e2e+ds ladder still training: {tokens: (CE increase, downstream FVU)}, with chunk
    noise of its own (chunk mean 0: the figures are exact)."""
    rungs = []
    for i, (tokens, (ce, down)) in enumerate(sorted(figures.items())):
        rung = {**_rung(float(k), ce, _noise(1000 + 100 * k + 10 * seed + i)), "tokens": tokens}
        noise = _noise(2000 + 100 * k + 10 * seed + i)
        rung["chunks"]["down_err"] = [2.0 * (down + e) for e in noise]
        rungs.append(rung)
    return {"rungs": rungs, "converged": False}


def _results(
    e2e: dict[tuple[int, int], dict[int, float]],
    ds: dict[tuple[int, int], dict[int, tuple[float, float]]] | None = None,
) -> dict:
    """Local TopK ladders ended at LOCAL_CE; e2e ladders (k, seed) -> {tokens: CE increase},
    still training, at downstream FVU 0.5; e2e+ds ladders (k, seed) -> {tokens: (CE increase,
    downstream FVU)}; the mean-ablation baseline at CE increase 0.6, downstream FVU 0.5."""
    runs = {}
    for p in claim_points(("braun",), 1):
        objective = p.fields.get("objective")
        if p.stage == "baseline":
            base = {**_rung(0.0, 0.6, _noise(7)), "tokens": 4000}
            runs[p.name] = {"claim": "braun", "arm": p.arm, "stage": "baseline",
                            "fields": p.fields, "seeds": {"0": {"rungs": [base],
                                                                "converged": True}}}  # fmt: skip
            continue
        if p.fields.get("activation") != "topk" or (objective == "e2e_ds" and ds is None):
            continue
        k = p.fields["k"]
        seeds = {}
        for s in range(2):
            if objective == "e2e_ds" and ds is not None and (k, s) in ds:
                seeds[str(s)] = _ds_ladder(k, s, ds[(k, s)])
            elif objective == "e2e_ds":
                continue
            elif objective == "local":
                seeds[str(s)] = _ladder(k, s, {4000: LOCAL_CE[k]}, True)
            elif (k, s) in e2e:
                seeds[str(s)] = _ladder(k, s, e2e[(k, s)], False)
        runs[p.name] = {"claim": "braun", "arm": p.arm, "stage": "sweep", "fields": p.fields,
                        "seeds": seeds}  # fmt: skip
    return {"version": 2, "setup": SETUP, "runs": runs}


def _e2e(offset_at: dict[int, float], seed1_upto: int) -> dict[tuple[int, int], dict[int, float]]:
    """e2e ladders whose CE increase is local's plus offset_at[tokens]; seed 1's stop at
    `seed1_upto` tokens."""
    return {
        (k, s): {t: LOCAL_CE[k] + d for t, d in offset_at.items() if s == 0 or t <= seed1_upto}
        for k in LOCAL_CE
        for s in range(2)
    }


def test_the_reading_is_at_the_largest_budget_every_ladder_reached_with_the_known_difference():
    # e2e 0.01 below local at 1000 tokens; seed 0's 2000-token rung is 0.05 above: a reading
    # that took each ladder's last rung would report the wrong sign
    results = _results(_e2e({1000: -0.01, 2000: 0.05}, seed1_upto=1000))
    assert common_budget(results, "e2e:topk") == 1000
    (r,) = braun_readings(results, N_CHUNKS)
    assert r.tokens == 1000
    assert (
        r.reading
        == "e2e below local at 1,000 tokens on average over k (per k: below at k = 4, 8, 16, 32)"
    )
    est, low, high = r.intervals["ce_increase"]
    assert est == pytest.approx(-0.01, abs=1e-9) and low <= est <= high < 0
    for k in LOCAL_CE:
        one = r.intervals[f"ce_increase@k={k}"]
        assert one[0] == pytest.approx(-0.01, abs=1e-9) and one[2] < 0
    margin = r.intervals["ce_increase_minus_baseline"]
    assert margin[0] == pytest.approx(np.mean(list(LOCAL_CE.values())) - 0.01 - 0.6, abs=1e-9)
    assert "0 of 8 e2e ladders ended" in r.ours
    # once seed 1 reaches 2000 tokens too, the reading moves there, and e2e is above local
    results = _results(_e2e({1000: -0.01, 2000: 0.05}, seed1_upto=2000))
    (r,) = braun_readings(results, N_CHUNKS)
    assert r.tokens == 2000 and r.reading.startswith("e2e above local at 2,000 tokens on average")
    assert r.intervals["ce_increase"][0] == pytest.approx(0.05, abs=1e-9)
    assert "changed" in r.ours  # the change over the doubling up to it is stated


def test_an_equal_arm_is_not_resolved_and_no_reading_without_every_planned_ladder():
    # below local by far less than the chunk noise: the estimate's sign alone says nothing
    (r,) = braun_readings(_results(_e2e({1000: -0.0002}, seed1_upto=1000)), N_CHUNKS)
    assert r.reading.startswith("no difference resolved at 1,000 tokens on average over k")
    est, low, high = r.intervals["ce_increase"]
    assert est == pytest.approx(-0.0002, abs=1e-9) and low < 0 < high
    missing = _e2e({1000: -0.01}, seed1_upto=1000)
    del missing[(32, 1)]  # one planned (point, seed) not started: no common budget
    assert braun_readings(_results(missing), N_CHUNKS) == []
    unended = _results(_e2e({1000: -0.01}, seed1_upto=1000))
    unended["runs"]["braun/local_topk_k8"]["seeds"]["1"]["converged"] = False
    assert braun_readings(unended, N_CHUNKS) == []  # local must have ended: it would move


def test_a_ladder_that_ended_below_the_budget_is_read_at_its_end():
    results = _results(_e2e({1000: -0.01, 2000: -0.02}, seed1_upto=2000))
    entry = results["runs"]["braun/e2e_topk_k4"]["seeds"]["1"]
    entry["rungs"], entry["converged"] = entry["rungs"][:1], True
    assert rung_at(entry, 2000, SETUP) is entry["rungs"][0]
    (r,) = braun_readings(results, N_CHUNKS)
    assert r.tokens == 2000 and "1 of 8 e2e ladders ended" in r.ours
    # seed 1 of k=4 at its end (-0.01), the seven others at 2000 tokens (-0.02)
    assert r.intervals["ce_increase@k=4"][0] == pytest.approx(-0.015, abs=1e-9)


def test_the_shipped_form_keeps_what_the_reading_and_the_verdicts_read():
    results = _results(_e2e({1000: -0.01, 2000: 0.05}, seed1_upto=1000))
    shipped = shipped_form(results)
    still = shipped["runs"]["braun/e2e_topk_k4"]["seeds"]["0"]["rungs"]
    assert all("chunks" in r for r in still)  # a ladder still training keeps every rung's sums
    ended = copy.deepcopy(results)
    ended["runs"]["braun/e2e_topk_k4"]["seeds"]["0"]["converged"] = True
    cut = shipped_form(ended)["runs"]["braun/e2e_topk_k4"]["seeds"]["0"]["rungs"]
    assert "chunks" not in cut[0] and "chunks" in cut[-1]
    assert [vars(r) for r in braun_readings(shipped, N_CHUNKS)] == [
        vars(r) for r in braun_readings(results, N_CHUNKS)
    ]
    assert [vars(c) for c in claims(shipped)] == [vars(c) for c in claims(results)]


def test_the_report_carries_the_reading_and_its_file(tmp_path):
    import json

    from analysis.claims_report import write_claims_report

    paths = write_claims_report(_results(_e2e({1000: -0.01}, seed1_upto=1000)), tmp_path)
    text = paths["report"].read_text()
    assert "## Readings at a stated budget (not verdicts)" in text
    assert "**e2e TopK SAEs at 1,000 tokens against ended local ones** — e2e below local" in text
    (saved,) = json.loads(paths["readings"].read_text())
    assert saved["tokens"] == 1000 and saved["intervals"]["ce_increase"][2] < 0
    # the verdict stays inconclusive: the e2e ladders have not ended
    assert "inconclusive" in json.loads(paths["verdicts"].read_text())[-1]["verdict"]


def test_the_reading_names_each_ks_side_when_the_sign_changes_with_k():
    offsets = {4: -0.01, 8: -0.01, 16: -0.0002, 32: 0.01}
    e2e = {(k, s): {1000: LOCAL_CE[k] + d} for k, d in offsets.items() for s in range(2)}
    (r,) = braun_readings(_results(e2e), N_CHUNKS)
    assert r.reading.endswith("(per k: below at k = 4, 8; not resolved at k = 16; above at k = 32)")
    assert r.intervals["ce_increase"][0] == pytest.approx(np.mean(list(offsets.values())))


def test_e2e_ds_is_read_against_e2e_on_downstream_fvu_at_the_budget_both_arms_reached():
    # e2e reached 2000 tokens on both seeds, e2e+ds only 1000 on seed 1: the common budget is
    # 1000. e2e+ds's downstream FVU is 0.05 below e2e's (0.5) while its CE increase is 0.003
    # above: the reading follows downstream FVU, the paper's claim, and gives the CE beside it
    e2e = _e2e({1000: -0.01, 2000: -0.02}, seed1_upto=2000)
    ds = {
        (k, s): {t: (LOCAL_CE[k] - 0.01 + 0.003, 0.45) for t in (1000, 2000) if s == 0 or t == 1000}
        for k in LOCAL_CE
        for s in range(2)
    }
    ds[(32, 0)][2000] = (0.5, 0.9)  # a rung past the common budget is not read
    plain, both = braun_readings(_results(e2e, ds), N_CHUNKS)[1:]
    assert plain.name.startswith("e2e+ds TopK SAEs at 1,000 tokens against ended local ones")
    assert plain.reading.startswith("e2e+ds below local at 1,000 tokens on average over k")
    assert both.tokens == 1000 and both.name == "e2e+ds against e2e TopK SAEs, both at 1,000 tokens"
    assert both.reading.startswith(
        "e2e+ds below e2e at 1,000 tokens in downstream FVU on average over k (per k: below at "
        "k = 4, 8, 16, 32); 16 of their ladders still train"
    )
    est, low, high = both.intervals["downstream_fvu"]
    assert est == pytest.approx(-0.05, abs=1e-9) and low <= est <= high < 0
    est, low, high = both.intervals["ce_increase"]
    assert est == pytest.approx(0.003, abs=1e-9) and 0 < low <= est <= high
    assert both.intervals["downstream_fvu_minus_baseline"][0] == pytest.approx(-0.05, abs=1e-9)
    assert "e2e 0 of 8, e2e+ds 0 of 8" in both.ours
    # equal downstream FVU within the chunk noise: not resolved; a planned e2e+ds ladder
    # missing: no reading of either e2e+ds kind
    same = {key: {t: (ce, 0.5002) for t, (ce, _) in v.items()} for key, v in ds.items()}
    (*_, r) = braun_readings(_results(e2e, same), N_CHUNKS)
    assert r.reading.startswith("no difference resolved at 1,000 tokens in downstream FVU")
    del ds[(16, 1)]
    assert [r.name.split()[0] for r in braun_readings(_results(e2e, ds), N_CHUNKS)] == ["e2e"]
