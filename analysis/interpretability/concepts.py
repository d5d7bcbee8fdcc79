"""Concept labellers: token sequence -> per-token binary labels.

A labeller takes the strings of one document's tokens (in order; joined they give the text)
and returns a bool array [tokens, concepts] plus the concept names. `python_syntax` labels a
Python source file from the standard library's `tokenize`; a user brings their own as a
callable of the same signature (`callable_labeller`) or as a file of labels aligned with the
corpus tokens (`analysis.interpretability.corpus.labels_from_file`).

Each model token takes the labels of its anchor character: its first non-whitespace character
(a whitespace-only token: its first character), so " return" is a keyword and "\\n    " is
whitespace at its line's indentation.
"""

from __future__ import annotations

import builtins
import io
import keyword
import tokenize
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool

PYTHON_CONCEPTS = (
    "string",
    "comment",
    "docstring",
    "keyword",
    "builtin",
    "number",
    "operator",
    "def_name",
    "class_name",
    "name",
    "bracket_depth_0",
    "bracket_depth_1",
    "bracket_depth_2+",
    "indent_0",
    "indent_1",
    "indent_2",
    "indent_3+",
    "line_start",
    "import_line",
    "after_dot",
    "self",
    "whitespace",
)
"""Concepts of `python_syntax`, in column order."""

_BRACKETS_OPEN, _BRACKETS_CLOSE = set("([{"), set(")]}")
_PUNCTUATION = {",", ":", ".", ";"} | _BRACKETS_OPEN | _BRACKETS_CLOSE
_BUILTINS = frozenset(n for n in dir(builtins) if not n.startswith("_"))
_STRING_TYPES = {tokenize.STRING} | {
    getattr(tokenize, n)
    for n in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")
    if hasattr(tokenize, n)
}
_SKIP = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING}


@dataclass(frozen=True)
class LabellerOutput:
    """Labels of one document."""

    labels: Bool[np.ndarray, "tokens concepts"]
    concepts: tuple[str, ...]


Labeller = Callable[[Sequence[str]], LabellerOutput]
"""token strings of one document -> its labels."""


def _column(name: str) -> int:
    return PYTHON_CONCEPTS.index(name)


def _char_labels(text: str) -> np.ndarray:
    """[chars, concepts] labels of a Python source text (tokenize stops quietly at a syntax error)."""
    n = len(text)
    out = np.zeros((n + 1, len(PYTHON_CONCEPTS)), dtype=bool)
    lines: list[str] = []
    reader = io.StringIO(text).readline

    def readline() -> str:
        line = reader()
        lines.append(line)
        return line

    starts = [0]

    def offset(row: int, col: int) -> int:
        while len(starts) <= row:  # starts[r] = offset of line r (1-based rows)
            r = len(starts)
            starts.append(starts[-1] + (len(lines[r - 2]) if r >= 2 else 0))
        return min(starts[row] + col, n)

    depth, indent, prev_sig = 0, 0, None
    line_first, logical_first, line_is_import, pending_string = True, True, False, None
    cursor = 0

    def mark_gap(end: int) -> None:
        # characters between tokens (spaces, newlines, indentation) carry the current state
        if end > cursor:
            out[cursor:end, _column("whitespace")] = True
            out[cursor:end, _depth_col(depth)] = True
            out[cursor:end, _indent_col(indent)] = True

    try:
        for tok in tokenize.generate_tokens(readline):
            if tok.type == tokenize.ENDMARKER:
                break
            a, b = offset(*tok.start), offset(*tok.end)
            if tok.type == tokenize.INDENT:
                indent += 1
            elif tok.type == tokenize.DEDENT:
                indent = max(indent - 1, 0)
            if tok.type in _SKIP:
                if tok.type == tokenize.NEWLINE:
                    if pending_string is not None:  # a string alone on its logical line
                        out[pending_string[0] : pending_string[1], _column("docstring")] = True
                    logical_first, line_is_import, pending_string = True, False, None
                line_first = line_first or tok.type in (tokenize.NL, tokenize.NEWLINE)
                continue
            mark_gap(a)
            cols = [_indent_col(indent)]
            if tok.type == tokenize.OP and tok.string in _BRACKETS_CLOSE:
                depth = max(depth - 1, 0)
            cols.append(_depth_col(depth))
            if tok.type == tokenize.OP and tok.string in _BRACKETS_OPEN:
                depth += 1
            if line_first:
                cols.append(_column("line_start"))
            if logical_first and tok.type != tokenize.COMMENT:
                line_is_import = tok.string in ("import", "from")
                pending_string = (a, b) if tok.type in _STRING_TYPES else None
            elif tok.type not in _STRING_TYPES or pending_string is None:
                pending_string = None
            elif pending_string is not None:  # implicit concatenation or f-string parts
                pending_string = (pending_string[0], b)
            if line_is_import:
                cols.append(_column("import_line"))
            if tok.type in _STRING_TYPES:
                cols.append(_column("string"))
            elif tok.type == tokenize.COMMENT:
                cols.append(_column("comment"))
            elif tok.type == tokenize.NUMBER:
                cols.append(_column("number"))
            elif tok.type == tokenize.OP:
                if tok.string not in _PUNCTUATION:
                    cols.append(_column("operator"))
            elif tok.type == tokenize.NAME:
                if keyword.iskeyword(tok.string):
                    cols.append(_column("keyword"))
                elif prev_sig == "def":
                    cols.append(_column("def_name"))
                elif prev_sig == "class":
                    cols.append(_column("class_name"))
                elif tok.string == "self":
                    cols.append(_column("self"))
                elif tok.string in _BUILTINS and prev_sig != ".":
                    cols.append(_column("builtin"))
                else:
                    cols.append(_column("name"))
            if prev_sig == ".":
                cols.append(_column("after_dot"))
            out[a:b, cols] = True
            # the first character carries line_start; the rest of a long token does not
            if line_first and b > a + 1:
                out[a + 1 : b, _column("line_start")] = False
            cursor = b
            line_first = False
            logical_first = logical_first and tok.type == tokenize.COMMENT
            prev_sig = tok.string if tok.type != tokenize.COMMENT else prev_sig
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    mark_gap(n)
    return out[:n]


def _depth_col(depth: int) -> int:
    return _column(
        "bracket_depth_0" if depth == 0 else "bracket_depth_1" if depth == 1 else "bracket_depth_2+"
    )


def _indent_col(indent: int) -> int:
    return _column(f"indent_{indent}" if indent < 3 else "indent_3+")


def anchor_offsets(tokens: Sequence[str]) -> np.ndarray:
    """Character offset of each token's anchor (its first non-whitespace character)."""
    out = np.zeros(len(tokens), dtype=np.int64)
    start = 0
    for i, tok in enumerate(tokens):
        stripped = len(tok) - len(tok.lstrip())
        out[i] = start + (stripped if stripped < len(tok) else 0)
        start += len(tok)
    return out


def python_syntax(tokens: Sequence[str]) -> LabellerOutput:
    """Python-syntax labels (`PYTHON_CONCEPTS`) of one document's tokens."""
    text = "".join(tokens)
    chars = _char_labels(text)
    anchors = anchor_offsets(tokens)
    labels = np.zeros((len(tokens), len(PYTHON_CONCEPTS)), dtype=bool)
    inside = anchors < len(text)
    labels[inside] = chars[anchors[inside]]
    return LabellerOutput(labels, PYTHON_CONCEPTS)


def callable_labeller(
    fn: Callable[[Sequence[str]], dict[str, Sequence[bool]]],
) -> Labeller:
    """Wrap a user function `token strings -> {concept: per-token bools}` as a labeller."""

    def labeller(tokens: Sequence[str]) -> LabellerOutput:
        result = fn(tokens)
        if not isinstance(result, dict) or not result:
            raise ValueError(
                f"a concept labeller must return a non-empty dict concept -> per-token bools; "
                f"got {type(result).__name__}"
            )
        names = tuple(sorted(result))
        cols = []
        for name in names:
            col = np.asarray(result[name], dtype=bool)
            if col.shape != (len(tokens),):
                raise ValueError(
                    f"concept {name!r}: the labeller returned shape {col.shape}; expected "
                    f"({len(tokens)},), one label per token"
                )
            cols.append(col)
        return LabellerOutput(np.stack(cols, axis=1), names)

    return labeller
