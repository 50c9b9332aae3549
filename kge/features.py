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

from kge.errors import KgeInputError

IN_MEMORY_LIMIT_BYTES = 4 << 30


class FeatureStore:
    """Read-only (D*S, F) float16 feature rows, gathered as float32 tensors (held as float32 when that
    fits the in-memory limit, as float16 when only that does, else memory-mapped)."""

    def __init__(self, shard_dir: str | Path, n_shards: int, shards: list[int] | None = None):
        self.shard_ids = list(range(n_shards)) if shards is None else list(shards)
        paths = [Path(shard_dir) / "features" / f"shard_{i:04d}.npy" for i in self.shard_ids]
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise KgeInputError(f"{missing[0]}: missing feature shard; rerun `kge shard`")
        self.shards = [np.load(p, mmap_mode="r") for p in paths]
        self.shard_size = self.shards[0].shape[0]
        self.dim = self.shards[0].shape[1]
        total = sum(s.nbytes for s in self.shards)
        self.table: torch.Tensor | None = None
        if total <= IN_MEMORY_LIMIT_BYTES:
            self.table = torch.from_numpy(np.concatenate([np.asarray(s) for s in self.shards]))
            if 2 * total <= IN_MEMORY_LIMIT_BYTES:
                # Converted once (exactly): a step's gather is then one copy, not a copy and a cast.
                self.table = self.table.float()

    @property
    def num_rows(self) -> int:
        return self.shard_size * len(self.shards)

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (n,) int64 local rows -> (n, F) float32 features."""
        if self.table is not None:
            return self.table.index_select(0, rows.cpu()).float()  # index_select: ~2x advanced indexing; no-op cast on float32
        rows_np = rows.cpu().numpy()
        out = np.empty((len(rows_np), self.dim), dtype=np.float16)
        shard, local = np.divmod(rows_np, self.shard_size)
        for i in np.unique(shard):
            sel = shard == i
            order = np.argsort(local[sel])  # sorted reads are kinder to a memory map
            out[np.flatnonzero(sel)[order]] = self.shards[i][local[sel][order]]
        return torch.from_numpy(out).float()

    def block(self, start: int, stop: int) -> torch.Tensor:
        """Contiguous rows [start, stop) -> (stop-start, F) float32."""
        return self.gather(torch.arange(start, stop))
