"""Token rows in one file, so that a run elsewhere trains and evaluates on exactly these rows.

The default corpus is the running interpreter's standard library: another Python (an
accelerator's 3.12 against this project's 3.11) reads other files, so its rows, held-out ones
included, differ. A claims sweep split across machines must not compare runs evaluated on
different rows. `write_rows` stores the rows of this machine (uint16 when the vocabulary
allows, compressed: 6.3 MB for the default corpus at ctx 128), `read_rows` gives them back
as `TokenData`, and `rows_digest` names them, so a sweep records which rows it ran on.

    python -m training.token_rows FILE [--ctx-len 128]   # the default corpus's rows
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from replacement.errors import SparseCircuitsError
from training.data import TokenData

_KEYS = ("train", "val", "bos", "special_ids")


def write_rows(path: str | Path, data: TokenData) -> None:
    """Store `data`'s rows, BOS and special ids in `path` (.npz), written new then swapped."""
    from replacement.atomic import atomic_path

    top = int(max(data.train.max(), data.val.max()))
    dtype = np.uint16 if top < 2**16 else np.int64
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                train=data.train.numpy().astype(dtype),
                val=data.val.numpy().astype(dtype),
                bos=np.array(data.bos),
                special_ids=np.array(sorted(data.special_ids), dtype=np.int64),
            )


def check_rows(path: str | Path) -> None:
    """Raise `SparseCircuitsError` naming `path` unless it is a token rows file (reads its
    index only, not the rows)."""
    _open(Path(path)).close()


def _open(path: Path) -> Any:
    expected = "expected token rows written by `python -m training.token_rows`"
    if not path.is_file():
        raise SparseCircuitsError(f"--rows {str(path)!r} is not a file; {expected}")
    try:
        f = np.load(path)
    except (OSError, ValueError, EOFError) as exc:
        raise SparseCircuitsError(
            f"--rows {str(path)!r} is unreadable ({exc}); {expected}"
        ) from exc
    missing = [k for k in _KEYS if k not in getattr(f, "files", ())]
    if missing:
        raise SparseCircuitsError(f"--rows {str(path)!r} lacks {missing}; {expected}")
    return f


def read_rows(path: str | Path) -> TokenData:
    """The rows `write_rows` stored; a clear error for a missing or foreign file."""
    path = Path(path)
    try:
        with _open(path) as f:
            train = torch.from_numpy(f["train"].astype(np.int64))
            val = torch.from_numpy(f["val"].astype(np.int64))
            bos, specials = int(f["bos"]), [int(s) for s in f["special_ids"]]
    except (OSError, ValueError) as exc:
        raise SparseCircuitsError(f"--rows {str(path)!r} is not a token rows file ({exc})") from exc
    return TokenData(train, val, bos, specials)


def rows_digest(train: Int[Tensor, "rows ctx"], evaluation: Int[Tensor, "rows ctx"]) -> str:
    """sha256 of the training and evaluation rows (their shapes and int64 values)."""
    h = hashlib.sha256()
    for rows in (train, evaluation):
        h.update(str(tuple(rows.shape)).encode())
        h.update(rows.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def record_rows(setup: dict[str, Any], digest: str, where: str, out_flag: str) -> None:
    """Record `digest` in a results file's `setup`, or raise `SparseCircuitsError` when `where`
    already recorded other rows (its runs would be compared with runs on these)."""
    recorded = setup.get("rows_sha256")
    if recorded not in (None, digest):
        raise SparseCircuitsError(
            f"{where!r} was trained and evaluated on other token rows (sha256 {recorded[:12]}"
            f"..., these {digest[:12]}...): another corpus or another Python's standard library; "
            f"pass its rows with --rows, or use another {out_flag}"
        )
    setup["rows_sha256"] = digest


def take_rows(mine: dict[str, Any], theirs: dict[str, Any], here: str, other: str) -> None:
    """Before merging results file `other` (setup `theirs`) into `here` (setup `mine`): raise
    `SparseCircuitsError` when they record other token rows, and take theirs when `mine` has
    none."""
    rows = [s.get("rows_sha256") for s in (mine, theirs)]
    if None not in rows and rows[0] != rows[1]:
        raise SparseCircuitsError(
            f"{other!r} was trained and evaluated on other token rows than {here!r} (sha256 "
            f"{rows[1][:12]}... against {rows[0][:12]}...): its figures are not comparable; "
            "rerun it with --rows of these rows"
        )
    if rows[0] is None and rows[1] is not None:
        mine["rows_sha256"] = rows[1]


def main(argv: list[str] | None = None) -> None:
    """Write the default corpus's rows for the embedded model."""
    from replacement.model import load_model
    from training.data import load_token_data

    p = argparse.ArgumentParser(prog="python -m training.token_rows", description=__doc__)
    p.add_argument("file", help="the .npz to write")
    p.add_argument("--ctx-len", type=int, default=128)
    args = p.parse_args(argv)
    data = load_token_data(load_model("default"), None, ctx_len=args.ctx_len)
    write_rows(args.file, data)
    print(f"wrote {args.file}: {tuple(data.train.shape)} training and {tuple(data.val.shape)} "
          f"held-out rows, {Path(args.file).stat().st_size / 1e6:.1f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
