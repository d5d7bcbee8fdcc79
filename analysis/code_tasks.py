"""Built-in code tasks for the embedded default model (trained on the Python standard library).

Each task is generated from one template with varied identifiers (`analysis.templates`), 64
pairs by default, every prompt the same token length and every answer one token. A task is a
default only when the model gets at least `MIN_ACCURACY` of its prompts right (clean and
counterfactual, `task_accuracy`); `default_tasks` measures that on the model it is given.
"""

from __future__ import annotations

from typing import Any

from analysis.tasks import Task, task_accuracy
from analysis.templates import single_tokens, template_task

MIN_ACCURACY = 0.8
"""A built-in task becomes a default only if the model gets this share of its prompts right."""

_VARIABLES = (
    "name value data key path result item line text count index size node obj func args "
    "parser buf msg token module prefix suffix source target state config mode level root "
    "child parent entry field"
).split()
_FUNCTIONS = (
    "get load read parse find open run make build check update write copy close format split join"
).split()
_MODULES = (
    "os sys re time math random socket struct string copy types io ast pickle queue select "
    "signal threading warnings codecs operator subprocess unittest"
).split()
_CLASSES = (
    "Foo Bar Base Node Item Parser Handler Reader Writer Server Client Manager Error Test".split()
)

# name -> (template, key pool, answer template, other slot pools, description)
_SPECS: dict[str, tuple[str, str, str, dict[str, str], str]] = {
    "close_bracket": (
        "    {v} = {f}({p}{k[0]}{q}",
        "brackets",
        "{k[1]}",
        {"v": "var", "f": "func", "p": "var", "q": "var"},
        "close the innermost open bracket: ']' after '[', ')' after '('",
    ),
    "copy_variable": (
        "def {f}({p}):\n    {k} = {g}({p})\n    return",
        "var",
        " {k}",
        {"f": "func", "g": "func", "p": "var"},
        "return the local variable assigned on the line before",
    ),
    "self_attribute": (
        "class {c}:\n    def __init__(self, {p}):\n        self.{k} = {p}\n\n"
        "    def {f}(self):\n        return self.",
        "var",
        "{k}",
        {"c": "class", "p": "var", "f": "func"},
        "recall the attribute set in __init__ after 'return self.'",
    ),
    "comprehension_for": (
        "    {v} = [{f}({k}) for",
        "var",
        " {k}",
        {"v": "var", "f": "func"},
        "'for x in' after '[f(x)': the loop variable the comprehension used",
    ),
    "loop_variable": (
        "    for {k} in {v}:\n        {f}(",
        "var",
        "{k}",
        {"v": "var", "f": "func"},
        "pass the loop variable of 'for x in' to a call in the loop body",
    ),
    "import_module": (
        "import {k}\n\n{v} =",
        "module",
        " {k}",
        {"v": "var"},
        "the module name after 'import m' where 'm.' follows: 'import m' ... 'x = m'",
    ),
    "import_return": (
        "import {k}\n\n\ndef {f}():\n    return",
        "module",
        " {k}",
        {"f": "func"},
        "return the module imported at the top",
    ),
    "keyword_default": (
        "def {f}({k}=None):\n    if",
        "var",
        " {k}",
        {"f": "func"},
        "test the keyword argument whose default is None",
    ),
}
TASK_NAMES = tuple(_SPECS)
"""Names of the built-in code tasks (`compare --tasks`)."""


def _pools(tokenizer: Any) -> dict[str, list[Any]]:
    return {
        "var": single_tokens(tokenizer, _VARIABLES),
        "func": single_tokens(tokenizer, _FUNCTIONS),
        "module": single_tokens(tokenizer, _MODULES),
        "class": single_tokens(tokenizer, _CLASSES),
        "brackets": [("[", "]"), ("(", ")")],
    }


def code_tasks(tokenizer: Any, n: int = 64, seed: int = 0) -> list[Task]:
    """Every built-in code task (`n` pairs each), whatever the model's accuracy on it."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    pools = _pools(tokenizer)
    tasks = []
    for i, (name, (template, key, answer, slots, description)) in enumerate(_SPECS.items()):
        tasks.append(
            template_task(
                tokenizer,
                name,
                template,
                pools[key],
                answer,
                {slot: pools[pool] for slot, pool in slots.items()},
                n=n,
                seed=seed + i,
                description=description,
            )
        )
    return tasks


def default_tasks(
    model: Any, n: int = 64, seed: int = 0, min_accuracy: float = MIN_ACCURACY
) -> list[Task]:
    """The built-in code tasks the model gets right often enough (accuracy in metadata)."""
    kept = []
    for task in code_tasks(model.tokenizer, n, seed):
        task.metadata["accuracy"] = task_accuracy(model, task)
        if task.metadata["accuracy"] >= min_accuracy:
            kept.append(task)
    return kept
