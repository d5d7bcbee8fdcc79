"""Activations written to disk once and read back by any number of training runs.

    write_activation_cache(model, data, hooks, "acts/", dtype="float16", n_shards=4)
    cache = ActivationCache("acts/")            # memory-maps the shards, checks the manifest
    batches = CachedBatches(cache, hooks, batch_tokens=4096, seed=0)
    batches.batch(step)                         # {hook: [batch_tokens, d] float32}

Layout of a cache folder:

    manifest.json              model, processing, hooks and widths, dtype, ctx_len, BOS and
                               special ids, sha256 of the token rows, shards and token counts
    shard_0000/<hook>.npy      [tokens, d] activations of that shard's training tokens

Only training tokens that count (not BOS, not special) are stored, in row order. Shards are
contiguous blocks of rows of about equal size. The batch of a step takes a fixed share of
`batch_tokens` from every shard, drawn by a per-shard permutation stream (`sample_indices`)
that is a pure function of (seed, shard, step): so resuming at any step rebuilds its batch
exactly, a run longer than the cache goes on into new epochs, and a data-parallel rank that
owns some of the shards reads only those files while the global batch (the union over
ranks) stays the one a single process draws.

bfloat16 has no numpy type: such shards hold the raw 16 bits as uint16.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from replacement.atomic import write_json
from replacement.errors import SparseCircuitsError
from replacement.output_folder import OutputFolder, owned
from replacement.processing import model_processing
from training.activations import collect_activations
from training.data import TokenData, sample_indices, token_mask

MANIFEST = "manifest.json"
FORMAT = "sparse-circuits-activations"
VERSION = 1
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_NUMPY = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}


class ActivationCacheError(SparseCircuitsError):
    """A cache folder that is missing, incomplete, or does not fit the run reading it."""


def token_source_hash(rows: Int[Tensor, "rows ctx"]) -> str:
    """sha256 of the token rows (shape and int64 values): names the data a cache was made of."""
    digest = hashlib.sha256(str(tuple(rows.shape)).encode())
    digest.update(rows.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _file_name(hook: str) -> str:
    return hook + ".npy"


def write_activation_cache(
    model: Any,
    data: TokenData,
    hooks: Sequence[str],
    out_dir: str | Path | OutputFolder,
    *,
    dtype: str = "float16",
    n_shards: int = 4,
    max_tokens: int | None = None,
    model_batch: int = 64,
    verbose: bool = True,
    overwrite: bool = False,
) -> Path:
    """Run the model over `data.train` once and store the activations of `hooks`.

    Args:
        model: the bridge whose activations are stored.
        data: token rows; only training rows are cached, BOS and special tokens left out.
        hooks: TransformerLens hook names (head-split ones are flattened).
        out_dir: the cache folder, or an `OutputFolder` the caller opened. An earlier cache
            there is replaced whole when the new one is complete; a folder holding files
            sparse-circuits did not write is refused (see `replacement.output_folder`).
        dtype: "float16", "bfloat16" or "float32".
        n_shards: number of shards (a data-parallel run needs at least one per rank).
        max_tokens: stop after about this many stored tokens (whole rows); None: all rows.
        model_batch: rows per forward pass.
        verbose: show a progress bar.
        overwrite: write into a folder that holds other files (they are kept).

    Returns:
        The folder (resolved).
    """
    if dtype not in DTYPES:
        raise ActivationCacheError(f"dtype {dtype!r} is unknown; expected one of {list(DTYPES)}")
    hooks = sorted(set(hooks))
    if not hooks:
        raise ActivationCacheError("no hooks to cache; expected at least one hook name")
    rows = data.train
    if max_tokens is not None:
        per_row = max(1, int(token_mask(rows[:64], data.special_ids).sum()) // min(64, len(rows)))
        rows = rows[: max(1, -(-int(max_tokens) // per_row))]
    n_shards = max(1, min(int(n_shards), rows.shape[0]))
    with owned(out_dir, command="cache", overwrite=overwrite, legacy=_cache_entry) as out:
        # the widths from a two-token pass, so that the disk is checked before the work
        probe = collect_activations(model, rows[:1, :2], hooks)
        widths = {h: int(probe[h].shape[-1]) for h in hooks}
        total = int(token_mask(rows, data.special_ids).sum())
        itemsize = np.dtype(_NUMPY[dtype]).itemsize
        out.check_space(
            total * sum(widths.values()) * itemsize,
            f"the cache ({total:,} tokens x {sum(widths.values())} {dtype} values)",
        )
        tmp = out.stage()
        shards = _write_shards(
            model, data, rows, hooks, widths, tmp, dtype, n_shards, model_batch, verbose, out.path
        )
        write_json(
            tmp / MANIFEST,
            {
                "format": FORMAT,
                "version": VERSION,
                "model": str(getattr(model.cfg, "model_name", "") or ""),
                "processing": model_processing(model),
                "hooks": widths,
                "dtype": dtype,
                "ctx_len": int(rows.shape[1]),
                "bos": int(data.bos),
                "special_ids": [int(i) for i in data.special_ids],
                "token_source_sha256": token_source_hash(rows),
                "n_tokens": sum(s["tokens"] for s in shards),
                "shards": shards,
            },
        )
        out.commit()
    return out.path


def _write_shards(
    model: Any,
    data: TokenData,
    rows: Int[Tensor, "rows ctx"],
    hooks: list[str],
    widths: dict[str, int],
    tmp: Path,
    dtype: str,
    n_shards: int,
    model_batch: int,
    verbose: bool,
    where: Path,
) -> list[dict[str, Any]]:
    """Write every shard's .npy files into `tmp`; returns the manifest's shard entries."""
    bounds = [rows.shape[0] * s // n_shards for s in range(n_shards + 1)]
    shards = []
    bar = tqdm(total=rows.shape[0], desc="caching activations", unit="rows", disable=not verbose)
    for s in range(n_shards):
        shard_rows = rows[bounds[s] : bounds[s + 1]]
        n_tokens = int(token_mask(shard_rows, data.special_ids).sum())
        folder = tmp / f"shard_{s:04d}"
        folder.mkdir()
        files = {
            h: _NpyWriter(folder / _file_name(h), _NUMPY[dtype], (n_tokens, widths[h]), where)
            for h in hooks
        }
        try:
            for start in range(0, shard_rows.shape[0], model_batch):
                chunk = shard_rows[start : start + model_batch]
                acts = collect_activations(model, chunk, hooks)
                mask = token_mask(chunk, data.special_ids).to(next(iter(acts.values())).device)
                for h in hooks:
                    files[h].write(_to_numpy(acts[h][mask].to(DTYPES[dtype]).cpu()))
                bar.update(chunk.shape[0])
        finally:
            for f in files.values():
                f.close()
        shards.append({"folder": folder.name, "tokens": n_tokens, "rows": len(shard_rows)})
    bar.close()
    return shards


class _NpyWriter:
    """A .npy file written front to back with ordinary buffered writes.

    No memory map: a full disk is an `OSError` naming the cache folder, not a SIGBUS.
    """

    def __init__(self, path: Path, dtype: Any, shape: tuple[int, int], where: Path):
        self.where = where
        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
            "fortran_order": False,
            "shape": shape,
        }
        self.f = self._io(lambda: open(path, "wb"))
        self._io(lambda: np.lib.format.write_array_header_1_0(self.f, header))

    def _io(self, fn: Any) -> Any:
        try:
            return fn()
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self.where)) from exc

    def write(self, array: np.ndarray) -> None:
        self._io(lambda: self.f.write(np.ascontiguousarray(array).tobytes()))

    def close(self) -> None:
        if not self.f.closed:
            self._io(self.f.close)


def _cache_entry(path: Path) -> bool:
    """An entry of a cache written before output markers: its manifest and shard folders."""
    try:
        manifest = json.loads((path.parent / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return False
    shards = {s.get("folder") for s in manifest.get("shards", []) if isinstance(s, dict)}
    return path.name == MANIFEST or path.name in shards


def _to_numpy(t: Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        return t.view(torch.uint16).numpy()
    return t.numpy()


class ActivationCache:
    """A cache folder opened for reading: its manifest and memory-mapped shards."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise ActivationCacheError(
                f"{str(self.folder)!r} is not an activation cache (no {MANIFEST}); "
                "write one with `sparse-circuits cache`"
            )
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ActivationCacheError(f"{str(path)!r} is not valid JSON: {exc}") from exc
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise ActivationCacheError(
                f"{str(path)!r} is not a {FORMAT} manifest of version {VERSION}"
            )
        self.dtype = DTYPES[self.manifest["dtype"]]
        self.hooks: dict[str, int] = dict(self.manifest["hooks"])
        self.shard_tokens = [int(s["tokens"]) for s in self.manifest["shards"]]
        self._maps: dict[tuple[int, str], np.ndarray] = {}

    @property
    def n_shards(self) -> int:
        """Number of shards."""
        return len(self.shard_tokens)

    @property
    def n_tokens(self) -> int:
        """Stored tokens over all shards."""
        return sum(self.shard_tokens)

    def check(self, hooks: Sequence[str], model_name: str | None = None) -> None:
        """Raise naming what is missing when the cache cannot serve `hooks` (of `model_name`)."""
        missing = sorted(set(hooks) - set(self.hooks))
        if missing:
            raise ActivationCacheError(
                f"activation cache {str(self.folder)!r} has no {missing}; it holds "
                f"{sorted(self.hooks)} (cache those hooks with `sparse-circuits cache --hooks`)"
            )
        cached = self.manifest.get("model", "")
        if model_name is not None and cached and model_name != cached:
            raise ActivationCacheError(
                f"activation cache {str(self.folder)!r} holds activations of model {cached!r}, "
                f"not of {model_name!r}"
            )

    def shard(self, s: int, hook: str) -> Float[Tensor, "tokens d"]:
        """Shard `s` of `hook` as a read-only memory-mapped tensor (nothing read yet)."""
        key = (s, hook)
        if key not in self._maps:
            folder = self.folder / self.manifest["shards"][s]["folder"]
            path = folder / _file_name(hook)
            if not path.is_file():
                raise ActivationCacheError(f"activation cache file {str(path)!r} is missing")
            self._maps[key] = np.load(path, mmap_mode="r")
            if self._maps[key].shape != (self.shard_tokens[s], self.hooks[hook]):
                raise ActivationCacheError(
                    f"{str(path)!r} has shape {self._maps[key].shape}; the manifest says "
                    f"{(self.shard_tokens[s], self.hooks[hook])}"
                )
        return self._maps[key]

    def rows(self, s: int, hook: str, idx: Int[Tensor, " n"]) -> Float[Tensor, "n d"]:
        """Rows `idx` of shard `s` of `hook`, as float32 (read in ascending order)."""
        mm = self.shard(s, hook)
        block = torch.from_numpy(np.ascontiguousarray(mm[idx.numpy()]))
        if self.dtype == torch.bfloat16:
            block = block.view(torch.bfloat16)
        return block.float()


def shard_quota(batch_tokens: int, n_shards: int) -> list[int]:
    """Tokens each shard gives to every batch (sizes differ by at most one)."""
    base, extra = divmod(int(batch_tokens), n_shards)
    return [base + (1 if s < extra else 0) for s in range(n_shards)]


class CachedBatches:
    """Training batches read from an `ActivationCache`; the batch of a step is fixed by seed.

    Args:
        cache: the opened cache.
        hooks: hooks to read.
        batch_tokens: global tokens per step.
        seed: seed of the order.
        shards: the shards this process reads (default: all); their batch parts are
            concatenated in shard order.
    """

    def __init__(
        self,
        cache: ActivationCache,
        hooks: Sequence[str],
        batch_tokens: int,
        seed: int,
        shards: Sequence[int] | None = None,
    ):
        cache.check(hooks)
        self.cache, self.hooks = cache, sorted(set(hooks))
        self.seed = int(seed)
        self.quota = shard_quota(batch_tokens, cache.n_shards)
        self.shards = list(range(cache.n_shards)) if shards is None else list(shards)
        empty = [s for s in self.shards if cache.shard_tokens[s] == 0 and self.quota[s]]
        if empty:
            raise ActivationCacheError(f"activation cache shards {empty} hold no tokens")
        self._last: tuple[int, dict[str, Tensor]] | None = None

    def indices(self, step: int, s: int) -> Int[Tensor, " n"]:
        """Token positions of shard `s` in the batch of `step` (ascending)."""
        n, q = self.cache.shard_tokens[s], self.quota[s]
        idx = sample_indices(n, int(step) * q, q, self.seed * 7919 + s)
        return idx.sort().values

    def batch(self, step: int) -> dict[str, Float[Tensor, "tokens d"]]:
        """This process's part of the batch of `step` (the last one is kept for reuse)."""
        if self._last is not None and self._last[0] == step:
            return self._last[1]
        parts: dict[str, list[Tensor]] = {h: [] for h in self.hooks}
        for s in self.shards:
            if not self.quota[s]:
                continue
            idx = self.indices(step, s)
            for h in self.hooks:
                parts[h].append(self.cache.rows(s, h, idx))
        out = {h: torch.cat(p) for h, p in parts.items()}
        self._last = (int(step), out)
        return out


def rank_shards(n_shards: int, rank: int, world_size: int) -> list[int]:
    """The shards rank `rank` of `world_size` reads (round robin)."""
    if n_shards < world_size:
        raise ActivationCacheError(
            f"the activation cache has {n_shards} shards; a run of {world_size} processes "
            f"needs at least {world_size} (write it with --shards {world_size} or more)"
        )
    return list(range(rank, n_shards, world_size))
