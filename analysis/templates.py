"""Generate a task from a template: the clean and counterfactual prompts differ in one slot.

    template_task(tokenizer, "copy", "    {k} = {f}()\\n    return", keys=["name", "value"],
                  answer=" {k}", pools={"f": ["get", "load"]}, n=64)

For each pair two different key values a, b are drawn; the other slots get one draw shared by
both prompts. The clean prompt uses a and should predict `answer` filled with a; the
counterfactual uses b and should predict it filled with b. A key value may be a tuple (the
template then reads `{k[0]}`, the answer `{k[1]}`). Only pairs whose prompts have the same
token length as the first pair, and whose answers are single tokens, are kept, so every
prompt of a generated task has the same length and positions align across prompts.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from analysis.tasks import Task, TaskError


def single_tokens(tokenizer: Any, words: Sequence[str], prefix: str = " ") -> list[str]:
    """The words that are one token with `prefix` in front (and without, when prefix is " ")."""

    def one(text: str) -> bool:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) == 1

    return [w for w in words if one(prefix + w) and (prefix != " " or one(w))]


def template_task(
    tokenizer: Any,
    name: str,
    template: str,
    keys: Sequence[Any],
    answer: str,
    pools: Mapping[str, Sequence[Any]] | None = None,
    n: int = 64,
    seed: int = 0,
    description: str = "",
    metric: str = "logit_diff",
) -> Task:
    """A task of `n` pairs from `template` (see the module docstring).

    Raises:
        TaskError: fewer than two keys, or `n` valid pairs not found in 50 n draws.
    """
    if len(keys) < 2:
        raise TaskError(f"task {name!r} needs at least two key values; got {list(keys)}")
    pools = dict(pools or {})
    rng = random.Random(seed)

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    clean, corrupt, answers, wrong = [], [], [], []
    length = None
    seen: set[tuple[str, str]] = set()
    for _ in range(50 * n):
        if len(clean) == n:
            break
        a, b = rng.sample(list(keys), 2)
        others = {slot: rng.choice(list(values)) for slot, values in pools.items()}
        if a in others.values() or b in others.values():
            continue  # the key must be the only place a and b occur
        c, x = template.format(k=a, **others), template.format(k=b, **others)
        ans, wr = answer.format(k=a), answer.format(k=b)
        if (c, x) in seen or n_tokens(ans) != 1 or n_tokens(wr) != 1:
            continue
        lc, lx = n_tokens(c), n_tokens(x)
        length = lc if length is None else length
        if lc != length or lx != length:
            continue
        seen.add((c, x))
        clean.append(c)
        corrupt.append(x)
        answers.append(ans)
        wrong.append(wr)
    if len(clean) < n:
        raise TaskError(
            f"task {name!r}: only {len(clean)} of {n} pairs of equal token length with "
            "single-token answers; give more key and slot values"
        )
    return Task(
        name,
        clean,
        corrupt,
        answers,
        wrong,
        metric,
        description,
        {"template": template, "answer_template": answer},
    )
