from collections import Counter

import numpy as np
import pytest
import torch

import kge.bess.shard as shard_mod
from kge.bess.partition import Partition
from kge.bess.shard import read_shard_meta, shard_dataset, triples_dataset
from kge.common.errors import KgeInputError


def make_ogb(root, num_entities=200, num_relations=7, num_triples=5000, feat_dim=16, seed=0):
    """Tiny dataset in the OGB WikiKG90Mv2 layout; returns (hrt (T,3) int64, feat (E,F) float16)."""
    rng = np.random.default_rng(seed)
    ds = root / "wikikg90m-v2"
    (ds / "processed").mkdir(parents=True)
    (ds / "RELEASE_v1.txt").write_text("v1\n")
    torch.save({"num_entities": int(num_entities), "num_relations": int(num_relations)}, ds / "meta.pt")
    r = np.minimum(rng.zipf(1.5, num_triples) - 1, num_relations - 1)  # skewed relation counts
    hrt = np.stack(
        [rng.integers(0, num_entities, num_triples), r, rng.integers(0, num_entities, num_triples)], 1
    ).astype(np.int64)
    feat = rng.standard_normal((num_entities, feat_dim)).astype(np.float16)
    np.save(ds / "processed" / "train_hrt.npy", hrt)
    np.save(ds / "processed" / "entity_feat.npy", feat)
    return hrt, feat


@pytest.mark.parametrize("writer", ["writers", "dataset"])
def test_shard_round_trip(tmp_path, writer):
    hrt, feat = make_ogb(tmp_path / "root")
    d = 3
    out = shard_dataset(
        tmp_path / "root", tmp_path / "shards", n_shards=d, seed=5, chunk_rows=700, progress=False, writer=writer
    )
    meta = read_shard_meta(out)
    assert (meta["n_shards"], meta["num_entities"], meta["num_relations"], meta["num_triples"]) == (d, 200, 7, 5000)
    part = Partition.load(out / "partition.npz")
    assert part.seed == 5 and part.n_shards == d

    table = triples_dataset(out).to_table()
    assert table.schema.field("h").type == "int64" and table.schema.field("t").type == "int64"
    h, r, t = (table.column(c).to_numpy() for c in ("h", "r", "t"))
    hs, ts = table.column("head_shard").to_numpy(), table.column("tail_shard").to_numpy()
    # Each triple lies in the bucket of (shard(h), shard(t)); the multiset of triples is preserved.
    assert np.array_equal(hs, part.entity_shard[h]) and np.array_equal(ts, part.entity_shard[t])
    assert Counter(map(tuple, np.stack([h, r, t], 1).tolist())) == Counter(map(tuple, hrt.tolist()))
    # One directory per bucket, hive style.
    for i in range(d):
        for j in range(d):
            assert list((out / "triples" / f"head_shard={i}" / f"tail_shard={j}").glob("*.parquet"))

    counts = np.load(out / "bucket_relation_counts.npy")
    assert counts.shape == (d, d, 7) and counts.dtype == np.int64
    bucket = part.entity_shard[hrt[:, 0]].astype(np.int64) * d + part.entity_shard[hrt[:, 2]]
    assert np.array_equal(counts.reshape(-1), np.bincount(bucket * 7 + hrt[:, 1], minlength=d * d * 7))

    for i in range(d):
        f = np.load(out / "features" / f"shard_{i:04d}.npy", mmap_mode="r")
        assert f.shape == (part.shard_size, 16) and f.dtype == np.float16
        ids = part.shard_entities[i]
        assert np.array_equal(f[ids >= 0], feat[ids[ids >= 0]])
        assert not np.asarray(f[ids < 0]).any()
    assert {p.name for p in tmp_path.iterdir()} == {"root", "shards"}  # no temporaries left


def test_padding_and_dataset_dir_as_root(tmp_path):
    hrt, feat = make_ogb(tmp_path / "root", num_entities=10, num_triples=300)
    out = shard_dataset(tmp_path / "root" / "wikikg90m-v2", tmp_path / "s", n_shards=4, progress=False, chunk_rows=64)
    part = Partition.load(out / "partition.npz")
    assert part.shard_size == 3 and (part.shard_entities[3] == -1).sum() == 2
    f = np.load(out / "features" / "shard_0003.npy")
    assert np.array_equal(f[0], feat[part.shard_entities[3][0]]) and not f[1:].any()


def test_interrupted_run_leaves_nothing_complete(tmp_path, monkeypatch):
    make_ogb(tmp_path / "root")
    out = tmp_path / "shards"

    def boom(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(shard_mod, "_write_features", boom)
    with pytest.raises(RuntimeError, match="killed"):
        shard_dataset(tmp_path / "root", out, n_shards=2, progress=False, chunk_rows=500)
    assert not out.exists() and not list(tmp_path.glob("shards*"))
    monkeypatch.undo()

    # A hard kill leaves a temporary behind: the next run removes it and starts clean.
    stale = tmp_path / "shards.tmp-dead"
    (stale / "triples").mkdir(parents=True)
    (stale / "shard_meta.json").write_text("{}")
    shard_dataset(tmp_path / "root", out, n_shards=2, progress=False)
    assert not stale.exists()
    assert read_shard_meta(out)["n_shards"] == 2


def test_rerun_replaces_previous_output(tmp_path):
    make_ogb(tmp_path / "root")
    out = tmp_path / "shards"
    shard_dataset(tmp_path / "root", out, n_shards=2, progress=False)
    (out / "junk").write_text("x")
    shard_dataset(tmp_path / "root", out, n_shards=3, seed=1, progress=False)
    assert not (out / "junk").exists() and read_shard_meta(out)["n_shards"] == 3
    assert not (out / "triples" / "head_shard=0" / "tail_shard=0" / "part-1.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root", "shards"]


def test_missing_meta_means_incomplete(tmp_path):
    (tmp_path / "s").mkdir()
    with pytest.raises(KgeInputError, match="shard_meta.json"):
        read_shard_meta(tmp_path / "s")


def test_bad_input_names_the_file(tmp_path):
    with pytest.raises(KgeInputError, match="meta.pt"):
        shard_dataset(tmp_path / "nothing", tmp_path / "s", n_shards=2, progress=False)
    hrt, feat = make_ogb(tmp_path / "root")
    proc = tmp_path / "root" / "wikikg90m-v2" / "processed"
    np.save(proc / "train_hrt.npy", hrt[:, :2])
    with pytest.raises(KgeInputError, match="train_hrt.npy"):
        shard_dataset(tmp_path / "root", tmp_path / "s", n_shards=2, progress=False)
    bad = hrt.copy()
    bad[17, 2] = 200  # == num_entities: out of range
    np.save(proc / "train_hrt.npy", bad)
    with pytest.raises(KgeInputError, match="train_hrt.npy.*out of range"):
        shard_dataset(tmp_path / "root", tmp_path / "s", n_shards=2, progress=False, chunk_rows=10)
    np.save(proc / "train_hrt.npy", hrt)
    np.save(proc / "entity_feat.npy", feat[:-1])
    with pytest.raises(KgeInputError, match="entity_feat.npy"):
        shard_dataset(tmp_path / "root", tmp_path / "s", n_shards=2, progress=False)
    (proc / "entity_feat.npy").unlink()
    with pytest.raises(KgeInputError, match="entity_feat.npy.*not found"):
        shard_dataset(tmp_path / "root", tmp_path / "s", n_shards=2, progress=False)
    assert not (tmp_path / "s").exists()
