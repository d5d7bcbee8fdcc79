"""Collect the default model's text corpus: the running interpreter's standard library.

Every machine with Python has this text, so the default model can be retrained anywhere
without a download. The order of documents is fixed (sorted relative paths, then the
``pydoc_data`` topics sorted by key) so that the same interpreter always yields the same
corpus.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# Located by path rather than by importing `replacement`: the training host (a GPU
# machine) need not have the model-analysis dependencies that `replacement` imports.
HELDOUT_LIST_PATH = (
    Path(__file__).resolve().parents[2]
    / "replacement"
    / "zoo"
    / "default_model"
    / "heldout_files.txt"
)
"""Text file naming the held-out standard-library files, one relative path a line."""

# pydoc_data/topics.py is a Python file whose strings are the topics added as plain text
# below; leaving it out keeps that text from appearing twice.
_EXCLUDED_FILES = frozenset({"pydoc_data/topics.py"})

TOPICS_PREFIX = "pydoc_data.topics:"
"""Name prefix of the documents made from ``pydoc_data.topics.topics``."""


@dataclass(frozen=True)
class Document:
    """One document of the corpus."""

    name: str
    """Path relative to the stdlib folder (POSIX form), or ``pydoc_data.topics:<key>``."""
    text: str
    """The document's text (utf-8, undecodable bytes replaced)."""

    @property
    def sha256(self) -> str:
        """Hex digest of the utf-8 text, to tell whether two interpreters' files agree."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Corpus:
    """The corpus split into training and held-out documents."""

    train: list[Document]
    """Documents the tokenizer and the model are trained on."""
    heldout: list[Document]
    """Documents kept for the validation loss (in the order of the held-out list)."""
    stdlib_dir: Path
    """Folder the files were read from."""


def stdlib_dir() -> Path:
    """Folder of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def heldout_paths(list_path: Path = HELDOUT_LIST_PATH) -> list[str]:
    """Relative paths of the held-out files, read from the shipped list (comments skipped)."""
    if not list_path.is_file():
        raise FileNotFoundError(f"held-out file list not found: expected {list_path}")
    lines = (line.strip() for line in list_path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def stdlib_python_files(root: Path | None = None) -> list[str]:
    """All ``*.py`` files under the stdlib folder except ``site-packages``, sorted.

    Returns:
        Relative POSIX paths, sorted so the order does not depend on the file system.
    """
    root = stdlib_dir() if root is None else root
    paths = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if "site-packages" in rel.parts or not path.is_file():
            continue
        if rel.as_posix() in _EXCLUDED_FILES:
            continue
        paths.append(rel.as_posix())
    return sorted(paths)


def read_document(root: Path, rel: str) -> Document:
    """Read one file as utf-8, replacing undecodable bytes (a few test files hold them)."""
    return Document(rel, (root / rel).read_text(encoding="utf-8", errors="replace"))


def topic_documents() -> list[Document]:
    """The English help topics of ``pydoc_data.topics``, sorted by key."""
    from pydoc_data.topics import topics

    return [Document(TOPICS_PREFIX + key, topics[key]) for key in sorted(topics)]


def training_file_paths(root: Path | None = None) -> list[str]:
    """Relative paths of the stdlib files used for training (held-out files removed)."""
    heldout = set(heldout_paths())
    return [rel for rel in stdlib_python_files(root) if rel not in heldout]


def collect_corpus(root: Path | None = None) -> Corpus:
    """Read the whole corpus of the running interpreter.

    Raises:
        FileNotFoundError: a file of the held-out list is missing from this stdlib.
    """
    root = stdlib_dir() if root is None else root
    heldout_rel = heldout_paths()
    missing = [rel for rel in heldout_rel if not (root / rel).is_file()]
    if missing:
        raise FileNotFoundError(f"held-out files missing from the stdlib at {root}: {missing}")
    train = [read_document(root, rel) for rel in training_file_paths(root)]
    train.extend(topic_documents())
    heldout = [read_document(root, rel) for rel in heldout_rel]
    return Corpus(train=train, heldout=heldout, stdlib_dir=root)
