"""Checks of user input that run before any work: numbers, output paths, text files, models.

Two kinds of helpers:
- argparse `type=` functions (`positive_int`, `fraction`, ...): a bad value fails at parse
  time with argparse's one-line "argument --x: ..." message and exit code 2;
- path checks (`check_output_dir`, `read_text_file`, ...) that raise `InputError` naming the
  option and the fix, called by the commands before they load a model.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from replacement.errors import SparseCircuitsError

# Files of a Hugging Face folder that hold a tokenizer (any one suffices).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
_BINARY_SAMPLE = 1 << 16


class InputError(SparseCircuitsError):
    """A path or value given by the user that cannot be used; the message names the option."""


# ---- argparse types -------------------------------------------------------------------------
def _number(text: str, kind: Callable[[str], float | int]) -> float | int:
    try:
        if kind is int:
            value = float(text)  # "2e6" is a fine count
            if not value.is_integer():
                raise ValueError
            return int(value)
        return kind(text)
    except (TypeError, ValueError):
        name = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 ("2e6" allowed)."""
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = float(_number(text, float))
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    value = float(_number(text, float))
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    """argparse type factory: a whole number >= `low`."""

    def parse(text: str) -> int:
        value = int(_number(text, int))
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value

    parse.__name__ = f"int_at_least_{low}"
    return parse


def fraction(text: str) -> float:
    """argparse type: a share in (0, 1]."""
    value = float(_number(text, float))
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (a share), got {text}")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except None and switches (where it says nothing)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


# ---- output paths ---------------------------------------------------------------------------
def _probe_writable(folder: Path, option: str, target: Path) -> None:
    """Create and delete a file in `folder` (os.access lies for root and on some mounts)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(
            f"{option} {str(target)!r}: cannot write into {str(folder)!r} ({exc.strerror}); "
            "choose a writable folder"
        ) from None


def _existing_ancestor(path: Path) -> Path:
    here = path.absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    return here


def check_output_dir(path: str | Path, option: str = "--out") -> Path:
    """`path` as an output folder: not an existing file, and writable (created later)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(
            f"{option} {str(path)!r} is an existing file; expected a folder (give a new name)"
        )
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise InputError(f"{option} {str(path)!r}: {str(base)!r} is a file, not a folder")
    _probe_writable(base, option, path)
    return path


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """`path` as an output file: not an existing folder, its folder writable."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"{option} {str(path)!r} is a folder; expected a file name")
    base = _existing_ancestor(path.parent)
    if not base.is_dir():
        raise InputError(f"{option} {str(path)!r}: {str(base)!r} is a file, not a folder")
    _probe_writable(base, option, path)
    return path


# ---- input files ------------------------------------------------------------------------------
def looks_binary(path: str | Path) -> bool:
    """True if the start of the file holds NUL bytes or is mostly not text."""
    with open(path, "rb") as f:
        sample = f.read(_BINARY_SAMPLE)
    if b"\x00" in sample:
        return True
    try:
        sample.decode("utf-8")
        return False
    except UnicodeDecodeError as exc:
        if exc.start >= len(sample) - 4:  # a character cut by the sample's end
            return False
    control = sum(b < 32 and b not in (9, 10, 12, 13) for b in sample)
    return control > 0.05 * max(1, len(sample))


def check_text_file(
    path: str | Path, option: str, error: type[SparseCircuitsError] = InputError
) -> Path:
    """`path` as a text input: an existing file that is not binary (else `error`)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise error(f"{option} {str(path)!r} does not exist")
    if not path.is_file():
        raise error(f"{option} {str(path)!r} is not a file")
    if looks_binary(path):
        raise error(
            f"{option} {str(path)!r} looks binary (NUL bytes or non-text bytes); "
            "expected a UTF-8 text file"
        )
    return path


def read_text_file(path: str | Path, option: str) -> str:
    """The text of a checked text file (undecodable bytes replaced)."""
    return check_text_file(path, option).read_text(encoding="utf-8", errors="replace")


def check_text_source(
    path: str | Path, option: str, error: type[SparseCircuitsError] = InputError
) -> list[Path]:
    """A text file, or a folder of text files: the files, all checked.

    A single file must be text. In a folder, hidden entries and `__pycache__` are skipped, and so
    are binary files (a source tree holds compiled files and images beside its text), with a
    warning that counts them; a folder without any text file is an error.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        return [check_text_file(path, option, error)]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and not any(
            part.startswith(".") or part == "__pycache__" for part in p.relative_to(path).parts
        )
    )
    text = [p for p in files if not looks_binary(p)]
    if not text:
        what = "holds no files" if not files else "holds only binary files"
        raise error(f"{option} folder {str(path)!r} {what}; expected UTF-8 text files")
    if len(text) < len(files):
        import warnings

        warnings.warn(
            f"{option} folder {str(path)!r}: {len(files) - len(text)} binary files skipped",
            stacklevel=2,
        )
    return text


def has_tokenizer_files(folder: str | Path) -> bool:
    """True if a Hugging Face folder holds tokenizer files."""
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def check_device(device: str | None, option: str = "--device") -> None:
    """A torch device name that exists on this machine (None: the default)."""
    if device is None:
        return
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise InputError(
            f"{option} {device!r} is not a torch device; expected cpu, cuda or cuda:N"
        ) from None
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(kind, True):
        raise InputError(f"{option} {device!r}: no {kind} device on this machine; use --device cpu")


# ---- model sources ----------------------------------------------------------------------------
def _cached_on_hub(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an id the hub library refuses is not cached either
        return False


def _known_model_name(name: str) -> bool:
    """Names TransformerLens knows (official names and aliases such as "gpt2")."""
    try:
        from transformer_lens import supported_models as loading
    except ImportError:
        return False
    names = set(getattr(loading, "OFFICIAL_MODEL_NAMES", []))
    for aliases in getattr(loading, "MODEL_ALIASES", {}).values():
        names.update(aliases)
    return name in names


def looks_local(source: str | Path) -> bool:
    """True if a model source means a local folder, so it must never be sent to the hub.

    Local: it exists; it starts with ".", "/" or "~"; it has more than one "/" or a "\\";
    its first component is an existing folder ("runs/model"); or it is a bare name that is
    neither cached nor a model name TransformerLens knows ("my_model"; hub models are
    "org/name" or a known name such as "gpt2").
    """
    text = str(source)
    path = Path(text).expanduser()
    if path.exists() or text.startswith((".", "/", "~")) or "\\" in text:
        return True
    parts = text.split("/")
    if len(parts) > 2 or "" in parts:
        return True
    if len(parts) == 2:
        return Path(parts[0]).is_dir() and not _cached_on_hub(text)
    return not (_cached_on_hub(text) or _known_model_name(text))
