"""The miniature: deterministic, exact OGB layout, loadable by ogb, planted structure present."""

import hashlib
import json

import numpy as np
import pytest

from kge.data.layout import answers_dir, dataset_dir, load_with_ogb, open_dataset
from kge.data.mini import generate_mini, mini_statistics

SCALE = 0.15


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    generate_mini(root, seed=0, scale=SCALE, progress=False)
    return root


def _digest(root):
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".npy", ".json"))
    for p in files:
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic(mini, tmp_path):
    same = tmp_path / "same"
    other = tmp_path / "other"
    generate_mini(same, seed=0, scale=SCALE, progress=False)
    generate_mini(other, seed=1, scale=SCALE, progress=False)
    assert _digest(same) == _digest(mini)
    assert _digest(other) != _digest(mini)


def test_layout_exact(mini):
    proc = dataset_dir(mini) / "processed"
    assert (dataset_dir(mini) / "RELEASE_v1.txt").is_file()
    kg = open_dataset(mini)
    E, R = kg.num_entities, kg.num_relations
    assert type(E) is int and type(R) is int and R == 60 and 4000 <= E <= 5000
    assert kg.train_hrt.dtype == np.int64 and kg.train_hrt.shape[1] == 3
    assert kg.entity_feat.dtype == np.float16 and kg.entity_feat.shape == (E, 768)
    assert kg.relation_feat.dtype == np.float16 and kg.relation_feat.shape == (R, 768)
    assert kg.val_hr.shape == (15000, 2) and kg.val_t.shape == (15000,) and kg.val_hr.dtype == np.int64
    assert kg.test_dev_hr.shape == (15000, 2) and kg.test_challenge_hr.shape == (10000, 2)
    ans = answers_dir(mini)
    assert np.load(ans / "test-dev_t.npy").shape == (15000,)
    assert np.load(ans / "test-challenge_t.npy").shape == (10000,)
    assert not (proc / "test-dev_t.npy").exists()  # answers stay outside the OGB folder


def test_loads_with_real_ogb(mini):
    ds = load_with_ogb(mini)
    assert ds.num_entities == open_dataset(mini, check=False).num_entities
    assert ds.train_hrt.shape[1] == 3
    assert ds.valid_dict["h,r->t"]["hr"].shape == (15000, 2)
    assert ds.test_dict("test-challenge")["h,r->t"]["hr"].shape == (10000, 2)
    assert ds.entity_feat.shape[1] == 768


def test_statistics(mini):
    s = mini_statistics(mini)
    assert 0.30 <= s["dominant_share_train"] <= 0.50
    assert s["dominant_share_valid"] < 0.12  # cube-root law shrinks the dominant relation
    assert s["corr_valid_rel_freq_vs_cuberoot_train"] > 0.9
    assert s["corr_valid_rel_freq_vs_cuberoot_train"] > s["corr_valid_rel_freq_vs_train"]
    assert 0.12 <= s["valid_tails_unseen_as_train_tail"] <= 0.30
    assert 1.5 <= s["degree_powerlaw_alpha_xmin10"] <= 3.5
    assert s["degree_max"] > 20 * s["degree_median"]


def _keys(hrt, E, R):
    return (hrt[:, 0] * R + hrt[:, 1]) * E + hrt[:, 2]


def test_queries_held_out(mini):
    kg = open_dataset(mini, check=False)
    E, R = kg.num_entities, kg.num_relations
    train = _keys(np.asarray(kg.train_hrt), E, R)
    assert len(np.unique(train)) == len(train)  # no duplicate triples
    val = _keys(np.column_stack([kg.val_hr, kg.val_t]), E, R)
    dev = _keys(np.column_stack([kg.test_dev_hr, np.load(answers_dir(mini) / "test-dev_t.npy")]), E, R)
    assert not np.isin(val, train).any()
    assert not np.isin(dev, train).any()


def test_planted_patterns(mini):
    planted = json.loads((answers_dir(mini) / "planted.json").read_text())
    kg = open_dataset(mini, check=False)
    E = kg.num_entities
    tr = np.asarray(kg.train_hrt)

    def pairs(r):
        m = tr[:, 1] == r
        return tr[m, 0], tr[m, 2]

    def frac_in(h, t, h2, t2):
        return np.isin(h * E + t, h2 * E + t2).mean()

    for r in planted["symmetric"]:
        h, t = pairs(r)
        assert frac_in(t, h, h, t) > 0.3, r  # reverse edges present (queries and cold tails remove some)
    for r in planted["antisymmetric"]:
        h, t = pairs(r)
        assert frac_in(t, h, h, t) == 0.0, r
    for a, b in planted["inverse_pairs"]:
        ha, ta = pairs(a)
        hb, tb = pairs(b)
        assert frac_in(tb, hb, ha, ta) > 0.35, (a, b)
    for r1, r2, r3 in planted["compositions"]:
        h1, x1 = pairs(r1)
        h2, t2 = pairs(r2)
        h3, t3 = pairs(r3)
        # r3(h, t) has a path h -r1-> x -r2-> t in training for most triples.
        paths = set()
        nxt = {}
        for x, t in zip(h2.tolist(), t2.tolist()):
            nxt.setdefault(x, []).append(t)
        for h, x in zip(h1.tolist(), x1.tolist()):
            for t in nxt.get(x, ()):
                paths.add((h, t))
        hit = np.mean([(h, t) in paths for h, t in zip(h3.tolist(), t3.tolist())])
        assert hit > 0.4, (r1, r2, r3, hit)
    # 1-to-N: many tails per head; N-to-1: many heads per tail (generic relations have ~1-3).
    for r in planted["one_to_n"]:
        h, t = pairs(r)
        assert len(h) / len(np.unique(h)) >= 4, r
    for r in planted["n_to_one"]:
        h, t = pairs(r)
        assert len(t) / len(np.unique(t)) >= 5, r


def test_features_carry_structure(mini):
    """Entities of the same type have more similar features than random pairs."""
    planted = json.loads((answers_dir(mini) / "planted.json").read_text())
    kg = open_dataset(mini, check=False)
    f = np.asarray(kg.entity_feat, dtype=np.float32)
    assert np.isfinite(f).all()
    tr = np.asarray(kg.train_hrt)
    # Tails of the same relation share a type: their mean cosine beats random pairs.
    r = planted["symmetric"][0]
    tails = np.unique(tr[tr[:, 1] == r, 2])[:200]
    rng = np.random.default_rng(0)
    rand = rng.choice(len(f), size=200, replace=False)
    same = (f[tails] @ f[tails].T).mean()
    base = (f[rand] @ f[rand].T).mean()
    assert same > base + 0.05
