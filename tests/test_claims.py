"""The claims sweep: convergence rule, interval verdicts with known answers, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.claims import claims
from analysis.claims_arms import Arm, matched_l0_difference, paired_point_difference
from analysis.claims_stats import Interval, bootstrap, verdict
from training.convergence import budget_ladder, has_converged

N_CHUNKS = 16


def test_ladder_doubles_up_to_the_cap():
    assert budget_ladder(1000, 8000) == [1000, 2000, 4000, 8000]
    assert budget_ladder(1000, 5000) == [1000, 2000, 4000, 5000]
    assert budget_ladder(1000, 1000) == [1000]


def test_converged_only_after_a_small_change_over_a_doubling():
    assert not has_converged([(1000, 0.10)])
    assert not has_converged([(1000, 0.10), (2000, 0.09)])  # 10% change
    assert has_converged([(1000, 0.10), (2000, 0.0990)])  # 1% change
    # the cap rung is no doubling: a small change there proves nothing
    assert not has_converged([(4000, 0.10), (5000, 0.0999)])


def test_a_metric_near_zero_converges_by_the_absolute_floor():
    # the ReLU SAE at L0 250 of the gated claim: 4% relative, 7e-5 nats absolute
    curve = [(8000, 0.00192), (16000, 0.00185)]
    assert not has_converged(curve, tolerance=0.02)
    assert has_converged(curve, tolerance=0.02, floor=5e-4)
    assert not has_converged([(8000, 0.0100), (16000, 0.0090)], tolerance=0.02, floor=5e-4)
    assert not has_converged([(4000, 0.00192), (5000, 0.00191)], floor=5e-4)  # no doubling


def test_a_sweep_recorded_before_the_floor_resumes_only_with_the_floor_it_had(tmp_path):
    """An older results file (no floor recorded) ran the relative rule alone: resuming it
    under the default floor would mix two rules in one sweep, so it is refused."""
    from replacement.errors import SparseCircuitsError
    from training.claims_results import RESULTS_FILE, load_results
    from training.claims_settings import SweepSettings

    old = SweepSettings(out=str(tmp_path)).recorded()
    del old["floor"]
    (tmp_path / RESULTS_FILE).write_text(json.dumps({"version": 2, "setup": old, "runs": {}}))
    with pytest.raises(SparseCircuitsError, match="'floor': \\(0.0, 0.0005\\)"):
        load_results(tmp_path, SweepSettings(out=str(tmp_path)))
    assert load_results(tmp_path, SweepSettings(out=str(tmp_path), floor=0.0))["runs"] == {}


def test_verdict_follows_the_interval_only():
    assert verdict(Interval(-0.02, -0.03, -0.01), paper_sign=-1) == "agrees"
    assert verdict(Interval(0.02, 0.01, 0.03), paper_sign=-1) == "disagrees"
    assert verdict(Interval(-0.02, -0.05, 0.01), paper_sign=-1) == "inconclusive"
    assert verdict(Interval(-0.02, -0.03, -0.01), -1, converged=False).startswith("inconclusive")


def test_bootstrap_interval_covers_the_true_mean():
    """Chunks with known noise: the 95% interval of their mean covers the truth in >= 90%."""
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(200):
        values = rng.normal(0.5, 1.0, size=40)

        def stat(w, seeds, values=values):
            return w @ values / w.sum(axis=1)

        iv = bootstrap(stat, 40, {"a": [0]}, n_draws=300, seed=trial)
        covered += iv.low <= 0.5 <= iv.high
    assert covered >= 180


def test_seed_picks_are_the_per_draw_choices_of_each_arm_in_turn():
    """The vectorised picks draw the stream a loop of `rng.choice` per draw and arm draws (the
    form the shipped intervals were first computed with), for arms of unequal seed counts."""
    from analysis.claims_stats import seed_picks

    seeds = {"a": [0, 1], "b": [3], "c": [5, 6, 7]}
    picks = seed_picks(seeds, 500, np.random.default_rng(4))
    rng = np.random.default_rng(4)
    for d in range(500):
        for arm, own in seeds.items():
            expected = own if d == 0 else list(rng.choice(own, size=len(own), replace=True))
            assert list(picks[arm][d]) == expected


def test_every_draws_interpolation_is_np_interp_of_its_own_curve():
    """Unsorted points, grid values below, on, between and above the knots, per draw."""
    from analysis.claims_stats import at_l0_draws

    rng = np.random.default_rng(0)
    l0 = rng.uniform(2.0, 20.0, size=(4, 50))
    l0[:, 0] = [8.0, 2.0, 16.0, 4.0]  # draw 0 has the grid's knots exactly
    metric = rng.normal(size=(4, 50))
    grid = np.array([1.0, 2.0, 3.0, 4.0, 11.0, 16.0, 40.0])
    found = at_l0_draws(l0, metric, grid)
    for d in range(50):
        order = np.argsort(l0[:, d])
        ref = np.interp(np.log(grid), np.log(l0[order, d]), metric[order, d])
        assert found[:, d] == pytest.approx(ref, rel=1e-12, abs=1e-15)
    assert found[[1, 3, 5], 0].tolist() == metric[[1, 3, 2], 0].tolist()  # knots exactly


def test_the_seed_mean_averages_each_draws_picked_seeds():
    from analysis.claims_stats import seed_mean

    per_seed = {3: np.array([[1.0, 10.0], [2.0, 20.0]]), 7: np.array([[5.0, 50.0], [6.0, 60.0]])}
    picks = np.array([[3, 7], [7, 7]])  # draw 0 both seeds, draw 1 seed 7 twice
    assert seed_mean(per_seed, picks).tolist() == [[3.0, 50.0], [4.0, 60.0]]


def _rung(l0: float, ce: float, noise: np.ndarray, alive: int = 100) -> dict:
    """Per-chunk sums of a rung whose chunk CE increases are ce + noise (mean of noise = 0)."""
    n = len(noise)
    tokens = [100.0] * n
    return {
        "tokens": 1000,
        "train_seconds": 1.0,
        "alive": alive,
        "chunks": {
            "tokens": tokens,
            "ce_orig": [100.0] * n,
            "ce_spliced": [100.0 + 100.0 * (ce + e) for e in noise],
            "positions": tokens,
            "l0": [100.0 * l0] * n,
            "sq_err": [1.0] * n,
            "sq_dev": [2.0] * n,
            "dot": [1.0] * n,
            "sq_hat": [1.0] * n,
            "down_err": [1.0] * n,
            "down_dev": [2.0] * n,
        },
    }


def _arm(offset: float, seeds: int = 2, scale: float = 0.002, seed: int = 0) -> Arm:
    """An arm whose CE increase is 0.1 - 0.02 log(L0) + offset, with chunk and seed noise."""
    rng = np.random.default_rng(seed)
    points = []
    for l0 in (2.0, 4.0, 8.0, 16.0):
        noise = {s: rng.normal(0, scale, N_CHUNKS) for s in range(seeds)}
        for s in noise:
            noise[s] -= noise[s].mean()
        points.append(
            {s: _rung(l0, 0.1 - 0.02 * np.log(l0) + offset, noise[s]) for s in range(seeds)}
        )
    return Arm("x", points, True)


@pytest.mark.parametrize(
    "offset,expected", [(-0.01, "agrees"), (0.01, "disagrees"), (0.0, "inconclusive")]
)
def test_matched_l0_difference_has_the_known_answer(offset, expected):
    a, b = _arm(0.0, seed=1), _arm(offset, seed=2)
    iv, grid = matched_l0_difference(a, b, "ce_increase", N_CHUNKS)
    assert grid.size == 5 and grid[0] == pytest.approx(2.0) and grid[-1] == pytest.approx(16.0)
    assert iv.estimate == pytest.approx(offset, abs=1e-9)  # chunk noise has mean 0 per seed
    assert verdict(iv, paper_sign=-1) == expected
    same = paired_point_difference(a, b, "ce_increase", N_CHUNKS)
    assert same.estimate == pytest.approx(offset, abs=1e-9)


def test_moving_each_points_l0_by_its_last_change_shifts_the_difference_by_the_known_amount():
    """CE = 0.1 - 0.02 ln L0 on both arms; A's L0 still halving per doubling: moved once more,
    A's curve sits 0.02 ln 2 lower at every L0 of the common range, so B - A = +0.02 ln 2."""
    from analysis.claims_arms import l0_moved

    a, b = _arm(0.0, seed=1), _arm(0.0, seed=2)
    a.l0_changes, b.l0_changes = [-0.5] * 4, [None] * 4
    measured, _ = matched_l0_difference(a, b, "ce_increase", N_CHUNKS)
    moved, grid = matched_l0_difference(l0_moved(a), l0_moved(b), "ce_increase", N_CHUNKS)
    assert measured.estimate == pytest.approx(0.0, abs=1e-9)
    assert moved.estimate == pytest.approx(0.02 * np.log(2), abs=1e-9)
    assert grid[0] == pytest.approx(2.0) and grid[-1] == pytest.approx(8.0)
    assert a.curve(0, np.ones(N_CHUNKS), "l0")[0][0] == pytest.approx(2.0)  # a is untouched


def test_the_profile_gives_the_known_difference_at_each_l0():
    """CE 0.1 - 0.02 ln L0 against 0.1 - 0.03 ln L0: B - A is -0.01 ln L0 at every grid L0,
    and the mean is the mean of those; every component comes from the same draws."""
    from analysis.claims_arms import matched_l0_profile
    from analysis.claims_stats import bootstrap_many

    zeros = np.zeros(N_CHUNKS)
    a, b = (
        Arm(n, [{s: _rung(x, 0.1 - c * np.log(x), zeros) for s in range(2)}
                for x in (2.0, 4.0, 8.0, 16.0)], True)
        for n, c in (("a", 0.02), ("b", 0.03))
    )  # fmt: skip
    mean, each, grid = matched_l0_profile(a, b, "ce_increase", N_CHUNKS)
    assert [iv.estimate for iv in each] == pytest.approx(list(-0.01 * np.log(grid)), abs=1e-12)
    assert mean.estimate == pytest.approx(float(np.mean(-0.01 * np.log(grid))), abs=1e-12)
    one, two = bootstrap_many(
        lambda w, s: np.vstack([w[:, :4].sum(1), 2 * w[:, :4].sum(1)]), N_CHUNKS, {"x": [0, 1]}
    )
    assert (two.estimate, two.low, two.high) == (2 * one.estimate, 2 * one.low, 2 * one.high)
    assert one.low < one.high


def test_the_widest_gap_is_the_largest_l0_step_inside_the_grid():
    from analysis.claims import widest_gap

    zeros = np.zeros(N_CHUNKS)
    arm = Arm("x", [{0: _rung(x, 0.1, zeros)} for x in (40.0, 2.0, 4.0, 20.0, 400.0)], True)
    assert widest_gap(arm, np.array([3.0, 30.0])) == "4-20 (5.0x)"  # 20-400 lies outside
    assert widest_gap(arm, np.array([25.0, 30.0])) == "20-40 (2.0x)"


def test_claims_from_synthetic_sweep_results():
    """`claims` reads a format-2 results file: skip transcoders 0.01 nats better -> agrees on CE."""

    def run(claim, arm, arm_obj):
        return {
            "claim": claim,
            "arm": arm,
            "stage": "sweep",
            "fields": {},
            "seeds": {
                str(s): {"rungs": [p[s]], "converged": True} for s in range(2) for p in [arm_obj]
            },
        }

    plain, skip = _arm(0.0, seed=3), _arm(-0.01, seed=4)
    runs = {}
    for i in range(4):
        runs[f"skip/transcoder_{i}"] = run("skip", "transcoder", plain.points[i])
        runs[f"skip/skip_transcoder_{i}"] = run("skip", "skip_transcoder", skip.points[i])
    found = claims({"version": 2, "setup": {}, "runs": runs})
    assert len(found) == 1
    ce = found[0].intervals["ce_increase"]
    assert ce[0] == pytest.approx(-0.01, abs=1e-9) and ce[2] < 0
    for i in range(4):  # each k's own difference: -0.01 by construction, chunk noise aside
        one = found[0].intervals[f"ce_increase@{i}"]
        assert one[0] == pytest.approx(-0.01, abs=1e-9) and one[1] <= one[0] <= one[2] < 0
        assert f"{i}: FVU" in found[0].ours
    # FVU is equal by construction: that part is inconclusive, so the claim is mixed
    assert found[0].verdict == "mixed: inconclusive, agrees"


def test_the_gated_claim_reads_its_known_answer_and_names_the_winning_lr():
    """Gated 0.01 nats below ReLU at every L0 -> agrees on CE; gamma equal by construction ->
    inconclusive there; the tuning runs' losses name the lr each arm trained with."""
    relu, gated = _arm(0.0, seed=5), _arm(-0.01, seed=6)
    runs = {}
    for i in range(4):
        for arm, obj in (("relu", relu), ("gated", gated)):
            runs[f"gated/{arm}_{i}"] = {
                "claim": "gated", "arm": arm, "stage": "sweep", "fields": {},
                "seeds": {str(s): {"rungs": [obj.points[i][s]], "converged": True}
                          for s in range(2)},
            }  # fmt: skip
    for arm, losses in (("relu", (0.49, 0.41, 0.42)), ("gated", (0.66, 0.58, 0.57))):
        for lr, loss in zip((1e-3, 4e-3, 1e-2), losses, strict=True):
            runs[f"gated/tune_{arm}_lr{lr:g}"] = {
                "claim": "gated", "arm": arm, "stage": "tune", "fields": {"lr": lr},
                "seeds": {"0": {"rungs": [{"final_loss": loss, "tokens": 1000,
                                           "train_seconds": 1.0}],
                                "converged": True}},
            }  # fmt: skip
    (found,) = claims({"version": 2, "setup": {}, "runs": runs})
    ce = found.intervals["ce_increase"]
    assert ce[0] == pytest.approx(-0.01, abs=1e-9) and ce[2] < 0
    assert found.intervals["abs_one_minus_gamma"][0] == pytest.approx(0.0, abs=1e-12)
    # the L0-drift check: single-rung ladders have no last doubling, so it reads as measured
    assert found.intervals["ce_increase_l0_moved"][0] == pytest.approx(ce[0], abs=1e-12)
    assert "(no point's L0 moved)" in found.ours
    # the difference at each L0 of the grid (2 to 16): -0.01 at every one
    at = {k: v for k, v in found.intervals.items() if k.startswith("ce_increase@L0=")}
    assert len(at) == 5 and "ce_increase@L0=2" in at and "ce_increase@L0=16" in at
    assert all(v[0] == pytest.approx(-0.01, abs=1e-9) for v in at.values())
    assert "(at each L0: 2: -0.0100 [" in found.ours
    # points at L0 2, 4, 8, 16: each arm's widest step inside the grid is 2x
    assert "widest L0 gap interpolated across: relu 2-4 (2.0x), gated 2-4 (2.0x)" in found.ours
    assert found.verdict == "mixed: agrees, inconclusive, agrees"
    assert "relu 0.004 won at 1,000 tokens (0.001: 0.490, 0.004: 0.410, 0.01: 0.420)" in found.ours
    assert "gated 0.01 won" in found.ours
    # curves that do not overlap in L0: no difference is defined, each range is named
    for i in range(4):
        for seed in (0, 1):
            rung = runs[f"gated/gated_{i}"]["seeds"][str(seed)]["rungs"][0]
            rung["chunks"] = {**rung["chunks"], "l0": [x * 100 for x in rung["chunks"]["l0"]]}
    (apart,) = claims({"version": 2, "setup": {}, "runs": runs})
    assert "no common L0 range: relu L0 2.0-16.0, gated L0 200.0-1600.0" in apart.ours
    assert apart.verdict.startswith("inconclusive")


def test_pilot_sweep_settles_nothing():
    """A results file of the one-seed pilot (format 1) is read, and every claim from it is
    inconclusive whatever its differences."""
    pilot = {
        "setup": {"tokens_local": 200000, "tokens_e2e": 100000},
        "runs": {
            "transcoder_k8": {"group": "skip", "l0": 8.0, "ce_increase": 0.160},
            "skip_transcoder_k8": {"group": "skip", "l0": 8.0, "ce_increase": 0.145},
            "relu_l1_0.1": {"group": "gated", "l0": 6.0, "ce_increase": 0.2},
            "local_k16": {"group": "e2e", "l0": 16.0, "ce_increase": 0.101},
        },
    }
    found = claims(pilot)
    assert len(found) == 3 and all(c.verdict.startswith("inconclusive") for c in found)
    assert "CE increase 0.145" in found[0].ours


def test_the_shipped_sweep_gives_verdicts_only_where_every_run_ended():
    from analysis.claims import load_sweep
    from analysis.claims_arms import progress

    results = load_sweep()
    found = claims(results)
    assert found
    for c in found:
        if not c.verdict.startswith("inconclusive"):
            claim = {"Skip": "skip", "Gated": "gated"}.get(c.name.split()[0], "braun")
            done, planned = progress(results, claim)
            assert done == planned, c
            assert all(low <= est <= high for est, low, high in c.intervals.values())


def _tiny_sweep(out, model, seeds=1):
    """Settings and data of a sweep that trains in seconds (skip claim; rows of the corpus)."""
    from training.claims_settings import SweepSettings
    from training.data import TokenData, load_token_data

    full = load_token_data(model, None, ctx_len=128)
    data = TokenData(full.train[:128], full.val[:16], full.bos, full.special_ids)
    settings = SweepSettings(
        out=str(out),
        claims=("skip",),
        seeds=seeds,
        start_tokens=1024,
        cap_tokens=2048,
        eval_tokens=512,
        n_chunks=2,
        n_features=64,
        batch_tokens=512,
        tune_tokens=1024,
    )
    return settings, data


def test_points_select_by_name_with_the_tuning_runs_they_need():
    from replacement.errors import SparseCircuitsError
    from training.claims_plan import claim_points
    from training.claims_settings import selected_points

    every = claim_points()
    assert selected_points(every, ()) == every
    e2e = selected_points(every, ("braun/e2e*",))
    assert {p.arm for p in e2e} == {"e2e:topk", "e2e:relu", "e2e_ds:topk", "e2e_ds:relu"}
    assert len(e2e) == 20  # 2 objectives x (4 k + 6 L1 coefficients)
    # a tuned-lr point brings its own arm's tuning runs, not the other arm's
    gated = selected_points(every, ("gated/gated_l1_0.3",))
    assert [p.name for p in gated if p.stage == "tune"] == [
        "gated/tune_gated_lr0.001",
        "gated/tune_gated_lr0.004",
        "gated/tune_gated_lr0.01",
    ]
    assert [p.name for p in gated if p.stage != "tune"] == ["gated/gated_l1_0.3"]
    with pytest.raises(SparseCircuitsError, match=r"--points 'braun/e3e\*' matches no point"):
        selected_points(every, ("braun/e2e*", "braun/e3e*"))


def test_braun_local_relu_takes_the_gated_claims_relu_coefficients():
    from training.claims_plan import BRAUN_L1, GATED_L1

    assert BRAUN_L1["local"] == GATED_L1


@pytest.mark.slow
def test_the_same_run_under_two_claims_trains_once_and_is_recorded_under_both(
    tmp_path, default_model, monkeypatch
):
    """Braun's local ReLU point equals the gated claim's ReLU point once ReLU's tuned lr is the
    sweep lr: a process given the Braun point and the tuning runs trains the ladder once, in
    the gated point's folder, and records it under both; another tuned lr makes them two runs."""
    import training.claims_plan as plan
    from analysis.claims import _budget
    from training.claims_sweep import run_claims

    monkeypatch.setattr(plan, "GATED_L1", (0.1,))
    monkeypatch.setattr(plan, "TOPK_KS", ())
    monkeypatch.setattr(plan, "BRAUN_L1", {"local": (0.1,), "e2e": (), "e2e_ds": ()})
    monkeypatch.setattr(plan, "GATED_LR_GRID", (plan.SWEEP_LR,))  # so ReLU's tuned lr is it
    settings, data = _tiny_sweep(tmp_path, default_model)
    settings.claims = ("gated", "braun")
    settings.points = ("braun/local*", "gated/tune_relu*")
    lines: list[str] = []
    results = run_claims(settings, log=lines.append, model=default_model, data=data)
    gated = results["runs"]["gated/relu_l1_0.1"]["seeds"]["0"]
    braun = results["runs"]["braun/local_relu_l1_0.1"]["seeds"]["0"]
    assert gated["rungs"] and braun["same_run_as"] == "gated/relu_l1_0.1"
    assert {k: v for k, v in braun.items() if k != "same_run_as"} == gated
    assert not list((tmp_path / "runs" / "braun").rglob("card.json"))  # nothing trained there
    assert [m for m in lines if m.startswith("braun/")] == [
        "braun/local_relu_l1_0.1 seed 0: the same run as gated/relu_l1_0.1; its ladder taken, "
        "none trained"
    ]
    assert "the same runs as another claim's" in _budget(results, "braun")
    lines.clear()
    run_claims(settings, log=lines.append, model=default_model, data=data)
    assert lines == ["every run of ['gated', 'braun'] has finished; nothing to train"]
    # ReLU tuned to another lr: the Braun point (sweep lr) is a run of its own
    monkeypatch.setattr(plan, "GATED_LR_GRID", (1e-2,))
    settings.out = str(tmp_path / "other")
    other = run_claims(settings, log=lambda m: None, model=default_model, data=data)
    assert "same_run_as" not in other["runs"]["braun/local_relu_l1_0.1"]["seeds"]["0"]
    assert list((tmp_path / "other" / "runs" / "braun").rglob("card.json"))


@pytest.mark.slow
def test_a_process_given_only_the_baselines_fits_them_and_writes_no_activation_cache(
    tmp_path, default_model
):
    """`--points skip/linear gated/mean` (how a sweep is split across machines): only those
    baselines are fitted (the transcoders' affine map, the SAEs' mean: no feature fires), and
    no cache is written, since no local run needs one."""
    from dataclasses import replace

    from training.claims_sweep import run_claims

    settings, data = _tiny_sweep(tmp_path, default_model)
    lines: list[str] = []
    results = run_claims(
        replace(settings, claims=("skip", "gated"), points=("skip/linear", "gated/mean")),
        log=lines.append,
        model=default_model,
        data=data,
    )
    assert sorted(results["runs"]) == ["gated/mean", "skip/linear"]
    mean = results["runs"]["gated/mean"]["seeds"]["0"]["rungs"][0]
    assert mean["alive"] == 0 and mean["figures"]["l0"] == 0.0 and mean["tokens"] >= 1024
    assert mean["figures"]["fvu"] >= 1.0  # a mean fitted elsewhere explains no variance here
    assert not (tmp_path / "activations").exists()
    assert not any("activation cache" in m for m in lines)


@pytest.mark.slow
def test_raising_the_cap_extends_only_the_ladders_that_ended_there_and_it_never_falls(
    tmp_path, default_model, monkeypatch
):
    """A sweep resumed under a higher cap trains one more rung of each ladder that stopped at
    the old cap unconverged, keeps every rung it had, and records the new cap; a lower cap, or
    one whose ladder lacks the old cap, is refused before any work."""
    from dataclasses import replace

    import training.claims_plan as plan
    from replacement.errors import SparseCircuitsError
    from training.claims_results import RESULTS_FILE
    from training.claims_sweep import run_claims

    monkeypatch.setattr(plan, "SKIP_KS", (4,))
    settings, data = _tiny_sweep(tmp_path, default_model)
    settings = replace(settings, tolerance=1e-12, floor=0.0)  # nothing settles this fast
    first = run_claims(settings, log=lambda m: None, model=default_model, data=data)
    ladders = {n: r["seeds"]["0"] for n, r in first["runs"].items()}
    assert [r["tokens"] for r in ladders["skip/transcoder_k4"]["rungs"]] == [1024, 2048]
    raised = run_claims(
        replace(settings, cap_tokens=4096), log=lambda m: None, model=default_model, data=data
    )
    assert raised["setup"]["cap_tokens"] == 4096
    for name, before in ladders.items():
        after = raised["runs"][name]["seeds"]["0"]
        assert after["rungs"][: len(before["rungs"])] == before["rungs"]
        grown = 0 if before["converged"] else 1  # the closed-form baseline is not retrained
        assert len(after["rungs"]) == len(before["rungs"]) + grown
    assert [r["tokens"] for r in raised["runs"]["skip/transcoder_k4"]["seeds"]["0"]["rungs"]] == [
        1024, 2048, 4096
    ]  # fmt: skip
    written = (tmp_path / RESULTS_FILE).read_text()
    with pytest.raises(SparseCircuitsError, match="recorded with --cap-tokens 4,096; .* 2,048"):
        run_claims(replace(settings, cap_tokens=2048), model=default_model, data=data)
    assert (tmp_path / RESULTS_FILE).read_text() == written
    # an old cap that was no doubling of the start (3000) is no rung of a higher cap's ladder
    from training.convergence import raised_cap

    assert raised_cap({"cap_tokens": 3000}, 1024, 3000, "x") == 3000
    with pytest.raises(SparseCircuitsError, match="can only be raised to a doubling"):
        raised_cap({"cap_tokens": 3000}, 1024, 8192, "x")


@pytest.mark.slow
def test_up_to_brings_every_ladder_to_one_budget_and_leaves_it_open_for_a_later_run(
    tmp_path, default_model, monkeypatch
):
    """--up-to trains no rung above its budget and ends no ladder there (none converged), is
    not recorded (a later run without it resumes the same sweep), and that later run keeps the
    rungs it finds and trains only the budgets above; an --up-to below the first budget is
    refused before any work."""
    from dataclasses import replace

    import training.claims_plan as plan
    from replacement.errors import SparseCircuitsError
    from training.claims_results import RESULTS_FILE
    from training.claims_sweep import run_claims

    monkeypatch.setattr(plan, "SKIP_KS", (4,))
    settings, data = _tiny_sweep(tmp_path, default_model)
    settings = replace(settings, cap_tokens=4096, tolerance=1e-12, floor=0.0)  # none settles
    lines: list[str] = []
    first = run_claims(
        replace(settings, up_to=2048), log=lines.append, model=default_model, data=data
    )
    trained = {n: r["seeds"]["0"] for n, r in first["runs"].items() if "transcoder" in n}
    assert len(trained) == 2
    for entry in trained.values():
        assert [r["tokens"] for r in entry["rungs"]] == [1024, 2048]
        assert not entry["converged"]
    assert "up_to" not in first["setup"]
    lines.clear()
    run_claims(replace(settings, up_to=2048), log=lines.append, model=default_model, data=data)
    assert lines == [
        "every run of ['skip'] has finished or reached --up-to 2,048; nothing to train"
    ]
    later = run_claims(settings, log=lambda m: None, model=default_model, data=data)
    for name, before in trained.items():
        after = later["runs"][name]["seeds"]["0"]
        assert after["rungs"][:2] == before["rungs"]
        assert [r["tokens"] for r in after["rungs"]] == [1024, 2048, 4096]
    written = (tmp_path / RESULTS_FILE).read_text()
    with pytest.raises(SparseCircuitsError, match="--up-to 512 is below --start-tokens 1024"):
        run_claims(replace(settings, up_to=512), model=default_model, data=data)
    assert (tmp_path / RESULTS_FILE).read_text() == written


@pytest.mark.slow
def test_a_run_another_process_holds_is_left_to_it_and_no_result_is_lost(
    tmp_path, default_model, monkeypatch
):
    """Two processes on one sweep: the run held by the other is skipped, an entry the other
    wrote meanwhile survives this process's saves, and the held run is trained once free."""
    import training.claims_plan as plan
    import training.claims_sweep as sweep
    from training.sweep_locks import claimed, update_results

    monkeypatch.setattr(plan, "SKIP_KS", (4,))
    settings, data = _tiny_sweep(tmp_path, default_model, seeds=2)
    held = tmp_path / "runs" / "skip" / "transcoder_k4" / "seed1"
    other = {"rungs": [{"tokens": 1, "written_by": "the other process"}], "converged": False}
    real_ladder = sweep.train_ladders

    def ladder_then_the_other_writes(*args, **kwargs):
        real_ladder(*args, **kwargs)

        def put(current):
            current["runs"].setdefault("elsewhere", {"seeds": {}})["seeds"]["0"] = other
            return current

        update_results(tmp_path / sweep.RESULTS_FILE, put)

    monkeypatch.setattr(sweep, "train_ladders", ladder_then_the_other_writes)
    lines: list[str] = []
    with claimed(held) as mine:
        assert mine
        results = sweep.run_claims(settings, log=lines.append, model=default_model, data=data)
    trained = {(n, s) for n, r in results["runs"].items() for s, e in r["seeds"].items()
               if e["rungs"] and n != "elsewhere"}  # fmt: skip
    assert ("skip/transcoder_k4", "1") not in trained
    # the other seed, both skip-transcoder seeds and the linear baseline
    assert len(trained) == 4
    assert "1 runs are being trained by another process; left to it" in lines
    on_disk = json.loads((tmp_path / sweep.RESULTS_FILE).read_text())
    assert on_disk["runs"]["elsewhere"]["seeds"]["0"] == other  # not overwritten by our saves
    assert all(on_disk["runs"][n]["seeds"][s]["rungs"] for n, s in trained)
    # every local run read the sweep's float32 cache, written once
    assert (tmp_path / "activations" / "layer1" / "manifest.json").is_file()
    assert sum("writing the activation cache" in m for m in lines) == 1
    card = json.loads(next(held.parent.rglob("seed0/t*/card.json")).read_text())
    assert card["training"]["activations"] == str(tmp_path / "activations" / "layer1")
    lines.clear()
    monkeypatch.setattr(sweep, "train_ladders", real_ladder)
    sweep.run_claims(settings, log=lines.append, model=default_model, data=data)
    assert [m.split(" 1,024")[0] for m in lines if "tokens:" in m][:1] == [
        "skip/transcoder_k4 seed 1"
    ]
    assert not any("activation cache" in m for m in lines)  # reused
    final = json.loads((tmp_path / sweep.RESULTS_FILE).read_text())
    assert final["runs"]["skip/transcoder_k4"]["seeds"]["1"]["rungs"]


def test_e2e_ladders_trained_together_give_each_ones_result_alone_and_all_are_saved(
    tmp_path, default_model, monkeypatch
):
    """The e2e ladders of a seed train together (one original pass per step): every rung's
    figures equal those of the same ladder trained alone, and every ladder's rungs reach the
    results file."""
    from dataclasses import replace

    import training.claims_plan as plan
    from training.claims_results import RESULTS_FILE
    from training.claims_sweep import run_claims

    monkeypatch.setattr(plan, "TOPK_KS", (4, 8))
    settings, data = _tiny_sweep(tmp_path / "together", default_model)
    settings = replace(settings, claims=("braun",), points=("braun/e2e*topk*",))
    lines: list[str] = []
    together = run_claims(settings, log=lines.append, model=default_model, data=data)
    assert "training 4 e2e ladders of seed 0 together" in lines
    alone_settings = replace(settings, out=str(tmp_path / "alone"), together=1)
    alone = run_claims(alone_settings, log=lambda m: None, model=default_model, data=data)
    on_disk = json.loads((tmp_path / "together" / RESULTS_FILE).read_text())
    names = [f"braun/{o}_topk_k{k}" for o in ("e2e", "e2e_ds") for k in (4, 8)]
    for name in names:
        a = together["runs"][name]["seeds"]["0"]
        b = alone["runs"][name]["seeds"]["0"]
        assert [r["tokens"] for r in a["rungs"]] == [r["tokens"] for r in b["rungs"]] != []
        for ra, rb in zip(a["rungs"], b["rungs"], strict=True):
            assert ra["chunks"] == rb["chunks"], name
        assert on_disk["runs"][name]["seeds"]["0"]["rungs"] == json.loads(json.dumps(a["rungs"]))


@pytest.mark.slow
def test_passes_count_how_often_a_budget_repeats_the_training_tokens():
    from analysis.claims_arms import passes

    setup = {"train_tokens": 8_000_000}
    assert passes(16_000_000, setup) == ", 2 passes over the 8,000,000 training tokens"
    assert passes([1_000_000, 64_000_000], setup) == (
        ", 0.12-8 passes over the 8,000,000 training tokens"
    )
    assert passes(16_000_000, {}) == ""  # a sweep recorded before the count: nothing claimed


def test_sweep_resumes_to_the_uninterrupted_result(tmp_path, default_model, monkeypatch):
    """A sweep that lost its last rung reruns it to the same figures; a finished sweep trains
    nothing."""
    import training.claims_plan as plan
    from training.claims_results import RESULTS_FILE
    from training.claims_sweep import run_claims
    from training.data import TokenData, token_mask

    monkeypatch.setattr(plan, "SKIP_KS", (4,))
    settings, data = _tiny_sweep(tmp_path, default_model)
    # 2 held-out rows of the 4 the 512 evaluation tokens need: 2 more leave the training rows
    data = TokenData(data.train, data.val[:2], data.bos, data.special_ids)
    monkeypatch.setattr("training.heartbeat.EVERY_S", 0.0)  # a progress line every step
    said: list[str] = []
    first = run_claims(settings, log=said.append, model=default_model, data=data)
    entry = first["runs"]["skip/skip_transcoder_k4"]["seeds"]["0"]
    assert [r["tokens"] for r in entry["rungs"]] == [1024, 2048] or entry["converged"]
    # each rung says where it is between its start and its end (the first step sets the pace):
    # the 2,048-token rung continues the 1,024-token one's branch at step 1 of 4
    beats = [m for m in said if m.startswith("skip/transcoder_k4 seed 0 2,048-token rung: ")]
    assert [m.split(": step ")[1].split(" (")[0] for m in beats] == ["3 of 4", "4 of 4"]
    assert "step 4 of 4 (100%)" in beats[-1] and beats[-1].endswith("about 0 s left")
    monkeypatch.setattr("training.heartbeat.EVERY_S", 600.0)
    full = json.loads((tmp_path / RESULTS_FILE).read_text())
    # the distinct training tokens: the counted tokens of the rows left once those are reserved
    assert full["setup"]["eval_rows"] == {"heldout": 2, "reserved": 2}
    assert full["setup"]["train_tokens"] == int(
        token_mask(data.train[:126], data.special_ids).sum()
    )
    # lose the last rung of one run, as a kill before its results were written would
    cut = json.loads(json.dumps(full))
    cut["runs"]["skip/skip_transcoder_k4"]["seeds"]["0"]["rungs"].pop()
    cut["runs"]["skip/skip_transcoder_k4"]["seeds"]["0"]["converged"] = False
    (tmp_path / RESULTS_FILE).write_text(json.dumps(cut))
    lines: list[str] = []
    again = run_claims(settings, log=lines.append, model=default_model, data=data)
    a = full["runs"]["skip/skip_transcoder_k4"]["seeds"]["0"]["rungs"][-1]
    b = again["runs"]["skip/skip_transcoder_k4"]["seeds"]["0"]["rungs"][-1]
    assert a["tokens"] == b["tokens"]
    for key in ("ce_spliced", "sq_err", "l0"):
        np.testing.assert_allclose(a["chunks"][key], b["chunks"][key], rtol=1e-9)
    assert len(lines) == 1  # only the lost rung was trained again
    lines.clear()
    run_claims(settings, log=lines.append, model=default_model, data=data)
    assert lines == ["every run of ['skip'] has finished; nothing to train"]


@pytest.mark.slow
def test_a_shipped_unfinished_sweep_continues_on_a_new_machine(
    tmp_path, default_model, monkeypatch
):
    """A sweep's shipped form (no checkpoints, no per-chunk sums on earlier rungs) merged into
    an empty folder continues where it stopped: only the missing rung trains, to the figures
    of the uninterrupted sweep, and every ended ladder is left alone."""
    import training.claims_plan as plan
    from analysis.claims import shipped_form
    from training.claims_results import merge_results
    from training.claims_sweep import run_claims

    monkeypatch.setattr(plan, "SKIP_KS", (4,))
    settings, data = _tiny_sweep(tmp_path / "first", default_model)
    full = run_claims(settings, log=lambda m: None, model=default_model, data=data)
    cut = shipped_form(full)
    entry = cut["runs"]["skip/transcoder_k4"]["seeds"]["0"]
    entry["rungs"] = entry["rungs"][:1]
    entry["converged"] = False
    shipped = tmp_path / "shipped.json"
    shipped.write_text(json.dumps(cut))
    settings.out = str(tmp_path / "second")
    assert merge_results(settings.out, shipped) == (3, 0)  # the two arms and the baseline
    lines: list[str] = []
    again = run_claims(settings, log=lines.append, model=default_model, data=data)
    trained = [line for line in lines if line.startswith("skip/")]  # the new folder's cache too
    assert len(trained) == 1 and trained[0].startswith("skip/transcoder_k4 seed 0 2,048 tokens")
    a = full["runs"]["skip/transcoder_k4"]["seeds"]["0"]["rungs"][-1]
    b = again["runs"]["skip/transcoder_k4"]["seeds"]["0"]["rungs"][-1]
    for key in ("ce_spliced", "sq_err", "l0"):
        np.testing.assert_allclose(a["chunks"][key], b["chunks"][key], rtol=1e-9)
    ended = again["runs"]["skip/skip_transcoder_k4"]["seeds"]["0"]
    assert ended == cut["runs"]["skip/skip_transcoder_k4"]["seeds"]["0"]


def test_kept_original_residuals_give_the_same_figures_as_recomputing_them(default_model):
    """The original residual streams kept by `original_side` replace a second original forward
    per run without changing any sum; the downstream figure is the hand-computed one."""
    import torch

    from replacement import load_dictionaries
    from replacement.hook_table import block_hook
    from training.claims_eval import evaluate_dictionary, original_side
    from training.data import load_token_data

    data = load_token_data(default_model, None, ctx_len=128)
    rows = data.val[:20]
    hooks = [block_hook(m, "hook_mlp_out") for m in (1, 2, 3)]
    kept = original_side(default_model, rows, hooks, data.special_ids, n_chunks=3, batch_size=4)
    recomputed = original_side(default_model, rows, hooks, data.special_ids, n_chunks=3,
                               batch_size=4, keep_resid_bytes=0)  # fmt: skip
    assert kept.resid is not None and recomputed.resid is None
    # kept: the spliced pass starts at the dictionary's block from the kept residual
    for other in load_dictionaries("sae_local")[2:]:
        other = other.float()
        x = evaluate_dictionary(default_model, other, kept, batch_size=4)
        assert x["chunks"] == evaluate_dictionary(default_model, other, recomputed)["chunks"]
    dictionary = load_dictionaries("transcoder")[1].float()
    a = evaluate_dictionary(default_model, dictionary, kept, batch_size=4)
    b = evaluate_dictionary(default_model, dictionary, recomputed, batch_size=4)
    assert a["chunks"] == b["chunks"]  # bit for bit
    from replacement.splice import splice

    down = [block_hook(m, "hook_resid_post") for m in (1, 2, 3)]
    with torch.no_grad():
        _, orig = default_model.run_with_cache(rows, names_filter=down)
        with splice(default_model, [dictionary]):
            _, spliced = default_model.run_with_cache(rows, names_filter=down)
    err = sum(float((spliced[h][:, 1:].double() - orig[h][:, 1:].double()).pow(2).sum())
              for h in down)  # fmt: skip
    assert err > 0
    assert sum(a["chunks"]["down_err"]) == pytest.approx(err, rel=1e-5)
    ln = torch.nn.functional.layer_norm
    normed = [ln(c[h][:, 1:].double(), (c[h].shape[-1],), eps=default_model.cfg.eps)
              for c in (spliced, orig) for h in down]  # fmt: skip
    err = sum(float((s - o).pow(2).sum()) for s, o in zip(normed[:3], normed[3:], strict=True))
    assert sum(a["chunks"]["down_norm_err"]) == pytest.approx(err, rel=1e-4)


def test_normalised_is_the_models_norm_before_its_weight():
    """`normalised` is torch's layer_norm (LayerNorm models) or rms_norm (RMSNorm models)
    without a weight, and so blind to a change of scale alone."""
    import torch
    import torch.nn.functional as F

    from training.claims_eval import normalised

    r = torch.randn(5, 7, 16) * 3 + 1
    torch.testing.assert_close(normalised(r, True, 1e-5), F.layer_norm(r, (16,), eps=1e-5))
    torch.testing.assert_close(normalised(r, False, 1e-6), F.rms_norm(r, (16,), eps=1e-6))
    scale = torch.rand(5, 7, 1) * 10 + 0.1
    for layernorm in (True, False):
        torch.testing.assert_close(
            normalised(r * scale, layernorm, 1e-5),
            normalised(r, layernorm, 1e-5),
            atol=1e-4,
            rtol=0,
        )


def test_a_change_of_the_last_residuals_scale_alone_costs_no_normalised_downstream_fvu(
    default_model,
):
    """A dictionary at the last block's residual that writes c times what it reads (a skip path
    c * I, no feature fires) only rescales the last residual, which the final norm divides out:
    its normalised downstream FVU is 0 (to the norm's epsilon) and its CE increase about 0,
    while the plain downstream FVU is the hand-computed (c - 1)^2 sum ||r||^2 / sum ||r - mean||^2."""
    import torch

    from replacement.dictionary import Dictionary
    from replacement.hook_table import block_hook
    from training.claims_eval import NORMED_KEYS, evaluate_dictionary, figures, original_side
    from training.data import load_token_data

    data = load_token_data(default_model, None, ctx_len=64)
    rows, hook, c = data.val[:12], block_hook(3, "hook_resid_post"), 2.5
    d = int(default_model.cfg.d_model)
    scaler = Dictionary(d, d, 8, hook, skip=True, apply_b_dec_to_input=False)
    with torch.no_grad():
        scaler.W_skip.copy_(torch.eye(d) * c)
    original = original_side(default_model, rows, [hook], data.special_ids, n_chunks=3)
    chunks = evaluate_dictionary(default_model, scaler, original)["chunks"]
    f = figures(chunks)
    older = {k: v for k, v in chunks.items() if k not in NORMED_KEYS}  # a record from before
    assert set(figures(older)) == set(f) - {"downstream_fvu_normed"}
    with torch.no_grad():
        _, cache = default_model.run_with_cache(rows, names_filter=[hook])
    r = cache[hook][:, 1:].double().reshape(-1, d)
    plain = (c - 1) ** 2 * float(r.pow(2).sum()) / float((r - r.mean(0)).pow(2).sum())
    assert f["downstream_fvu"] == pytest.approx(plain, rel=1e-4) and plain > 1
    assert f["downstream_fvu_normed"] < 1e-6
    assert abs(f["ce_increase"]) < 1e-3 and f["l0"] == 0


def test_two_processes_saving_entries_keep_each_others(tmp_path):
    """save_entry merges: each process's entries survive the other's saves, metadata of a new
    run is written with it, and the entry a process is still filling stays its own object."""
    from training.sweep_locks import save_entry

    path = tmp_path / "results.json"
    a = {"version": 2, "runs": {"p": {"claim": "skip", "seeds": {"0": {"rungs": [1]}}}}}
    b = {"version": 2, "runs": {"p": {"claim": "skip", "seeds": {"1": {"rungs": [2]}}},
                                "q": {"claim": "gated", "seeds": {"0": {"rungs": [3]}}}}}  # fmt: skip
    mine = a["runs"]["p"]["seeds"]["0"]
    save_entry(path, a, ("runs", "p", "seeds", "0"))
    save_entry(path, b, ("runs", "q", "seeds", "0"))
    save_entry(path, b, ("runs", "p", "seeds", "1"))
    mine["rungs"].append(4)  # a still filling its entry
    save_entry(path, a, ("runs", "p", "seeds", "0"))
    on_disk = json.loads(path.read_text())
    assert on_disk["runs"]["p"]["seeds"] == {"0": {"rungs": [1, 4]}, "1": {"rungs": [2]}}
    assert on_disk["runs"]["q"] == {"claim": "gated", "seeds": {"0": {"rungs": [3]}}}
    assert a["runs"]["p"]["seeds"]["0"] is mine and a["runs"]["q"] == on_disk["runs"]["q"]


def test_an_unfinished_sweep_compares_only_finished_runs_and_settles_nothing():
    """Runs still training are not read at their early budget; arms are paired on the k both
    have finished; the verdict stays inconclusive until every planned run has ended."""
    plain, skip = _arm(0.0, seed=5), _arm(-0.01, seed=6)
    ks = (4, 8, 16, 32)
    runs = {}
    for i, k in enumerate(ks):
        for arm, obj in (("transcoder", plain), ("skip_transcoder", skip)):
            ended = arm == "transcoder" or k in (4, 8)  # skip transcoders at 16, 32 still run
            runs[f"skip/{arm}_k{k}"] = {
                "claim": "skip", "arm": arm, "stage": "sweep",
                "fields": {"kind": arm, "activation": "topk", "k": k},
                "seeds": {str(s): {"rungs": [{**obj.points[i][s], "tokens": 1000}],
                                   "converged": ended} for s in range(2)},
            }  # fmt: skip
    # an unfinished skip-transcoder run whose early rung would flip the sign if it were read
    runs["skip/skip_transcoder_k16"]["seeds"]["0"]["rungs"][0] = plain.points[2][0] | {
        "tokens": 1000
    }
    setup = {"layer": 1, "seeds": 2, "cap_tokens": 10**9}
    (found,) = [c for c in claims({"version": 2, "setup": setup, "runs": runs})
                if c.name.startswith("Skip")]  # fmt: skip
    assert "k = 4, 8:" in found.ours
    assert found.intervals["ce_increase"][0] == pytest.approx(-0.01, abs=1e-9)
    assert found.verdict.startswith("inconclusive (sweep incomplete: 12 of 16 runs finished;")
    assert found.verdict.endswith("so far: mixed: inconclusive, agrees)")
    # the budget line counts the ones still training apart, and not at their early budget
    runs["skip/skip_transcoder_k32"]["seeds"]["0"]["rungs"][0]["tokens"] = 500
    (found,) = [c for c in claims({"version": 2, "setup": setup, "runs": runs})
                if c.name.startswith("Skip")]  # fmt: skip
    assert "12/16 ladders converged (4 still training); final budgets 1,000-1,000 tokens;" in (
        found.ours
    )
    # with the distinct training tokens recorded, each budget says how often it repeats them
    (found,) = [c for c in claims({"version": 2, "setup": {**setup, "train_tokens": 400},
                                   "runs": runs}) if c.name.startswith("Skip")]  # fmt: skip
    assert "final budgets 1,000-1,000 tokens, 2.5 passes over the 400 training tokens;" in (
        found.ours
    )
    for k in (16, 32):  # once they end, all four k count and the verdict is the interval's
        for s in ("0", "1"):
            runs[f"skip/skip_transcoder_k{k}"]["seeds"][s] = {
                "rungs": [{**skip.points[ks.index(k)][int(s)], "tokens": 1000}],
                "converged": True,
            }
    (found,) = [c for c in claims({"version": 2, "setup": setup, "runs": runs})
                if c.name.startswith("Skip")]  # fmt: skip
    assert "k = 4, 8, 16, 32:" in found.ours and found.verdict == "mixed: inconclusive, agrees"


def test_merging_a_sweep_run_elsewhere_takes_what_is_further_and_refuses_another_sweep(
    tmp_path, capsys
):
    from replacement.errors import SparseCircuitsError
    from sparse_circuits_cli import main
    from training.claims_results import RESULTS_FILE, merge_results
    from training.claims_settings import SweepSettings

    setup = SweepSettings(claims=("skip",)).recorded()

    def sweep(runs):
        return {"version": 2, "setup": setup, "runs": runs}

    def run(**seeds):
        return {"claim": "skip", "arm": "transcoder", "stage": "sweep", "fields": {"k": 4},
                "seeds": {s: {"rungs": [{"tokens": t} for t in ts], "converged": c}
                          for s, (ts, c) in seeds.items()}}  # fmt: skip

    here, there = tmp_path / "here", tmp_path / "there.json"
    here.mkdir()
    (here / RESULTS_FILE).write_text(json.dumps(sweep({"a": run(**{"0": ([1, 2], True),
                                                                  "1": ([1], False)})})))  # fmt: skip
    there.write_text(json.dumps(sweep({"a": run(**{"0": ([1], False), "1": ([1, 2], False)}),
                                       "b": run(**{"0": ([1, 2, 4], True)})})))  # fmt: skip
    assert merge_results(here, there) == (2, 1)
    merged = json.loads((here / RESULTS_FILE).read_text())["runs"]
    assert merged["a"]["seeds"]["0"]["rungs"] == [{"tokens": 1}, {"tokens": 2}]  # ours, ended
    assert merged["a"]["seeds"]["1"]["rungs"] == [{"tokens": 1}, {"tokens": 2}]  # theirs, further
    assert merged["b"]["seeds"]["0"]["converged"]
    before = (here / RESULTS_FILE).read_text()
    other = json.loads(there.read_text())
    other["setup"]["n_features"] = 64
    there.write_text(json.dumps(other))
    with pytest.raises(SparseCircuitsError, match="only runs of the same sweep can be merged"):
        merge_results(here, there)
    assert (here / RESULTS_FILE).read_text() == before  # nothing written
    # a sweep resumed elsewhere under a raised cap: the merged file runs under the higher one
    other["setup"] = {**setup, "cap_tokens": 2 * setup["cap_tokens"]}
    there.write_text(json.dumps(other))
    merge_results(here, there)
    assert json.loads((here / RESULTS_FILE).read_text())["setup"]["cap_tokens"] == (
        2 * setup["cap_tokens"]
    )
    other["setup"]["cap_tokens"] = 3 * setup["start_tokens"]  # no rung of the merged ladder
    there.write_text(json.dumps(other))
    before = (here / RESULTS_FILE).read_text()
    with pytest.raises(SparseCircuitsError, match="can only be raised to a doubling"):
        merge_results(here, there)
    assert (here / RESULTS_FILE).read_text() == before
    assert main(["claims", "--out", str(here), "--merge", str(tmp_path / "missing.json")]) != 0
    assert "is not a file" in capsys.readouterr().err


def skip_runs(plain: Arm, skip: Arm) -> dict:
    """The skip claim's runs (k = 4, 8, 16, 32; 2 converged seeds) from two synthetic arms."""
    runs = {}
    for i, k in enumerate((4, 8, 16, 32)):
        for arm, obj in (("transcoder", plain), ("skip_transcoder", skip)):
            runs[f"skip/{arm}_k{k}"] = {
                "claim": "skip", "arm": arm, "stage": "sweep", "fields": {"k": k},
                "seeds": {str(s): {"rungs": [{**obj.points[i][s], "tokens": 1000}],
                                   "converged": True} for s in range(2)},
            }  # fmt: skip
    return runs


def test_report_gives_every_finished_point_its_known_value_and_interval(tmp_path):
    """The report's table: each point's seed-mean CE increase is the constructed one, inside
    its interval; a run still training is not in it; the plots and verdicts are written."""
    from analysis.claims_report import point_rows, write_claims_report

    runs = skip_runs(_arm(0.0, seed=7), _arm(-0.01, seed=8))
    runs["skip/skip_transcoder_k32"]["seeds"]["1"]["converged"] = False  # still training
    results = {"version": 2, "setup": {"cap_tokens": 10**9}, "runs": runs}
    rows = {(r["arm"], r["point"]): r for r in point_rows(results)}
    assert len(rows) == 8 and rows[("skip_transcoder", "k=32")]["seeds"] == [0]
    for (arm, point), row in rows.items():
        l0 = 2.0 ** (1 + (4, 8, 16, 32).index(int(point[2:])))
        expected = 0.1 - 0.02 * np.log(l0) + (-0.01 if arm == "skip_transcoder" else 0.0)
        est, low, high = row["ce_increase"]
        assert est == pytest.approx(expected, abs=1e-9) and low <= est <= high and high > low
    paths = write_claims_report(results, tmp_path)
    text = paths["report"].read_text()
    assert "| skip | skip_transcoder | k=32 | 1 | 0.001M |" in text
    assert all(r["shrinkage"][0] == pytest.approx(1.0) for r in rows.values())  # dot = sq_hat
    assert text.count("| 1.000 [1.000, 1.000] |") == 8
    assert paths["pareto"].stat().st_size > 0 and paths["convergence"].stat().st_size > 0
    assert json.loads(paths["verdicts"].read_text())[0]["name"].startswith("Skip")
    # shipped form: sums on each ladder's last rung only; the claims and table read the same
    from analysis.claims import shipped_form

    early = {**runs["skip/transcoder_k4"]["seeds"]["0"]["rungs"][0], "tokens": 500}
    runs["skip/transcoder_k4"]["seeds"]["0"]["rungs"].insert(0, early)
    shipped = shipped_form(results)
    assert "chunks" not in shipped["runs"]["skip/transcoder_k4"]["seeds"]["0"]["rungs"][0]
    assert [vars(c) for c in claims(shipped)] == [vars(c) for c in claims(results)]
    assert point_rows(shipped) == point_rows(results)


def test_the_table_gives_each_points_l0_change_over_its_last_doubling(tmp_path):
    """L0 falling from 5.0 to 4.0 over the last doubling reads -20.0%, the mean of the seeds'
    changes; a ladder whose last rung did not double its budget reads '-'."""
    from analysis.claims_report import point_rows, write_claims_report

    runs = skip_runs(_arm(0.0), _arm(-0.01))
    noise = np.zeros(N_CHUNKS)
    for s, (before, last) in enumerate(((5.0, 4.0), (4.0, 3.2))):  # -20% and -20%
        runs["skip/transcoder_k4"]["seeds"][str(s)]["rungs"] = [
            {**_rung(before, 0.1, noise), "tokens": 500},
            {**_rung(last, 0.1, noise), "tokens": 1000},
        ]
    # the cap rung is no doubling
    runs["skip/transcoder_k8"]["seeds"]["0"]["rungs"].insert(
        0, {**_rung(9.0, 0.1, noise), "tokens": 600}
    )
    results = {"version": 2, "setup": {"cap_tokens": 10**9}, "runs": runs}
    rows = {(r["arm"], r["point"]): r for r in point_rows(results)}
    assert rows[("transcoder", "k=4")]["l0_change"] == pytest.approx(-0.2)
    assert rows[("transcoder", "k=8")]["l0_change"] is None
    assert rows[("skip_transcoder", "k=4")]["l0_change"] is None  # one rung
    text = write_claims_report(results, tmp_path)["report"].read_text()
    assert text.count("| -20.0% |") == 1


def test_collapsed_points_are_left_out_of_the_matched_comparison_and_named():
    """A dead SAE (FVU >= 1) on one arm at L0 0.5 with a CE that would pull the difference
    down: left out, the grid and the difference are those of the live points, and it is named."""
    from analysis.claims_arms import live

    relu, gated = _arm(0.0, seed=5), _arm(-0.01, seed=6)
    dead = {s: {**_rung(0.5, 0.9, np.zeros(N_CHUNKS))} for s in range(2)}
    for rung in dead.values():
        rung["chunks"] = {**rung["chunks"], "sq_err": [2.2] * N_CHUNKS}  # FVU 1.1
    relu.points.insert(0, dead)
    relu.labels = ["l1=3", "l1=1", "l1=0.3", "l1=0.1", "l1=0.03"]
    kept, dropped = live(relu)
    assert dropped == ["l1=3"] and kept.labels == ["l1=1", "l1=0.3", "l1=0.1", "l1=0.03"]
    runs = {}
    for arm, obj in (("relu", relu), ("gated", gated)):
        for i, point in enumerate(obj.points):
            runs[f"gated/{arm}_{i}"] = {
                "claim": "gated", "arm": arm, "stage": "sweep",
                "fields": {"l1_coefficient": [3, 1, 0.3, 0.1, 0.03][i] if arm == "relu" else i},
                "seeds": {str(s): {"rungs": [point[s]], "converged": True} for s in range(2)},
            }  # fmt: skip
    (found,) = claims({"version": 2, "setup": {}, "runs": runs})
    assert found.intervals["ce_increase"][0] == pytest.approx(-0.01, abs=1e-9)
    assert "5 L0 values in [2.0, 16.0]" in found.ours
    assert "collapsed points left out (FVU >= 1): relu l1=3" in found.ours


def test_chunk_sums_as_a_matrix_give_the_figures_of_the_lists():
    """The report's fast path (`ChunkSums`) weighs the per-chunk sums exactly as the lists do,
    and weights for another number of chunks are refused."""
    from training.claims_eval import ChunkSums, figures

    rng = np.random.default_rng(1)
    rung = _rung(8.0, 0.1, rng.normal(0, 0.01, N_CHUNKS))
    rung["chunks"]["sq_err"] = list(rng.uniform(0.5, 1.5, N_CHUNKS))
    weights = rng.multinomial(N_CHUNKS, np.full(N_CHUNKS, 1 / N_CHUNKS)).astype(float)
    plain, fast = figures(rung["chunks"], weights), figures(ChunkSums(rung["chunks"]), weights)
    assert fast == pytest.approx(plain, rel=1e-12)
    by_hand = sum(w * e for w, e in zip(weights, rung["chunks"]["sq_err"], strict=True))
    assert fast["fvu"] == pytest.approx(by_hand / (2.0 * N_CHUNKS), rel=1e-12)
    draws = np.stack([np.ones(N_CHUNKS), weights])  # every draw's figures at once
    for chunks in (rung["chunks"], ChunkSums(rung["chunks"])):
        each = figures(chunks, draws)
        assert each["fvu"] == pytest.approx([figures(chunks)["fvu"], plain["fvu"]], rel=1e-12)
    with pytest.raises(ValueError, match=r"shape \(3,\) for 16 chunks"):
        figures(ChunkSums(rung["chunks"]), np.ones(3))
