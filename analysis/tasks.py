"""Prompt tasks with a metric: clean and counterfactual prompts, answer and wrong tokens.

A task is a list of pairs. Each pair has a clean prompt and a counterfactual prompt of the
same token length, the answer the clean prompt should get and the one the counterfactual
prompt should get instead. The metric, read at the last position, is by default

    m = logit(answer) - logit(wrong)          ("logit_diff")

or, for answers that are sets of tokens (greater-than), sum p(answers) - sum p(wrong)
("prob_diff"). Users build tasks from a list of dicts, a JSON or a YAML file:

    [{"clean": "...", "corrupt": "...", "answer": " x", "wrong": " y"}, ...]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from replacement.errors import SparseCircuitsError

METRICS = ("logit_diff", "prob_diff")


class TaskError(SparseCircuitsError):
    """A task whose prompts, answers or metric do not fit the model or each other."""


Answer = str | Sequence[str]
"""One token (text or id), or a set of them (for prob_diff, or a mean logit)."""


@dataclass
class Task:
    """Clean and counterfactual prompts with the tokens that tell them apart."""

    name: str
    """Short name used in reports."""
    clean: list[str]
    """Clean prompts (text without BOS; BOS is prepended when tokenized)."""
    corrupt: list[str]
    """Counterfactual prompts, each the same token length as its clean prompt."""
    answer: list[Answer]
    """What each clean prompt should predict next (a single token or a set of tokens)."""
    wrong: list[Answer]
    """What each counterfactual prompt should predict instead."""
    metric: str = "logit_diff"
    """logit_diff: mean logit of answer minus of wrong; prob_diff: sum of p, same sign."""
    description: str = ""
    """One line for reports."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Anything else (accuracy on a model, template)."""

    def __post_init__(self) -> None:
        n = len(self.clean)
        for label in ("corrupt", "answer", "wrong"):
            if len(getattr(self, label)) != n:
                raise TaskError(
                    f"task {self.name!r} has {n} clean prompts but {len(getattr(self, label))} "
                    f"{label} entries; expected one per clean prompt"
                )
        if n == 0:
            raise TaskError(f"task {self.name!r} has no prompts")
        for label in ("answer", "wrong"):
            for i, value in enumerate(getattr(self, label)):
                items = [value] if isinstance(value, str) else value
                if not isinstance(items, (list, tuple)) or not all(
                    isinstance(v, str) for v in items
                ):
                    raise TaskError(
                        f"task {self.name!r} pair {i}: {label} {value!r} is "
                        f"{type(value).__name__}; answers are text (the token as a string, "
                        'e.g. " true", or a list of such strings), never token ids; quote '
                        "numbers and true/false in JSON or YAML"
                    )
        if self.metric not in METRICS:
            raise TaskError(
                f"task {self.name!r}: metric {self.metric!r} is unknown; expected one of {METRICS}"
            )

    def __len__(self) -> int:
        return len(self.clean)

    def subset(self, n: int) -> Task:
        """The first `n` pairs (a quicker task)."""
        return Task(
            self.name,
            self.clean[:n],
            self.corrupt[:n],
            self.answer[:n],
            self.wrong[:n],
            self.metric,
            self.description,
            dict(self.metadata),
        )

    def to_dicts(self) -> list[dict[str, Any]]:
        """The pairs as dicts (the format `task_from_dicts` reads)."""
        return [
            {"clean": c, "corrupt": x, "answer": a, "wrong": w}
            for c, x, a, w in zip(self.clean, self.corrupt, self.answer, self.wrong, strict=True)
        ]


@dataclass
class TaskBatch:
    """A task tokenized for one model: right-padded prompts and padded answer-id sets."""

    clean: Int[Tensor, "n pos"]
    """Clean prompts with BOS, right-padded."""
    corrupt: Int[Tensor, "n pos"]
    """Counterfactual prompts, aligned with `clean` position by position."""
    last: Int[Tensor, " n"]
    """Index of each prompt's last token (where the metric is read)."""
    answer: Int[Tensor, "n a"]
    """Answer ids of each clean prompt, padded with -1."""
    wrong: Int[Tensor, "n w"]
    """Counterfactual answer ids, padded with -1."""
    metric: str
    """The task's metric name."""

    @property
    def equal_length(self) -> bool:
        """Whether every prompt has the same length (positions then align across prompts)."""
        return bool((self.last == self.last[0]).all())

    def rows(self, sl: slice) -> TaskBatch:
        """Prompts `sl` of the batch."""
        return TaskBatch(
            self.clean[sl],
            self.corrupt[sl],
            self.last[sl],
            self.answer[sl],
            self.wrong[sl],
            self.metric,
        )

    def to(self, device: torch.device | str) -> TaskBatch:
        """The batch on `device`."""
        return TaskBatch(
            self.clean.to(device),
            self.corrupt.to(device),
            self.last.to(device),
            self.answer.to(device),
            self.wrong.to(device),
            self.metric,
        )


def _token_ids(tokenizer: Any, value: Answer, where: str) -> list[int]:
    """Ids of one answer entry: each text must be exactly one token."""
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise TaskError(f"{where}: an empty answer set; expected at least one token")
    ids = []
    for item in items:
        enc = tokenizer(item, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise TaskError(
                f"{where}: answer {item!r} is {len(enc)} tokens for this tokenizer; expected "
                "exactly one (mind the leading space)"
            )
        ids.append(int(enc[0]))
    return ids


def _pad(rows: list[list[int]], value: int) -> Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def tokenize_task(model_or_tokenizer: Any, task: Task, n_ctx: int | None = None) -> TaskBatch:
    """Tokenize a task, checking equal pair lengths, single-token answers and the context.

    Raises:
        TaskError: a counterfactual prompt whose token length differs from its clean prompt,
            an answer that is not one token, or a prompt longer than the context.
    """
    tokenizer = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    if n_ctx is None and hasattr(model_or_tokenizer, "cfg"):
        n_ctx = int(model_or_tokenizer.cfg.n_ctx)
    bos = tokenizer.bos_token_id
    if bos is None:
        raise TaskError("the tokenizer has no BOS token; tasks prepend BOS to every prompt")
    clean_rows, corrupt_rows, answers, wrongs = [], [], [], []
    for i, (c, x) in enumerate(zip(task.clean, task.corrupt, strict=True)):
        c_ids = [bos, *tokenizer(c, add_special_tokens=False)["input_ids"]]
        x_ids = [bos, *tokenizer(x, add_special_tokens=False)["input_ids"]]
        if len(c_ids) != len(x_ids):
            raise TaskError(
                f"task {task.name!r} pair {i}: the clean prompt {c!r} is {len(c_ids) - 1} tokens "
                f"but the counterfactual {x!r} is {len(x_ids) - 1}; expected equal lengths"
            )
        if len(c_ids) < 2:
            raise TaskError(f"task {task.name!r} pair {i}: empty prompt")
        if n_ctx is not None and len(c_ids) > n_ctx:
            raise TaskError(
                f"task {task.name!r} pair {i}: {len(c_ids)} tokens (BOS included), more than "
                f"n_ctx={n_ctx}"
            )
        clean_rows.append(c_ids)
        corrupt_rows.append(x_ids)
        answers.append(_token_ids(tokenizer, task.answer[i], f"task {task.name!r} pair {i}"))
        wrongs.append(_token_ids(tokenizer, task.wrong[i], f"task {task.name!r} pair {i}"))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
    return TaskBatch(
        clean=_pad(clean_rows, pad),
        corrupt=_pad(corrupt_rows, pad),
        last=torch.tensor([len(r) - 1 for r in clean_rows], dtype=torch.long),
        answer=_pad(answers, -1),
        wrong=_pad(wrongs, -1),
        metric=task.metric,
    )


def _set_mean(values: Float[Tensor, "n vocab"], ids: Int[Tensor, "n k"]) -> Tensor:
    mask = ids >= 0
    picked = values.gather(1, ids.clamp_min(0))
    return (picked * mask).sum(1) / mask.sum(1)


def _set_sum(values: Float[Tensor, "n vocab"], ids: Int[Tensor, "n k"]) -> Tensor:
    mask = ids >= 0
    return (values.gather(1, ids.clamp_min(0)) * mask).sum(1)


def metric_values(
    logits: Float[Tensor, "n vocab"],
    answer: Int[Tensor, "n a"],
    wrong: Int[Tensor, "n w"],
    metric: str = "logit_diff",
) -> Float[Tensor, " n"]:
    """The task metric of each prompt from its last-position logits (higher = more correct)."""
    logits = logits.float()
    answer, wrong = answer.to(logits.device), wrong.to(logits.device)
    if metric == "logit_diff":
        return _set_mean(logits, answer) - _set_mean(logits, wrong)
    if metric == "prob_diff":
        probs = logits.softmax(-1)
        return _set_sum(probs, answer) - _set_sum(probs, wrong)
    raise TaskError(f"metric {metric!r} is unknown; expected one of {METRICS}")


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the final norm's output is known."""


def final_logits(
    model: Any, tokens: Int[Tensor, "n pos"], last: Int[Tensor, " n"]
) -> Float[Tensor, "n vocab"]:
    """Logits at each prompt's last position only: the forward stops at the final norm and
    only n rows are unembedded (the full [n, pos, vocab] logits are never formed)."""
    store: dict[str, Tensor] = {}

    def hook(act: Tensor, hook: Any) -> Tensor:
        store["final"] = act
        raise _StopForward

    try:
        model.run_with_hooks(tokens, fwd_hooks=[("ln_final.hook_normalized", hook)])
    except _StopForward:
        pass
    if "final" not in store:
        raise TaskError("the model has no ln_final.hook_normalized hook")
    final = store["final"][
        torch.arange(tokens.shape[0], device=tokens.device), last.to(tokens.device)
    ]
    return final @ model.W_U + model.b_U


def prompt_metric(
    model: Any, batch: TaskBatch, counterfactual: bool = False
) -> Float[Tensor, " n"]:
    """The metric of every prompt of `batch` (clean, or counterfactual) in one forward pass.

    On counterfactual prompts the metric keeps its sign convention (answer minus wrong), so a
    model right on both gets a positive value on clean prompts and a negative one there.
    """
    tokens = batch.corrupt if counterfactual else batch.clean
    logits = final_logits(model, tokens, batch.last)
    return metric_values(logits, batch.answer, batch.wrong, batch.metric)


def target_direction(model: Any, batch: TaskBatch) -> Float[Tensor, " d_model"]:
    """The unembedding direction of the metric, averaged over prompts: W_U[:, answer] - W_U[:, wrong].

    Exact for logit_diff (the logits are linear in the final norm's output); for prob_diff it
    is the logit-difference direction of the same token sets, a first-order stand-in.
    """
    W_U = model.W_U.detach().float()
    eye = W_U.T  # [vocab, d_model]

    def set_mean(ids: Tensor) -> Tensor:
        mask = (ids >= 0).float()
        vecs = eye[ids.clamp_min(0).to(eye.device)]  # [n, k, d]
        return (vecs * mask[..., None].to(vecs)).sum(1) / mask.sum(1, keepdim=True).to(vecs)

    return (set_mean(batch.answer) - set_mean(batch.wrong)).mean(0)


@torch.no_grad()
def task_accuracy(model: Any, task: Task | TaskBatch, batch_size: int = 64) -> float:
    """Share of prompts the model gets right: metric > 0 on clean and < 0 on counterfactual.

    Both prompts of a pair count, so a model that always prefers one token scores 0.5.
    """
    batch = tokenize_task(model, task) if isinstance(task, Task) else task
    batch = batch.to(model.cfg.device)
    right = 0
    for start in range(0, batch.clean.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        part = batch.rows(sl)
        right += int((prompt_metric(model, part) > 0).sum())
        right += int((prompt_metric(model, part, counterfactual=True) < 0).sum())
    return right / (2 * batch.clean.shape[0])


# ---- user tasks ---------------------------------------------------------------------------------
def task_from_dicts(
    name: str,
    pairs: Iterable[Mapping[str, Any]],
    metric: str = "logit_diff",
    description: str = "",
) -> Task:
    """A task from dicts with keys clean, corrupt, answer, wrong.

    Raises:
        TaskError: a pair missing one of the keys, or with unknown keys.
    """
    keys = ("clean", "corrupt", "answer", "wrong")
    rows = list(pairs)
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TaskError(f"task {name!r} pair {i} is {type(row).__name__}; expected a mapping")
        missing = [k for k in keys if k not in row]
        extra = sorted(set(row) - set(keys))
        if missing or extra:
            raise TaskError(
                f"task {name!r} pair {i}: missing keys {missing}, unknown keys {extra}; expected "
                f"exactly {list(keys)}"
            )
    return Task(
        name,
        [str(r["clean"]) for r in rows],
        [str(r["corrupt"]) for r in rows],
        [r["answer"] for r in rows],
        [r["wrong"] for r in rows],
        metric,
        description,
    )


def load_task(path: str | Path, name: str | None = None) -> Task:
    """A task from a JSON or YAML file.

    The file holds either a list of pair dicts, or a mapping with `pairs` and optionally
    `name`, `metric` and `description`.

    Raises:
        TaskError: a missing file, or content of another shape.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise TaskError(f"task file {str(path)!r} {what}")
    text = path.read_text(errors="replace")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TaskError(f"task file {str(path)!r} is not valid YAML: {exc}") from exc
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TaskError(f"task file {str(path)!r} is not valid JSON: {exc}") from exc
    try:
        if isinstance(data, list):
            return task_from_dicts(name or path.stem, data)
        if isinstance(data, Mapping) and "pairs" in data:
            return task_from_dicts(
                name or str(data.get("name", path.stem)),
                data["pairs"],
                str(data.get("metric", "logit_diff")),
                str(data.get("description", "")),
            )
    except TaskError as exc:  # name the file: a flag or a list of files led here
        raise TaskError(f"task file {str(path)!r}: {exc}") from None
    raise TaskError(
        f"task file {str(path)!r} should hold a list of pairs or a mapping with 'pairs'"
    )
