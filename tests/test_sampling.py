import time
from collections import Counter

import numpy as np
import pytest
import torch

from kge.bess.partition import Partition
from kge.bess.sampling import Batch, BessSampler, relation_probabilities
from kge.bess.shard import shard_dataset
from kge.common.errors import KgeInputError


def make_ogb(root, num_entities, num_relations, hrt, feat_dim=8):
    """Write ``hrt`` (T,3) in the OGB WikiKG90Mv2 layout under ``root``."""
    ds = root / "wikikg90m-v2"
    (ds / "processed").mkdir(parents=True)
    (ds / "RELEASE_v1.txt").write_text("v1\n")
    torch.save({"num_entities": int(num_entities), "num_relations": int(num_relations)}, ds / "meta.pt")
    np.save(ds / "processed" / "train_hrt.npy", np.asarray(hrt, dtype=np.int64))
    np.save(ds / "processed" / "entity_feat.npy", np.zeros((num_entities, feat_dim), np.float16))


def skewed_triples(rng, e, r_count, t):
    """Relation counts spanning ~2 orders of magnitude, so n_r^(1/3) and n_r differ a lot."""
    weights = 0.5 ** np.arange(r_count)
    r = rng.choice(r_count, size=t, p=weights / weights.sum())
    return np.stack([rng.integers(0, e, t), r, rng.integers(0, e, t)], 1)


def chi2_critical(df, z=4.0):
    """Upper chi-square quantile (Wilson-Hilferty); z=4 ~ p 3e-5, keeps fixed-seed tests robust."""
    return df * (1 - 2 / (9 * df) + z * np.sqrt(2 / (9 * df))) ** 3


def chi2(observed, expected_p):
    n = observed.sum()
    exp = n * expected_p
    return float(((observed - exp) ** 2 / exp).sum()), len(expected_p) - 1


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """D=4 shard set: 401 entities (last shard padded), 6 relations, 24k skewed triples."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    hrt = skewed_triples(rng, 401, 6, 24_000)
    make_ogb(root / "root", 401, 6, hrt)
    out = shard_dataset(root / "root", root / "shards", n_shards=4, seed=2, chunk_rows=5000, progress=False)
    return out, hrt


def test_relation_probabilities():
    p = relation_probabilities(np.array([8, 0, 1, 27]), 1 / 3)
    assert np.allclose(p, np.array([2, 0, 1, 3]) / 6)
    assert np.allclose(relation_probabilities([[4, 0], [0, 0]], 1.0), [[1, 0], [0, 0]])
    assert np.allclose(relation_probabilities([5, 0, 7], 0.0), [0.5, 0, 0.5])


def test_batch_layout_and_membership(shards):
    out, hrt = shards
    s = BessSampler(out, batch_size=64, n_negatives=32)
    part = Partition.load(out / "partition.npz")
    known = set(map(tuple, hrt.tolist()))
    k = 64 // 16
    assert s.per_bucket == k and len(s.buckets) == 16
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        b = s.sample(g)
        assert isinstance(b, Batch)
        for x, n in ((b.head, 64), (b.relation, 64), (b.tail, 64), (b.negatives, 32)):
            assert x.dtype == torch.int64 and x.shape == (n,)
        hs, ts = part.entity_shard[b.head.numpy()], part.entity_shard[b.tail.numpy()]
        # Exactly B/(n_owned*D) rows per bucket every step, blocks in bucket order.
        for blk, (i, j) in enumerate(s.buckets):
            assert (hs[blk * k : (blk + 1) * k] == i).all() and (ts[blk * k : (blk + 1) * k] == j).all()
        assert set(map(tuple, torch.stack([b.head, b.relation, b.tail], 1).tolist())) <= known
        negs = b.negatives.numpy()
        assert (negs >= 0).all()
        assert np.array_equal(part.entity_shard[negs], np.repeat(np.arange(4), 8))


@pytest.mark.parametrize("power", [1 / 3, 1.0])
def test_relation_frequencies_follow_power_law(shards, power):
    out, _ = shards
    s = BessSampler(out, batch_size=4096, n_negatives=4, relation_power=power)
    counts = np.load(out / "bucket_relation_counts.npy")
    g = torch.Generator().manual_seed(1)
    rel = torch.stack([s.sample(g).relation for _ in range(40)]).numpy()  # (steps, B)
    rel = rel.reshape(40, 16, 256).transpose(1, 0, 2).reshape(16, -1)  # (bucket, draws)
    target = relation_probabilities(counts, power)
    by_count = relation_probabilities(counts, 1.0)  # what uniform-over-triples sampling would give
    for blk, (i, j) in enumerate(s.buckets):
        present = np.flatnonzero(counts[i, j])
        obs = np.bincount(rel[blk], minlength=6)
        assert obs[counts[i, j] == 0].sum() == 0
        stat, df = chi2(obs[present], target[i, j, present])
        assert stat < chi2_critical(df), (i, j, stat)
        if power != 1.0:
            # The test has power: the same draws reject sampling proportional to counts.
            stat_u, _ = chi2(obs[present], by_count[i, j, present])
            assert stat_u > 10 * chi2_critical(df), (i, j, stat_u)


def test_uniform_triple_within_relation(shards):
    out, hrt = shards
    s = BessSampler(out, batch_size=4096, n_negatives=4)
    part = Partition.load(out / "partition.npz")
    g = torch.Generator().manual_seed(2)
    rel = 3  # a mid-sized relation: ~90 triples in bucket (0, 1), so 40 steps cover each many times
    draws = Counter()
    for _ in range(40):
        b = s.sample(g)
        sel = b.relation.numpy() == rel
        sel &= (part.entity_shard[b.head.numpy()] == 0) & (part.entity_shard[b.tail.numpy()] == 1)
        draws.update(map(tuple, torch.stack([b.head, b.relation, b.tail], 1).numpy()[sel].tolist()))
    in_group = hrt[(hrt[:, 1] == rel) & (part.entity_shard[hrt[:, 0]] == 0) & (part.entity_shard[hrt[:, 2]] == 1)]
    mult = Counter(map(tuple, in_group.tolist()))  # duplicate triples are drawn proportionally more
    keys = sorted(mult)
    obs = np.array([draws[k] for k in keys], float)
    stat, df = chi2(obs, np.array([mult[k] for k in keys], float) / len(in_group))
    assert obs.sum() > 5 * len(keys) and stat < chi2_critical(df)


def test_negatives_uniform_per_shard(shards):
    out, _ = shards
    s = BessSampler(out, batch_size=16, n_negatives=4000)
    part = Partition.load(out / "partition.npz")
    g = torch.Generator().manual_seed(3)
    negs = torch.stack([s.sample(g).negatives for _ in range(30)]).numpy()  # (steps, N)
    for j in range(4):
        block = negs[:, j * 1000 : (j + 1) * 1000].reshape(-1)
        real = part.shard_entities[j][part.shard_entities[j] >= 0]
        assert set(block.tolist()) <= set(real.tolist())
        obs = np.array([(block == e).sum() for e in real], float)
        stat, df = chi2(obs, np.full(len(real), 1 / len(real)))
        assert stat < chi2_critical(df), (j, stat)
    assert part.shard_counts()[3] < part.shard_size  # the padded shard is covered too


def test_same_generator_state_same_batch(shards):
    out, _ = shards
    s = BessSampler(out, batch_size=32, n_negatives=16)
    a = s.sample(torch.Generator().manual_seed(7))
    b = s.sample(torch.Generator().manual_seed(7))
    c = s.sample(torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    g = torch.Generator().manual_seed(11)
    s.sample(g)
    state = g.get_state()
    nxt = s.sample(g)
    g2 = torch.Generator()
    g2.set_state(state)
    assert all(torch.equal(x, y) for x, y in zip(nxt, s.sample(g2)))  # resume mid-run
    s2 = BessSampler(out, batch_size=32, n_negatives=16)  # a fresh process rebuilds the same tables
    assert all(torch.equal(x, y) for x, y in zip(a, s2.sample(torch.Generator().manual_seed(7))))


def test_world_size_two_rank_one_owns_odd_shards(shards):
    out, _ = shards
    s = BessSampler(out, batch_size=16, n_negatives=8, rank=1, world_size=2)
    part = Partition.load(out / "partition.npz")
    assert s.owned == [1, 3] and s.per_bucket == 2
    assert s.buckets == [(1, 0), (1, 1), (1, 2), (1, 3), (3, 0), (3, 1), (3, 2), (3, 3)]
    counts = np.load(out / "bucket_relation_counts.npy")
    assert s.num_owned_triples == counts[[1, 3]].sum()
    b = s.sample(torch.Generator().manual_seed(0))
    assert np.array_equal(part.entity_shard[b.head.numpy()], np.repeat([1, 3], 8))
    assert np.array_equal(part.entity_shard[b.tail.numpy()], np.tile(np.repeat(np.arange(4), 2), 2))
    assert np.array_equal(part.entity_shard[b.negatives.numpy()], np.repeat(np.arange(4), 2))


def test_indivisible_sizes_raise(shards):
    out, _ = shards
    with pytest.raises(KgeInputError, match=r"batch_size.*16"):
        BessSampler(out, batch_size=24, n_negatives=8)
    with pytest.raises(KgeInputError, match=r"batch_size.*8"):
        BessSampler(out, batch_size=12, n_negatives=8, rank=0, world_size=2)
    with pytest.raises(KgeInputError, match=r"negatives.*4"):
        BessSampler(out, batch_size=16, n_negatives=6)
    with pytest.raises(KgeInputError, match="world_size"):
        BessSampler(out, batch_size=16, n_negatives=8, rank=4, world_size=5)


def test_empty_bucket_raises(tmp_path):
    hrt = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 1]])  # only diagonal-ish buckets: some (i, j) empty
    make_ogb(tmp_path / "root", 20, 2, hrt)
    out = shard_dataset(tmp_path / "root", tmp_path / "s", n_shards=2, progress=False)
    with pytest.raises(KgeInputError, match="bucket.*no triples"):
        BessSampler(out, batch_size=4, n_negatives=2)


def test_incomplete_shard_dir_raises(tmp_path):
    (tmp_path / "s").mkdir()
    with pytest.raises(KgeInputError, match="shard_meta.json"):
        BessSampler(tmp_path / "s", batch_size=4, n_negatives=2)


def test_sampling_is_fast(shards):
    out, _ = shards
    s = BessSampler(out, batch_size=1024, n_negatives=1024)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        s.sample(g)
    t0 = time.perf_counter()
    for _ in range(200):
        s.sample(g)
    per_step = (time.perf_counter() - t0) / 200
    assert per_step < 5e-3, per_step  # typically ~0.1 ms; generous bound for loaded CI machines
