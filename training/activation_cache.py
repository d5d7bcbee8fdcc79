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
import shutil
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
    out_dir: str | Path,
    *,
    dtype: str = "float16",
    n_shards: int = 4,
    max_tokens: int | None = None,
    model_batch: int = 64,
    verbose: bool = True,
) -> Path:
    """Run the model over `data.train` once and store the activations of `hooks`.

    Args:
        model: the bridge whose activations are stored.
        data: token rows; only training rows are cached, BOS and special tokens left out.
        hooks: TransformerLens hook names (head-split ones are flattened).
        out_dir: the cache folder (replaced atomically when complete).
        dtype: "float16", "bfloat16" or "float32".
        n_shards: number of shards (a data-parallel run needs at least one per rank).
        max_tokens: stop after about this many stored tokens (whole rows); None: all rows.
        model_batch: rows per forward pass.
        verbose: show a progress bar.

    Returns:
        The folder.
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
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    bounds = [rows.shape[0] * s // n_shards for s in range(n_shards + 1)]
    shards, widths = [], {}
    bar = tqdm(total=rows.shape[0], desc="caching activations", unit="rows", disable=not verbose)
    for s in range(n_shards):
        shard_rows = rows[bounds[s] : bounds[s + 1]]
        n_tokens = int(token_mask(shard_rows, data.special_ids).sum())
        folder = tmp / f"shard_{s:04d}"
        folder.mkdir()
        files: dict[str, np.memmap] = {}
        at = 0
        for start in range(0, shard_rows.shape[0], model_batch):
            chunk = shard_rows[start : start + model_batch]
            acts = collect_activations(model, chunk, hooks)
            mask = token_mask(chunk, data.special_ids).to(next(iter(acts.values())).device)
            n = int(mask.sum())
            for h in hooks:
                kept = acts[h][mask].to(DTYPES[dtype]).cpu()
                if h not in files:
                    widths[h] = int(kept.shape[-1])
                    files[h] = np.lib.format.open_memmap(
                        folder / _file_name(h), "w+", _NUMPY[dtype], (n_tokens, widths[h])
                    )
                files[h][at : at + n] = _to_numpy(kept)
            at += n
            bar.update(chunk.shape[0])
        for mm in files.values():
            mm.flush()
        shards.append({"folder": folder.name, "tokens": n_tokens, "rows": len(shard_rows)})
    bar.close()
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
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


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
