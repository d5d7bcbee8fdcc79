"""Node labels from an atlas record: the pattern the top contexts share, then what it promotes."""

from __future__ import annotations

from replacement.atlas.labels import describe_contexts

VOCAB = [
    "<bos>",
    "def",
    " f",
    " g",
    " main",
    "return",
    " self",
    " x",
    "1",
    "23",
    "(",
    "\n    ",
    "456",
    "7",
]


def ctx(value: float, *tokens: int) -> dict:
    """A context whose last token is the peak."""
    return {"value": value, "tokens": list(tokens), "centre": len(tokens) - 1, "acts": []}


def test_one_token_dominating_the_peaks_names_the_feature():
    contexts = [ctx(3.0, 0, 5), ctx(2.0, 1, 5), ctx(1.0, 0, 7)]
    assert describe_contexts(contexts, [6, 7, 10, 2], VOCAB) == "'return' → self x ("


def test_different_peaks_after_one_token_read_as_after():
    # f, g, main each under half; all follow "def"
    contexts = [ctx(2.0, 1, 2), ctx(2.0, 1, 3), ctx(1.5, 1, 4), ctx(0.5, 0, 2)]
    assert describe_contexts(contexts, [10], VOCAB) == "after 'def' → ("


def test_a_class_of_tokens_and_fallbacks():
    numbers = [ctx(1.0, 0, 8), ctx(1.0, 2, 9), ctx(1.0, 1, 12), ctx(1.0, 3, 13), ctx(0.2, 0, 4)]
    assert describe_contexts(numbers, [], VOCAB) == "numbers"
    assert describe_contexts([ctx(1.0, 0, 11), ctx(1.0, 10, 11)], [], VOCAB) == "'\\n+4sp'"
    spread = [ctx(1.0, 0, 2), ctx(1.0, 8, 10), ctx(1.0, 4, 5), ctx(1.0, 6, 11)]
    assert describe_contexts(spread, [], VOCAB) == "'('/'\\n+4sp'/'f'"
    assert describe_contexts([], [6], VOCAB) == "dead"
    assert describe_contexts(
        [ctx(1.0, 0, 5)], [6], {"0": "<bos>", "5": "return", "6": " self"}
    ) == ("'return' → self")
