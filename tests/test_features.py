"""FeatureStore: the same rows whichever way it holds them, and a memory-mapped store whose scans do
not keep the file resident (its RSS stays flat however much of the file a scan reads)."""

import sys

import numpy as np
import pytest
import torch

import kge.bess.features as features_mod
from kge.bess.features import FeatureStore


def _write_shards(tmp_path, n_shards=3, rows=500, dim=24, seed=0):
    rng = np.random.default_rng(seed)
    (tmp_path / "features").mkdir()
    arrays = []
    for i in range(n_shards):
        arr = rng.standard_normal((rows, dim)).astype(np.float16)
        np.save(tmp_path / "features" / f"shard_{i:04d}.npy", arr)
        arrays.append(arr)
    return arrays


@pytest.mark.parametrize("mode", ["float32", "float16", "mapped"])
def test_every_holding_mode_gathers_the_same_rows(tmp_path, monkeypatch, mode):
    arrays = _write_shards(tmp_path)
    if mode == "float16":
        monkeypatch.setattr(features_mod, "FLOAT32_LIMIT_BYTES", 0)
    if mode == "mapped":
        monkeypatch.setattr(features_mod, "IN_MEMORY_LIMIT_BYTES", 0)
    store = FeatureStore(tmp_path, 3, shards=[0, 2])
    owned = np.concatenate([arrays[0], arrays[2]]).astype(np.float32)
    assert store.num_rows == 1000 and store.dim == 24
    if mode == "mapped":
        assert store.table is None
    else:
        assert store.table.dtype == (torch.float32 if mode == "float32" else torch.float16)
    rows = torch.from_numpy(np.random.default_rng(1).integers(0, 1000, size=700))
    for _ in range(3):
        got = store.gather(rows)
        assert got.dtype == torch.float32
        assert torch.equal(got, torch.from_numpy(owned[rows.numpy()]))
    assert torch.equal(store.block(450, 620), torch.from_numpy(owned[450:620]))


def test_truncated_shard_is_a_clear_error(tmp_path):
    _write_shards(tmp_path, n_shards=1)
    path = tmp_path / "features" / "shard_0000.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(Exception, match="shard_0000.npy"):
        FeatureStore(tmp_path, 1)


def _rss_file_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile line")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_mapped_store_scan_releases_what_it_read(tmp_path, monkeypatch):
    # 64 MiB of features scanned block by block through the mapping (as prediction builds its tail
    # cache): without the release the process would hold all of it as file-backed RSS.
    (tmp_path / "features").mkdir()
    rows, dim = 1 << 15, 1024
    np.save(tmp_path / "features" / "shard_0000.npy", np.ones((rows, dim), dtype=np.float16))
    monkeypatch.setattr(features_mod, "IN_MEMORY_LIMIT_BYTES", 0)
    store = FeatureStore(tmp_path, 1)
    before = _rss_file_bytes()
    for start in range(0, rows, 2048):
        assert float(store.block(start, start + 2048).sum()) == 2048 * dim
    assert _rss_file_bytes() - before < 16 << 20
