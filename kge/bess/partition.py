"""Random, balanced partition of the entity table into D shards (BESS).

Entities are randomly permuted and split row-wise into D shards of S = ceil(E/D) rows; the last
shard(s) are padded with -1. Shard i, local row l holds global entity ``shard_entities[i][l]``; in a
permuted entity table of D*S rows that entity lives at row ``i*S + l`` (``row_of``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kge.common.atomic import save_npz
from kge.common.errors import KgeInputError

_FORMAT_VERSION = 1


@dataclass
class Partition:
    """Entity -> (shard, local row) map.

    n_shards D, num_entities E, shard_size S = ceil(E/D).
    entity_shard   (E,) int32   shard of each global entity id.
    entity_local   (E,) int64   local row of each entity inside its shard.
    shard_entities list of D int64 arrays of length S: global id of each local row, -1 = padding
                   (only at the end of the last shard(s)).
    """

    n_shards: int
    num_entities: int
    shard_size: int
    entity_shard: np.ndarray
    entity_local: np.ndarray
    shard_entities: list[np.ndarray]
    seed: int | None = None
    _torch_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_rows(self) -> int:
        """D*S, the row count of the permuted (padded) entity table."""
        return self.n_shards * self.shard_size

    def shard_counts(self) -> np.ndarray:
        """(D,) int64 number of real (non-padding) entities per shard."""
        return np.array([int((ids >= 0).sum()) for ids in self.shard_entities], dtype=np.int64)

    def row_of(self, global_ids: Any) -> Any:
        """Row ``shard*S + local`` of each global id in the permuted (D*S, ...) entity table.

        Accepts a numpy array (returns int64 numpy) or a torch tensor (returns int64 tensor on the
        same device); any shape.
        """
        if isinstance(global_ids, torch.Tensor):
            dev = global_ids.device
            key = str(dev)
            if key not in self._torch_cache:
                # from_numpy shares memory on CPU; other devices get one copy, cached.
                shard_t = torch.from_numpy(self.entity_shard).to(dev)
                local_t = torch.from_numpy(self.entity_local).to(dev)
                self._torch_cache[key] = (shard_t, local_t)
            shard_t, local_t = self._torch_cache[key]
            ids = global_ids.long()
            return shard_t[ids].long() * self.shard_size + local_t[ids]
        ids = np.asarray(global_ids)
        return self.entity_shard[ids].astype(np.int64) * self.shard_size + self.entity_local[ids]

    def save(self, path: str | os.PathLike) -> None:
        """Write an .npz atomically. Only the (D, S) id table is stored; the inverse maps are
        rebuilt on load (halves the file for 91 M entities)."""
        save_npz(
            path,
            format_version=np.int64(_FORMAT_VERSION),
            n_shards=np.int64(self.n_shards),
            num_entities=np.int64(self.num_entities),
            shard_size=np.int64(self.shard_size),
            seed=np.int64(-1 if self.seed is None else self.seed),
            shard_entities=np.stack(self.shard_entities) if self.shard_entities else np.zeros((0, 0), np.int64),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Partition:
        path = Path(path)
        if not path.is_file():
            raise KgeInputError(f"{path}: partition file not found")
        try:
            with np.load(path) as z:
                d, e, s = int(z["n_shards"]), int(z["num_entities"]), int(z["shard_size"])
                seed = int(z["seed"])
                table = np.asarray(z["shard_entities"], dtype=np.int64)
        except (KeyError, ValueError, OSError) as exc:
            raise KgeInputError(f"{path}: not a partition file ({exc})") from exc
        if table.shape != (d, s) or s != _shard_size(e, d):
            raise KgeInputError(f"{path}: shard_entities has shape {table.shape}, expected ({d}, {_shard_size(e, d)})")
        return _from_table(table, e, None if seed < 0 else seed, source=str(path))


def owned_shards(n_shards: int, rank: int, world_size: int) -> list[int]:
    """Shards of worker ``rank``: i with i % world_size == rank (D must be a multiple of W).

    A worker's local tables (entity rows, optimizer state, features) are its shards' rows
    concatenated in this order, so shard ``owned[k]`` occupies local rows [k*S, (k+1)*S).
    """
    if world_size < 1 or n_shards % world_size:
        raise KgeInputError(
            f"workers: {world_size} workers must divide the {n_shards} entity shards (re-shard with a multiple)"
        )
    return list(range(rank, n_shards, world_size))


def locate_rows(rows: torch.Tensor, shard_size: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Global table rows (n,) -> (owner worker (n,), local row on that worker (n,)), int64."""
    shard = torch.div(rows, shard_size, rounding_mode="floor")
    owner = shard % world_size
    local = torch.div(shard, world_size, rounding_mode="floor") * shard_size + rows % shard_size
    return owner, local


def _shard_size(num_entities: int, n_shards: int) -> int:
    return math.ceil(num_entities / n_shards)


def _from_table(table: np.ndarray, num_entities: int, seed: int | None, source: str = "partition") -> Partition:
    """Build a Partition from its (D, S) table of global ids (-1 padding), checking it is a bijection."""
    d, s = table.shape
    flat = table.reshape(-1)
    valid = flat >= 0
    ids = flat[valid]
    if ids.size != num_entities or (ids.size and (ids.max() >= num_entities)):
        raise KgeInputError(f"{source}: shard table does not hold each of the {num_entities} entities once")
    rows = np.flatnonzero(valid)
    entity_shard = np.empty(num_entities, dtype=np.int32)
    entity_local = np.empty(num_entities, dtype=np.int64)
    entity_shard[ids] = (rows // s).astype(np.int32)
    entity_local[ids] = rows % s
    # E valid slots that cover every id once <=> a bijection (a repeat would leave an id unseen).
    seen = np.zeros(num_entities, dtype=bool)
    seen[ids] = True
    if not seen.all():
        raise KgeInputError(f"{source}: shard table repeats an entity id")
    return Partition(
        n_shards=d,
        num_entities=num_entities,
        shard_size=s,
        entity_shard=entity_shard,
        entity_local=entity_local,
        shard_entities=[table[i].copy() for i in range(d)],
        seed=seed,
    )


def make_partition(num_entities: int, n_shards: int, seed: int = 0) -> Partition:
    """Random balanced partition: permutation from ``numpy.random.Generator(PCG64(seed))``,
    split into D consecutive blocks of S = ceil(E/D) ids; the tail is padded with -1."""
    if int(n_shards) < 1:
        raise KgeInputError(f"n_shards: must be >= 1, got {n_shards}")
    if int(num_entities) < int(n_shards):
        raise KgeInputError(f"n_shards: {n_shards} shards for {num_entities} entities; need n_shards <= num_entities")
    e, d = int(num_entities), int(n_shards)
    s = _shard_size(e, d)
    perm = np.random.Generator(np.random.PCG64(seed)).permutation(e).astype(np.int64)
    table = np.full(d * s, -1, dtype=np.int64)
    table[:e] = perm
    return _from_table(table.reshape(d, s), e, int(seed))
