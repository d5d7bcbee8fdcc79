"""Output folders are owned, not assumed (issue 25, items 1-3 and 5).

- a folder holding a user's file is refused by name and kept; `--overwrite` keeps it too;
- `--out a/b/..` is `a` (resolved before any check);
- replacing our own cache: a kill after any file-system step leaves the old or the new cache;
- disk full (a real file-size limit in a child process) and too little free space: one line,
  the partial output gone, the old cache intact;
- one writer per folder: a second `train` into a running one's folder is refused with its
  pid; after the first is killed (-9) the rerun resumes;
- an atlas whose JSON and safetensors come from different saves is refused.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import sparse_circuits_cli
from training.activation_cache import ActivationCache

REPO = Path(__file__).resolve().parents[1]
TEXT = (
    "def add(a, b):\n    return a + b\n\nclass Stack:\n    def push(self, x):\n        pass\n" * 60
)


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(TEXT)
    return path


def _cache_argv(model: Path, text: Path, out: Path | str, tokens: int = 300) -> list[str]:
    return [
        "cache", "--model", str(model), "--data", str(text), "--ctx-len", "16",
        "--tokens", str(tokens), "--shards", "2", "--dtype", "float32", "--quiet",
        "--out", str(out),
    ]  # fmt: skip


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = sparse_circuits_cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return int(code or 0), captured.out + captured.err


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (hidden ones, such as our marker, left out)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def _complete_cache(folder: Path) -> dict[str, bytes]:
    """The cache's files, after checking that every shard the manifest names is whole."""
    cache = ActivationCache(folder)
    for s in range(cache.n_shards):
        for hook in cache.hooks:
            assert cache.shard(s, hook).shape[0] == cache.shard_tokens[s]
    return _snapshot(folder)


# ---- item 1: ours or refused -------------------------------------------------------------------
def test_cache_refuses_a_folder_with_a_users_file_and_keeps_it(
    tiny_gpt2_dir, text, tmp_path, capsys
):
    work = tmp_path / "mywork"
    work.mkdir()
    (work / "notes.txt").write_text("my notes")
    code, output = _run(_cache_argv(tiny_gpt2_dir, text, work), capsys)
    assert code == 1, output
    assert "holds files sparse-circuits did not write ('notes.txt')" in output
    assert "--overwrite" in output and "Traceback" not in output
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]  # not even a lock file

    code, output = _run([*_cache_argv(tiny_gpt2_dir, text, work), "--overwrite"], capsys)
    assert code == 0, output
    assert (work / "notes.txt").read_text() == "my notes"
    _complete_cache(work)
    # a second cache into it replaces only our entries
    code, output = _run([*_cache_argv(tiny_gpt2_dir, text, work, 200), "--overwrite"], capsys)
    assert code == 0, output
    assert (work / "notes.txt").read_text() == "my notes"
    assert not [p for p in work.iterdir() if p.name.startswith(".sc-new")]


def test_out_with_dotdot_is_resolved_before_any_check(tiny_gpt2_dir, text, tmp_path, capsys):
    a = tmp_path / "a"
    (a / "b").mkdir(parents=True)
    (a / "keep.txt").write_text("the user's")
    code, output = _run(_cache_argv(tiny_gpt2_dir, text, f"{a}/b/.."), capsys)
    assert code == 1, output
    assert f"--out {str(a)!r} holds files" in output
    assert (a / "keep.txt").read_text() == "the user's" and (a / "b").is_dir()


def test_overwrite_removes_only_what_our_marker_lists(tmp_path):
    from replacement.output_folder import OutputFolder

    out = tmp_path / "out"
    with OutputFolder(out, command="test") as folder:
        stage = folder.stage()
        (stage / "ours.txt").write_text("1")
        (stage / "also_ours.txt").write_text("1")
        folder.commit()
    (out / "theirs.txt").write_text("keep")
    with OutputFolder(out, command="test", overwrite=True) as folder:
        stage = folder.stage()
        (stage / "ours.txt").write_text("2")
        folder.commit()
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == ["ours.txt", "theirs.txt"]
    assert (out / "ours.txt").read_text() == "2" and (out / "theirs.txt").read_text() == "keep"


def test_overwrite_never_replaces_a_users_file_of_the_same_name(tmp_path):
    from replacement.output_folder import OutputFolder, OutputFolderError

    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("my notes")
    with pytest.raises(OutputFolderError, match="'report.md' would be replaced") as caught:
        with OutputFolder(out, command="test", overwrite=True) as folder:
            stage = folder.stage()
            (stage / "report.md").write_text("new report")
            (stage / "results.json").write_text("{}")
            folder.commit()
    assert (out / "report.md").read_text() == "my notes"
    waiting = str(caught.value).split("waits in '")[1].split("'")[0]
    assert (pathlib.Path(waiting) / "report.md").read_text() == "new report"


class _Killed(BaseException):
    """A kill -9: nothing after it runs, not even clean-up."""


def _kill_at(monkeypatch, n: int) -> list[int]:
    """Make the n-th file-system change (and every one after it) die before it happens."""
    calls = [0]

    def wrap(owner, name):
        real = getattr(owner, name)

        def dying(*args, **kwargs):
            calls[0] += 1
            if calls[0] >= n:
                raise _Killed
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, dying)

    for owner, name in [(os, "rename"), (os, "replace"), (os, "unlink"), (os, "rmdir"),
                        (shutil, "rmtree"), (pathlib.Path, "rename"), (pathlib.Path, "unlink")]:  # fmt: skip
        wrap(owner, name)
    return calls


def test_replacing_our_cache_leaves_the_old_or_the_new_one_at_every_step(
    tiny_gpt2, tmp_path, monkeypatch
):
    from training.activation_cache import write_activation_cache
    from training.data import load_token_data

    data = load_token_data(tiny_gpt2, [TEXT], 16)
    hooks = ["blocks.0.hook_mlp_out"]
    out = tmp_path / "acts"

    def write(tokens: int, folder: Path = out) -> None:
        write_activation_cache(
            tiny_gpt2, data, hooks, folder, dtype="float32", n_shards=2, max_tokens=tokens,
            verbose=False,
        )  # fmt: skip

    write(300, tmp_path / "new")
    new = _complete_cache(tmp_path / "new")
    write(150)
    old = _complete_cache(out)
    n = 1
    while True:
        with monkeypatch.context() as m:
            calls = _kill_at(m, n)
            try:
                write(300)
                killed = False
            except _Killed:
                killed = True
        assert _complete_cache(out) in (old, new), f"killed at file-system step {n}"
        if not killed:
            break
        shutil.rmtree(out)  # start the next trial from the old cache again
        shutil.copytree(tmp_path / "old_copy", out) if (tmp_path / "old_copy").exists() else None
        if not (tmp_path / "old_copy").exists():
            write(150)
            shutil.copytree(out, tmp_path / "old_copy")
        n += 1
    assert calls[0] > 2 and _complete_cache(out) == new


# ---- item 2: disk full ------------------------------------------------------------------------
_FILE_SIZE_LIMIT = textwrap.dedent(
    """
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    import sparse_circuits_cli
    sys.exit(sparse_circuits_cli.main(sys.argv[2:]))
    """
)


def test_a_full_disk_ends_in_one_line_and_keeps_the_old_cache(
    tiny_gpt2_dir, text, tmp_path, capsys
):
    out = tmp_path / "acts"
    code, output = _run(_cache_argv(tiny_gpt2_dir, text, out, 150), capsys)
    assert code == 0, output
    old = _complete_cache(out)
    # shards of 3000 tokens x 32 float32 values: about 190 KB each, past a 64 KB limit
    argv = _cache_argv(tiny_gpt2_dir, text, out, 6000)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _FILE_SIZE_LIMIT, str(64 << 10), *argv],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("sparse-circuits cache: error:"), proc.stderr
    assert "Traceback" not in proc.stderr and str(out) in lines[0]
    assert _complete_cache(out) == old  # the old cache is whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acts"]  # no partial folder left


def test_too_little_free_space_is_refused_before_the_work(
    tiny_gpt2_dir, text, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "acts"
    code, output = _run(_cache_argv(tiny_gpt2_dir, text, out, 150), capsys)
    assert code == 0, output
    old = _complete_cache(out)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=50_000))
    code, output = _run(_cache_argv(tiny_gpt2_dir, text, out, 6000), capsys)
    assert code == 1, output
    assert "needs about" in output and "free on that disk" in output, output
    assert _complete_cache(out) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acts"]


# ---- item 3: one writer per folder --------------------------------------------------------------
def test_a_second_train_into_a_running_ones_folder_is_refused_and_a_killed_one_resumes(
    tiny_gpt2_dir, text, tmp_path, capsys
):
    out = tmp_path / "run"
    train = [
        "train", "--model", str(tiny_gpt2_dir), "--data", str(text), "--layers", "0",
        "--n-features", "16", "--k", "4", "--ctx-len", "16", "--batch-tokens", "64",
        "--buffer-tokens", "256", "--val-tokens", "64", "--checkpoint-every", "1",
        "--quiet", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "sparse_circuits_cli", *train, "--tokens", "2e6"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.time() + 90
        while not (out / "checkpoint.pt").exists():  # it is training
            assert first.poll() is None and time.time() < deadline, first.stderr.read()
            time.sleep(0.1)
        code, output = _run([*train, "--tokens", "2e6", "--stop-after-steps", "1"], capsys)
        assert code == 1, output
        assert f"is in use by another sparse-circuits run (pid {first.pid})" in output
        metrics = out / "metrics.jsonl"  # one writer: the first run's lines, in order
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        assert [json.loads(ln)["step"] for ln in lines] == [10 * (i + 1) for i in range(len(lines))]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the dead run's lock does not block the rerun, which resumes from its checkpoint
    step = __import__("torch").load(out / "checkpoint.pt", weights_only=False)["step"]
    again = [*train, "--tokens", "2e6", "--stop-after-steps", str(step + 2)]
    code, output = _run(again, capsys)
    assert code == 0 and f"stopped after step {step + 2}" in output, output
    logged = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1] == step + 2


# ---- item 5: pairs are pairs --------------------------------------------------------------------
def test_an_atlas_pair_from_two_saves_is_refused(tmp_path):
    from replacement.atlas import FeatureAtlas
    from replacement.atlas.lookup import shipped_atlas_path
    from replacement.errors import SparseCircuitsError

    atlas = FeatureAtlas.load(shipped_atlas_path("sae_local"))
    atlas.save(tmp_path / "a")
    atlas.save(tmp_path / "b")  # the same content, another save
    FeatureAtlas.load(tmp_path / "a")
    shutil.copy(tmp_path / "b" / "atlas.safetensors", tmp_path / "a" / "atlas.safetensors")
    with pytest.raises(SparseCircuitsError, match="were written by different saves"):
        FeatureAtlas.load(tmp_path / "a")
    # a tensors file changed after it was written (the pair id kept) fails its checksum
    atlas.save(tmp_path / "c")
    path = tmp_path / "c" / "atlas.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(SparseCircuitsError, match="does not match the checksum"):
        FeatureAtlas.load(tmp_path / "c")


def test_out_dot_replaces_files_in_place_and_the_shell_stays_in_its_folder(tmp_path, monkeypatch):
    from replacement.output_folder import OutputFolder

    out = tmp_path / "here"
    out.mkdir()
    monkeypatch.chdir(out)
    for content in ("1", "2"):
        with OutputFolder(".", command="test") as folder:
            (folder.stage() / "result.txt").write_text(content)
            folder.commit()
    assert Path.cwd() == out and (out / "result.txt").read_text() == "2"
    assert Path(".").resolve() == out and Path("result.txt").read_text() == "2"


def test_a_failed_tensor_write_is_one_line_not_a_bug_report(monkeypatch, capsys):
    """safetensors reports a full disk as SafetensorError, not OSError (the fault benchmark met
    it in `features` under a file-size limit): still one error line, exit 1."""
    import argparse

    from safetensors import SafetensorError

    import sparse_circuits_cli

    def failing(args):
        raise SafetensorError("Error while serializing: I/O error: File too large (os error 27)")

    parser = argparse.ArgumentParser()
    parser.add_subparsers(dest="command").add_parser("features").set_defaults(func=failing)
    monkeypatch.setattr(sparse_circuits_cli, "build_parser", lambda: parser)
    assert sparse_circuits_cli.main(["features"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "writing a tensor file failed" in err[0] and "unexpected" not in err[0]


def test_a_checkpoint_cut_short_is_a_disk_error(tmp_path, monkeypatch):
    """torch.save reports a short write as a RuntimeError of its zip writer (the fault
    benchmark met it in `train` under a file-size limit): it reaches the user as an OSError,
    which the command line prints as one line."""
    import errno

    import torch

    from training.trainer import Trainer

    trainer = Trainer.__new__(Trainer)  # only what save_checkpoint reads
    trainer.out_dir = tmp_path
    trainer.dist = type("Dist", (), {"is_main": True})()
    trainer.checkpoint_state = lambda: {"step": 1}

    def short_write(obj, f):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 3648 vs 3542"
        )

    monkeypatch.setattr(torch, "save", short_write)
    with pytest.raises(OSError) as caught:
        trainer.save_checkpoint()
    assert caught.value.errno == errno.ENOSPC and not (tmp_path / "checkpoint.pt").exists()


def test_a_users_file_named_like_a_temporary_of_ours_is_never_removed(tmp_path):
    """Only tempfile's own names (`.NAME.<8 chars>.tmp`) of listed files count as ours; a
    user's `.result.json.backup-1.tmp` is foreign: refused by name, kept under --overwrite."""
    from replacement.output_folder import OutputFolder, OutputFolderError

    folder = tmp_path / "out"
    with OutputFolder(folder, command="first") as out:
        out.claim(["result.json"])
        (folder / "result.json").write_text("{}")
    mine = folder / ".result.json.backup-1.tmp"
    mine.write_text("keep me")
    with pytest.raises(OutputFolderError, match=r"\.result\.json\.backup-1\.tmp"):
        OutputFolder(folder, command="second").open()
    with OutputFolder(folder, command="third", overwrite=True):
        pass
    assert mine.read_text() == "keep me"
