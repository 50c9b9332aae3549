"""Greedy ensemble curve and leave-one-family-out against brute force with the exact ensemble."""

from __future__ import annotations

import numpy as np
import pytest

from kge.ensemble.analysis import greedy_curve, leave_one_family_out
from kge.ensemble.rank_power import rank_power_ensemble
from kge.predict.metrics import mrr


def _members(seed=0, m=5, q=300, k=20, entities=60):
    """Members of different quality: member i puts the answer at a random early rank with prob p_i."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, entities, q)
    preds = []
    for i in range(m):
        rows = []
        for a in t:
            ids = rng.permutation(np.delete(np.arange(entities), a))[:k]
            if rng.random() < 0.15 + 0.12 * i:
                ids[rng.integers(0, 12)] = a
            rows.append(ids)
        p = np.array(rows)
        p[rng.random(p.shape) < 0.02] = -1  # some padding
        preds.append(p)
    return preds, t


def _brute_greedy(preds, t, power, weights):
    chosen, remaining, curve = [], list(range(len(preds))), []
    while remaining:
        scores = {
            m: mrr(
                rank_power_ensemble(
                    [preds[i] for i in chosen + [m]], power=power, top=10, weights=weights[chosen + [m]]
                ),
                t,
            )
            for m in remaining
        }
        best = max(remaining, key=lambda m: (scores[m], -m))
        chosen.append(best)
        remaining.remove(best)
        curve.append(scores[best])
    return chosen, curve


@pytest.mark.parametrize("power", [-0.5, -1.0, 0.5])
def test_greedy_curve_matches_brute_force_selection(power):
    preds, t = _members()
    weights = np.array([1.0, 0.93, 0.87, 0.81, 0.74])  # distinct weights: no exact score ties
    curve = greedy_curve(preds, t, power=power, weights=weights, names=list("abcde"))
    order, values = _brute_greedy(preds, t, power, weights)
    assert [c["added"] for c in curve] == ["abcde"[i] for i in order]
    np.testing.assert_allclose([c["valid_mrr"] for c in curve], values, rtol=1e-12)
    assert [c["n"] for c in curve] == [1, 2, 3, 4, 5]
    # The first pick is the best single member; the last point is the whole ensemble.
    singles = [mrr(p[:, :10], t) for p in preds]
    assert curve[0]["added"] == "abcde"[int(np.argmax(singles))]
    assert curve[-1]["valid_mrr"] == pytest.approx(
        mrr(rank_power_ensemble(preds, power=power, top=10, weights=weights), t)
    )


def test_greedy_on_a_query_subset_still_reports_exact_values():
    preds, t = _members(seed=1)
    curve = greedy_curve(preds, t, power=-0.5, selection_queries=120, seed=3)
    assert sorted(c["added"] for c in curve) == ["0", "1", "2", "3", "4"]
    for c in curve:  # each value is the exact ensemble of that prefix on every query
        members = [int(x["added"]) for x in curve[: c["n"]]]
        assert c["valid_mrr"] == pytest.approx(
            mrr(rank_power_ensemble([preds[i] for i in members], power=-0.5, top=10), t)
        )


def test_leave_one_family_out():
    preds, t = _members(seed=2, m=4)
    families = ["transe", "distmult", "transe", "complex"]
    table = {row["family"]: row for row in leave_one_family_out(preds, t, families, power=-0.5)}
    full = mrr(rank_power_ensemble(preds, power=-0.5, top=10), t)
    without_transe = mrr(rank_power_ensemble([preds[1], preds[3]], power=-0.5, top=10), t)
    assert table["transe"]["removed"] == 2
    assert table["transe"]["valid_mrr"] == pytest.approx(without_transe)
    assert table["transe"]["change"] == pytest.approx(without_transe - full)
    assert set(table) == {"transe", "distmult", "complex"}
    assert leave_one_family_out(preds[:1], t, ["transe"]) == []  # nothing would be left


def test_answers_beyond_every_listed_id_are_misses():
    """An answer id larger than any listed id is simply not found (its key must not alias the next
    query's candidates)."""
    preds = [np.array([[0, 1], [1, 0], [0, 1]]), np.array([[1, 0], [0, 1], [1, 0]])]
    t = np.array([3, 0, 1])  # query 0's answer (3) is listed by nobody; 3 + 1 would alias query 1's id 0
    curve = greedy_curve(preds, t, power=-0.5, weights=np.array([1.0, 0.9]))
    for c in curve:
        members = [int(x["added"]) for x in curve[: c["n"]]]
        assert c["valid_mrr"] == pytest.approx(
            mrr(
                rank_power_ensemble(
                    [preds[i] for i in members], power=-0.5, top=10, weights=np.array([1.0, 0.9])[members]
                ),
                t,
            )
        )
    assert curve[0]["added"] == "1"  # member 1 ranks answers 2 and 3 first (MRR 2/3), member 0 second (1/3)


def test_exact_prefix_sizes_of_a_large_ensemble():
    from kge.ensemble.analysis import exact_prefix_sizes

    assert exact_prefix_sizes(8, 24) == set(range(1, 9))
    sizes = exact_prefix_sizes(85, 24)
    assert set(range(1, 11)) <= sizes and 85 in sizes and len(sizes) <= 24
    assert max(b - a for a, b in zip(sorted(sizes), sorted(sizes)[1:])) <= 6  # evenly spread after 10
