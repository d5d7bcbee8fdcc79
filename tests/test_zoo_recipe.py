"""The zoo's recipe (`training.build_zoo`): each layer trained alone on a ladder, one lr for
every objective, cards that record it, and a rerun that trains nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import training.build_zoo as build_zoo
import training.zoo_recipe as zoo_recipe
import training.zoo_ship as zoo_ship
from replacement.formats.detect import load_dictionaries
from replacement.formats.native import load_native
from replacement.hooks import hook_layer
from training.zoo_cards import recipe_problems


def test_an_e2e_set_is_trained_layer_by_layer_and_its_card_records_the_recipe(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(zoo_recipe.COMMON, "n_features", 64)
    monkeypatch.setitem(zoo_recipe.COMMON, "batch_tokens", 512)
    runs, zoo = tmp_path / "runs", tmp_path / "zoo"
    argv = ["--runs", str(runs), "--zoo", str(zoo), "--sets", "sae_e2e", "--start-tokens",
            "512", "--cap-tokens", "1024", "--eval-tokens", "512", "--n-chunks", "2",
            "--eval-rows", "4"]  # fmt: skip
    build_zoo.main(argv)
    card = json.loads((zoo / "sae_e2e" / "card.json").read_text())
    assert card["recipe"] == zoo_recipe.RECIPE
    assert recipe_problems("sae_e2e", card) == []  # the rule read off its own curves again
    shipped_files = "".join(p.read_text() for p in (zoo / "sae_e2e").glob("*.json"))
    assert str(runs) not in shipped_files  # no folder of the training machine is shipped
    assert [row["layer"] for row in card["layers"]] == zoo_recipe.COMMON["layers"]
    for row in card["layers"]:
        assert row["lr"] == zoo_recipe.ZOO_LR and row["seed"] == 0
        assert row["machine"] and row["steps"] == row["training_tokens"] // 512
        curve = row["convergence"]
        assert [t for t, _ in curve] == [512, 1024][: len(curve)]  # the ladder, in order
        assert row["training_tokens"] == curve[-1][0]
        assert row["converged"] == (len(curve) == 2 and abs(curve[1][1] / curve[0][1] - 1) < 0.02)
        # trained alone: the rung's own run holds only this layer's dictionary, e2e
        rung = runs / "sae_e2e" / f"layer{row['layer']}" / f"t{row['training_tokens']}"
        training = json.loads((rung / "card.json").read_text())["training"]
        assert training["layers"] == [row["layer"]] and training["objective"] == "e2e"
        assert training["lr"] == pytest.approx(zoo_recipe.ZOO_LR)
    shipped = load_dictionaries(str(zoo / "sae_e2e"))
    assert sorted(hook_layer(d.out_hook) for d in shipped) == zoo_recipe.COMMON["layers"]
    # its four e2e ladders trained together: each rung as trained alone
    alone = tmp_path / "alone"
    build_zoo.main([*argv, "--runs", str(alone), "--stage", "train", "--together", "1"])
    grouped, single = (
        json.loads((r / zoo_recipe.LADDER_FILE).read_text())["sets"]["sae_e2e"]["layers"]
        for r in (runs, alone)
    )
    assert [[r["chunks"] for r in e["rungs"]] for e in grouped.values()] == [
        [r["chunks"] for r in e["rungs"]] for e in single.values()
    ]
    capsys.readouterr()
    build_zoo.main([*argv, "--stage", "train"])  # resumed: every rung is there
    out = capsys.readouterr().out
    assert "tokens:" not in out and "mean_ablation" not in out  # baselines too, fitted once
    baselines = json.loads((runs / zoo_recipe.LADDER_FILE).read_text())["baselines"]
    for layer in zoo_recipe.COMMON["layers"]:  # on the ladders' chunks, with the rungs' figures
        assert set(baselines[str(layer)]) == {"mean_ablation", "linear"}
        assert len(baselines[str(layer)]["linear"]["chunks"]["positions"]) == 2
    # shipping again replaces only a set folder of its own; a user's file beside stops it
    build_zoo.main([*argv, "--stage", "ship"])
    assert sorted(p.name for p in zoo.iterdir()) == ["sae_e2e"]
    mine = zoo / "sae_e2e.old" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("keep me")
    with pytest.raises(SystemExit, match="sae_e2e.old holds files that are not a zoo set's"):
        build_zoo.main([*argv, "--stage", "ship"])
    assert mine.read_text() == "keep me" and (zoo / "sae_e2e" / "card.json").is_file()
    # trained elsewhere (an accelerator): exported without checkpoints, merged, shippable here
    moved, runs2 = tmp_path / "moved", tmp_path / "runs2"
    build_zoo.main([*argv, "--stage", "export", "--transfer", str(moved)])
    assert not list(moved.rglob("checkpoint.pt"))
    here = ["--runs", str(runs2)]
    build_zoo.main([*argv, *here, "--stage", "merge", "--transfer", str(moved)])
    ladders = [json.loads((r / zoo_recipe.LADDER_FILE).read_text()) for r in (runs, runs2)]
    assert ladders[1] == ladders[0]  # so a train stage there trains nothing
    _, folders = zoo_ship.trained_card("sae_e2e", ladders[1], runs2)  # what ship reads
    for layer, folder in zip(zoo_recipe.COMMON["layers"], folders, strict=True):
        got = load_native(folder / f"layer_{layer}").state_dict()
        want = load_native(runs / folder.relative_to(runs2) / f"layer_{layer}").state_dict()
        assert all(torch.equal(got[k], v) for k, v in want.items())
    # exported under a raised cap there: merged, the ladders here run under it
    raised = {**ladders[0], "setup": {**ladders[0]["setup"], "cap_tokens": 2048}}
    (moved / zoo_recipe.LADDER_FILE).write_text(json.dumps(raised))
    build_zoo.main([*argv, *here, "--stage", "merge", "--transfer", str(moved)])
    got = json.loads((runs2 / zoo_recipe.LADDER_FILE).read_text())["setup"]["cap_tokens"]
    assert got == 2048
    ladders[0]["setup"]["rows_sha256"] = "0" * 64  # trained on other rows there
    (moved / zoo_recipe.LADDER_FILE).write_text(json.dumps(ladders[0]))
    with pytest.raises(SystemExit, match="other token rows"):
        build_zoo.main([*argv, *here, "--stage", "merge", "--transfer", str(moved)])


def test_every_set_uses_the_same_lr():
    lrs = {name: {**zoo_recipe.COMMON, **spec}["lr"] for name, spec in zoo_recipe.ZOO_SETS.items()}
    assert set(lrs.values()) == {zoo_recipe.ZOO_LR}


def _two_layer_transcoder(tmp_path, monkeypatch) -> tuple[Path, list[str]]:
    """A two-layer zoo of small local transcoders on random rows: --runs and the argv."""
    import numpy as np

    monkeypatch.setitem(zoo_recipe.COMMON, "n_features", 64)
    monkeypatch.setitem(zoo_recipe.COMMON, "batch_tokens", 512)
    monkeypatch.setitem(zoo_recipe.COMMON, "layers", [0, 1])
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    np.save(data / "train_tokens.npy", rng.integers(1, 4000, 127 * 48).astype(np.uint16))
    np.save(data / "heldout_tokens.npy", rng.integers(1, 4000, 127 * 8).astype(np.uint16))
    runs = tmp_path / "runs"
    argv = ["--runs", str(runs), "--sets", "transcoder", "--start-tokens", "512",
            "--cap-tokens", "1024", "--eval-tokens", "512", "--n-chunks", "2",
            "--data", str(data), "--stage", "train"]  # fmt: skip
    return runs, argv


def test_a_local_set_reads_one_activation_cache_per_layer_and_leaves_held_ladders(
    tmp_path, monkeypatch, capsys
):
    """Local sets train from --runs/activations/layer<l> (written once per layer); a ladder
    another process holds is left to it and trained by the next run once free."""
    from training.sweep_locks import claimed

    runs, argv = _two_layer_transcoder(tmp_path, monkeypatch)
    with claimed(runs / "transcoder" / "layer1") as mine:
        assert mine
        build_zoo.main(argv)
    out = capsys.readouterr().out
    assert "1 ladders are being trained by another process; left to it" in out
    assert out.count("writing the activation cache") == 1  # layer 0's only
    rung = json.loads(next((runs / "transcoder" / "layer0").glob("t*/card.json")).read_text())
    assert rung["training"]["activations"] == str(runs / "activations" / "layer0")
    assert not list((runs / "transcoder" / "layer1").glob("t*"))
    build_zoo.main(argv)
    out = capsys.readouterr().out
    assert "transcoder layer 1 512 tokens" in out and "transcoder layer 0 512" not in out
    ladders = json.loads((runs / zoo_recipe.LADDER_FILE).read_text())
    assert sorted(ladders["sets"]["transcoder"]["layers"]) == ["0", "1"]


def test_layers_name_the_ladders_a_process_trains_and_bad_ones_are_refused_first(
    tmp_path, monkeypatch, capsys
):
    runs, argv = _two_layer_transcoder(tmp_path, monkeypatch)
    argv += ["--activation-cache", "none"]
    for bad in ("2", "1,x", ","):
        with pytest.raises(SystemExit, match="--layers"):
            build_zoo.main([*argv, "--layers", bad])
    assert not runs.exists()  # refused before any work
    build_zoo.main([*argv, "--layers", "1"])
    ladders = json.loads((runs / zoo_recipe.LADDER_FILE).read_text())
    assert sorted(ladders["sets"]["transcoder"]["layers"]) == ["1"]
    assert sorted(ladders["baselines"]) == ["1"]  # only the named layer's baselines fitted
    assert (
        list((runs / "transcoder" / "layer1").glob("t*"))
        and not (runs / "transcoder" / "layer0").exists()
    )
    capsys.readouterr()


@pytest.mark.slow
def test_ladders_the_claims_sweep_trained_are_taken_not_trained_again(
    tmp_path, monkeypatch, capsys, default_model
):
    """`--claims-runs`: the zoo's layer-1 transcoder is the skip claim's k=16 transcoder, seed 0
    (the same run): its ladder is taken and its weights shipped, nothing is trained; a sweep
    evaluated on another split is not taken from."""
    import training.claims_plan as plan
    import training.data
    from training.claims_results import RESULTS_FILE
    from training.claims_settings import SweepSettings
    from training.claims_sweep import run_claims
    from training.data import TokenData, load_token_data

    full = load_token_data(default_model, None, ctx_len=128)
    data = TokenData(full.train[:128], full.val[:16], full.bos, full.special_ids)
    monkeypatch.setattr(training.data, "load_token_data", lambda *a, **k: data)
    monkeypatch.setattr(plan, "SKIP_KS", (16,))
    monkeypatch.setitem(zoo_recipe.COMMON, "n_features", 64)
    monkeypatch.setitem(zoo_recipe.COMMON, "batch_tokens", 512)
    monkeypatch.setitem(zoo_recipe.COMMON, "layers", [1])
    claims = tmp_path / "claims"
    settings = SweepSettings(
        out=str(claims), claims=("skip",), seeds=1, start_tokens=1024, cap_tokens=2048,
        eval_tokens=512, n_chunks=2, n_features=64, batch_tokens=512,
    )  # fmt: skip
    swept = run_claims(settings, log=lambda m: None, model=default_model, data=data)
    runs, zoo = tmp_path / "runs", tmp_path / "zoo"
    argv = ["--runs", str(runs), "--zoo", str(zoo), "--sets", "transcoder", "--start-tokens",
            "1024", "--cap-tokens", "2048", "--eval-tokens", "512", "--n-chunks", "2",
            "--eval-rows", "4", "--claims-runs", str(claims)]  # fmt: skip
    # first under a lower cap: one rung taken; raising the cap takes the ladder further from
    # the sweep (never trains on here: the weights live there), and the cap never falls
    low = [*argv[:9], "1024", *argv[10:]]
    capsys.readouterr()
    build_zoo.main(low)
    assert "skip/transcoder_k16 seed 0; its 1 rungs taken, none trained" in capsys.readouterr().out
    no_sweep = [a for a in argv if a not in ("--claims-runs", str(claims))]
    with pytest.raises(SystemExit, match="is the claims sweep skip/transcoder_k16 seed 0, which"):
        build_zoo.main([*no_sweep, "--stage", "train"])
    build_zoo.main(argv)
    out = capsys.readouterr().out
    with pytest.raises(SystemExit, match="can only be raised"):
        build_zoo.main([*low, "--stage", "train"])
    entry = swept["runs"]["skip/transcoder_k16"]["seeds"]["0"]
    assert f"the claims sweep skip/transcoder_k16 seed 0; its {len(entry['rungs'])} rungs" in out
    assert "tokens:" not in out
    assert not list((runs / "transcoder" / "layer1").glob("t*"))  # nothing trained here
    ladder = json.loads((runs / zoo_recipe.LADDER_FILE).read_text())["sets"]["transcoder"]
    assert ladder["layers"]["1"]["rungs"] == entry["rungs"]
    card = json.loads((zoo / "transcoder" / "card.json").read_text())
    assert card["layers"][0]["trained_as"] == "claims sweep skip/transcoder_k16 seed 0"
    last = entry["rungs"][-1]["tokens"]
    theirs = load_native(claims / "runs/skip/transcoder_k16/seed0" / f"t{last}" / "layer_1")
    shipped = load_native(zoo / "transcoder" / "layer_1")
    for name, tensor in theirs.state_dict().items():
        torch.testing.assert_close(shipped.state_dict()[name], tensor.half(), rtol=0, atol=0)
    # a sweep that has not yet trained its run as far as the zoo's ladder goes keeps it: the
    # zoo leaves it to the sweep instead of training a second copy, and ships no partial set
    results = json.loads((claims / RESULTS_FILE).read_text())
    short = json.loads(json.dumps(results))
    short["runs"]["skip/transcoder_k16"]["seeds"]["0"].update(
        rungs=entry["rungs"][:1], converged=False
    )
    (claims / RESULTS_FILE).write_text(json.dumps(short))
    runs3 = tmp_path / "runs3"
    with pytest.raises(SystemExit, match="transcoder layer 1: 0 of 2 rungs, not converged"):
        build_zoo.main([*argv, "--runs", str(runs3), "--zoo", str(tmp_path / "zoo3")])
    out = capsys.readouterr().out
    assert (
        "left to the sweep (sparse-circuits claims --points skip/transcoder_k16 --up-to 2048)"
        in out
    )
    assert "1 ladders wait for the claims sweep (transcoder layer 1)" in out
    assert not list((runs3 / "transcoder" / "layer1").glob("t*"))  # nothing trained here
    assert not (tmp_path / "zoo3").exists()
    # a sweep of other held-out rows evaluates otherwise: the zoo trains its own ladder
    results["setup"]["eval_rows"]["reserved"] += 1
    (claims / RESULTS_FILE).write_text(json.dumps(results))
    build_zoo.main([*argv, "--runs", str(tmp_path / "runs2"), "--stage", "train"])
    assert "transcoder layer 1 1,024 tokens" in capsys.readouterr().out


def test_the_zoo_trains_on_the_rows_it_is_given_and_refuses_to_resume_on_others(
    tmp_path, monkeypatch, default_model
):
    """`--rows FILE` (how an accelerator with another Python gets this machine's corpus): the
    ladders record those rows' sha256 and are evaluated on them; a resume given other rows stops
    before training, naming both; a file that is not rows stops before any work."""
    from training.claims_sweep import split_rows
    from training.data import TokenData, load_token_data
    from training.token_rows import rows_digest, write_rows

    monkeypatch.setitem(zoo_recipe.COMMON, "n_features", 64)
    monkeypatch.setitem(zoo_recipe.COMMON, "batch_tokens", 512)
    monkeypatch.setitem(zoo_recipe.COMMON, "layers", [1])
    full = load_token_data(default_model, None, ctx_len=128)
    mine = TokenData(full.train[:64], full.val[:12], full.bos, full.special_ids)
    write_rows(tmp_path / "rows.npz", mine)
    runs = tmp_path / "runs"
    argv = ["--runs", str(runs), "--sets", "transcoder", "--start-tokens", "1024",
            "--cap-tokens", "1024", "--eval-tokens", "512", "--n-chunks", "2",
            "--activation-cache", "none", "--stage", "train", "--quiet"]  # fmt: skip
    build_zoo.main([*argv, "--rows", str(tmp_path / "rows.npz")])
    ladders = json.loads((runs / zoo_recipe.LADDER_FILE).read_text())
    train, held, _ = split_rows(mine, 512)
    assert ladders["setup"]["rows_sha256"] == rows_digest(train.train, held)
    rung = ladders["sets"]["transcoder"]["layers"]["1"]["rungs"][0]
    assert sum(rung["chunks"]["positions"]) == held.shape[0] * (held.shape[1] - 1)
    other = TokenData(full.train[64:128], full.val[:12], full.bos, full.special_ids)
    write_rows(tmp_path / "other.npz", other)
    with pytest.raises(SystemExit, match="other token rows"):
        build_zoo.main([*argv, "--rows", str(tmp_path / "other.npz")])
    (tmp_path / "junk.npz").write_text("not rows")
    with pytest.raises(SystemExit, match="junk.npz"):
        build_zoo.main(
            [*argv, "--runs", str(tmp_path / "runs2"), "--rows", str(tmp_path / "junk.npz")]
        )
    assert not (tmp_path / "runs2").exists()


def test_an_interrupted_build_says_where_it_resumes(tmp_path, monkeypatch):
    """Ctrl-C during a rung ends the build with the trainer's message (the checkpoint that
    holds the step), not a traceback."""
    from pathlib import Path

    from training.interrupts import TrainingInterrupted

    def interrupted(args):
        raise TrainingInterrupted(35, 976, Path("runs/sae_e2e/layer0/t4000000/checkpoint.pt"))

    monkeypatch.setattr(build_zoo, "train_sets", interrupted)
    with pytest.raises(SystemExit, match="interrupted after step 35 of 976; checkpoint"):
        build_zoo.main(["--stage", "train", "--runs", str(tmp_path / "runs")])

    def in_setup(args):  # Ctrl-C before a loop's handler is installed: a plain KeyboardInterrupt
        raise KeyboardInterrupt

    monkeypatch.setattr(build_zoo, "train_sets", in_setup)
    with pytest.raises(SystemExit, match="outside a training loop .* resumes each run from"):
        build_zoo.main(["--stage", "train", "--runs", str(tmp_path / "runs")])


def test_a_recorded_ladder_resumes_at_its_next_rung_on_a_new_machine(tmp_path, monkeypatch, capsys):
    """`--stage record` keeps unfinished ladders as figures only (committed, they outlive the
    machine); merged into an empty --runs, each trains on from its next rung, which equals
    that rung of an uninterrupted build. A finished ladder's weights must come with it."""
    monkeypatch.setitem(zoo_recipe.COMMON, "n_features", 64)
    monkeypatch.setitem(zoo_recipe.COMMON, "batch_tokens", 512)
    monkeypatch.setitem(zoo_recipe.COMMON, "layers", [1])
    base = ["--sets", "sae_e2e", "--start-tokens", "512", "--eval-tokens", "512", "--n-chunks",
            "2", "--stage", "train"]  # fmt: skip
    lost, straight, fresh = (tmp_path / n for n in ("lost", "straight", "fresh"))
    build_zoo.main([*base, "--runs", str(lost), "--cap-tokens", "512"])  # rung 1 of 2 (below)
    record = tmp_path / "record"
    build_zoo.main([*base, "--runs", str(lost), "--stage", "record", "--transfer", str(record)])
    assert [p.name for p in record.iterdir()] == [zoo_recipe.LADDER_FILE]  # no weights
    recorded = json.loads((record / zoo_recipe.LADDER_FILE).read_text())
    assert set(recorded["baselines"]["1"]) == {"mean_ablation", "linear"}
    # recorded at its cap: finished, so ship would need its weights, which did not come
    with pytest.raises(SystemExit, match=r"lacks the final rung files of \['sae_e2e layer 1'\]"):
        build_zoo.main([*base, "--runs", str(fresh), "--stage", "merge", "--transfer", str(record)])
    kept = json.loads((record / zoo_recipe.LADDER_FILE).read_text())
    kept["setup"]["cap_tokens"] = 1024  # as if recorded before its last rung
    (record / zoo_recipe.LADDER_FILE).write_text(json.dumps(kept))
    build_zoo.main([*base, "--runs", str(fresh), "--stage", "merge", "--transfer", str(record)])
    capsys.readouterr()
    build_zoo.main([*base, "--runs", str(fresh), "--cap-tokens", "1024"])
    out = capsys.readouterr().out
    assert "sae_e2e layer 1 1,024 tokens" in out and "sae_e2e layer 1 512 tokens" not in out
    build_zoo.main([*base, "--runs", str(straight), "--cap-tokens", "1024"])
    resumed, whole = (
        json.loads((r / zoo_recipe.LADDER_FILE).read_text())["sets"]["sae_e2e"]["layers"]["1"]
        for r in (fresh, straight)
    )
    assert "mean_ablation" not in out  # the layer's baselines came with the record
    assert [r["tokens"] for r in resumed["rungs"]] == [512, 1024]
    assert resumed["rungs"][1]["chunks"] == whole["rungs"][1]["chunks"]
    assert resumed["rungs"][0]["figures"] == whole["rungs"][0]["figures"]
