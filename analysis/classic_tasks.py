"""Classic circuit tasks for real models (GPT-2, Pythia, ...): IOI, greater-than, agreement.

Generated for a given tokenizer: names, nouns and years that are not single tokens there are
left out, and every pair keeps equal token lengths. The default model (trained on code) gets
none of these right; they are meant for `load_model("gpt2")` and the like.
"""

from __future__ import annotations

import random
from typing import Any

from analysis.tasks import Task, TaskError
from analysis.templates import single_tokens

NAMES = (
    "Mary John Alice Bob Tom Anna James Sarah David Emma Paul Laura Mark Kate Peter Lisa "
    "Michael Susan Daniel Rachel"
).split()
PLACES = "store park school office garden station market beach".split()
OBJECTS = "drink book ring bag key letter gift ball".split()
IOI_TEMPLATES = (
    "When{a} and{b} went to the {place},{b} gave a {obj} to",
    "After{a} and{b} arrived at the {place},{b} handed a {obj} to",
    "Then,{a} and{b} had a long talk at the {place}.{b} gave a {obj} to",
)
NOUNS = (
    ("author", "authors"),
    ("teacher", "teachers"),
    ("dog", "dogs"),
    ("doctor", "doctors"),
    ("farmer", "farmers"),
    ("student", "students"),
    ("pilot", "pilots"),
    ("officer", "officers"),
    ("senator", "senators"),
    ("painter", "painters"),
)
ATTRACTORS = "house car school city room table garden window".split()
WAR_NOUNS = "war expedition reign project strike siege journey treaty".split()


def _n_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def ioi_task(tokenizer: Any, n: int = 64, seed: int = 0) -> Task:
    """Indirect object identification: "When Mary and John went to the store, John gave a
    drink to" -> " Mary"; the counterfactual swaps the two names, so it should say " John".
    Metric logit(IO) - logit(S)."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    names = single_tokens(tokenizer, NAMES)
    if len(names) < 2:
        raise TaskError("IOI needs at least two names that are single tokens with a leading space")
    rng = random.Random(seed)
    clean, corrupt, answer, wrong = [], [], [], []
    for _ in range(50 * n):
        if len(clean) == n:
            break
        a, b = rng.sample(names, 2)
        template = rng.choice(IOI_TEMPLATES)
        slots = {"place": rng.choice(PLACES), "obj": rng.choice(OBJECTS)}
        c = template.format(a=" " + a, b=" " + b, **slots)
        x = template.format(a=" " + b, b=" " + a, **slots)
        if _n_tokens(tokenizer, c) != _n_tokens(tokenizer, x):
            continue
        clean.append(c)
        corrupt.append(x)
        answer.append(" " + a)
        wrong.append(" " + b)
    return Task("ioi", clean, corrupt, answer, wrong, description="indirect object identification")


def greater_than_task(tokenizer: Any, n: int = 64, seed: int = 0) -> Task:
    """Greater-than: "The war lasted from the year 1732 to the year 17" -> a year above 32.

    Metric sum p(YY > 32) - sum p(YY <= 32) over two-digit tokens; the counterfactual starts
    in year 1701, as in Hanna et al. 2023. Needs a tokenizer that splits a year into its
    century and a two-digit token (as GPT-2's does).
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    two_digit = [f"{i:02d}" for i in range(100)]
    ids = {yy: tokenizer(yy, add_special_tokens=False)["input_ids"] for yy in two_digit}
    rng = random.Random(seed)
    clean, corrupt, answer, wrong = [], [], [], []
    for _ in range(50 * n):
        if len(clean) == n:
            break
        century = rng.choice(["11", "12", "13", "14", "15", "16", "17", "18"])
        yy = rng.randint(2, 98)
        noun = rng.choice(WAR_NOUNS)
        c = f"The {noun} lasted from the year {century}{yy:02d} to the year {century}"
        x = f"The {noun} lasted from the year {century}01 to the year {century}"
        body = tokenizer(c, add_special_tokens=False)["input_ids"]
        if len(ids[f"{yy:02d}"]) != 1 or body[-5] != ids[f"{yy:02d}"][0]:
            continue  # the year must split into century + one two-digit token
        if _n_tokens(tokenizer, x) != len(body):
            continue
        above = [y for y in two_digit[yy + 1 :] if len(ids[y]) == 1]
        below = [y for y in two_digit[: yy + 1] if len(ids[y]) == 1]
        if not above or not below:
            continue
        clean.append(c)
        corrupt.append(x)
        answer.append(above)
        wrong.append(below)
    if len(clean) < n:
        raise TaskError(
            f"greater-than: only {len(clean)} of {n} prompts; the tokenizer should split years "
            "into a century token and a single two-digit token"
        )
    return Task(
        "greater_than",
        clean,
        corrupt,
        answer,
        wrong,
        metric="prob_diff",
        description="years: p(later year) - p(earlier or same year)",
    )


def agreement_task(tokenizer: Any, n: int = 64, seed: int = 0) -> Task:
    """Subject-verb agreement across an attractor: "The author near the house" -> " is";
    the counterfactual has the plural subject and should say " are"."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    pairs = [
        (s, p)
        for s, p in NOUNS
        if _n_tokens(tokenizer, " " + s) == 1 and _n_tokens(tokenizer, " " + p) == 1
    ]
    if not pairs:
        raise TaskError("agreement needs nouns whose singular and plural are single tokens")
    rng = random.Random(seed)
    clean, corrupt, answer, wrong = [], [], [], []
    for _ in range(50 * n):
        if len(clean) == n:
            break
        singular, plural = rng.choice(pairs)
        attractor = rng.choice(ATTRACTORS)
        flip = rng.random() < 0.5  # half the clean prompts have the plural subject
        subj, other = (plural, singular) if flip else (singular, plural)
        verb, other_verb = (" are", " is") if flip else (" is", " are")
        clean.append(f"The {subj} near the {attractor}")
        corrupt.append(f"The {other} near the {attractor}")
        answer.append(verb)
        wrong.append(other_verb)
    return Task("agreement", clean, corrupt, answer, wrong, description="subject-verb agreement")
