"""Tasks: built-in code tasks, classic templates, user tasks from dicts / JSON / YAML."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from analysis.classic_tasks import (
    NAMES,
    NOUNS,
    agreement_task,
    greater_than_task,
    ioi_task,
)
from analysis.code_tasks import code_tasks, default_tasks
from analysis.tasks import (
    TaskError,
    load_task,
    metric_values,
    prompt_metric,
    task_accuracy,
    task_from_dicts,
    tokenize_task,
)

# GPT-2-like pieces: an optional leading space and a word, two digits, or punctuation
_PIECES = r" ?[A-Za-z_]+| ?\d\d| ?\d|[^\sA-Za-z\d]+|\s+"


def word_tokenizer(texts: list[str], pattern: str = _PIECES) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is every piece of `texts` (years split in two
    digit pieces, as GPT-2 splits them)."""
    split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    pieces = {"<|endoftext|>": 0}
    for text in texts:
        for piece, _ in split.pre_tokenize_str(text):
            pieces.setdefault(piece, len(pieces))
    tok = Tokenizer(models.WordLevel(pieces, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = split
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


@pytest.fixture(scope="module")
def classic_tokenizer():
    words = [f" {n}" for n in NAMES] + [f" {w}" for pair in NOUNS for w in pair]
    digits = "".join(f"{i:02d}" for i in range(100)) + "".join(f" {c}" for c in range(11, 19))
    filler = (
        "When and went to the store park school office garden station market beach , gave a "
        "drink book ring bag key letter gift ball to After arrived at handed Then had long talk . "
        "The near house car city room table window is are war expedition reign project strike "
        "siege journey treaty lasted from year"
    )
    filler_words = filler.split()
    return word_tokenizer(["".join(words), digits, " ".join(filler_words), *filler_words])


def _check_generated(tokenizer, task, n):
    batch = tokenize_task(tokenizer, task)  # raises on unequal pairs or multi-token answers
    assert len(task) == n
    unknown = tokenizer.unk_token_id
    assert (
        not (batch.clean[:, 1:] == unknown)
        .logical_and(batch.clean[:, 1:] != tokenizer.pad_token_id)
        .any()
        or unknown is None
    )
    for c, x in zip(task.clean, task.corrupt, strict=True):
        ids_c = tokenizer(c, add_special_tokens=False)["input_ids"]
        assert len(ids_c) == len(tokenizer(x, add_special_tokens=False)["input_ids"])
    for answers in (task.answer, task.wrong):
        for entry in answers:
            for text in [entry] if isinstance(entry, str) else entry:
                assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) == 1
    assert all(c != x for c, x in zip(task.clean, task.corrupt, strict=True))
    return batch


def test_classic_templates_on_a_small_tokenizer(classic_tokenizer):
    ioi = ioi_task(classic_tokenizer, n=64)
    _check_generated(classic_tokenizer, ioi, 64)
    assert ioi.answer[0].strip() in ioi.clean[0] and ioi.wrong[0].strip() in ioi.clean[0]
    # the counterfactual swaps the names: its answer is the clean prompt's wrong one
    assert ioi.corrupt[0].split(",")[1].split()[0] == ioi.answer[0].strip()

    gt = greater_than_task(classic_tokenizer, n=64)
    batch = _check_generated(classic_tokenizer, gt, 64)
    assert gt.metric == "prob_diff"
    yy = int(gt.clean[0].split(" to ")[0][-2:])
    assert all(int(a) > yy for a in gt.answer[0]) and all(int(w) <= yy for w in gt.wrong[0])
    assert len(gt.answer[0]) + len(gt.wrong[0]) == 100 - 0  # every two-digit year is one token
    # prob_diff: a distribution on the answers alone gives +1
    logits = torch.full((1, len(classic_tokenizer)), -1e4)
    logits[0, batch.answer[0, batch.answer[0] >= 0]] = 0.0
    assert metric_values(
        logits, batch.answer[:1], batch.wrong[:1], "prob_diff"
    ).item() == pytest.approx(1.0)

    sva = agreement_task(classic_tokenizer, n=64)
    _check_generated(classic_tokenizer, sva, 64)
    assert {sva.answer[0], sva.wrong[0]} == {" is", " are"}


def test_greater_than_refuses_a_tokenizer_that_keeps_years_whole():
    years = " ".join(str(y) for y in range(1100, 1900))
    whole = word_tokenizer(
        [f"The war lasted from the year 17 {years}"], _PIECES.replace(r"\d\d", r"\d+")
    )
    with pytest.raises(TaskError, match="two-digit"):
        greater_than_task(whole, n=8)


def test_code_tasks_have_equal_lengths_single_token_answers_and_measured_accuracy(default_model):
    tasks = code_tasks(default_model.tokenizer, n=64)
    assert len(tasks) >= 5
    for task in tasks:
        batch = _check_generated(default_model.tokenizer, task, 64)
        assert batch.equal_length  # every prompt of a task has one length
        assert len(set(task.clean)) > len(task) // 2  # varied identifiers
    defaults = default_tasks(default_model, n=64)
    assert len(defaults) >= 5
    assert all(t.metadata["accuracy"] >= 0.8 for t in defaults)
    # accuracy counts clean and counterfactual prompts: swapping answers flips it
    task = defaults[0]
    flipped = task_from_dicts(
        "flipped", [{**p, "answer": p["wrong"], "wrong": p["answer"]} for p in task.to_dicts()]
    )
    assert task_accuracy(default_model, flipped) == pytest.approx(1 - task.metadata["accuracy"])


def test_user_tasks_from_dicts_json_and_yaml(tmp_path, default_model):
    pairs = [
        {
            "clean": "import os\n\nx =",
            "corrupt": "import re\n\nx =",
            "answer": " os",
            "wrong": " re",
        },
        {
            "clean": "import re\n\nx =",
            "corrupt": "import os\n\nx =",
            "answer": " re",
            "wrong": " os",
        },
    ]
    task = task_from_dicts("imports", pairs)
    (tmp_path / "t.json").write_text(json.dumps({"name": "imports", "pairs": pairs}))
    import yaml

    (tmp_path / "t.yaml").write_text(yaml.safe_dump(pairs))
    for loaded in (load_task(tmp_path / "t.json"), load_task(tmp_path / "t.yaml")):
        assert loaded.to_dicts() == task.to_dicts()
    batch = tokenize_task(default_model, task)
    values = prompt_metric(default_model, batch)
    with torch.no_grad():
        logits = default_model(batch.clean)[:, -1]
    expected = (
        logits[torch.arange(2), batch.answer[:, 0]] - logits[torch.arange(2), batch.wrong[:, 0]]
    )
    assert torch.allclose(values, expected, atol=1e-4)


def test_bad_tasks_are_refused_with_clear_errors(tmp_path, default_model):
    with pytest.raises(TaskError, match="equal lengths"):
        tokenize_task(
            default_model,
            task_from_dicts(
                "t", [{"clean": "x = 1", "corrupt": "x = 1 + 2", "answer": "\n", "wrong": " +"}]
            ),
        )
    with pytest.raises(TaskError, match="exactly one"):
        tokenize_task(
            default_model,
            task_from_dicts(
                "t",
                [{"clean": "x", "corrupt": "y", "answer": " supercalifragilistic", "wrong": " y"}],
            ),
        )
    with pytest.raises(TaskError, match="missing keys"):
        task_from_dicts("t", [{"clean": "x", "answer": " a", "wrong": " b"}])
    with pytest.raises(TaskError, match="does not exist"):
        load_task(tmp_path / "missing.json")
