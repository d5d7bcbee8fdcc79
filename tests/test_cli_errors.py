"""Every mistake a user can make through the CLI: a named error, a non-zero exit, no traceback.

One table, one row per case found by trying the CLI as a new user (issue 15). Each row runs
`sparse_circuits_cli.main(argv)` in-process (after the `before` commands, which must succeed)
and checks the exit code, a fragment of the message, and that nothing printed a traceback.
Exit codes: 1 for an error found by a check, 2 for an argument argparse refused. Models are
loaded once per path (the tiny random GPT-2 of the tests) so that the whole table runs in
seconds.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

import replacement.model as model_module
import sparse_circuits_cli
from replacement.dictionary import Dictionary
from replacement.formats.native import save_dictionary

TEXT = (
    "def add(a, b):\n    return a + b\n\nclass Stack:\n    def push(self, item):\n        pass\n"
    * 40
)
# a small run on the tiny model: 4 steps of 64 tokens
TRAIN = (
    "train --model {model} --data {text} --layers 0 --n-features 16 --k 4 --ctx-len 16 "
    "--batch-tokens 64 --tokens 256 --buffer-tokens 256 --val-tokens 64 --quiet"
)


def _dictionary_set(folder: Path, width: int) -> Path:
    torch.manual_seed(0)
    for layer in range(2):
        d = Dictionary(
            width,
            width,
            16,
            f"blocks.{layer}.ln2.hook_normalized",
            f"blocks.{layer}.hook_mlp_out",
            "topk",
            activation_params={"k": 4},
        )
        with torch.no_grad():
            for p in d.parameters():
                p.normal_(0, 0.3)
        save_dictionary(d, folder / f"layer_{layer}")
    return folder


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_gpt2_dir):
    """Paths the table's argv templates name."""
    root = tmp_path_factory.mktemp("cli_errors")
    no_tokenizer = root / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((tiny_gpt2_dir / name).read_bytes())
    (root / "text.txt").write_text(TEXT)
    (root / "binary.bin").write_bytes(bytes(range(256)) * 64)
    (root / "existing_file").write_text("not a folder")
    (root / "bad_config.yaml").write_text("layers: [0\nk: 4\n")
    readonly = root / "readonly"
    readonly.mkdir()
    os.chmod(readonly, 0o555)
    return {
        "model": str(tiny_gpt2_dir),
        "no_tokenizer": str(no_tokenizer),
        "dicts": str(_dictionary_set(root / "dicts", 32)),
        "narrow": str(_dictionary_set(root / "narrow", 16)),
        "text": str(root / "text.txt"),
        "binary": str(root / "binary.bin"),
        "file": str(root / "existing_file"),
        "bad_config": str(root / "bad_config.yaml"),
        # root ignores folder permissions; /sys is mounted read-only in containers
        "readonly": str(readonly / "out") if os.geteuid() != 0 else "/sys/sparse_circuits_out",
        "root": str(root),
    }


@pytest.fixture(autouse=True)
def cached_models(monkeypatch):
    """load_model of the real code, but each folder loaded once for the whole module."""
    real = _REAL_LOAD
    monkeypatch.setattr(model_module, "load_model", _cached(real))


_REAL_LOAD = model_module.load_model
_CACHE: dict[str, object] = {}


def _cached(real):
    def load(source="default", device=None, dtype=None, tokenizer=None):
        key = str(Path(str(source)).resolve()) if isinstance(source, (str, Path)) else None
        if key is None or key not in _CACHE:
            model = real(source, device=device, dtype=dtype, tokenizer=tokenizer)
            if key is None:
                return model
            _CACHE[key] = model
        return _CACHE[key]

    return load


def run(argv: str | list[str], env: dict, capsys) -> tuple[int, str]:
    """Exit code and everything printed by `sparse-circuits ARGV`."""
    if isinstance(argv, str):
        argv = [a.format(**env) for a in argv.split()]
    try:
        code = sparse_circuits_cli.main(argv)
    except SystemExit as exc:  # argparse errors and --help
        code = exc.code
    captured = capsys.readouterr()
    return int(code or 0), captured.out + captured.err


# id: (commands that must succeed first, argv, exit code, fragment of the output)
CASES = {
    # ---- silent wrong results before ----
    "grad_clip_negative": (
        [],
        TRAIN + " --grad-clip -1 --out {root}/a",
        1,
        "--grad-clip (grad_clip) must be > 0",
    ),
    "grad_clip_zero": (
        [],
        TRAIN + " --grad-clip 0 --out {root}/a",
        1,
        "--grad-clip (grad_clip) must be > 0",
    ),
    "k_above_n_features": (
        [],
        "train --k 32 --n-features 16",
        1,
        "--k (k)=32 active features per token exceeds --n-features",
    ),
    "warmup_negative": (
        [],
        "train --warmup-steps -5",
        1,
        "--warmup-steps (warmup_steps) must be a number >= 0",
    ),
    "max_sources_negative": (
        [],
        "global --layer-from 0 --layer-to 1 --max-sources -5 --out {root}/g",
        2,
        "argument --max-sources: must be 0 or more",
    ),
    "evaluate_tokens_zero": (
        [],
        "evaluate --dictionaries {dicts} --tokens 0",
        2,
        "argument --tokens: must be at least 1",
    ),
    "evaluate_ctx_len_too_long": (
        [],
        "evaluate --model {model} --dictionaries {dicts} --text {text} --ctx-len 1000 --quiet",
        1,
        "--ctx-len) 1000 exceeds the model's context of 64",
    ),
    "train_ctx_len_too_long": (
        [],
        TRAIN.replace("--ctx-len 16", "--ctx-len 1000") + " --out {root}/ctx",
        1,
        "--ctx-len 1000 exceeds the model's context of 64",
    ),
    "train_binary_data": (
        [],
        "train --data {binary} --out {root}/bin",
        1,
        "--data '{binary}' looks binary",
    ),
    "evaluate_binary_text": (
        [],
        "evaluate --dictionaries {dicts} --text {binary}",
        1,
        "--text '{binary}' looks binary",
    ),
    "model_without_tokenizer": (
        [],
        "evaluate --model {no_tokenizer} --dictionaries {dicts}",
        1,
        "has no tokenizer files",
    ),
    # ---- tracebacks before ----
    "trace_out_is_a_file": ([], "trace x --out {file}", 1, "--out '{file}' is an existing file"),
    "trace_out_read_only": ([], "trace x --out {readonly}", 1, "cannot write into"),
    "node_threshold_zero": (
        [],
        "trace x --node-threshold 0",
        2,
        "argument --node-threshold: must be in (0, 1]",
    ),
    "node_threshold_above_one": (
        [],
        "trace x --node-threshold 1.5",
        2,
        "argument --node-threshold: must be in (0, 1]",
    ),
    "max_n_logits_zero": (
        [],
        "trace x --max-n-logits 0",
        2,
        "argument --max-n-logits: must be at least 1",
    ),
    "evaluate_batch_size_zero": (
        [],
        "evaluate --dictionaries {dicts} --batch-size 0",
        2,
        "argument --batch-size: must be at least 1",
    ),
    "lr_negative": ([], "train --lr -0.001", 1, "--lr (lr) must be > 0"),
    "site_typo": ([], "train --kind sae --site hook_mlp_outt", 1, "did you mean 'hook_mlp_out'"),
    "trace_wrong_width": (
        [],
        "trace x --model {model} --dictionaries {narrow} --out {root}/w --quiet",
        1,
        "d_in=16 does not match hook",
    ),
    "bad_config_file": ([], "train --config {bad_config}", 1, "is not valid"),
    # ---- misleading before ----
    "missing_relative_model_folder": (
        [],
        "evaluate --model no_such_dir --dictionaries {dicts}",
        1,
        "model folder 'no_such_dir' does not exist",
    ),
    "resume_mismatch_names_flag": (
        [TRAIN + " --stop-after-steps 1 --out {root}/r"],
        TRAIN + " --n-features 32 --out {root}/r",
        1,
        "start over with --no-resume",
    ),
    "global_tokens_below_one_sequence": (
        [],
        "global --model {model} --dictionaries {dicts} --layer-from 0 --layer-to 1 --data-weighted --tokens 10 --out {root}/g",
        1,
        "--tokens 10 is less than one sequence of 63 tokens",
    ),
    # ---- help ----
    "help_train_defaults_and_choices": ([], "train --help", 0, "{{cosine,linear,none}}"),
    "help_train_shows_defaults": ([], "train --help", 0, "default: 1024]"),
    "help_evaluate_defaults": (
        [],
        "evaluate --help",
        0,
        "number of sequences per forward pass (default: 8)",
    ),
    "help_trace_counts": (
        [],
        "trace --help",
        0,
        "number of most probable logits traced (default: 10)",
    ),
    "help_info_description": ([], "info --help", 0, "List the model and dictionary sets shipped"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_case(case, env, capsys):
    before, argv, code, fragment = CASES[case]
    for command in before:
        assert run(command, env, capsys)[0] == 0
    got, output = run(argv, env, capsys)
    assert "Traceback" not in output
    assert fragment.format(**env) in output, output
    assert got == code, output
    if code:
        assert len([ln for ln in output.splitlines() if "error" in ln]) == 1, output


def test_relative_data_path_resumes(env, capsys, monkeypatch):
    """`--data ./x` and `--data x` are the same setting: the second run resumes the first."""
    monkeypatch.chdir(env["root"])
    Path("corpus.txt").write_text(TEXT)
    first = TRAIN.replace("{text}", "corpus.txt") + " --stop-after-steps 2 --out rel"
    assert run(first, env, capsys)[0] == 0
    code, output = run(TRAIN.replace("{text}", "./corpus.txt") + " --out rel", env, capsys)
    assert code == 0 and "Traceback" not in output, output
    steps = [json.loads(ln)["step"] for ln in Path("rel/metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 4  # resumed at 2, not restarted


def test_trace_into_earlier_folder_removes_stale_files(env, capsys):
    """A second trace into a folder removes the first one's pruned JSON, nothing else."""
    out = Path(env["root"]) / "trace_twice"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    legacy = {"metadata": {}, "qParams": {}, "nodes": [], "links": []}  # before manifests
    (out / "old-prompt.json").write_text(json.dumps(legacy))
    base = "trace {prompt} --model {model} --dictionaries {dicts} --out " + str(out) + " --quiet"
    assert run(base.replace("{prompt}", "alpha"), env, capsys)[0] == 0
    assert (out / "alpha.json").is_file() and not (out / "old-prompt.json").exists()
    assert run(base.replace("{prompt}", "beta"), env, capsys)[0] == 0
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == [
        "beta.json",
        "graph.html",
        "graph.json",
        "graph.png",
        "graph.safetensors",
        "notes.txt",
    ]


def test_full_disk_gives_one_line(env, capsys, monkeypatch):
    """ENOSPC while writing the report: one line naming the cause, the old report intact."""
    report = Path(env["root"]) / "report.json"
    report.write_text('{"old": true}')
    import replacement.atomic as atomic

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(atomic.os, "replace", full)
    argv = f"evaluate --model {{model}} --dictionaries {{dicts}} --text {{text}} --quiet --out {report}"
    code, output = run(argv, env, capsys)
    assert code == 1 and "Traceback" not in output
    assert f"no space left on the device ({report})" in output
    assert report.read_text() == '{"old": true}'
    assert [p.name for p in report.parent.glob(".report.json*")] == []
