"""open_dataset rejects every kind of bad input with a one-line KgeInputError naming the file."""

import numpy as np
import pytest
import torch

from kge.common.errors import KgeInputError
from kge.data.layout import (
    KGArrays,
    check_submission_counts,
    dataset_dir,
    load_with_ogb,
    open_dataset,
    write_marker,
    write_meta,
    write_split_arrays,
)

E, R, F = 50, 4, 8


def _make(root, **override):
    rng = np.random.default_rng(0)
    ds = dataset_dir(root)
    arrays = dict(
        train_hrt=np.stack([rng.integers(0, E, 200), rng.integers(0, R, 200), rng.integers(0, E, 200)], 1),
        entity_feat=rng.normal(size=(E, F)).astype(np.float16),
        relation_feat=rng.normal(size=(R, F)).astype(np.float16),
        val_hr=np.stack([rng.integers(0, E, 20), rng.integers(0, R, 20)], 1),
        val_t=rng.integers(0, E, 20),
        test_dev_hr=np.stack([rng.integers(0, E, 15), rng.integers(0, R, 15)], 1),
        test_challenge_hr=np.stack([rng.integers(0, E, 10), rng.integers(0, R, 10)], 1),
    )
    arrays.update(override)
    write_split_arrays(ds, **arrays)
    write_meta(ds, E, R)
    write_marker(ds)
    return ds


@pytest.fixture
def good(tmp_path):
    _make(tmp_path)
    return tmp_path


def _expect(root, fragment):
    with pytest.raises(KgeInputError) as info:
        open_dataset(root)
    msg = str(info.value)
    assert "\n" not in msg and fragment in msg, msg
    return msg


def test_good(good):
    kg = open_dataset(good)
    assert isinstance(kg, KGArrays)
    assert (kg.num_entities, kg.num_relations, kg.feature_dim) == (E, R, F)
    assert isinstance(kg.train_hrt, np.memmap)
    meta = torch.load(dataset_dir(good) / "meta.pt", weights_only=True)
    assert type(meta["num_entities"]) is int


def test_missing_file(good):
    (dataset_dir(good) / "processed" / "val_t.npy").unlink()
    _expect(good, "val_t.npy: missing")


def test_truncated(good):
    p = dataset_dir(good) / "processed" / "train_hrt.npy"
    data = p.read_bytes()
    p.write_bytes(data[:-40])
    _expect(good, "train_hrt.npy: truncated")


def test_garbage_header(good):
    (dataset_dir(good) / "processed" / "entity_feat.npy").write_bytes(b"not a numpy file")
    _expect(good, "entity_feat.npy: not a valid .npy")


def test_wrong_dtype(tmp_path):
    _make(tmp_path, train_hrt=np.zeros((5, 3), np.float32))
    _expect(tmp_path, "train_hrt.npy: dtype float32")
    _make(tmp_path, entity_feat=np.zeros((E, F), np.int16))
    _expect(tmp_path, "entity_feat.npy: dtype int16")


def test_wrong_shape(tmp_path):
    _make(tmp_path, train_hrt=np.zeros((5, 2), np.int64))
    _expect(tmp_path, "train_hrt.npy: shape (5, 2)")
    _make(tmp_path, val_t=np.zeros(7, np.int64))
    _expect(tmp_path, "val_t.npy: 7 rows")
    _make(tmp_path, entity_feat=np.zeros((E + 1, F), np.float16))
    _expect(tmp_path, "entity_feat.npy: shape (51, 8)")
    _make(tmp_path, relation_feat=np.zeros((R, F + 1), np.float16))
    _expect(tmp_path, "relation_feat.npy")


def test_out_of_range(tmp_path):
    bad = np.zeros((10, 3), np.int64)
    bad[7, 2] = E
    _make(tmp_path, train_hrt=bad)
    _expect(tmp_path, "train_hrt.npy: tail id 50 at row 7")
    bad = np.zeros((10, 3), np.int64)
    bad[3, 1] = -1
    _make(tmp_path, train_hrt=bad)
    _expect(tmp_path, "train_hrt.npy: relation id -1 at row 3")
    _make(tmp_path, val_t=np.full(20, E + 5))
    _expect(tmp_path, "val_t.npy: tail id 55")
    open_dataset(tmp_path, check=False)  # structural checks only


def test_out_of_range_chunked(tmp_path, monkeypatch):
    import kge.data.layout as layout

    monkeypatch.setattr(layout, "ID_CHECK_ROWS", 3)
    bad = np.zeros((10, 3), np.int64)
    bad[8, 0] = E
    _make(tmp_path, train_hrt=bad)
    _expect(tmp_path, "head id 50 at row 8")


def test_nan_feature(tmp_path, monkeypatch):
    import kge.data.layout as layout

    monkeypatch.setattr(layout, "FEATURE_CHECK_BYTES", 3 * F * 2)  # 3 rows per chunk
    f = np.zeros((E, F), np.float16)
    f[31, 2] = np.nan
    _make(tmp_path, entity_feat=f)
    _expect(tmp_path, "entity_feat.npy: non-finite (NaN or inf) feature in row 31")
    f[31, 2] = np.inf
    _make(tmp_path, entity_feat=f)
    _expect(tmp_path, "row 31")
    open_dataset(tmp_path, check_features=False)


def test_empty_split(tmp_path):
    _make(tmp_path, val_hr=np.zeros((0, 2), np.int64), val_t=np.zeros(0, np.int64))
    _expect(tmp_path, "val_hr.npy: empty split")
    _make(tmp_path, train_hrt=np.zeros((0, 3), np.int64))
    _expect(tmp_path, "train_hrt.npy: empty split")


def test_missing_marker_and_meta(good):
    ds = dataset_dir(good)
    (ds / "meta.pt").unlink()
    _expect(good, "meta.pt: missing")
    (ds / "RELEASE_v1.txt").unlink()
    _expect(good, "RELEASE_v1.txt: missing marker")
    with pytest.raises(KgeInputError, match="refusing to call ogb"):
        load_with_ogb(good)


def test_missing_folder(tmp_path):
    _expect(tmp_path, "wikikg90m-v2: dataset folder missing")


def test_meta_non_int(good):
    torch.save({"num_entities": 50.0, "num_relations": R}, dataset_dir(good) / "meta.pt")
    _expect(good, "meta.pt: 'num_entities' must be a plain Python int")
    torch.save({"num_entities": E}, dataset_dir(good) / "meta.pt")
    _expect(good, "'num_relations' must be a plain Python int")


def test_submission_counts(good):
    kg = open_dataset(good)
    with pytest.raises(KgeInputError, match="needs exactly 15000"):
        check_submission_counts(kg, good)


def test_sampled_feature_check(tmp_path, monkeypatch):
    # 50 rows in 17 chunks of 3: the sampled check reads 16 of them (first, last, 14 seeded-random),
    # so a NaN in the first or last chunk is always found, and one chunk is never read.
    import kge.data.layout as layout

    monkeypatch.setattr(layout, "FEATURE_CHECK_BYTES", 3 * F * 2)
    read = []
    real = layout._check_finite

    def spy(path, arr, progress, sampled=False):
        fraction = real(path, arr, progress, sampled)
        read.append(fraction)
        return fraction

    monkeypatch.setattr(layout, "_check_finite", spy)
    _make(tmp_path)
    open_dataset(tmp_path, check_features="sampled")
    assert read[0] == 47 / 50  # one middle chunk of 3 rows skipped
    for row in (0, E - 1):
        f = np.zeros((E, F), np.float16)
        f[row, 1] = np.nan
        _make(tmp_path, entity_feat=f)
        with pytest.raises(KgeInputError, match=f"row {row}"):
            open_dataset(tmp_path, check_features="sampled")
    # The full check finds a NaN in whichever chunk the sample skipped.
    monkeypatch.setattr(layout, "FEATURE_SAMPLE_BLOCKS", 2)  # first and last chunk only
    f = np.zeros((E, F), np.float16)
    f[25, 0] = np.inf
    _make(tmp_path, entity_feat=f)
    open_dataset(tmp_path, check_features="sampled")
    with pytest.raises(KgeInputError, match="row 25"):
        open_dataset(tmp_path, check_features="full")
