"""kge.load_model / predict_tails / predict_heads / export and the `kge query` / `kge export` commands,
checked against brute-force score_triples over every candidate of a tiny trained labelled graph."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

import kge
from kge.common.errors import KgeInputError
from kge.nn import scoring

E, R, T = 37, 3, 420  # 37 entities over 2 shards of 19 rows: one padding row
RELATIONS = ["born in", "knows", "likes"]
DIM = 8


def _graph(tmp_path):
    """A random labelled graph written as TSV and imported -> ROOT (labels e00..e36)."""
    from kge.data.importer import import_triples

    rng = np.random.default_rng(3)
    names = [f"e{i:02d}" for i in range(E)]
    triples = {
        (names[h], RELATIONS[r], names[t])
        for h, r, t in zip(rng.integers(0, E, T), rng.integers(0, R, T), rng.integers(0, E, T))
    }
    # every entity occurs in train, so the sorted label order is the id order
    triples |= {(names[i], "knows", names[(i + 1) % E]) for i in range(E)}
    rows = sorted(triples)
    rng.shuffle(rows)
    files = {}
    for split, part in (("train", rows[:-40]), ("valid", rows[-40:-20]), ("test", rows[-20:])):
        files[split] = tmp_path / f"{split}.tsv"
        pd.DataFrame(part).to_csv(files[split], sep="\t", header=False, index=False)
    root = tmp_path / "data"
    import_triples(files["train"], files["valid"], files["test"], root, feature_dim=8, progress=False)
    return root, rows


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """(ROOT, RESULTS, all triples as label tuples); RESULTS/shards cut from ROOT."""
    from kge.bess.shard import shard_dataset

    tmp = tmp_path_factory.mktemp("graph")
    root, rows = _graph(tmp)
    results = tmp / "results"
    shard_dataset(root, results / "shards", 2, seed=0, progress=False)
    return root, results, rows


_TRAINED: dict = {}


def trained(graph, score_fn: str, inverse: bool = False, p: int = 1):
    """RESULTS/models/<name>/ of a model trained a few steps (once per module)."""
    from kge.config import resolve_model_config
    from kge.train.trainer import train

    root, results, _ = graph
    name = f"{score_fn}{p}{'_inv' if inverse else ''}"
    model_dir = results / "models" / name
    if name not in _TRAINED:
        config = resolve_model_config(
            {
                "score_fn": score_fn,
                "distance": p,
                "dim": DIM,
                "batch_size": 16,
                "negatives": 8,
                "steps": 4,
                "learning_rate": 0.05,
                "init_scale": 0.5,
                "device": "cpu",
                "checkpoint_every": 1000,
                "inverse_relations": inverse,
                "features": {"use": True, "share_projection": False},
            }
        )
        train(config, results / "shards", model_dir, progress=False)
        _TRAINED[name] = model_dir
    return model_dir


@pytest.fixture(scope="module")
def distmult(graph):
    return kge.load_model(trained(graph, "distmult"))


def _reference(model, tmp_path):
    """Arrays of `kge export` -> (head-role entities (E, d), tail-role (E, d), relations, normals or None)."""
    from kge.predict.inference import export_embeddings

    export_embeddings(model, tmp_path / "export", progress=False)
    out = tmp_path / "export"
    normal = np.load(out / "relations_normal.npy") if (out / "relations_normal.npy").exists() else None
    return (
        torch.from_numpy(np.load(out / "entities.npy")),
        torch.from_numpy(np.load(out / "entities_tail.npy")),
        torch.from_numpy(np.load(out / "relations.npy")),
        None if normal is None else torch.from_numpy(normal),
    )


def _brute(model, arrays, anchor: int, relation: int, direction: str) -> torch.Tensor:
    """Scores (E,) of every candidate by score_triples: (anchor, r, e) for "tail", (e, r, anchor) for "head"."""
    heads, tails, relations, normals = arrays
    r = relations[relation].expand(E, -1)
    normal = normals[relation].expand(E, -1) if normals is not None else None
    h = heads[anchor].expand(E, -1) if direction == "tail" else heads
    t = tails if direction == "tail" else tails[anchor].expand(E, -1)
    m = model.model
    return scoring.score_triples(m.score_fn, h, r, t, p=m.p, gamma=m.gamma, normal=normal)


def _check_against(frame, full: torch.Tensor, k: int):
    """The frame is the top k of ``full`` (E,): same ids in argsort order, same scores."""
    order = torch.argsort(full, descending=True)[:k].numpy()
    assert len(frame) == k
    np.testing.assert_array_equal(frame["id"].to_numpy(), order)
    np.testing.assert_allclose(frame["score"].to_numpy(), full[order].numpy(), rtol=1e-5, atol=1e-5)
    assert (np.diff(frame["score"].to_numpy()) <= 0).all()


def test_kge_import_stays_cheap():
    import subprocess
    import sys

    code = "import sys, kge; assert callable(kge.load_model); assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "score_fn,p",
    [
        ("distmult", 1),
        ("complex", 1),
        ("transe", 1),
        ("transe", 2),
        ("transh", 2),
        ("rotate", 1),
        ("rescal", 1),
        ("pairre", 1),
        ("pairre", 2),
    ],
)
def test_tails_and_direct_heads_equal_brute_force(graph, tmp_path, score_fn, p):
    model = kge.load_model(trained(graph, score_fn, p=p))
    arrays = _reference(model, tmp_path)
    for head, relation in (("e05", "knows"), ("e30", "born in")):
        h, r = model.entity_id(head), model.relation_id(relation)
        _check_against(model.predict_tails(head, relation, k=7), _brute(model, arrays, h, r, "tail"), 7)
    for relation, tail in (("likes", "e11"), ("knows", "e00")):
        r, t = model.relation_id(relation), model.entity_id(tail)
        _check_against(model.predict_heads(relation, tail, k=7), _brute(model, arrays, t, r, "head"), 7)


@pytest.mark.parametrize(
    "score_fn,p,distance,relation_dim",
    [("rescal", 1, None, DIM * DIM), ("pairre", 1, 1, 2 * DIM), ("transh", 2, 2, DIM)],
)
def test_export_describes_the_scorer(graph, tmp_path, score_fn, p, distance, relation_dim):
    """export.json carries the registry's formula, p and gamma of distance scorers, and the relation width."""
    from kge.nn.scorers import get_scorer
    from kge.predict.inference import export_embeddings

    model = kge.load_model(trained(graph, score_fn, p=p))
    meta = json.loads(export_embeddings(model, tmp_path / "export", progress=False).read_text())
    assert meta["score_fn"] == score_fn and meta["distance"] == distance and meta["relation_dim"] == relation_dim
    assert meta["gamma"] == (None if distance is None else model.model.gamma)
    assert meta["scoring"].startswith(get_scorer(score_fn).formula + "; h = entities.npy[head]")
    assert np.load(tmp_path / "export" / "relations.npy").shape == (model.model.relation.shape[0], relation_dim)
    assert (tmp_path / "export" / "relations_normal.npy").exists() == (score_fn == "transh")


def test_exported_entities_are_the_model_rows_by_id(graph, distmult, tmp_path):
    """Export reads row partition.row_of(id) of the table and the dataset's own feature row of that id."""
    from kge.data.layout import open_dataset

    root = graph[0]
    out = tmp_path / "export"
    from kge.predict.inference import export_embeddings

    path = export_embeddings(distmult, out, progress=False)
    model = distmult.model
    ids = np.arange(E)
    table = model.entity_table[torch.as_tensor(distmult.partition.row_of(ids))]
    features = torch.from_numpy(np.asarray(open_dataset(root, check=False).entity_feat, dtype=np.float32))
    np.testing.assert_array_equal(np.load(out / "entities_table.npy"), table.numpy())
    for role, name in (("head", "entities.npy"), ("tail", "entities_tail.npy")):
        np.testing.assert_allclose(
            np.load(out / name), model.encode(table, features, role)[0].detach().numpy(), rtol=1e-6, atol=1e-6
        )
    # separate projections: the two roles really differ, so the test above tells them apart
    assert not np.allclose(np.load(out / "entities.npy"), np.load(out / "entities_tail.npy"))
    frame = pq.read_table(out / "entities.parquet").to_pandas()
    assert frame["id"].tolist() == list(range(E)) and frame["label"].tolist() == [f"e{i:02d}" for i in range(E)]
    np.testing.assert_array_equal(np.stack(frame["embedding"].to_numpy()), np.load(out / "entities.npy"))
    np.testing.assert_array_equal(np.stack(frame["tail_embedding"].to_numpy()), np.load(out / "entities_tail.npy"))
    np.testing.assert_array_equal(np.stack(frame["table_embedding"].to_numpy()), np.load(out / "entities_table.npy"))
    relations = pq.read_table(out / "relations.parquet").to_pandas()
    assert relations["label"].tolist() == RELATIONS and not relations["inverse"].any()
    np.testing.assert_array_equal(np.stack(relations["embedding"].to_numpy()), model.relation.detach().numpy())
    meta = json.loads(path.read_text())
    assert (meta["score_fn"], meta["dim"], meta["num_entities"], meta["num_relations"]) == ("distmult", DIM, E, R)
    assert not list(out.glob(".tmp-*"))


def test_labels_round_trip(graph, distmult):
    _, _, rows = graph
    for h, r, _t in rows[:10]:
        assert distmult.entity_label([distmult.entity_id(h)]) == [h]
        assert distmult.relation_label([distmult.relation_id(r)]) == [r]
    frame = distmult.predict_tails("e05", "knows", k=E)
    assert frame["label"].tolist() == distmult.entity_label(frame["id"])
    assert sorted(frame["label"]) == [f"e{i:02d}" for i in range(E)]


def _known_tails(rows, head, relation):
    return {t for h, r, t in rows if h == head and r == relation}


def test_filter_known_removes_exactly_the_known_triples(graph, distmult):
    _, _, rows = graph
    # every split's triples count, test included (the imported test file has tails)
    head, relation = "e05", "knows"
    known = _known_tails(rows, head, relation)
    assert known and len(known) < E - 5
    full = distmult.predict_tails(head, relation, k=E)
    assert set(full.loc[full["known"], "label"]) == known
    filtered = distmult.predict_tails(head, relation, k=5, filter_known=True)
    expected = full.loc[~full["known"]].head(5)
    assert filtered["label"].tolist() == expected["label"].tolist() and not filtered["known"].any()
    # k is kept while enough unknown answers remain; with k = E only the unknown ones are left
    assert len(distmult.predict_tails(head, relation, k=E, filter_known=True)) == E - len(known)
    # heads: (?, r, t) known when some (h, r, t) is a triple
    tail = "e06"
    known_heads = {h for h, r, t in rows if r == relation and t == tail}
    heads = distmult.predict_heads(relation, tail, k=E)
    assert set(heads.loc[heads["known"], "label"]) == known_heads
    assert not set(distmult.predict_heads(relation, tail, k=E, filter_known=True)["label"]) & known_heads


def test_known_includes_valid_and_test(graph, distmult):
    _, _, rows = graph
    for h, r, t in rows[-40:]:  # valid and test triples
        assert distmult.entity_id(t) in distmult.known(distmult.entity_id(h), distmult.relation_id(r), "tail")
        assert distmult.entity_id(h) in distmult.known(distmult.entity_id(t), distmult.relation_id(r), "head")


def test_k_is_clamped_and_checked(distmult):
    assert len(distmult.predict_tails("e01", "likes", k=10_000)) == E
    with pytest.raises(KgeInputError, match="k: expected a positive integer"):
        distmult.predict_tails("e01", "likes", k=0)


def test_unknown_labels_are_one_line_errors(distmult):
    with pytest.raises(KgeInputError) as err:
        distmult.predict_tails("e5", "knows")
    assert "'e5'" in str(err.value) and "did you mean" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(KgeInputError, match="relation 'knws'.*did you mean 'knows'"):
        distmult.predict_heads("knws", "e05")
    with pytest.raises(KgeInputError, match="heads: expected one of"):
        distmult.predict_heads("knows", "e05", heads="sideways")
    with pytest.raises(KgeInputError, match="not trained with inverse_relations"):
        distmult.predict_heads("knows", "e05", heads="inverse")


def test_inverse_relation_heads(graph, tmp_path):
    model = kge.load_model(trained(graph, "transe", inverse=True))
    assert model.inverse_relations and model.model.relation.shape[0] == 2 * R
    arrays = _reference(model, tmp_path)
    r, t = model.relation_id("knows"), model.entity_id("e11")
    # inverse: tail prediction of (t, r + R, ?), scored with the reverse relation's vector
    inverse = _brute(model, arrays, t, r + R, "tail")
    for heads in ("auto", "inverse"):
        _check_against(model.predict_heads("knows", "e11", k=6, heads=heads), inverse, 6)
    _check_against(model.predict_heads("knows", "e11", k=6, heads="direct"), _brute(model, arrays, t, r, "head"), 6)
    # known heads are those of the original relation
    known = {h for h, rel, tl in graph[2] if rel == "knows" and tl == "e11"}
    frame = model.predict_heads("knows", "e11", k=E)
    assert set(frame.loc[frame["known"], "label"]) == known
    relations = pq.read_table(tmp_path / "export" / "relations.parquet").to_pandas()
    assert relations["label"].tolist() == RELATIONS * 2 and relations["inverse"].tolist() == [False] * R + [True] * R


def test_no_label_map_takes_ids(graph, distmult, tmp_path):
    """WikiKG90Mv2-style graph (no mapping-kge/): ids are given and printed as integer strings."""
    import shutil

    from kge.data.importer import MAPPING_DIRNAME
    from kge.data.layout import answers_dir, dataset_dir

    root = graph[0]
    bare = tmp_path / "bare"
    shutil.copytree(dataset_dir(root), dataset_dir(bare), ignore=shutil.ignore_patterns(MAPPING_DIRNAME))
    shutil.copytree(answers_dir(root), answers_dir(bare))
    model = kge.load_model(distmult.model_path, root=bare)
    assert model.entity_labels is None
    h, r = distmult.entity_id("e05"), distmult.relation_id("knows")
    frame = model.predict_tails(str(h), r, k=5)
    want = distmult.predict_tails("e05", "knows", k=5)
    assert frame["id"].tolist() == want["id"].tolist() and frame["label"].tolist() == [str(i) for i in want["id"]]
    with pytest.raises(KgeInputError, match=r"no label map .* integer id in \[0, 37\)"):
        model.predict_tails("e05", "knows")


def test_cli_query_and_export(graph, distmult, tmp_path, capsys):
    from kge.cli import main

    _, results, _ = graph
    arrays = _reference(distmult, tmp_path)
    h, r = distmult.entity_id("e05"), distmult.relation_id("knows")
    top = distmult.entity_label([int(torch.argmax(_brute(distmult, arrays, h, r, "tail")))])[0]
    assert main(["query", str(results), "--model", "distmult1", "--head", "e05", "--relation", "knows", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "(e05, knows, ?)" and lines[2].split()[:2] == ["1", top]
    assert len(lines) == 2 + 3
    assert (
        main(
            [
                "query",
                str(results),
                "--model",
                "distmult1",
                "--relation",
                "knows",
                "--tail",
                "e06",
                "-k",
                "4",
                "--filter-known",
                "--json",
            ]
        )
        == 0
    )
    answer = json.loads(capsys.readouterr().out)
    assert [a["rank"] for a in answer] == [1, 2, 3, 4] and not any(a["known"] for a in answer)
    assert [a["label"] for a in answer] == distmult.predict_heads("knows", "e06", k=4, filter_known=True)[
        "label"
    ].tolist()
    # errors: one line, exit status 2
    assert main(["query", str(results), "--model", "distmult1", "--head", "nobody", "--relation", "knows"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kge: error: entity 'nobody'") and err.count("\n") == 1
    assert main(["query", str(results), "--model", "nope", "--head", "e05", "--relation", "knows"]) == 2
    assert "no trained model 'nope'" in capsys.readouterr().err
    assert main(["query", str(results), "--model", "distmult1", "--relation", "knows"]) == 2
    assert "exactly one of --head" in capsys.readouterr().err
    out = tmp_path / "cli-export"
    assert main(["export", str(results), "--model", "distmult1", "--out", str(out)]) == 0
    for name in ("entities.parquet", "entities.npy", "relations.parquet", "relations.npy", "export.json"):
        assert (out / name).is_file(), name


def test_bad_device_and_paths_are_one_line_errors(graph, tmp_path):
    with pytest.raises(KgeInputError, match="device 'gpu'"):
        kge.load_model(trained(graph, "distmult"), device="gpu")
    with pytest.raises(KgeInputError, match="missing trained model"):
        kge.load_model(tmp_path / "nothing")
    stray = tmp_path / "elsewhere"
    stray.mkdir()
    (stray / "model.pt").write_bytes((trained(graph, "distmult") / "model.pt").read_bytes())
    with pytest.raises(KgeInputError, match="not under RESULTS/models/NAME/.*pass shard_dir"):
        kge.load_model(stray)
