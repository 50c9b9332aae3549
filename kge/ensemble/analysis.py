"""What each member adds to the rank-power ensemble: the greedy curve and leave-one-family-out.

Greedy curve (the winning report's "MRR versus number of models" figure): start from no model, add
at each step the member whose addition gives the highest validation MRR, and record the MRR of
every prefix. The selection works on a dense (Q, C) table of ensemble scores over each query's
union of candidate ids and each query's current top scores, so evaluating one candidate touches
only its own K columns (not a new ensemble, not the whole table); the MRR of each chosen prefix is
then recomputed exactly with ``rank_power_ensemble``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from kge.common.errors import KgeInputError
from kge.ensemble.rank_power import rank_power_ensemble
from kge.predict.metrics import mrr


def _member_terms(predictions: Sequence[np.ndarray], t_true: np.ndarray, power: float, weights: np.ndarray):
    """Columns of every listed id in a dense (Q, C) candidate table, each entry's term, and the
    column of each query's answer.

    Returns (columns (M, Q, K) int64, terms (M, Q, K) float64, valid (M, Q, K) bool, C,
    true_col (Q,): the answer's column, -1 where no member lists it). Padding (-1) gets a column
    of its own that no update touches, so it stays -inf.
    """
    q_count, _ = predictions[0].shape
    ids = np.stack(predictions).astype(np.int64)  # (M, Q, K)
    big = int(max(ids.max(), t_true.max())) + 2  # keys q * big + (id + 1) never collide across queries
    keys = np.arange(q_count, dtype=np.int64)[None, :, None] * big + (ids + 1)  # padding -1 -> key of id 0
    unique, inverse = np.unique(keys.reshape(-1), return_inverse=True)
    query_of = unique // big
    start = np.searchsorted(query_of, np.arange(q_count))  # first column key of each query
    width = int(np.diff(np.append(start, unique.size)).max())
    columns = (inverse - start[query_of[inverse]]).reshape(ids.shape)
    true_key = np.arange(q_count, dtype=np.int64) * big + (t_true + 1)
    pos = np.searchsorted(unique, true_key)
    found = (pos < unique.size) & (unique[np.minimum(pos, unique.size - 1)] == true_key)
    true_col = np.where(found, pos - start, -1)
    ranks = np.arange(1, ids.shape[2] + 1, dtype=np.float64)
    term = -np.sign(power) * ranks**power  # RECIPE: each model adds -sign(p) k^p (p < 0: absent = 0)
    terms = np.where(ids >= 0, term[None, None, :], 0.0) * weights[:, None, None]
    if power > 0:  # absent from a list gives -(K+1)^p: shift every present entry by +(K+1)^p instead
        terms = terms + np.where(ids >= 0, (ids.shape[2] + 1.0) ** power, 0.0) * weights[:, None, None]
    return columns, terms, ids >= 0, width, true_col


def _greedy_order(
    columns: np.ndarray, terms: np.ndarray, valid: np.ndarray, width: int, true_col: np.ndarray
) -> list[int]:
    """Greedy member order by MRR@10 on the (Q, C) candidate table, evaluating a candidate member in
    O(Q * (K + T)) instead of a pass over the whole table.

    Every term is >= 0 (rank powers are shifted to be non-negative), so adding a member only raises
    the scores of its own K columns. The answer's new rank is 1 + (its columns now above the answer's
    new score) + (other columns above it). The latter come from the current T = 10 + K largest
    scores of each query: if fewer than T of them are above the new score, every column above it is
    among them, and subtracting the member's own columns that were above leaves the exact count; if
    all T are above, at least T - K = 10 other columns are, and the rank is beyond 10 (MRR@10 = 0).
    """
    m_count, q_count, k = columns.shape
    top_n = 10 + k
    rows = np.arange(q_count)[:, None]
    current = np.full((q_count, width), -np.inf)  # -inf: no chosen member lists this candidate
    answer = np.full(q_count, -np.inf)  # the answer's current ensemble score
    top = np.full((q_count, top_n), -np.inf)  # the current top_n scores of each query (any order)
    listed_anywhere = true_col >= 0
    chosen: list[int] = []
    remaining = list(range(m_count))
    while remaining:
        best, best_mrr, best_update = None, -1.0, None
        for m in remaining:
            cols, ok = columns[m], valid[m]
            old = current[rows, cols]  # (Q, K)
            # A candidate listed for the first time starts from 0 (the RECIPE's "absent" value).
            new = np.where(ok, np.where(np.isfinite(old), old, 0.0) + terms[m], old)
            hit = ok & (cols == true_col[:, None]) & listed_anywhere[:, None]
            new_answer = np.where(hit.any(axis=1), np.where(hit, new, -np.inf).max(axis=1), answer)
            threshold = new_answer[:, None]
            above_top = (top > threshold).sum(axis=1)
            others = above_top - (ok & (old > threshold)).sum(axis=1)
            rank = 1 + (ok & (new > threshold)).sum(axis=1) + others
            good = np.isfinite(new_answer) & (above_top < top_n) & (rank <= 10)
            value = float(np.where(good, 1.0 / rank, 0.0).mean())
            if value > best_mrr:
                best, best_mrr, best_update = m, value, (new, new_answer)
        chosen.append(best)
        remaining.remove(best)
        current[rows, columns[best]] = best_update[0]
        answer = best_update[1]
        if width > top_n:
            top = -np.partition(-current, top_n - 1, axis=1)[:, :top_n]
        else:
            top = np.concatenate([current, np.full((q_count, top_n - width), -np.inf)], axis=1)
    return chosen


def greedy_curve(
    predictions: Sequence[np.ndarray],
    t_true,
    power: float = -0.5,
    weights=None,
    names: Sequence[str] | None = None,
    selection_queries: int | None = None,
    seed: int = 0,
    exact_points: int = 24,
    selection: tuple | None = None,
) -> list[dict]:
    """Greedy forward selection of ensemble members by validation MRR.

    predictions: M (Q, K) id arrays (rank order, -1 padding); t_true (Q,) answers; weights (M,) or
    None. The order is chosen on ``selection`` = (M (Q', K) arrays, (Q',) answers), other queries
    than the reported ones (None: on ``predictions`` themselves); ``selection_queries`` picks the
    order on a random subset of those (None = all). The MRR reported for each prefix always uses
    every query of ``predictions`` and the exact ensemble.
    Returns [{"n": 1.., "added": name, "valid_mrr": prefix MRR}, ...] in selection order; with more
    than ``exact_points`` members the MRR is computed at the sizes of ``exact_prefix_sizes`` only
    (None elsewhere).
    """
    m_count = len(predictions)
    if m_count == 0:
        raise KgeInputError("greedy_curve: no ensemble members")
    names = list(names) if names is not None else [str(i) for i in range(m_count)]
    w = np.ones(m_count) if weights is None else np.asarray(weights, dtype=np.float64)
    t_true = np.asarray(t_true, dtype=np.int64)
    select_preds, select_t = selection if selection is not None else (predictions, t_true)
    select_t = np.asarray(select_t, dtype=np.int64)
    q_all = select_preds[0].shape[0]
    if selection_queries is not None and selection_queries < q_all:
        pick = np.sort(np.random.default_rng(seed).choice(q_all, size=selection_queries, replace=False))
    else:
        pick = np.arange(q_all)
    sub = [np.asarray(p)[pick] for p in select_preds]
    columns, terms, valid, width, true_col = _member_terms(sub, select_t[pick], power, w)
    chosen = _greedy_order(columns, terms, valid, width, true_col)
    curve = []
    exact = exact_prefix_sizes(m_count, exact_points)
    from tqdm import tqdm

    for n in tqdm(
        range(1, m_count + 1),
        desc="greedy curve",
        unit="member",
        mininterval=5.0,
        file=sys.stderr,
        disable=m_count < 10,
    ):
        value = None
        if n in exact:
            members = chosen[:n]
            top = rank_power_ensemble([predictions[i] for i in members], power=power, top=10, weights=w[members])
            value = mrr(top, t_true)
        curve.append({"n": n, "added": names[chosen[n - 1]], "valid_mrr": value})
    return curve


def exact_prefix_sizes(m_count: int, points: int) -> set[int]:
    """Prefix sizes whose exact ensemble MRR is computed: all of them up to ``points`` members;
    beyond, 1..10 (where the curve bends), evenly spaced sizes after, and always the whole ensemble
    (an exact 85-member ensemble over 15,000 queries takes tens of seconds on a CPU core)."""
    if m_count <= points:
        return set(range(1, m_count + 1))
    spaced = np.linspace(10, m_count, max(2, points - 10)).round().astype(int)
    return set(range(1, 11)) | {int(n) for n in spaced} | {m_count}


def leave_one_family_out(
    predictions: Sequence[np.ndarray], t_true, families: Sequence[str], power: float = -0.5, weights=None
) -> list[dict]:
    """Validation MRR of the ensemble without each family (e.g. scoring function) in turn.

    Returns [{"family", "removed": count, "valid_mrr", "change": vs. all members}, ...]; a family that
    is the whole ensemble is skipped (nothing would be left).
    """
    w = np.ones(len(predictions)) if weights is None else np.asarray(weights, dtype=np.float64)
    full = mrr(rank_power_ensemble(list(predictions), power=power, top=10, weights=w), t_true)
    out = []
    for family in sorted(set(families)):
        keep = [i for i, f in enumerate(families) if f != family]
        if not keep:
            continue
        value = mrr(rank_power_ensemble([predictions[i] for i in keep], power=power, top=10, weights=w[keep]), t_true)
        out.append({"family": family, "removed": len(families) - len(keep), "valid_mrr": value, "change": value - full})
    return out
