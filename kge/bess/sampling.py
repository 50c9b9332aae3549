"""BESS batch sampling from a shard directory written by kge.bess.shard.shard_dataset.

Worker ``rank`` of ``world_size`` owns the shards i with ``i % world_size == rank``. One step draws,
for each owned head shard i and every tail shard j (bucket (i, j)), exactly B / (n_owned * D)
triples with replacement: a relation r with p(r) ∝ n_r^power (n_r = count of r in that bucket), then
a uniform triple of relation r. Negatives: N / D entities uniformly from the real (non-padding)
entities of each shard j. All randomness comes from the torch.Generator passed to ``sample``, so a
trainer that seeds one generator per step resumes bit-exactly.

Inverse relations (``inverse_relations=True``, triple augmentation): relation r + R is the reverse
of r, and bucket (i, j) also holds (t, r + R, h) for every (h, r, t) of bucket (j, i), so a worker
reads the triples whose head or tail it owns. Relation sampling then runs over 2R relations.

Memory: the owned buckets are held as int32 (or int64 if E >= 2^31) head/tail ids sorted by
(bucket, relation); the relation is implicit in the group, so ~8 bytes per owned triple.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow.dataset as pads
import torch

from kge.bess.partition import Partition
from kge.bess.shard import read_shard_meta, triples_dataset
from kge.common.errors import KgeInputError


class Batch(NamedTuple):
    """One worker's step, all int64 GLOBAL entity / relation ids.

    head (B,), relation (B,), tail (B,): positives ordered bucket by bucket ((i0, 0), (i0, 1), ...,
    (i0, D-1), (i1, 0), ...), B / (n_owned * D) consecutive rows per bucket.
    negatives (N,): N / D consecutive ids per shard j = 0..D-1.
    """

    head: torch.Tensor
    relation: torch.Tensor
    tail: torch.Tensor
    negatives: torch.Tensor


def relation_probabilities(counts, power: float = 1.0 / 3.0) -> np.ndarray:
    """p(r) ∝ counts[..., r] ** power over relations with counts > 0 (absent relations get 0).

    counts: (..., R) non-negative integers; returns float64 of the same shape, each row summing to
    1 (a row of all zeros stays all zeros). power=1 is uniform over triples, power=0 uniform over
    present relations.
    """
    c = np.asarray(counts, dtype=np.float64)
    if (c < 0).any():
        raise ValueError("relation counts must be non-negative")
    w = np.where(c > 0, np.power(c, power, where=c > 0, out=np.zeros_like(c)), 0.0)
    total = w.sum(axis=-1, keepdims=True)
    return np.divide(w, total, out=np.zeros_like(w), where=total > 0)


class BessSampler:
    """Balanced (per-bucket) positive sampling and per-shard shared negatives for one worker.

    shard_dir: output of kge.bess.shard.shard_dataset; batch_size B: positives per step for this worker;
    n_negatives N: shared negatives per step. B must divide by n_owned * D and N by D.
    """

    def __init__(
        self,
        shard_dir: str | os.PathLike,
        batch_size: int,
        n_negatives: int,
        rank: int = 0,
        world_size: int = 1,
        relation_power: float = 1.0 / 3.0,
        inverse_relations: bool = False,
    ):
        self.shard_dir = Path(shard_dir)
        meta = read_shard_meta(self.shard_dir)
        d = int(meta["n_shards"])
        r_count = int(meta["num_relations"])
        self.n_shards, self.num_relations, self.num_entities = d, r_count, int(meta["num_entities"])
        if world_size < 1 or not 0 <= rank < world_size:
            raise KgeInputError(f"rank: need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        self.rank, self.world_size = int(rank), int(world_size)
        self.owned = [i for i in range(d) if i % world_size == rank]
        if not self.owned:
            raise KgeInputError(f"world_size: {world_size} workers for {d} shards leaves rank {rank} without a shard")
        n_owned = len(self.owned)
        if batch_size < 1 or batch_size % (n_owned * d):
            raise KgeInputError(
                f"batch_size: {batch_size} must be a positive multiple of n_owned_shards * n_shards = {n_owned} * {d} = {n_owned * d}"
            )
        if n_negatives < 1 or n_negatives % d:
            raise KgeInputError(f"negatives: {n_negatives} must be a positive multiple of n_shards = {d}")
        self.batch_size, self.n_negatives = int(batch_size), int(n_negatives)
        self.per_bucket = batch_size // (n_owned * d)
        self.per_shard_negatives = n_negatives // d
        self.relation_power = float(relation_power)
        self.inverse_relations = bool(inverse_relations)
        self.num_model_relations = 2 * r_count if inverse_relations else r_count

        self.partition = Partition.load(self.shard_dir / "partition.npz")
        if self.partition.n_shards != d or self.partition.num_entities != self.num_entities:
            raise KgeInputError(f"{self.shard_dir / 'partition.npz'}: does not match shard_meta.json")
        counts_path = self.shard_dir / "bucket_relation_counts.npy"
        if not counts_path.is_file():
            raise KgeInputError(f"{counts_path}: not found")
        counts = np.load(counts_path)
        if counts.shape != (d, d, r_count):
            raise KgeInputError(f"{counts_path}: shape {counts.shape}, expected ({d}, {d}, {r_count})")
        if inverse_relations:
            # Bucket (i, j) gains the reversed triples of bucket (j, i) as relations R..2R-1.
            counts = np.concatenate([counts, counts.transpose(1, 0, 2)], axis=2)
        self.bucket_relation_counts = counts  # (D, D, R or 2R)
        for i in self.owned:
            empty = np.flatnonzero(counts[i].sum(axis=1) == 0)
            if empty.size:
                # BESS needs B/D triples from every bucket each step; an empty bucket cannot supply them.
                raise KgeInputError(
                    f"{counts_path}: bucket (head_shard={i}, tail_shard={int(empty[0])}) has no triples; "
                    f"BESS needs every bucket non-empty: use fewer shards (n_shards={d})"
                )
        n_real = self.partition.shard_counts()
        if (n_real == 0).any():
            raise KgeInputError(
                f"{self.shard_dir / 'partition.npz'}: shard {int(np.flatnonzero(n_real == 0)[0])} has no entities"
            )
        self._load_buckets(counts)
        # Negatives: shard j's real entities are its local rows [0, n_real[j]) (padding is at the end).
        self._shard_table = np.stack(self.partition.shard_entities).reshape(-1)  # (D*S,) int64
        self._shard_base = np.arange(d, dtype=np.int64) * self.partition.shard_size  # (D,)
        self._shard_real = n_real.astype(np.float64)  # (D,)
        self._shard_real_int = n_real.astype(np.int64)  # (D,)

    def _load_buckets(self, counts: np.ndarray) -> None:
        """Read owned buckets, sort by (bucket, relation) and build the flat group tables.

        Group g = one (bucket, relation) with triples; per group: start offset into the flat id
        arrays, size, relation id, and the bucket-offset cumulative probability (bucket b's groups
        span (b, b+1]) so one searchsorted samples relations for all buckets at once.
        """
        d, r_count = self.n_shards, self.num_model_relations
        id_dtype = np.int32 if self.num_entities < 2**31 else np.int64
        dataset = triples_dataset(self.shard_dir)
        heads, tails, g_start, g_size, g_rel, g_cdf = [], [], [], [], [], []
        offset = 0
        for b_local, i in enumerate(self.owned):
            table = dataset.to_table(columns=["h", "r", "t", "tail_shard"], filter=pads.field("head_shard") == i)
            h = table.column("h").to_numpy()
            r = table.column("r").to_numpy().astype(np.int64)
            t = table.column("t").to_numpy()
            j = table.column("tail_shard").to_numpy().astype(np.int64)
            del table
            if self.inverse_relations:
                # (h, r, t) with t in shard i becomes (t, r + R, h) in bucket (i, head_shard).
                rev = dataset.to_table(columns=["h", "r", "t", "head_shard"], filter=pads.field("tail_shard") == i)
                h = np.concatenate([h, rev.column("t").to_numpy()])
                t = np.concatenate([t, rev.column("h").to_numpy()])
                r = np.concatenate([r, rev.column("r").to_numpy().astype(np.int64) + self.num_relations])
                j = np.concatenate([j, rev.column("head_shard").to_numpy().astype(np.int64)])
                del rev
            key = j * r_count + r
            found = np.bincount(key, minlength=d * r_count).reshape(d, r_count)
            if not np.array_equal(found, counts[i]):
                raise KgeInputError(
                    f"{self.shard_dir / 'triples'}: head_shard={i} does not match bucket_relation_counts.npy (corrupt or partial shard set)"
                )
            order = np.argsort(key, kind="stable")
            heads.append(h[order].astype(id_dtype))
            tails.append(t[order].astype(id_dtype))
            del h, t, r, j, order
            probs = relation_probabilities(counts[i], self.relation_power)  # (D, R)
            for jj in range(d):
                rels = np.flatnonzero(counts[i, jj])
                sizes = counts[i, jj, rels]
                cdf = np.cumsum(probs[jj, rels])
                cdf[-1] = 1.0  # exact upper end: u in [0, 1) always lands inside the bucket
                g_rel.append(rels)
                g_size.append(sizes)
                g_start.append(offset + np.concatenate([[0], np.cumsum(sizes)[:-1]]))
                g_cdf.append((b_local * d + jj) + cdf)
                offset += int(sizes.sum())
        self._heads = np.concatenate(heads)  # (T_owned,) int32 global ids, sorted by (bucket, relation)
        self._tails = np.concatenate(tails)  # (T_owned,)
        self._g_start = np.concatenate(g_start).astype(np.int64)  # (G,) first triple of each group
        self._g_size = np.concatenate(g_size).astype(np.float64)  # (G,) triples in each group
        self._g_rel = np.concatenate(g_rel).astype(np.int64)  # (G,) relation id of each group
        self._g_cdf = np.concatenate(g_cdf)  # (G,) bucket index + within-bucket cumulative p
        self.num_owned_triples = offset
        n_buckets = len(self.owned) * d
        self._bucket_base = np.repeat(np.arange(n_buckets, dtype=np.float64), self.per_bucket)  # (B,)
        last = np.cumsum([len(x) for x in g_rel]) - 1  # (n_buckets,) last group of each bucket
        self._row_last_group = np.repeat(last, self.per_bucket)  # (B,)

    @property
    def buckets(self) -> list[tuple[int, int]]:
        """The (head_shard, tail_shard) of each row block of a Batch, in order."""
        return [(i, j) for i in self.owned for j in range(self.n_shards)]

    def sample(self, generator: torch.Generator, n_negatives: int | None = None) -> Batch:
        """Draw one step; fully determined by ``generator``'s state (CPU generator).

        n_negatives: this step's shared negatives N (a multiple of D; None: the sampler's own),
        for schedules that change the pool during training.

        The uniforms come from ``generator``; the index arithmetic runs in numpy, single-threaded:
        on few cores torch's intra-op threading made searchsorted on 1024 values ~4x slower than
        the whole numpy step.
        """
        b, d = self.batch_size, self.n_shards
        n = self.n_negatives if n_negatives is None else int(n_negatives)
        if n < 1 or n % d:
            raise KgeInputError(f"negatives: {n} must be a positive multiple of n_shards = {d}")
        u = torch.rand(2 * b + n, generator=generator, dtype=torch.float64).numpy()
        # Relation group of each row: bucket k's cdf lives in (k, k+1], so search k + u at once.
        g = np.searchsorted(self._g_cdf, self._bucket_base + u[:b], side="right")
        np.minimum(g, self._row_last_group, out=g)  # k + u can round up to k + 1 when u ~ 1 - 2^-53
        # Uniform triple within the (bucket, relation) group.
        size = self._g_size[g]
        within = np.minimum((u[b : 2 * b] * size).astype(np.int64), size.astype(np.int64) - 1)
        idx = self._g_start[g] + within
        # Negatives: N/D uniform local rows below each shard's real count (padding is at the end).
        u_neg = u[2 * b :].reshape(d, n // d)
        local = np.minimum((u_neg * self._shard_real[:, None]).astype(np.int64), self._shard_real_int[:, None] - 1)
        negatives = self._shard_table[(self._shard_base[:, None] + local).reshape(-1)]
        return Batch(
            head=torch.from_numpy(self._heads[idx].astype(np.int64)),
            relation=torch.from_numpy(self._g_rel[g]),
            tail=torch.from_numpy(self._tails[idx].astype(np.int64)),
            negatives=torch.from_numpy(negatives),
        )
