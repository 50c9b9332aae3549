"""Filtered both-sided evaluation against brute force: a full score matrix and an explicit filter set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kge.predict.evaluation import known_answers, query_keys, rank_batch, rank_metrics, ranks_from_counts, split_metrics


def brute_counts(scores: np.ndarray, targets: np.ndarray, known: list[set], valid: np.ndarray):
    """Per query: (n_> , n_=) among valid candidates that are not known answers (the target excluded)."""
    greater, ties = [], []
    for q, t in enumerate(targets):
        s_t = scores[q, t]
        cands = [e for e in range(scores.shape[1]) if valid[e] and e != t and e not in known[q]]
        greater.append(sum(scores[q, e] > s_t for e in cands))
        ties.append(sum(scores[q, e] == s_t for e in cands))
    return np.array(greater), np.array(ties)


@pytest.mark.parametrize("block_rows", [1, 3, 7, 100])
def test_rank_batch_equals_brute_force_with_ties(block_rows):
    rng = np.random.default_rng(0)
    Q, N = 9, 23
    # Integer scores: many exact ties, on both sides of every target.
    scores = rng.integers(0, 5, size=(Q, N)).astype(np.float32)
    valid = np.ones(N, dtype=bool)
    valid[[4, 17, 22]] = False  # padding rows: never candidates
    targets = rng.choice(np.flatnonzero(valid), size=Q)
    known = [set(rng.choice(N, size=rng.integers(0, 6), replace=False).tolist()) for _ in range(Q)]
    for q in range(Q):
        known[q].add(int(targets[q]))  # the target is itself a known answer: it must stay a candidate
    pairs = [(q, e) for q in range(Q) for e in sorted(known[q])]
    f_query = torch.tensor([p[0] for p in pairs])
    f_rows = torch.tensor([p[1] for p in pairs])
    S = torch.from_numpy(scores)

    def block(lo, hi):
        return S[:, lo:hi].clone()

    def rows_scorer(rows):
        return S[:, rows]

    got = rank_batch(
        block,
        rows_scorer,
        N,
        torch.from_numpy(targets),
        f_query,
        f_rows,
        k=5,
        block_rows=block_rows,
        valid_rows=torch.from_numpy(valid),
    )
    g, e = brute_counts(scores, targets, [k - {int(t)} for k, t in zip(known, targets)], valid)
    assert got.greater.tolist() == g.tolist() and got.ties.tolist() == e.tolist()
    rg, re = brute_counts(scores, targets, [set() for _ in range(Q)], valid)
    assert got.raw_greater.tolist() == rg.tolist() and got.raw_ties.tolist() == re.tolist()
    assert (got.ties > 0).any() and (got.greater > 0).any()  # ties on both sides were exercised
    # The filtered top-5: values are torch.topk of the filtered matrix (target kept).
    filtered = scores.copy()
    filtered[:, ~valid] = -np.inf
    for q in range(Q):
        for e_ in known[q] - {int(targets[q])}:
            filtered[q, e_] = -np.inf
    want = torch.topk(torch.from_numpy(filtered), 5).values
    assert torch.equal(got.top_scores, want)
    assert all(
        filtered[q, r] == s
        for q in range(Q)
        for r, s in zip(got.top_rows[q].tolist(), got.top_scores[q].tolist())
        if r >= 0
    )


def test_rank_batch_recounts_when_the_provisional_score_differs():
    # score_rows returns a slightly different value than the block: the counts must follow the block's.
    S = torch.tensor([[1.0, 2.0, 2.0, 3.0, 2.0]])
    target = torch.tensor([1])

    def rows_scorer(rows):
        return S[:, rows] + 1e-3  # a different kernel, one bit off (here much more)

    got = rank_batch(
        lambda lo, hi: S[:, lo:hi].clone(),
        rows_scorer,
        5,
        target,
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, dtype=torch.long),
        k=2,
        block_rows=2,
    )
    assert got.greater.tolist() == [1] and got.ties.tolist() == [2]


def test_tie_policies_and_metrics_by_hand():
    ranks = ranks_from_counts(np.array([0, 2, 9]), np.array([3, 0, 1]))
    assert ranks["optimistic"].tolist() == [1, 3, 10]
    assert ranks["pessimistic"].tolist() == [4, 3, 11]
    assert ranks["realistic"].tolist() == [2.5, 3, 10.5]
    m = rank_metrics(ranks["realistic"])
    assert m["mrr"] == pytest.approx((1 / 2.5 + 1 / 3 + 1 / 10.5) / 3)
    assert m["mr"] == pytest.approx(16 / 3)
    assert m["hits@1"] == 0 and m["hits@3"] == pytest.approx(2 / 3) and m["hits@10"] == pytest.approx(2 / 3)
    # A model that scores everything equal does not get rank 1 (realistic: the middle).
    everything_equal = ranks_from_counts(np.array([0]), np.array([99]))
    assert everything_equal["realistic"][0] == 50.5


def test_split_metrics_both_pools_directions_and_relations():
    counts = {"tail": (np.array([0, 1]), np.array([0, 0])), "head": (np.array([3, 0]), np.array([0, 2]))}
    out = split_metrics(counts, np.array([0, 1]), np.array(["likes", "knows"]))
    assert out["both"]["realistic"]["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 2) / 4)
    assert out["tail"]["realistic"]["mrr"] == pytest.approx((1 + 1 / 2) / 2)
    assert out["per_relation"]["likes"]["both"]["mrr"] == pytest.approx((1 + 1 / 4) / 2)
    assert out["per_relation"]["knows"]["queries"] == 1


def test_known_answers_equal_brute_force():
    rng = np.random.default_rng(1)
    E, R = 12, 3
    train = rng.integers(0, E, size=(200, 3))
    train[:, 1] = rng.integers(0, R, size=200)
    extra = rng.integers(0, E, size=(20, 3))
    extra[:, 1] = rng.integers(0, R, size=20)
    queries = np.concatenate([train[:7], extra[:5]])
    for direction, (a, b) in (("tail", (0, 2)), ("head", (2, 0))):
        keys = query_keys(queries[:, a], queries[:, 1], R)
        q_idx, ent = known_answers(keys, [train, extra], direction, R)
        got = [set(ent[q_idx == i].tolist()) for i in range(len(queries))]
        triples = np.concatenate([train, extra])
        want = [set(triples[(triples[:, a] == x[a]) & (triples[:, 1] == x[1]), b].tolist()) for x in queries]
        assert got == want
        assert len(q_idx) == sum(len(s) for s in want)  # each pair once


# ----- a trained model end to end, against a brute-force full score matrix -----------------------
def _tiny_graph(tmp_path, seed=0):
    """A labelled graph of 40 entities, 3 relations: train, valid and test files (TSV)."""
    rng = np.random.default_rng(seed)
    ents = [f"e{i}" for i in range(40)]
    rels = ["likes", "knows", "near"]
    triples = {
        (ents[h], rels[r], ents[t])
        for h, r, t in zip(rng.integers(0, 40, 400), rng.integers(0, 3, 400), rng.integers(0, 40, 400))
    }
    triples = sorted(triples)
    rng.shuffle(triples)
    splits = {"train": triples[:300], "valid": triples[300:330], "test": triples[330:360]}
    paths = {}
    for name, rows in splits.items():
        path = tmp_path / f"{name}.tsv"
        path.write_text("".join("\t".join(row) + "\n" for row in rows))
        paths[name] = path
    return paths


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from kge.bess.shard import shard_dataset
    from kge.data.importer import import_triples

    tmp = tmp_path_factory.mktemp("tiny")
    paths = _tiny_graph(tmp)
    root = tmp / "data"
    import_triples(paths["train"], paths["valid"], paths["test"], root, feature_dim=8, progress=False)
    shards = tmp / "shards"
    shard_dataset(root, shards, 2, seed=0, progress=False)
    return tmp, root, shards


def _train(tmp, shards, name, settings):
    from kge.config import resolve_model_config
    from kge.train.trainer import train

    config = resolve_model_config(
        {
            "dim": 8,
            "batch_size": 16,
            "negatives": 16,
            "steps": 4,
            "learning_rate": 0.05,
            "checkpoint_every": 1000,
            "device": "cpu",
            **settings,
        }
    )
    model_dir = tmp / "models" / name
    train(config, shards, model_dir, progress=False)
    return model_dir / "model.pt"


def _brute_force(model_path, root, shards, heads):
    """Filtered realistic ranks (both directions) of every valid and test triple from the full score
    matrix of score_triples over all entities, with the explicit set of known triples."""
    from kge.bess.features import FeatureStore
    from kge.bess.partition import Partition
    from kge.data.layout import answers_dir, open_dataset
    from kge.nn import scoring
    from kge.predict.predictor import load_model

    model, saved, _ = load_model(model_path, "cpu")
    part = Partition.load(shards / "partition.npz")
    feats = FeatureStore(shards, part.n_shards)
    ds = open_dataset(root, check=False)
    E, R = ds.num_entities, ds.num_relations
    rows = torch.from_numpy(part.row_of(np.arange(E)))
    with torch.no_grad():
        emb = model.entity_table[rows].double()
        f = feats.gather(rows).double() if model.use_features else None
        model.double()
        enc = {role: model.encode(emb, f, role)[0] for role in ("head", "tail")}
    train = np.asarray(ds.train_hrt)
    valid = np.concatenate([np.asarray(ds.val_hr), np.asarray(ds.val_t)[:, None]], axis=1)
    test = np.concatenate([np.asarray(ds.test_dev_hr), np.load(answers_dir(root) / "test-dev_t.npy")[:, None]], axis=1)
    tails_of, heads_of = {}, {}  # the explicit filter set: every known triple, by (h, r) and by (r, t)
    for h_, r_, t_ in np.concatenate([train, valid, test]).tolist():
        tails_of.setdefault((h_, r_), set()).add(t_)
        heads_of.setdefault((r_, t_), set()).add(h_)
    kw = dict(p=model.p, gamma=model.gamma)
    out = {}
    for split, triples in (("valid", valid), ("test", test)):
        ranks = {"tail": [], "head": []}
        for h, r, t in triples.tolist():
            w = model.normal[[r]].double().expand(E, -1) if model.normal is not None else None
            with torch.no_grad():
                s_tail = scoring.score_triples(
                    model.score_fn,
                    enc["head"][[h]].expand(E, -1),
                    model.relation[[r]].double().expand(E, -1),
                    enc["tail"],
                    normal=w,
                    **kw,
                )
                if heads == "direct":
                    s_head = scoring.score_triples(
                        model.score_fn,
                        enc["head"],
                        model.relation[[r]].double().expand(E, -1),
                        enc["tail"][[t]].expand(E, -1),
                        normal=w,
                        **kw,
                    )
                else:  # (t, r + R, ?) tail prediction
                    w2 = model.normal[[r + R]].double().expand(E, -1) if model.normal is not None else None
                    s_head = scoring.score_triples(
                        model.score_fn,
                        enc["head"][[t]].expand(E, -1),
                        model.relation[[r + R]].double().expand(E, -1),
                        enc["tail"],
                        normal=w2,
                        **kw,
                    )
            for direction, s, target, answers in (
                ("tail", s_tail, t, tails_of[(h, r)]),
                ("head", s_head, h, heads_of[(r, t)]),
            ):
                s = s.numpy()
                cands = np.ones(E, dtype=bool)
                cands[list(answers)] = False  # known answers (the target among them) are no competitors
                g = int((s[cands] > s[target]).sum())
                eq = int((s[cands] == s[target]).sum())
                ranks[direction].append(1 + g + eq / 2)
        out[split] = ranks
    return out


CASES = [
    ("distmult", {"score_fn": "distmult", "features": {"use": False}}, "direct"),
    ("transe_l1", {"score_fn": "transe", "distance": 1}, "direct"),
    ("rotate_l2", {"score_fn": "rotate", "distance": 2, "features": {"use": False}}, "direct"),
    ("complex", {"score_fn": "complex"}, "direct"),
    ("transh_l2", {"score_fn": "transh", "distance": 2}, "direct"),
    ("distmult_inverse", {"score_fn": "distmult", "inverse_relations": True}, "auto"),
]


@pytest.mark.parametrize("name,settings,heads", CASES, ids=[c[0] for c in CASES])
def test_model_evaluation_equals_brute_force(tiny, name, settings, heads):
    import json

    from kge.predict.evaluate_model import evaluate_model

    tmp, root, shards = tiny
    model_path = _train(tmp, shards, name, settings)
    planted = settings.get("features", {}).get("use", True) is False
    if planted:  # exact ties: entities 3, 5 and 7 share one embedding row (no features to tell them apart)
        from kge.bess.partition import Partition

        part = Partition.load(shards / "partition.npz")
        rows = part.row_of(np.array([3, 5, 7]))
        files = sorted((model_path.parent / "entities").glob("shard_*.pt"))
        tables = [torch.load(f) for f in files]
        full = torch.cat(tables)
        full[rows[1]] = full[rows[0]]
        full[rows[2]] = full[rows[0]]
        size = tables[0].shape[0]
        for i, f in enumerate(files):
            torch.save(full[i * size : (i + 1) * size].clone(), f)
    out_json, out_npz = tmp / f"{name}.json", tmp / f"{name}.npz"
    result = evaluate_model(model_path, root, shards, out_json, out_npz, heads=heads, top_k=10, query_batch=7)
    want = _brute_force(model_path, root, shards, "inverse" if heads == "auto" else heads)
    ties = 0
    with np.load(out_npz) as npz:
        for split in ("valid", "test"):
            for direction in ("tail", "head"):
                got = ranks_from_counts(npz[f"{split}_{direction}_greater"], npz[f"{split}_{direction}_ties"])[
                    "realistic"
                ]
                np.testing.assert_array_equal(got, np.array(want[split][direction]))
                ties += int(npz[f"{split}_{direction}_ties"].sum())
    assert ties > 0 or not planted  # the planted ties were counted
    both = np.concatenate([want["test"]["tail"], want["test"]["head"]])
    assert json.loads(out_json.read_text())["splits"]["test"]["both"]["realistic"]["mrr"] == pytest.approx(
        np.mean(1 / both)
    )
    assert result["protocol"]["head_prediction"] == ("inverse" if heads == "auto" else "direct")


@pytest.mark.parametrize("power", [-0.5, -1.0, 0.5])
def test_ensemble_counts_equal_brute_force(power):
    """The ensemble's filtered rank against s(e) computed entity by entity over all candidates."""
    from kge.ensemble.evaluation import ensemble_counts

    rng = np.random.default_rng(2)
    E, Q, K = 15, 30, 4
    known = [set(rng.choice(E, size=rng.integers(0, 3), replace=False).tolist()) for _ in range(Q)]
    targets = rng.integers(0, E, size=Q)
    lists = []
    for _m in range(3):
        rows = []
        for q in range(Q):
            pool = [e for e in range(E) if e not in known[q] or e == targets[q]]  # filtered lists keep the target
            rows.append(rng.choice(pool, size=K, replace=False))
        lists.append(np.array(rows))
    lists[2][:, -1] = -1  # padding
    weights = np.array([1.0, 0.5, 2.0])
    candidates = np.array([E - 1 - len(known[q] - {int(targets[q])}) for q in range(Q)])
    got_g, got_e = ensemble_counts(lists, targets, candidates, power, weights)

    def s(q, e):
        total = 0.0
        for w, a in zip(weights, lists):
            row = [x for x in a[q].tolist()]
            k_m = a.shape[1]
            if e in row:
                rank = row.index(e) + 1
                total += w * (rank**power if power < 0 else (k_m + 1) ** power - rank**power)
        return round(total, 9)

    for q in range(Q):
        t = int(targets[q])
        cands = [e for e in range(E) if e != t and e not in known[q]]
        assert got_g[q] == sum(s(q, e) > s(q, t) for e in cands)
        assert got_e[q] == sum(s(q, e) == s(q, t) for e in cands)
    assert (got_e > 0).any()  # unlisted targets tie with the unlisted block


def test_without_a_test_file_the_summary_reports_the_held_out_half_of_validation(tmp_path):
    """An imported graph without a test split: validation only; the ensemble is tuned on one half and
    every row of the summary is measured on the other."""
    from kge.bess.shard import shard_dataset
    from kge.data.importer import import_triples
    from kge.ensemble.evaluation import run_evaluation_summary
    from kge.ensemble.rank_power import validation_halves
    from kge.predict.evaluate_model import evaluate_model

    paths = _tiny_graph(tmp_path, seed=1)
    root, shards = tmp_path / "data", tmp_path / "shards"
    import_triples(paths["train"], paths["valid"], None, root, feature_dim=8, progress=False)
    shard_dataset(root, shards, 2, seed=0, progress=False)
    evaluations = []
    for name, settings in (("a", {"score_fn": "distmult"}), ("b", {"score_fn": "transe", "seed": 1})):
        model = _train(tmp_path, shards, name, settings)
        evaluations.append(tmp_path / f"{name}.npz")
        result = evaluate_model(model, root, shards, tmp_path / f"{name}.json", evaluations[-1], top_k=10)
        assert list(result["splits"]) == ["valid"]
    summary = run_evaluation_summary(evaluations, tmp_path / "out", powers=[-1.0, -0.5], exponents=[0, 2], root=root)
    assert summary["report_split"] == "valid" and "held-out half of validation" in summary["reported_on"]
    _, held_out = validation_halves(30, 0)
    assert summary["report_queries"] == len(held_out)
    with np.load(evaluations[0]) as npz:
        ranks = np.concatenate(
            [
                ranks_from_counts(npz[f"valid_{d}_greater"][held_out], npz[f"valid_{d}_ties"][held_out])["realistic"]
                for d in ("tail", "head")
            ]
        )
    assert summary["rows"][[r["model"] for r in summary["rows"]].index("a")]["both.realistic.mrr"] == pytest.approx(
        np.mean(1 / ranks)
    )
    assert (tmp_path / "out" / "summary.md").read_text().count("| ") > 3
    # Sampled evaluations are reported, labelled, and not ensembled (they keep no lists over all entities).
    sampled = evaluate_model(
        tmp_path / "models" / "a" / "model.pt", root, shards, tmp_path / "s.json", tmp_path / "s.npz", samples=10
    )
    assert "SAMPLED" in sampled["protocol"]["name"]
    summary = run_evaluation_summary([tmp_path / "s.npz"], tmp_path / "out-sampled", root=root)
    assert [r["model"] for r in summary["rows"]] == ["a"] and summary["sampled"]
    assert "SAMPLED" in (tmp_path / "out-sampled" / "summary.md").read_text()


def test_sampled_mode_counts_among_the_drawn_candidates(tiny):
    """Sampled mode: the target ranked among the uniformly drawn candidates that are not known
    answers, each batch's draw reproduced from the seed and checked against the full score matrix."""
    from kge.bess.features import FeatureStore
    from kge.bess.partition import Partition
    from kge.predict.evaluation import evaluate_queries
    from kge.predict.predictor import Predictor, load_model

    tmp, root, shards = tiny
    model_path = _train(tmp, shards, "sampled", {"score_fn": "distmult", "features": {"use": False}})
    model, _, device = load_model(model_path, "cpu")
    part = Partition.load(shards / "partition.npz")
    predictor = Predictor(model, FeatureStore(shards, part.n_shards), part, device, 16)
    rng = np.random.default_rng(5)
    Q, n, batch = 20, 12, 8
    anchors, rels, targets = (
        rng.integers(0, part.num_entities, Q),
        rng.integers(0, 3, Q),
        rng.integers(0, part.num_entities, Q),
    )
    f_query = np.repeat(np.arange(Q), 2)
    f_entity = rng.integers(0, part.num_entities, 2 * Q)
    got = evaluate_queries(predictor, anchors, rels, targets, f_query, f_entity, 5, batch, samples=n, seed=7)
    # Brute force: every (query, entity) score, and the same draws.
    with torch.no_grad():
        query, _ = predictor.query_vectors(torch.from_numpy(np.stack([anchors, rels], 1)))
        full = predictor.score_rows(query, None, torch.from_numpy(part.row_of(np.arange(part.num_entities))))
    generator = torch.Generator().manual_seed(7)
    real = torch.nonzero(predictor.valid_rows).squeeze(1)
    for start in range(0, Q, batch):
        drawn_rows = real[torch.randint(len(real), (n,), generator=generator)]
        drawn = predictor.row_to_entity[drawn_rows].numpy()
        for q in range(start, min(start + batch, Q)):
            known = set(f_entity[f_query == q].tolist()) | {int(targets[q])}
            cands = [e for e in drawn if e not in known]
            s_t = full[q, targets[q]]
            assert got["greater"][q] == sum(full[q, e] > s_t for e in cands)
            assert got["ties"][q] == sum(full[q, e] == s_t for e in cands)
            assert got["raw_greater"][q] == sum(full[q, e] > s_t for e in drawn if e != targets[q])
