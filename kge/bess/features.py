"""Entity features in the sharded, permuted row order written by ``kge shard``.

Row ``shard * S + local`` holds the 768-d feature of the entity at that local row; padding rows
are zero. A worker opens only its own shards: its rows are those shards concatenated (local row
``k * S + l`` is row l of ``shards[k]``). Small tables are read into memory; large ones stay
memory-mapped (random row reads).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kge.common.errors import KgeInputError
from kge.data.layout import drop_resident_pages

# Above 1 GiB of owned rows the store stays memory-mapped: the rows then live once, in the page
# cache, which the kernel can reclaim, instead of in each worker's anonymous memory (at F = 32 the
# two workers of a W = 2 job would hold 2.2 GB each). A mapped 1,536-row gather measured as fast as
# an in-memory one in 4 of 5 runs (benchmarks/scale.md).
IN_MEMORY_LIMIT_BYTES = 1 << 30
# Held as float32 (a step's gather is one copy, no cast) only while that is small; above it the rows
# stay float16 (half the memory) and each gather casts its (n, F) rows, which costs microseconds.
FLOAT32_LIMIT_BYTES = 256 << 20
# Random row reads through a file mapping leave their pages (and, by the kernel's fault-around, up
# to 64 KiB around each) in the process's RSS as file-backed pages: a training job's RSS grows to its
# owned feature file (4.4 GB at F = 32, W = 1). Those pages are the page cache's, shared with every
# other job that maps the same shards and reclaimable, so gathers keep them (dropping them cost
# 2x the gather time). Sequential scans (``block``: the tail cache of prediction and validation)
# drop what they read: they do not come back to it.


def _read_rows_into(path: Path, mapped: np.ndarray, out: np.ndarray) -> None:
    """Read every row of the .npy at ``path`` (open as the memmap ``mapped``, which gives the header
    offset) into ``out`` with plain reads, not through the mapping, so no file-backed pages stay
    resident and no intermediate copy is made."""
    view = memoryview(out.reshape(-1).view(np.uint8))
    with open(path, "rb") as fh:
        fh.seek(mapped.offset)
        done = 0
        while done < len(view):
            got = fh.readinto(view[done:])
            if not got:
                raise KgeInputError(f"{path}: truncated at byte {done} of {len(view)}; rerun `kge shard`")
            done += got


class FeatureStore:
    """Read-only (D*S, F) float16 feature rows, gathered as float32 tensors.

    Held in memory when the owned shards fit IN_MEMORY_LIMIT_BYTES (as float32 if that is at most
    FLOAT32_LIMIT_BYTES, else float16: 1,536 bytes an entity for 768-d rows); larger stores stay
    memory-mapped (random gathers leave their pages resident; block scans drop theirs).
    """

    def __init__(self, shard_dir: str | Path, n_shards: int, shards: list[int] | None = None):
        self.shard_ids = list(range(n_shards)) if shards is None else list(shards)
        paths = [Path(shard_dir) / "features" / f"shard_{i:04d}.npy" for i in self.shard_ids]
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise KgeInputError(f"{missing[0]}: missing feature shard; rerun `kge shard`")
        self.shards = []
        for path in paths:
            try:
                self.shards.append(np.load(path, mmap_mode="r"))
            except ValueError as exc:  # a truncated or damaged file
                raise KgeInputError(f"{path}: not a readable feature shard ({exc}); rerun `kge shard`") from exc
        self.shard_size = self.shards[0].shape[0]
        self.dim = self.shards[0].shape[1]
        total = sum(s.nbytes for s in self.shards)
        self.table: torch.Tensor | None = None
        if total <= IN_MEMORY_LIMIT_BYTES:
            rows = np.empty((self.shard_size * len(paths), self.dim), dtype=self.shards[0].dtype)
            for k, path in enumerate(paths):
                _read_rows_into(path, self.shards[k], rows[k * self.shard_size : (k + 1) * self.shard_size])
            self.shards = []  # no mappings left: the rows live in self.table
            self.table = torch.from_numpy(rows)
            if 2 * total <= FLOAT32_LIMIT_BYTES:
                self.table = self.table.float()  # exact

    @property
    def num_rows(self) -> int:
        return self.shard_size * len(self.shard_ids)

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (n,) int64 local rows -> (n, F) float32 features."""
        if self.table is not None:
            return self.table.index_select(
                0, rows.cpu()
            ).float()  # index_select: ~2x advanced indexing; no-op cast on float32
        rows_np = rows.cpu().numpy()
        out = np.empty((len(rows_np), self.dim), dtype=np.float16)
        shard, local = np.divmod(rows_np, self.shard_size)
        for i in np.unique(shard):
            sel = shard == i
            order = np.argsort(local[sel])  # sorted reads are kinder to a memory map
            out[np.flatnonzero(sel)[order]] = self.shards[i][local[sel][order]]
        return torch.from_numpy(out).float()

    def block(self, start: int, stop: int) -> torch.Tensor:
        """Contiguous rows [start, stop) -> (stop-start, F) float32 (a scan: mapped pages are dropped)."""
        rows = self.gather(torch.arange(start, stop))
        if self.table is None:
            for arr in self.shards:
                drop_resident_pages(arr)
        return rows
