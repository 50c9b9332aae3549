"""import_triples: TSV / CSV / Parquet with string labels -> OGB layout -> labels round trip."""

import json

import numpy as np
import pandas as pd
import pytest

from kge.cli import main
from kge.common.errors import KgeInputError
from kge.data.importer import import_triples, load_label_maps, read_import_summary
from kge.data.layout import MARKER_NAME, answers_dir, dataset_dir, load_with_ogb, open_dataset

TRAIN = [
    ("alice", "knows", "bob"),
    ("bob", "knows", "carol"),
    ("carol", "likes", "alice"),
    ("dave", "likes", "bob"),
    ("bob", "born in", "paris"),
]
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
    return [
        _write(tmp_path / f"{name}{ext}", rows, kind, header)
        for name, rows in (("train", TRAIN), ("valid", VALID), ("test", TEST))
    ]


def _decode(root):
    ents, rels = load_label_maps(root)
    kg = open_dataset(root)
    tr = np.asarray(kg.train_hrt)
    train = [(ents[h], rels[r], ents[t]) for h, r, t in tr]
    valid = [(ents[h], rels[r], ents[t]) for (h, r), t in zip(np.asarray(kg.val_hr), np.asarray(kg.val_t))]
    test_t = np.load(answers_dir(root) / "test-dev_t.npy")
    test = [(ents[h], rels[r], ents[t]) for (h, r), t in zip(np.asarray(kg.test_dev_hr), test_t)]
    return kg, train, valid, test


@pytest.mark.parametrize(
    "kind,header", [("tsv", False), ("tsv", True), ("csv", False), ("csv", True), ("parquet", False)]
)
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
    with pytest.raises(KgeInputError, match=r"bad.tsv:1: 4 fields; expected 3"):
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
    with pytest.raises(KgeInputError, match=r"unk.tsv:1: relation 'hates' does not occur"):
        import_triples(train, unk, test, tmp_path / "o", progress=False)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(KgeInputError, match="cannot tell the format"):
        import_triples(train, valid, tmp_path / "x.json", tmp_path / "o", progress=False)


def _tsv(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_duplicates_self_loops_blank_lines_header(tmp_path):
    train = _tsv(
        tmp_path / "train.tsv",
        "subject\tpredicate\tobject\n"
        + "\n".join("\t".join(t) for t in TRAIN)
        + "\n\nalice\tknows\tbob\n  \nbob\tknows\tbob\n",
    )  # header, blank lines, one duplicate, one self-loop
    valid = _tsv(tmp_path / "valid.tsv", "alice\tlikes\tcarol\nalice\tlikes\tcarol\ncarol\tknows\terin\n")
    test = _tsv(tmp_path / "test.tsv", "dave\tknows\talice\n")
    import_triples(train, valid, test, tmp_path / "out", progress=False)
    kg, tr, va, te = _decode(tmp_path / "out")
    assert tr == TRAIN + [("bob", "knows", "bob")] and va == VALID and te == [TEST[0]]
    summary = read_import_summary(tmp_path / "out")
    assert summary["dropped"]["train_duplicates"] == 1 and summary["dropped"]["valid_duplicates"] == 1
    assert summary["self_loops"]["train"] == 1 and summary["header_rows"]["train"] is True
    assert summary["empty_lines"]["train"] == 2 and summary["entities_only_in_valid_test"] == 1  # erin
    assert (
        summary["triples"] == {"train": 6, "valid": 2, "test": 1} and summary["has_test"] and summary["test_has_tails"]
    )


def test_leaked_valid_and_test_triples_are_dropped(tmp_path):
    train, _, _ = _files(tmp_path, "tsv")
    valid = _write(tmp_path / "v.tsv", VALID + [TRAIN[0]], "tsv")
    test = _write(tmp_path / "t.tsv", TEST + [TRAIN[1], VALID[0]], "tsv")
    import_triples(train, valid, test, tmp_path / "out", progress=False)
    _, _, va, te = _decode(tmp_path / "out")
    assert va == VALID and te == TEST
    dropped = read_import_summary(tmp_path / "out")["dropped"]
    assert (dropped["valid_in_train"], dropped["test_in_train"], dropped["test_in_valid"]) == (1, 1, 1)
    all_leaked = _write(tmp_path / "leak.tsv", TRAIN[:2], "tsv")
    with pytest.raises(KgeInputError, match="leak.tsv: every row is triples also in train") as err:
        import_triples(train, all_leaked, test, tmp_path / "o2", progress=False)
    _one_line(err)


@pytest.mark.parametrize(
    "name,content,match",
    [
        (
            "mixed.tsv",
            b"a\tknows\tb\nb,knows,c\n",
            r"mixed.tsv:2: 1 field; expected 3 .* holds a comma instead: the file mixes separators",
        ),
        (
            "mixed.csv",
            b"a,knows,b\n\nb\tknows\tc\n",
            r"mixed.csv:3: 1 field; expected 3 .* holds a tab instead: the file mixes separators",
        ),
        (
            "latin1.tsv",
            b"a\tknows\tb\n\nb\tknows\tcaf\xe9\n",
            r"latin1.tsv:3: not UTF-8 \(byte 0xe9 at byte offset 22\)",
        ),
        ("short.tsv", b"a\tknows\tb\nb\tknows\n", r"short.tsv:2: 2 fields; expected 3"),
        ("emptylabel.tsv", b"a\tknows\tb\n\tknows\tc\n", r"emptylabel.tsv:2: empty head label"),
        ("quote.csv", b'a,knows,b\n"b,knows,c\n', r"quote.csv:\d+: "),
    ],
)
def test_refusals_name_file_and_line(tmp_path, name, content, match):
    train, valid, test = _files(tmp_path, "tsv")
    bad = tmp_path / name
    bad.write_bytes(content)
    with pytest.raises(KgeInputError, match=match) as err:
        import_triples(bad, valid, test, tmp_path / "out", progress=False)
    _one_line(err)
    assert not (dataset_dir(tmp_path / "out") / MARKER_NAME).exists()


def test_unseen_relation_names_line(tmp_path):
    train, _, test = _files(tmp_path, "tsv")
    valid = _tsv(tmp_path / "valid.tsv", "alice\tlikes\tcarol\n\n# no comments either\tknows\tbob\nalice\thates\tbob\n")
    with pytest.raises(
        KgeInputError, match=r"valid.tsv:4: relation 'hates' does not occur in the training file"
    ) as err:
        import_triples(train, valid, test, tmp_path / "out", progress=False)
    _one_line(err)


def test_csv_quoted_labels_with_tab_comma_quote(tmp_path):
    rows = [("New York, NY", "located\tin", 'the "US"'), ("alice", "knows", "bob")]
    train = tmp_path / "train.csv"
    pd.DataFrame(rows).to_csv(train, header=False, index=False)
    valid = _tsv(tmp_path / "valid.csv", "alice,knows,bob2\n")
    import_triples(train, valid, None, tmp_path / "out", progress=False)
    ents, rels = load_label_maps(tmp_path / "out")
    assert "New York, NY" in ents and 'the "US"' in ents and "located\tin" in rels


def test_no_test_file(tmp_path, capsys):
    train, valid, _ = _files(tmp_path, "tsv")
    assert main(["data", "import", "--train", str(train), "--valid", str(valid), "--out", str(tmp_path / "out")]) == 0
    kg = open_dataset(tmp_path / "out")
    assert kg.test_dev_hr.shape == (0, 2) and kg.test_challenge_hr.shape == (0, 2) and kg.val_hr.shape == (2, 2)
    summary = read_import_summary(tmp_path / "out")
    assert summary["has_test"] is False and summary["test_has_tails"] is False and summary["triples"]["test"] == 0
    assert summary["has_features"] is False and kg.entity_feat.shape[1] == summary["feature_dim"]
    capsys.readouterr()
    assert main(["data", "check", "--root", str(tmp_path / "out")]) == 0
    sizes = json.loads(capsys.readouterr().out)
    assert sizes["test-dev"] == 0 and sizes["valid"] == 2


def test_refused_or_failed_import_leaves_no_marker(tmp_path, monkeypatch):
    train, valid, test = _files(tmp_path, "tsv")
    out = tmp_path / "out"
    import_triples(train, valid, test, out, progress=False)
    assert (dataset_dir(out) / MARKER_NAME).is_file() and (answers_dir(out) / "test-dev_t.npy").is_file()
    unk = _write(tmp_path / "unk.tsv", [("alice", "hates", "bob")], "tsv")
    with pytest.raises(KgeInputError):
        import_triples(train, unk, test, out, progress=False)
    # The old complete import is no longer marked complete, and its summary and test answers are gone.
    assert not (dataset_dir(out) / MARKER_NAME).exists() and read_import_summary(out) is None
    assert not (answers_dir(out) / "test-dev_t.npy").exists()
    with pytest.raises(KgeInputError, match="missing marker"):
        open_dataset(out)

    import kge.data.importer as importer

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for a kill while the arrays are written

    monkeypatch.setattr(importer, "write_meta", killed)
    with pytest.raises(KeyboardInterrupt):
        import_triples(train, valid, test, out, progress=False)
    assert not (dataset_dir(out) / MARKER_NAME).exists() and read_import_summary(out) is None


def test_test_without_tails_replaces_old_answers(tmp_path):
    train, valid, test = _files(tmp_path, "tsv")
    out = tmp_path / "out"
    import_triples(train, valid, test, out, progress=False)
    queries = _write(tmp_path / "q.tsv", [r[:2] for r in TEST] * 2, "tsv")  # duplicate queries are kept, in order
    import_triples(train, valid, queries, out, progress=False)
    kg = open_dataset(out)
    assert kg.test_dev_hr.shape == (4, 2) and not (answers_dir(out) / "test-dev_t.npy").exists()
    assert read_import_summary(out)["test_has_tails"] is False


def test_predict_top_k_clamped_on_a_tiny_imported_graph(tmp_path, capsys):
    """6 entities: --top-k 100 returns top-6 with a one-line notice instead of failing; ogb's top-10 MRR still applies."""
    train, valid, _ = _files(tmp_path, "tsv")
    root, shards, model = tmp_path / "root", tmp_path / "shards", tmp_path / "model"
    assert main(["data", "import", "--train", str(train), "--valid", str(valid), "--out", str(root)]) == 0
    assert main(["shard", "--root", str(root), "--out", str(shards), "--shards", "1"]) == 0
    cfg = json.dumps(
        {
            "score_fn": "distmult",
            "dim": 8,
            "steps": 5,
            "batch_size": 4,
            "negatives": 4,
            "features": {"use": False},
            "device": "cpu",
            "validate_every": 5,
        }
    )
    assert main(["config", "model", "--name", "tiny", "--json", cfg, "--out", str(tmp_path / "cfg.json")]) == 0
    assert (
        main(
            [
                "train",
                "--config",
                str(tmp_path / "cfg.json"),
                "--root",
                str(root),
                "--shard-dir",
                str(shards),
                "--out",
                str(model),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "predict",
                "--model",
                str(model / "model.pt"),
                "--root",
                str(root),
                "--shard-dir",
                str(shards),
                "--out",
                str(tmp_path / "p.npz"),
                "--metrics",
                str(tmp_path / "p.json"),
                "--top-k",
                "100",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "top-100 asked for but the graph has 6 entities; returning top-6" in err
    with np.load(tmp_path / "p.npz") as p:
        ids, test_ids = p["valid_ids"], p["test-dev_ids"]
    assert ids.shape == (2, 6) and test_ids.shape == (0, 6)  # no test file: validation alone
    assert all(sorted(row) == list(range(6)) for row in ids)  # every real entity once, no padding
    metrics = json.loads((tmp_path / "p.json").read_text())
    assert metrics["top_k"] == 6 and 0 < metrics["valid_mrr"] <= 1
