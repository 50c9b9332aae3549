"""import_triples: TSV / CSV / Parquet with string labels -> OGB layout -> labels round trip."""

import numpy as np
import pandas as pd
import pytest

from kge.data.importer import import_triples, load_label_maps
from kge.data.layout import answers_dir, dataset_dir, load_with_ogb, open_dataset
from kge.errors import KgeInputError

TRAIN = [("alice", "knows", "bob"), ("bob", "knows", "carol"), ("carol", "likes", "alice"),
         ("dave", "likes", "bob"), ("bob", "born in", "paris")]
VALID = [("alice", "likes", "carol"), ("carol", "knows", "erin")]  # erin: unseen entity, allowed
TEST = [("dave", "knows", "alice"), ("erin", "born in", "paris")]


def _write(path, rows, kind, header=False):
    df = pd.DataFrame(rows, columns=["head", "relation", "tail"][: len(rows[0])])
    if kind == "parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, sep="\t" if kind == "tsv" else ",", header=header, index=False)
    return path


def _files(tmp_path, kind, header=False):
    ext = {"tsv": ".tsv", "csv": ".csv", "parquet": ".parquet"}[kind]
    return [_write(tmp_path / f"{name}{ext}", rows, kind, header) for name, rows in
            (("train", TRAIN), ("valid", VALID), ("test", TEST))]


def _decode(root):
    ents, rels = load_label_maps(root)
    kg = open_dataset(root)
    tr = np.asarray(kg.train_hrt)
    train = [(ents[h], rels[r], ents[t]) for h, r, t in tr]
    valid = [(ents[h], rels[r], ents[t]) for (h, r), t in zip(np.asarray(kg.val_hr), np.asarray(kg.val_t))]
    test_t = np.load(answers_dir(root) / "test-dev_t.npy")
    test = [(ents[h], rels[r], ents[t]) for (h, r), t in zip(np.asarray(kg.test_dev_hr), test_t)]
    return kg, train, valid, test


@pytest.mark.parametrize("kind,header", [("tsv", False), ("tsv", True), ("csv", False), ("csv", True), ("parquet", False)])
def test_round_trip(tmp_path, kind, header):
    train, valid, test = _files(tmp_path, kind, header)
    out = tmp_path / "out"
    import_triples(train, valid, test, out, feature_dim=16, progress=False)
    kg, tr, va, te = _decode(out)
    assert tr == TRAIN and va == VALID and te == TEST
    assert kg.num_entities == 6 and kg.num_relations == 3
    ents, rels = load_label_maps(out)
    assert list(ents) == sorted(ents) and list(rels) == ["born in", "knows", "likes"]
    assert kg.entity_feat.dtype == np.float16 and kg.entity_feat.shape == (6, 16)
    assert np.array_equal(kg.test_dev_hr, kg.test_challenge_hr)
    assert (dataset_dir(out) / "mapping-kge" / "entities.parquet").is_file()
    assert not (dataset_dir(out) / "mapping").exists()


def test_loads_with_ogb_and_deterministic(tmp_path):
    train, valid, test = _files(tmp_path, "tsv")
    a, b = tmp_path / "a", tmp_path / "b"
    import_triples(train, valid, test, a, feature_dim=16, progress=False)
    import_triples(train, valid, test, b, feature_dim=16, progress=False)
    for name in ("entity_feat.npy", "train_hrt.npy", "relation_feat.npy"):
        assert (dataset_dir(a) / "processed" / name).read_bytes() == (dataset_dir(b) / "processed" / name).read_bytes()
    ds = load_with_ogb(a)
    assert ds.num_entities == 6 and (dataset_dir(a) / "mapping-kge").is_dir()  # ogb left it alone


def test_test_without_tails_and_explicit_format(tmp_path):
    train = _write(tmp_path / "train.txt", TRAIN, "tsv")
    valid = _write(tmp_path / "valid.txt", VALID, "tsv")
    test = _write(tmp_path / "test.txt", [r[:2] for r in TEST], "tsv")
    import_triples(train, valid, test, tmp_path / "out", fmt="tsv", feature_dim=8, progress=False)
    kg = open_dataset(tmp_path / "out")
    assert kg.test_dev_hr.shape == (2, 2)
    assert not (answers_dir(tmp_path / "out") / "test-dev_t.npy").exists()


def test_entity_features(tmp_path):
    train, valid, test = _files(tmp_path, "tsv")
    labels = ["alice", "bob", "carol", "dave", "erin", "paris"]
    feats = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)
    pd.DataFrame({"label": labels[::-1], "feature": list(feats[::-1])}).to_parquet(tmp_path / "f.parquet")
    import_triples(train, valid, test, tmp_path / "out", entity_features=tmp_path / "f.parquet", progress=False)
    kg = open_dataset(tmp_path / "out")
    ents, _ = load_label_maps(tmp_path / "out")
    assert np.array_equal(np.asarray(kg.entity_feat, np.float32), feats[[labels.index(e) for e in ents]])
    np.savez(tmp_path / "f.npz", labels=np.array(labels[:5]), features=feats[:5])
    with pytest.raises(KgeInputError, match="no feature for entity 'paris'"):
        import_triples(train, valid, test, tmp_path / "o2", entity_features=tmp_path / "f.npz", progress=False)


def test_errors(tmp_path):
    train, valid, test = _files(tmp_path, "tsv")
    with pytest.raises(KgeInputError, match="nope.tsv: missing file"):
        import_triples(tmp_path / "nope.tsv", valid, test, tmp_path / "o", progress=False)
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\tc\td\n")
    with pytest.raises(KgeInputError, match="bad.tsv: 4 columns"):
        import_triples(bad, valid, test, tmp_path / "o", progress=False)
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(KgeInputError, match="empty.tsv: empty split"):
        import_triples(train, empty, test, tmp_path / "o", progress=False)
    only_header = tmp_path / "hdr.tsv"
    only_header.write_text("head\trelation\ttail\n")
    with pytest.raises(KgeInputError, match="hdr.tsv: empty split"):
        import_triples(train, only_header, test, tmp_path / "o", progress=False)
    unk = _write(tmp_path / "unk.tsv", [("alice", "hates", "bob")], "tsv")
    with pytest.raises(KgeInputError, match="relation 'hates' does not occur"):
        import_triples(train, unk, test, tmp_path / "o", progress=False)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(KgeInputError, match="cannot tell the format"):
        import_triples(train, valid, tmp_path / "x.json", tmp_path / "o", progress=False)
