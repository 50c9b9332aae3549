import math

import numpy as np
import pytest
import torch

from kge.bess.partition import Partition, make_partition
from kge.common.errors import KgeInputError


@pytest.mark.parametrize("e,d", [(1000, 4), (1001, 4), (10, 3), (7, 7), (5, 1), (97, 8)])
def test_partition_is_balanced_permutation(e, d):
    p = make_partition(e, d, seed=3)
    s = math.ceil(e / d)
    assert (p.n_shards, p.num_entities, p.shard_size) == (d, e, s)
    table = np.stack(p.shard_entities)
    assert table.shape == (d, s) and table.dtype == np.int64
    flat = table.reshape(-1)
    # Every entity exactly once, padding only at the very end.
    assert np.array_equal(np.sort(flat[flat >= 0]), np.arange(e))
    assert (flat[e:] == -1).all() and (flat[:e] >= 0).all()
    counts = p.shard_counts()
    # Row-wise split: full shards, then the remainder, padding only at the end.
    assert np.array_equal(counts, np.clip(e - np.arange(d) * s, 0, s))
    assert p.entity_shard.dtype == np.int32 and p.entity_local.dtype == np.int64
    ids = np.arange(e)
    assert np.array_equal(table[p.entity_shard, p.entity_local], ids)


def test_partition_is_random_and_seeded():
    a, b, c = make_partition(1000, 4, 0), make_partition(1000, 4, 0), make_partition(1000, 4, 1)
    assert np.array_equal(a.entity_shard, b.entity_shard)
    assert not np.array_equal(a.entity_shard, c.entity_shard)
    assert not np.array_equal(a.shard_entities[0], np.arange(250))  # permuted, not blocks of ids


def test_row_of_numpy_and_torch():
    p = make_partition(103, 5, seed=1)
    ids = np.array([0, 5, 102, 50, 5])
    rows = p.row_of(ids)
    assert rows.dtype == np.int64
    flat = np.stack(p.shard_entities).reshape(-1)
    assert np.array_equal(flat[rows], ids)  # the permuted table holds each id at row_of(id)
    trows = p.row_of(torch.from_numpy(ids).reshape(5, 1))
    assert trows.dtype == torch.int64 and trows.shape == (5, 1)
    assert np.array_equal(trows.reshape(-1).numpy(), rows)
    assert np.array_equal(np.sort(p.row_of(np.arange(103))), np.sort(np.flatnonzero(flat >= 0)))


def test_save_load_round_trip(tmp_path):
    p = make_partition(1001, 4, seed=9)
    path = tmp_path / "sub" / "partition.npz"
    p.save(path)
    assert [x.name for x in path.parent.iterdir()] == ["partition.npz"]  # atomic: no temp left
    q = Partition.load(path)
    assert (q.n_shards, q.num_entities, q.shard_size, q.seed) == (4, 1001, 251, 9)
    assert np.array_equal(q.entity_shard, p.entity_shard) and np.array_equal(q.entity_local, p.entity_local)
    assert all(np.array_equal(x, y) for x, y in zip(q.shard_entities, p.shard_entities))


def test_bad_input(tmp_path):
    with pytest.raises(KgeInputError, match="n_shards"):
        make_partition(3, 4)
    with pytest.raises(KgeInputError, match="n_shards"):
        make_partition(3, 0)
    with pytest.raises(KgeInputError, match="missing.npz"):
        Partition.load(tmp_path / "missing.npz")
    p = make_partition(10, 2, seed=0)
    table = np.stack(p.shard_entities)
    table[0, 0] = table[0, 1]  # duplicate id
    np.savez(
        tmp_path / "bad.npz", format_version=1, n_shards=2, num_entities=10, shard_size=5, seed=0, shard_entities=table
    )
    with pytest.raises(KgeInputError, match="bad.npz"):
        Partition.load(tmp_path / "bad.npz")
