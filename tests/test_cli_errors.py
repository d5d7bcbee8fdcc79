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
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch

import replacement.atomic as atomic
import replacement.model as model_module
import sparse_circuits_cli
from replacement.dictionary import Dictionary
from replacement.formats.native import save_dictionary
from training.trainer import Trainer

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
    (root / "corpus.txt").write_text(TEXT)
    (root / "report.json").write_text('{"old": true}')
    corrupt = _dictionary_set(root / "corrupt", 32)
    (corrupt / "layer_1.safetensors").write_bytes(b"not safetensors")
    stale = root / "earlier_trace"
    stale.mkdir()
    (stale / "notes.txt").write_text("the user's own file")
    legacy = {"metadata": {}, "qParams": {}, "nodes": [], "links": []}  # written before manifests
    (stale / "old-prompt.json").write_text(json.dumps(legacy))
    shutil.copytree(stale, root / "foreign_trace")
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
        "corrupt": str(corrupt),
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
    def load(source="default", device=None, dtype=None, tokenizer=None, **kw):
        # one model per folder and processing ("auto" resolves to what the dictionaries want)
        key = None
        if isinstance(source, (str, Path)):
            key = f"{Path(str(source)).resolve()}|{kw.get('processing', 'auto')}"
            if kw.get("for_dictionaries") is not None:
                from replacement.processing import choose_processing

                key += f"|{choose_processing(kw['for_dictionaries'])}"
        if key is None or key not in _CACHE:
            model = real(source, device=device, dtype=dtype, tokenizer=tokenizer, **kw)
            if key is None:
                return model
            _CACHE[key] = model
        return _CACHE[key]

    return load


def run(argv: str | list[str], env: dict, capsys) -> tuple[int, str]:
    """Exit code and everything printed by `sparse-circuits ARGV`."""
    argv = [a.format(**env) for a in (argv.split() if isinstance(argv, str) else argv)]
    try:
        code = sparse_circuits_cli.main(argv)
    except SystemExit as exc:  # argparse errors and --help
        code = exc.code
    captured = capsys.readouterr()
    return int(code or 0), captured.out + captured.err


class Case(NamedTuple):
    """One mistake: what runs first, the command, and what the user must see."""

    before: list[str]
    """Commands that must succeed first (e.g. a run to resume)."""
    argv: str
    """The command (placeholders name paths of `env`)."""
    code: int
    """Exit code: 1 an error found by a check, 2 refused by argparse, 130 interrupted."""
    fragment: str
    """Part of the printed output."""
    fault: Callable[[Any], None] | None = None
    """Injects a fault, given pytest's monkeypatch."""
    check: Callable[[dict], None] | None = None
    """Further assertions on the files, given env."""


def _full_disk(monkeypatch) -> None:
    def replace(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(atomic.os, "replace", replace)


def _ctrl_c_at_step_1(monkeypatch) -> None:
    original = Trainer._train_step

    def step(self, s):
        if s == 1:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, handled between steps
        return original(self, s)

    monkeypatch.setattr(Trainer, "_train_step", step)


def _steps_logged(env: dict, run_dir: str) -> list[int]:
    lines = (Path(env["root"]) / run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def _resumed_at_2(env: dict) -> None:
    # logged at each run's last step; a restart would have cleared the first run's line
    assert _steps_logged(env, "rel") == [2, 4]


def _report_intact(env: dict) -> None:
    assert (Path(env["root"]) / "report.json").read_text() == '{"old": true}'
    assert not list(Path(env["root"]).glob(".report.json*"))  # no temporary left


def _only_new_trace_files(env: dict) -> None:
    folder = Path(env["root"]) / "earlier_trace"
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    files = ["beta.json", "graph.html", "graph.json", "graph.png", "graph.safetensors"]
    # alpha.json (ours) is gone; the user's notes and a graph JSON of another tool are kept
    assert names == sorted([*files, "notes.txt", "old-prompt.json"])


def _foreign_trace_untouched(env: dict) -> None:
    folder = Path(env["root"]) / "foreign_trace"
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "old-prompt.json"]


def _nothing_trained(env: dict) -> None:
    folder = Path(env["root"]) / "foreign_cache"
    assert not folder.exists() or not list(folder.glob("*.safetensors"))


TRACE_TINY = (
    "trace {prompt} --model {{model}} --dictionaries {{dicts}} --out {{root}}/earlier_trace "
    "--quiet --overwrite"
)
# fmt: off
CASES = {
    # ---- silent wrong results before ----
    "grad_clip_negative": Case([], TRAIN + " --grad-clip -1 --out {root}/a", 1, "--grad-clip (grad_clip) must be > 0"),
    "grad_clip_zero": Case([], TRAIN + " --grad-clip 0 --out {root}/a", 1, "--grad-clip (grad_clip) must be > 0"),
    "k_above_n_features": Case([], "train --k 32 --n-features 16", 1, "--k (k)=32 active features per token exceeds --n-features"),
    "warmup_negative": Case([], "train --warmup-steps -5", 1, "--warmup-steps (warmup_steps) must be a number >= 0"),
    "max_sources_negative": Case([], "global --layer-from 0 --layer-to 1 --max-sources -5 --out {root}/g", 2, "argument --max-sources: must be 0 or more"),
    "evaluate_tokens_zero": Case([], "evaluate --dictionaries {dicts} --tokens 0", 2, "argument --tokens: must be at least 1"),
    "evaluate_ctx_len_too_long": Case([], "evaluate --model {model} --dictionaries {dicts} --text {text} --ctx-len 1000 --quiet", 1, "--ctx-len) 1000 exceeds the model's context of 64"),
    "train_ctx_len_too_long": Case([], TRAIN.replace("--ctx-len 16", "--ctx-len 1000") + " --out {root}/ctx", 1, "--ctx-len 1000 exceeds the model's context of 64"),
    "train_binary_data": Case([], "train --data {binary} --out {root}/bin", 1, "--data '{binary}' looks binary"),
    "evaluate_binary_text": Case([], "evaluate --dictionaries {dicts} --text {binary}", 1, "--text '{binary}' looks binary"),
    "model_without_tokenizer": Case([], "evaluate --model {no_tokenizer} --dictionaries {dicts}", 1, "has no tokenizer files"),
    # ---- tracebacks before ----
    "trace_out_is_a_file": Case([], "trace x --out {file}", 1, "--out '{file}' is an existing file"),
    "trace_out_read_only": Case([], "trace x --out {readonly}", 1, "cannot write into"),
    "node_threshold_zero": Case([], "trace x --node-threshold 0", 2, "argument --node-threshold: must be in (0, 1]"),
    "node_threshold_above_one": Case([], "trace x --node-threshold 1.5", 2, "argument --node-threshold: must be in (0, 1]"),
    "max_n_logits_zero": Case([], "trace x --max-n-logits 0", 2, "argument --max-n-logits: must be at least 1"),
    "evaluate_batch_size_zero": Case([], "evaluate --dictionaries {dicts} --batch-size 0", 2, "argument --batch-size: must be at least 1"),
    "lr_negative": Case([], "train --lr -0.001", 1, "--lr (lr) must be > 0"),
    "site_typo": Case([], "train --kind sae --site hook_mlp_outt", 1, "did you mean 'hook_mlp_out'"),
    "trace_wrong_width": Case([], "trace x --model {model} --dictionaries {narrow} --out {root}/w --quiet", 1, "d_in=16 does not match hook"),
    "ctrl_c_in_train": Case([], TRAIN + " --out {root}/interrupted", 130, "resume with: sparse-circuits train --model", fault=_ctrl_c_at_step_1),
    # ---- misleading before ----
    "missing_relative_model_folder": Case([], "evaluate --model no_such_dir --dictionaries {dicts}", 1, "model folder 'no_such_dir' does not exist"),
    "resume_mismatch_names_flag": Case([TRAIN + " --stop-after-steps 1 --out {root}/r"], TRAIN + " --n-features 32 --out {root}/r", 1, "start over with --no-resume"),
    "relative_data_path_is_the_same": Case([TRAIN.replace("{text}", "corpus.txt") + " --stop-after-steps 2 --out rel"], TRAIN.replace("{text}", "./corpus.txt") + " --out rel", 0, "trained 1 dictionaries", check=_resumed_at_2),
    "global_tokens_below_one_sequence": Case([], "global --model {model} --dictionaries {dicts} --layer-from 0 --layer-to 1 --data-weighted --tokens 10 --out {root}/g", 1, "--tokens 10 is less than one sequence of 63 tokens"),
    "trace_into_foreign_folder": Case([], TRACE_TINY.format(prompt="alpha").replace(" --overwrite", "").replace("earlier_trace", "foreign_trace"), 1, "holds files sparse-circuits did not write ('notes.txt', 'old-prompt.json')", check=_foreign_trace_untouched),
    "trace_into_earlier_folder": Case([TRACE_TINY.format(prompt="alpha")], TRACE_TINY.format(prompt="beta"), 0, "replacement score", check=_only_new_trace_files),
    # ---- help ----
    "help_train_choices": Case([], "train --help", 0, "{{cosine,linear,none}}"),
    "help_train_defaults": Case([], "train --help", 0, "default: 1024]"),
    "help_evaluate_defaults": Case([], "evaluate --help", 0, "number of sequences per forward pass (default: 8)"),
    "help_trace_counts": Case([], "trace --help", 0, "number of most probable logits traced (default: 10)"),
    "help_info_description": Case([], "info --help", 0, "List the model and dictionary sets shipped"),
    # ---- more found while fixing these ----
    "full_disk": Case([], "evaluate --model {model} --dictionaries {dicts} --text {text} --quiet --no-per-layer --out {root}/report.json", 1, "no space left on the device ({root}/report.json)", fault=_full_disk, check=_report_intact),
    "bad_config_file": Case([], "train --config {bad_config}", 1, "is not valid"),
    "corrupt_dictionary_file": Case([], "evaluate --model {model} --dictionaries {corrupt} --text {text}", 1, "layer_1.safetensors' is not a valid safetensors file"),
    "missing_dictionaries": Case([], "trace x --dictionaries {root}/nothing", 1, "dictionary location '{root}/nothing' does not exist"),
    "unknown_device": Case([], "evaluate --dictionaries {dicts} --device banana", 1, "--device 'banana' is not a torch device"),
    "slug_with_a_path": Case([], "trace x --slug ../evil", 1, "--slug '../evil' is not a file name"),
    "cache_of_another_model": Case(["cache --model default --data {text} --layers 0 --tokens 200 --ctx-len 16 --out {root}/acts_default --quiet"], TRAIN + " --activations {root}/acts_default --out {root}/foreign_cache", 1, "holds activations of model 'sparse-circuits-default', not of", check=_nothing_trained),
    "train_ctx_len_not_the_caches": Case(["cache --model {model} --data {text} --layers 0 --tokens 200 --ctx-len 16 --out {root}/acts_tiny --quiet"], TRAIN.replace("--ctx-len 16", "--ctx-len 32") + " --activations {root}/acts_tiny --out {root}/ctx_cache", 1, "--ctx-len 32 differs from the ctx_len 16"),
    "empty_prompt": Case([], ["trace", "", "--model", "{model}", "--dictionaries", "{dicts}", "--out", "{root}/e"], 1, "needs at least one token after BOS"),
}
# fmt: on


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_case(case, env, capsys, monkeypatch):
    c = CASES[case]
    monkeypatch.chdir(env["root"])
    for command in c.before:
        code, output = run(command, env, capsys)
        assert code == 0, output
    if c.fault:
        c.fault(monkeypatch)
    got, output = run(c.argv, env, capsys)
    assert "Traceback" not in output
    assert c.fragment.format(**env) in output, output
    assert got == c.code, output
    if c.code:
        lines = [ln for ln in output.splitlines() if ln.startswith("sparse-circuits ")]
        assert len(lines) == (2 if c.code == 130 else 1), output  # one line (and the resume hint)
    if c.check:
        c.check(env)


# ---- every subcommand x flag at bad values (issue 25) -----------------------------------------
# Each subcommand runs from a valid, cheap base command with one flag replaced by a bad value.
# Kinds: "0", "neg", "huge", "type" (wrong type), "missing" (a path that does not exist),
# "file" (a file where a folder is expected), "folder" (a folder where a file is expected),
# "foreign" (a path of the right kind holding something else), "choice" (not one of the
# choices). Each must end in one named error line, before any work (under 5 s; the tiny
# model is loaded once per module), never "unexpected error" or a traceback.
SWEEP_BASE = {
    "evaluate": "evaluate --model {model} --dictionaries {dicts} --text {text} --quiet",
    "features": "features --model {model} --dictionaries {dicts} --ctx-len 16 --out {root}/feat --quiet",
    "cache": "cache --model {model} --data {text} --tokens 64 --ctx-len 16 --out {root}/acts --quiet",
    "train": TRAIN + " --out {root}/sweep_train",
    "trace": "trace hello --model {model} --dictionaries {dicts} --out {root}/tr --quiet",
    "global": "global --model {model} --dictionaries {dicts} --layer-from 0 --layer-to 1 --out {root}/gl",
    "compare": "compare --model {model} --sets {dicts} --task-file {task} --pairs 2 --out {root}/cmp --quiet",
    "train-default-model": "train-default-model --out {root}/tdm --stage finish --data {empty_dir} --quiet",
    "interpret": "interpret --model {model} --dictionaries {dicts} --fit-corpus {text} "
    "--score-corpus {text} --fit-tokens 64 --no-controls --no-neurons --out {root}/interp --quiet",
    "claims": "claims --out {root}/claims --quiet",
}
BAD_VALUES = {
    "0": "0",
    "neg": "-3",
    "type": "abc",
    "huge": "1e9",
    "missing": "{root}/no/such/path",
    "file": "{file}",
    "folder": "{root}",
    "choice": "banana",
}
NUMBERS = ("0", "neg", "type")
# fmt: off
SWEEP = {
    "evaluate": {
        "--tokens": NUMBERS, "--ctx-len": (*NUMBERS, "huge"), "--batch-size": NUMBERS,
        "--dictionaries": ("missing", "file", "foreign_dir", "foreign_json"),
        "--text": ("missing", "folder", "binary"),
        "--token-file": ("missing", "folder", "foreign_pt", "float_pt"),
        "--model": ("missing", "file", "foreign_dir"), "--device": ("choice",),
        "--out": ("folder", "under_file"), "--conventions": ("choice",), "--processing": ("choice",),
    },
    "features": {
        "--max-tokens": NUMBERS, "--ctx-len": (*NUMBERS, "huge"), "--top": NUMBERS,
        "--seed": ("neg", "type"), "--corpus": ("missing", "binary", "foreign_pt", "empty_dir"),
        "--dictionaries": ("missing", "foreign_dir", "foreign_json"), "--out": ("file",),
        "--model": ("missing",),
    },
    "cache": {
        "--tokens": NUMBERS, "--ctx-len": (*NUMBERS, "huge"), "--shards": NUMBERS,
        "--layers": ("neg", "type", "huge", "big_range"), "--sites": ("choice",),
        "--hooks": ("choice",), "--data": ("missing", "binary", "empty_dir"),
        "--dtype": ("choice",), "--device": ("choice",), "--out": ("file",), "--model": ("missing",),
    },
    "train": {
        "--n-features": NUMBERS, "--k": (*NUMBERS, "huge"), "--lr": NUMBERS,
        "--warmup-steps": ("neg", "type", "huge"), "--batch-tokens": NUMBERS, "--tokens": NUMBERS,
        "--ctx-len": (*NUMBERS, "huge"), "--buffer-tokens": NUMBERS, "--val-tokens": ("neg", "type"),
        "--seed": ("neg", "type"), "--checkpoint-every": ("neg", "type"),
        "--stop-after-steps": NUMBERS, "--grad-clip": NUMBERS, "--l1-coefficient": ("neg", "type"),
        "--dead-after-tokens": NUMBERS,
        "--l0-coefficient": ("neg", "type"),
        "--kl-coefficient": ("neg", "type"),
        "--downstream-coefficient": ("neg", "type"),
        "--aux-k-coefficient": ("neg", "type"),
        "--site": ("choice",), "--layers": ("neg", "type", "huge"),
        "--data": ("missing", "binary", "empty_dir"),
        "--activations": ("missing", "file", "foreign_dir"), "--config": ("missing", "foreign_yaml"),
        "--kind": ("choice",), "--activation": ("choice",), "--objective": ("choice",),
        "--decay": ("choice",), "--device": ("choice",), "--out": ("file",),
        "--sweep": ("missing", "foreign_yaml"), "--model": ("missing",),
    },
    "trace": {
        "--max-feature-nodes": ("neg", "type"), "--max-n-logits": NUMBERS,
        "--desired-logit-prob": (*NUMBERS, "huge"), "--node-threshold": (*NUMBERS, "huge"),
        "--edge-threshold": (*NUMBERS, "huge"), "--batch-size": NUMBERS,
        "--top-features": ("neg", "type"), "--atlas": ("missing", "foreign_json"),
        "--dictionaries": ("missing", "foreign_dir"), "--out": ("file",), "--slug": ("path",),
        "--model": ("missing", "foreign_dir"), "prompt": ("long",), "--compare": ("choice", "missing"),
    },
    "global": {
        "--layer-from": ("neg", "type", "huge"), "--layer-to": ("neg", "type", "huge"),
        "--top-k": NUMBERS, "--tokens": NUMBERS, "--max-sources": ("neg", "type"),
        "--norm": ("choice",), "--dictionaries": ("missing", "foreign_dir"), "--out": ("file",),
        "--model": ("missing",),
    },
    "compare": {
        "--pairs": NUMBERS, "--graph-prompts": ("neg", "type"), "--loss-rows": ("neg", "type"),
        "--threads": ("neg", "type"),
        "--task-file": ("missing", "folder", "foreign_yaml", "boolean_answers"),
        "--sets": ("missing", "foreign_dir"), "--out": ("file",),
        "--results": ("missing", "foreign_json"), "--sweep": ("missing", "foreign_json"),
        "--tasks": ("choice",),
        "--method": ("choice",), "--ablation": ("choice",), "--circuit": ("choice",),
        "--model": ("missing",), "--currency": ("choice",), "--baselines": ("choice",),
        "--heldout": (*NUMBERS, "huge"), "--compare-rankings": ("neg", "type"),
        "--ig-steps": NUMBERS, "--bootstrap": NUMBERS, "--seed": ("neg", "type"),
        "--interpretability": ("missing", "foreign_json"),
    },
    "train-default-model": {
        "--tokens": NUMBERS, "--batch-size": NUMBERS, "--lr": NUMBERS, "--vocab-size": NUMBERS,
        "--seed": ("neg", "type"), "--device": ("choice",), "--out": ("file",),
        "--data": ("missing", "file"), "--stage": ("choice",),
    },
    "interpret": {
        "--dictionaries": ("missing", "foreign_dir"), "--out": ("file",), "--model": ("missing",),
        "--fit-corpus": ("missing", "binary"), "--score-corpus": ("missing", "binary"),
        "--fit-tokens": NUMBERS, "--score-tokens": NUMBERS, "--ctx": NUMBERS,
        "--labeller": ("choice",), "--fit-labels": ("missing",), "--score-labels": ("missing",),
        "--max-atoms": NUMBERS, "--atlas-out": ("file",), "--seed": ("neg", "type"),
        "--threads": ("neg", "type"),
    },
    "claims": {
        "--claims": ("choice",), "--points": ("choice",), "--layer": ("neg", "type"),
        "--seeds": NUMBERS,
        "--start-tokens": NUMBERS, "--cap-tokens": NUMBERS, "--tolerance": (*NUMBERS, "huge"),
        "--floor": ("neg", "type", "huge"),
        "--tune-tokens": NUMBERS, "--eval-tokens": NUMBERS, "--n-chunks": NUMBERS,
        "--n-features": NUMBERS, "--device": ("choice",), "--out": ("file",),
        "--activation-cache": ("choice",), "--merge": ("missing", "folder", "foreign_json", "file"),
        "--export": ("folder", "under_file"), "--rows": ("missing", "folder", "foreign_json"),
        "--together": NUMBERS, "--up-to": NUMBERS,
    },
}
# fmt: on
SWEEP_SPECIAL = {  # values of kinds that depend on the flag
    "huge": {
        "--ctx-len": "100000",
        "--k": "100000",
        "--warmup-steps": "100000",
        "--layers": "99",
        "--layer-from": "99",
        "--layer-to": "99",
        "--desired-logit-prob": "2",
        "--node-threshold": "2",
        "--edge-threshold": "2",
    },
    "choice": {"--sites": "hook_nope", "--hooks": "blocks.0.hook_nope"},
}
SWEEP_CASES = [
    (cmd, flag, kind)
    for cmd, flags in SWEEP.items()
    for flag, kinds in flags.items()
    for kind in kinds
]


@pytest.fixture(scope="module")
def sweep_env(env):
    """Paths of the kinds the sweep needs, beside the table's."""
    import numpy as np

    root = Path(env["root"])
    foreign = root / "foreign_dir"
    foreign.mkdir(exist_ok=True)
    (foreign / "photo.txt").write_text("not ours")
    (root / "empty_dir").mkdir(exist_ok=True)
    (root / "foreign.json").write_text('{"nodes": [1, 2], "hello": "world"}')
    (root / "foreign.yaml").write_text("just: [a, mapping\n")
    (root / "foreign.pt").write_text("this is text, not a tensor")
    torch.save(torch.rand(2, 8), root / "float.pt")
    (root / "task.yaml").write_text(
        "- {clean: 'x = 1', corrupt: 'x = 2', answer: ' a', wrong: ' b'}\n"
    )
    (root / "bool_task.yaml").write_text(
        "- {clean: 'x = 1', corrupt: 'x = 2', answer: true, wrong: false}\n"
    )
    np.save(root / "unused.npy", np.zeros(3))
    return {
        **env,
        "foreign_dir": str(foreign),
        "foreign_json": str(root / "foreign.json"),
        "foreign_yaml": str(root / "foreign.yaml"),
        "foreign_pt": str(root / "foreign.pt"),
        "float_pt": str(root / "float.pt"),
        "empty_dir": str(root / "empty_dir"),
        "task": str(root / "task.yaml"),
        "boolean_answers": str(root / "bool_task.yaml"),
    }


def _bad_value(flag: str, kind: str, env: dict) -> str:
    special = {
        "under_file": "{file}/report.json",
        "big_range": "0-99999999",
        "path": "../evil",
        "long": "x " * 400,
    }
    if kind in env:
        return env[kind]
    value = SWEEP_SPECIAL.get(kind, {}).get(flag) or special.get(kind) or BAD_VALUES[kind]
    return value.format(**env)


def _sweep_argv(cmd: str, flag: str, kind: str, env: dict) -> list[str]:
    base = [a.format(**env) for a in SWEEP_BASE[cmd].split()]
    value = _bad_value(flag, kind, env)
    if flag == "prompt":
        return [cmd, value, *base[2:]]
    if flag in base:  # replace the base's value
        i = base.index(flag)
        return [*base[:i], flag, value, *base[i + 2 :]]
    if flag == "--token-file":  # one source only
        i = base.index("--text")
        base = base[:i] + base[i + 2 :]
    return [*base, flag, value]


def test_sweep_covers_every_flag_of_every_subcommand():
    import argparse

    parser = sparse_circuits_cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    switches = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction)
    for name, p in sub.choices.items():
        flags = {
            a.option_strings[0] if a.option_strings else a.dest
            for a in p._actions
            if not isinstance(a, switches)  # on/off switches take no value to get wrong
        }
        assert flags <= set(SWEEP.get(name, {})), (name, sorted(flags - set(SWEEP.get(name, {}))))
    assert len(SWEEP_CASES) >= 200


@pytest.mark.parametrize(
    "cmd,flag,kind", SWEEP_CASES, ids=[f"{c}{f}={k}" for c, f, k in SWEEP_CASES]
)
def test_every_bad_flag_is_named_before_work(cmd, flag, kind, sweep_env, capsys, monkeypatch):
    import time

    monkeypatch.chdir(sweep_env["root"])
    argv = _sweep_argv(cmd, flag, kind, sweep_env)
    start = time.perf_counter()
    try:
        code = sparse_circuits_cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    seconds = time.perf_counter() - start
    captured = capsys.readouterr()
    output = captured.out + captured.err
    errors = [
        ln for ln in captured.err.splitlines() if ln.startswith(f"sparse-circuits {cmd}: error")
    ]
    assert code in (1, 2), output
    assert "Traceback" not in output and "unexpected error" not in output, output
    assert len(errors) == 1, output
    value = _bad_value(flag, kind, sweep_env)
    named = (
        flag in errors[0]
        or value.strip() in errors[0]
        or flag.lstrip("-") in errors[0]
        or flag.lstrip("-").replace("-", "_") in errors[0]
    )
    assert named, errors[0]
    assert seconds < 5, f"{seconds:.1f} s: work started before the check"
