"""Rank-power ensemble: hand examples, absent/padding handling, reference agreement, MRR."""

import math

import numpy as np
import pytest
from ogb.lsc import WikiKG90Mv2Evaluator

from kge.common.errors import KgeInputError
from kge.ensemble.rank_power import rank_power_ensemble, rank_power_grid, rank_power_scores, tune_power
from kge.predict.metrics import mrr

# One query, three models, K = 3
M1 = np.array([[10, 20, 30]])
M2 = np.array([[20, 40, 10]])
M3 = np.array([[30, 20, 50]])
S3 = 1 / math.sqrt(3)  # 0.577350
S2 = 1 / math.sqrt(2)  # 0.707107


def scores_dict(preds, p):
    q, ids, s, best = rank_power_scores(preds, p)
    assert (q == 0).all()
    return dict(zip(ids.tolist(), s.tolist())), dict(zip(ids.tolist(), best.tolist()))


def test_hand_example_power_minus_half():
    # p = -0.5: present -> rank^-0.5, absent -> 0
    # 10: 1 (m1 #1) + 1/sqrt3 (m2 #3)          = 1.577350
    # 20: 1/sqrt2 + 1 + 1/sqrt2                 = 2.414214
    # 30: 1/sqrt3 (m1 #3) + 1 (m3 #1)          = 1.577350
    # 40: 1/sqrt2 (m2 #2) = 0.707107;  50: 1/sqrt3 (m3 #3) = 0.577350
    s, best = scores_dict([M1, M2, M3], -0.5)
    want = {10: 1 + S3, 20: 1 + 2 * S2, 30: 1 + S3, 40: S2, 50: S3}
    assert s.keys() == want.keys()
    for t in want:
        assert s[t] == pytest.approx(want[t])
    assert s[20] == pytest.approx(2.414214, abs=1e-6) and s[10] == pytest.approx(1.577350, abs=1e-6)
    assert best == {10: 1, 20: 1, 30: 1, 40: 2, 50: 3}
    # 10 and 30 tie (and share best rank 1): smaller id first
    assert rank_power_ensemble([M1, M2, M3], -0.5, top=5).tolist() == [[20, 10, 30, 40, 50]]
    assert rank_power_ensemble([M1, M2, M3], -0.5, top=10).tolist() == [[20, 10, 30, 40, 50] + [-1] * 5]


def test_hand_example_power_one():
    # p = 1: present -> -rank, absent -> -(K + 1) = -4
    # 10: -1 - 3 - 4 = -8;  20: -2 - 1 - 2 = -5;  30: -3 - 4 - 1 = -8
    # 40: -4 - 2 - 4 = -10; 50: -4 - 4 - 3 = -11
    s, _ = scores_dict([M1, M2, M3], 1.0)
    assert s == pytest.approx({10: -8.0, 20: -5.0, 30: -8.0, 40: -10.0, 50: -11.0})
    assert rank_power_ensemble([M1, M2, M3], 1.0, top=5).tolist() == [[20, 10, 30, 40, 50]]


def test_absent_entities_depend_on_sign_of_power():
    # A = 7 is #1 in m1 only; B = 8 is #2 in both models (K = 3).
    m1 = np.array([[7, 8, 1]])
    m2 = np.array([[2, 8, 3]])
    # p = 1: A = -1 + -(3+1) = -5, B = -2 - 2 = -4 -> B first (absent = 0 would wrongly put A first)
    s, _ = scores_dict([m1, m2], 1.0)
    assert s[7] == pytest.approx(-5.0) and s[8] == pytest.approx(-4.0)
    assert rank_power_ensemble([m1, m2], 1.0, top=2).tolist() == [
        [8, 2]
    ]  # 2: -1 - 4 = -5, ties A; best rank 1, id 2 < 7
    # p = -0.5: A = 1 + 0 = 1, B = 2/sqrt2 = 1.414214 -> B first
    s, _ = scores_dict([m1, m2], -0.5)
    assert s[7] == pytest.approx(1.0) and s[8] == pytest.approx(math.sqrt(2))
    assert rank_power_ensemble([m1, m2], -0.5, top=1).tolist() == [[8]]
    # p = -2: A = 1, B = 2 * 1/4 = 0.5 -> A (and 2, also 1.0; tie on best rank 1 -> id 2 first)
    assert rank_power_ensemble([m1, m2], -2.0, top=3).tolist() == [[2, 7, 8]]


def test_absent_penalty_uses_each_models_width_for_positive_power():
    # m1 K = 2, m2 K = 4; p = 2: absent penalties -(3^2) = -9 and -(5^2) = -25
    m1 = np.array([[1, 2]])
    m2 = np.array([[3, 1, 4, 5]])
    s, _ = scores_dict([m1, m2], 2.0)
    # 1: -1 - 4 = -5; 2: -4 - 25 = -29; 3: -9 - 1 = -10; 4: -9 - 9 = -18; 5: -9 - 16 = -25
    assert s == pytest.approx({1: -5.0, 2: -29.0, 3: -10.0, 4: -18.0, 5: -25.0})
    assert rank_power_ensemble([m1, m2], 2.0, top=5).tolist() == [[1, 3, 4, 5, 2]]


def test_padding_is_nothing():
    m1 = np.array([[5, -1, -1], [-1, -1, -1]])
    m2 = np.array([[6, 5, -1], [9, -1, -1]])
    # query 0: 5: 1 + 1/sqrt2; 6: 1 -> [5, 6]; query 1: only 9
    out = rank_power_ensemble([m1, m2], -0.5, top=4)
    assert out.tolist() == [[5, 6, -1, -1], [9, -1, -1, -1]]
    q, ids, _, _ = rank_power_scores([m1, m2], 1.0)
    assert -1 not in ids.tolist()
    assert rank_power_ensemble([m1[1:]], -0.5, top=2).tolist() == [[-1, -1]]


def test_duplicate_within_a_model_counts_once_at_best_rank():
    m1 = np.array([[4, 4, 2]])
    s, best = scores_dict([m1], -1.0)
    assert s == pytest.approx({4: 1.0, 2: 1 / 3})
    assert best == {4: 1, 2: 3}


@pytest.mark.parametrize("power", [-1.0, -0.5, 0.5, 2.0])
def test_single_model_returns_its_own_list(power):
    rng = np.random.default_rng(0)
    pred = np.stack([rng.permutation(10_000)[:100] for _ in range(50)])
    out = rank_power_ensemble([pred], power, top=10)
    assert out.dtype == np.int64
    assert np.array_equal(out, pred[:, :10])


def reference(preds, p, top, weights=None):
    """Slow dictionary implementation of the RECIPE formula with the documented tie-break."""
    weights = [1.0] * len(preds) if weights is None else weights
    out = []
    for qi in range(preds[0].shape[0]):
        s, best = {}, {}
        for a in preds:
            row = [int(x) for x in a[qi]]
            for col, t in enumerate(row):
                if t < 0 or t in row[:col]:
                    continue
                s.setdefault(t, 0.0)
                best[t] = min(best.get(t, 10**9), col + 1)
        for t in s:
            total = 0.0
            for a, w in zip(preds, weights):
                row = [int(x) for x in a[qi]]
                if t in row:
                    total += -w * math.copysign(1, p) * (row.index(t) + 1) ** p
                elif p > 0:
                    total += -w * ((a.shape[1] + 1) ** p)
            s[t] = total
        ranked = sorted(s, key=lambda t: (-round(s[t], 9), best[t], t))[:top]
        out.append(ranked + [-1] * (top - len(ranked)))
    return np.array(out)


@pytest.mark.parametrize("power", [-2.0, -0.5, 0.5, 1.0])
def test_matches_reference_on_random_lists(power):
    rng = np.random.default_rng(1)
    preds = []
    for m in range(6):
        k = [5, 8, 8, 3, 10, 8][m]
        a = np.stack([rng.choice(30, size=k, replace=False) for _ in range(40)])
        a[rng.random(a.shape) < 0.05] = -1  # sprinkle padding
        preds.append(a)
    got = rank_power_ensemble(preds, power, top=10, query_chunk=7)
    assert np.array_equal(got, reference(preds, power, 10))
    assert np.array_equal(got, rank_power_ensemble(preds, power, top=10))  # chunking-invariant
    for row in got:  # duplicate-free
        real = row[row >= 0]
        assert len(np.unique(real)) == len(real)


def test_grid_groups_once_and_equals_each_setting():
    """rank_power_grid (the tuning grid: each chunk of queries grouped once for every setting) gives,
    for every (power, weights), the slow reference's answer, over several chunks, with padding,
    duplicate ids within a model and ties."""
    rng = np.random.default_rng(2)
    preds = []
    for k in (6, 9, 4, 9):
        a = np.stack([rng.choice(25, size=k, replace=False) for _ in range(30)])
        a[rng.random(a.shape) < 0.05] = -1
        preds.append(a)
    preds[1][:, 5] = preds[1][:, 2]  # a model listing an id twice
    settings = [(p, w) for p in (-2.0, -0.5, 0.5, 1.0) for w in (None, [1.0, 3.0, 0.5, 2.0])]
    answers = rank_power_grid(preds, settings, top=7, query_chunk=8)
    assert len(answers) == len(settings)
    for (p, w), got in zip(settings, answers):
        assert np.array_equal(got, reference(preds, p, 7, w)), (p, w)
    with pytest.raises(KgeInputError):
        rank_power_grid(preds, [(-0.5, None), (0.0, None)])


def test_mrr_hand_example_and_ogb():
    pred = np.array(
        [
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            [11, 12, 13, 14, 15, 16, 17, 18, 19, 20],
            [21, 22, 23, 24, 25, 26, 27, 28, 29, -1],
        ]
    )
    t = np.array([1, 13, 99])
    # ranks 1, 3, absent -> (1 + 1/3 + 0) / 3 = 0.444444
    assert mrr(pred, t) == pytest.approx(0.444444, abs=1e-6)
    ogb = WikiKG90Mv2Evaluator().eval({"h,r->t": {"t_pred_top10": pred, "t": t}})["mrr"]
    assert mrr(pred, t) == pytest.approx(ogb, abs=0)
    with pytest.raises(KgeInputError):
        mrr(pred[:, :5], t)


def test_tune_power():
    # The true tail 8 is #2 in both models; 7 is #1 in one. p < -1 / p > 0 decide differently.
    m1 = np.array([[7, 8] + list(range(100, 108))])
    m2 = np.array([[200, 8] + list(range(300, 308))])
    t = np.array([8])
    best, table = tune_power([m1, m2], t, powers=(-2.0, -0.5, 1.0))
    # p=-2: 7 and 200 score 1, 8 scores 0.5 -> 8 at rank 3 (mrr 1/3)
    # p=-0.5: 8 scores 1.414 > 1 -> rank 1; p=1: 8 = -4 > -12 -> rank 1
    assert table == pytest.approx({-2.0: 1 / 3, -0.5: 1.0, 1.0: 1.0})
    assert best == -0.5  # tie with 1.0: first listed wins


def test_validation():
    with pytest.raises(KgeInputError):
        rank_power_ensemble([M1], 0.0)
    with pytest.raises(KgeInputError):
        rank_power_ensemble([], -0.5)
    with pytest.raises(KgeInputError):
        rank_power_ensemble([M1, np.zeros((2, 3), dtype=np.int64)], -0.5)
    with pytest.raises(KgeInputError):
        rank_power_ensemble([M1.astype(float)], -0.5)


def test_member_weights_scale_each_models_term():
    """Hand example, p = -1: model A lists [1, 2], model B lists [2, 1].

    Equal weights tie (1 + 1/2 each) and the tie goes to the better single rank, then the smaller id.
    With w = (3, 1): s(1) = 3*1 + 1*(1/2) = 3.5, s(2) = 3*(1/2) + 1*1 = 2.5 -> entity 1 first.
    With w = (1, 3): s(1) = 1 + 3/2 = 2.5, s(2) = 1/2 + 3 = 3.5 -> entity 2 first.
    """
    import numpy as np

    from kge.ensemble.rank_power import mrr_weights, rank_power_ensemble, rank_power_scores

    a = np.array([[1, 2]])
    b = np.array([[2, 1]])
    assert rank_power_ensemble([a, b], power=-1.0, top=2, weights=[3.0, 1.0]).tolist() == [[1, 2]]
    assert rank_power_ensemble([a, b], power=-1.0, top=2, weights=[1.0, 3.0]).tolist() == [[2, 1]]
    _, ids, s, _ = rank_power_scores([a, b], power=-1.0, weights=[3.0, 1.0])
    assert dict(zip(ids.tolist(), s.tolist())) == {1: 3.5, 2: 2.5}
    # p > 0: absent terms are weighted too: s(t) = -sum_m w_m * k_m(t)^p, absent k = K + 1 = 3.
    _, ids, s, _ = rank_power_scores([np.array([[1, 2]]), np.array([[3, 1]])], power=1.0, weights=[2.0, 1.0])
    assert dict(zip(ids.tolist(), s.tolist())) == {1: -(2 * 1 + 1 * 2), 2: -(2 * 2 + 1 * 3), 3: -(2 * 3 + 1 * 1)}
    # Unit weights are exactly the RECIPE formula.
    assert np.array_equal(rank_power_ensemble([a, b], -0.5, weights=[1.0, 1.0]), rank_power_ensemble([a, b], -0.5))
    np.testing.assert_allclose(mrr_weights([0.2, 0.1], 0.0), [1.0, 1.0])
    np.testing.assert_allclose(mrr_weights([0.2, 0.1], 2.0), [1.0, 0.25])


@pytest.mark.parametrize("seed", range(4))
def test_mrr_equals_ogb_evaluator_bit_for_bit(seed):
    """The vectorised mrr against ogb's own evaluator: answers at every depth, absent, -1 padding
    (never a duplicate), and a repeated id in one row (ogb then scores the whole file 0)."""
    from kge.predict.metrics import ogb_mrr

    rng = np.random.default_rng(seed)
    Q = 400
    pred = np.stack([rng.permutation(50)[:10] for _ in range(Q)])
    t = rng.integers(0, 50, Q)
    pred[rng.random((Q, 10)) < 0.1] = -1  # padding, repeated within rows
    assert mrr(pred, t) == ogb_mrr(pred, t) and mrr(pred, t) > 0
    if seed % 2:
        pred[7, 3] = pred[7, 5] = 11
        assert mrr(pred, t) == ogb_mrr(pred, t) == 0


def test_ogb_ensemble_tunes_on_one_half_and_reports_the_other(tmp_path, mini_root):
    """run_ensemble: nothing of the held-out half of validation moves the chosen power and weights;
    the reported held-out MRR is ogb's MRR of the written ensemble on those queries; ensemble.npz keeps
    ensemble.top_k columns."""
    import json

    from kge.data.layout import SPLITS, open_dataset
    from kge.ensemble.rank_power import validation_halves
    from kge.ensemble.run import run_ensemble

    ds = open_dataset(mini_root, check=False)
    val_t = np.asarray(ds.val_t)
    E = ds.num_entities
    tuning, held_out = validation_halves(len(val_t), 0)
    assert len(np.intersect1d(tuning, held_out)) == 0 and len(tuning) + len(held_out) == len(val_t)

    def members(shuffle_held_out: bool, directory):
        paths = []
        for m in range(3):
            rng = np.random.default_rng(m)
            lists = {}
            for split in SPLITS:
                q = (
                    len(val_t)
                    if split == "valid"
                    else len(np.asarray(getattr(ds, "test_dev_hr" if split == "test-dev" else "test_challenge_hr")))
                )
                ids = rng.integers(0, E, size=(q, 30))
                if split == "valid":  # the answer somewhere in most lists, at member-specific depths
                    hit = rng.random(q) < 0.6
                    ids[hit, rng.integers(0, 10 + 10 * m, size=hit.sum())] = val_t[hit]
                    if shuffle_held_out:
                        ids[held_out] = np.random.default_rng(99 + m).integers(0, E, size=(len(held_out), 30))
                lists[f"{split}_ids"] = ids
                lists[f"{split}_scores"] = np.zeros(ids.shape, np.float32)
            path = directory / f"m{m}.npz"
            np.savez(path, **lists)
            path.with_suffix(".json").write_text(
                json.dumps(
                    {
                        "model": f"m{m}",
                        "score_fn": ["transe", "distmult", "complex"][m],
                        "loss": "softmax",
                        "dim": 8,
                        "steps": 1,
                    }
                )
            )
            paths.append(path)
        return paths

    results = {}
    for shuffle in (False, True):
        directory = tmp_path / str(shuffle)
        directory.mkdir()
        results[shuffle] = run_ensemble(
            mini_root,
            members(shuffle, directory),
            directory / "out",
            top_k=20,
            tune=True,
            powers=[-2.0, -0.5, 0.5],
            weight_exponents=[0, 4],
            greedy_queries=500,
        )
    a, b = results[False], results[True]
    assert (a["power"], a["weight_exponent"]) == (b["power"], b["weight_exponent"]) and a["grid"] == b["grid"]
    assert (
        a["ensemble_heldout_mrr"] != b["ensemble_heldout_mrr"]
    )  # the held-out half did change: it is what is reported
    with np.load(tmp_path / "False" / "out" / "ensemble.npz") as npz:
        assert npz["valid"].shape == (len(val_t), 20)
        assert a["ensemble_heldout_mrr"] == mrr(npz["valid"][held_out, :10], val_t[held_out])
        assert a["ensemble_valid_mrr"] == mrr(npz["valid"][:, :10], val_t)


@pytest.mark.parametrize("scale", [1.0, 3e6])  # 3e6: beyond the packed key's exact range, the lexsort path
def test_answer_order_is_the_four_key_lexsort(scale):
    """The packed-key sort of the final answer equals np.lexsort by (query, -round(s, 9), best rank,
    id) on candidates in (query, id) order, ties at every level included (float sums that differ
    only below 1e-9, equal s with equal or different best ranks)."""
    from kge.ensemble.rank_power import answer_order

    rng = np.random.default_rng(0)
    n = 20_000
    q = np.sort(rng.integers(0, 300, n))
    ids = np.zeros(n, dtype=np.int64)
    for query in np.unique(q):  # ids ascending and distinct within a query, as _grouped returns them
        rows = np.flatnonzero(q == query)
        ids[rows] = np.sort(rng.choice(10_000, rows.size, replace=False))
    levels = np.array([0.1 + 0.2, 0.3, 0.30000000049, 0.3000000005, 1 / 3, 2.5, -0.7, 1e-10])
    s = rng.choice(levels, n) * scale
    best = rng.integers(1, 6, n)
    expected = np.lexsort((ids, best, -np.round(s, 9), q))
    np.testing.assert_array_equal(answer_order(q, ids, s, best), expected)
    empty = np.zeros(0, dtype=np.int64)
    assert answer_order(empty, empty, np.zeros(0), empty).size == 0
