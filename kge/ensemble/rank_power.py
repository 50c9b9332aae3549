"""Rank-power mean ensemble of per-model top-K lists (RECIPE.md) and MRR via ogb's evaluator.

For a query, entity t gets  s(t) = sum over models m of -sign(p) * k_m(t)^p  where k_m(t) is t's
1-based rank in model m's list (its column index + 1). If t is absent from model m's list it gets 0
when p < 0 and -(K_m + 1)^p when p > 0 (K_m = that model's list width). The answer is the ``top``
entities with the largest s(t).

Choices:
- -1 entries are padding: they are no candidate and contribute nothing; ranks are still column
  index + 1, so padding is expected at the end of a list.
- A model that lists the same id twice counts it once, at its best (first) rank.
- Ties in s(t) (after rounding s to 9 decimals, so that float summation order cannot split
  mathematical ties) are broken by the best single rank of t in any model, then by the smaller id.
- Fewer than ``top`` candidates for a query: the row is padded with -1.
- For p > 0 we rank by s'(t) = sum over the models listing t of ((K_m + 1)^p - k_m(t)^p), which is
  s(t) + sum_m (K_m + 1)^p: the same constant for every entity, so the same order. Entities listed by
  no model are never candidates (their s is the minimum possible, and for p < 0 it is 0 < any listed).

Vectorised with flat numpy arrays: per chunk of queries, every (query, id, model, rank) entry of all
models is packed into one int64, sorted once with np.sort and grouped with reduceat; no per-row
Python loop (15000 queries x 85 models x 100 in a few seconds). The grouping does not depend on the
power or the weights, so ``rank_power_grid`` (the tuning grid) groups each chunk once for all of them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from kge.common.errors import KgeInputError
from kge.predict.metrics import mrr

DEFAULT_POWERS = (-2.0, -1.5, -1.0, -0.75, -0.5, -0.25, 0.5, 1.0)
_ID_BITS = 32  # ids must be < 2^32 (room left in the packed int64 sort key)


def _check_power(power: float) -> None:
    if power == 0 or not np.isfinite(power):
        raise KgeInputError(f"power: expected a finite non-zero rank power, got {power!r}")


def _validate(predictions: Sequence[np.ndarray], power: float) -> list[np.ndarray]:
    _check_power(power)
    if len(predictions) == 0:
        raise KgeInputError("predictions: expected at least one model's (Q, K) top-K id array")
    preds = []
    for i, p in enumerate(predictions):
        a = np.asarray(p.cpu() if hasattr(p, "cpu") else p)
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer):
            raise KgeInputError(
                f"predictions[{i}]: expected a 2-D integer (Q, K) id array, got shape {a.shape} dtype {a.dtype}"
            )
        if preds and a.shape[0] != preds[0].shape[0]:
            raise KgeInputError(f"predictions[{i}]: has {a.shape[0]} queries, predictions[0] has {preds[0].shape[0]}")
        if a.size and (a.min() < -1 or a.max() >= 1 << _ID_BITS):
            raise KgeInputError(f"predictions[{i}]: ids must be in [0, 2^32) or -1 (padding)")
        preds.append(a.astype(np.int64, copy=False))
    return preds


def _bits(n: int) -> int:
    """Bits needed to store the values 0..n-1 (at least 1)."""
    return max(1, int(n - 1).bit_length())


class _Packing:
    """Bit layout of one int64 sort key: (query | id | model | rank - 1), most significant first.

    Sorting the packed keys with np.sort (no argsort, no gather) groups the (query, id) pairs, puts
    a model's duplicate entries of one id next to each other (best rank first), and the low bits
    index a (model, rank) -> contribution table directly.
    """

    def __init__(self, preds: list[np.ndarray], query_chunk: int):
        self.rank_bits = _bits(max(a.shape[1] for a in preds))
        self.model_bits = _bits(len(preds))
        max_id = max((int(a.max()) for a in preds if a.size), default=0)
        self.id_bits = max(1, max_id.bit_length())
        free = 63 - self.rank_bits - self.model_bits - self.id_bits
        if free < 1:
            raise KgeInputError("predictions: ids, models and list widths too large to pack")
        self.query_chunk = max(1, min(query_chunk, 1 << free))
        self.low_bits = self.model_bits + self.rank_bits  # bits below (query, id)


def _weights(preds: list[np.ndarray], weights) -> np.ndarray:
    """Per-model weights w_m (default 1, the RECIPE formula); positive and one per model."""
    if weights is None:
        return np.ones(len(preds))
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(preds),) or not (np.isfinite(w) & (w > 0)).all():
        raise KgeInputError(
            f"weights: expected {len(preds)} finite positive member weights, got {list(np.atleast_1d(w))}"
        )
    return w


def _contribution_table(preds: list[np.ndarray], power: float, pk: _Packing, weights: np.ndarray) -> np.ndarray:
    """(models << rank_bits,) float64: the contribution of model m's rank k at index m<<bits | k-1."""
    table = np.zeros(len(preds) << pk.rank_bits, dtype=np.float64)
    for m, a in enumerate(preds):
        k = a.shape[1]
        r = np.arange(1, k + 1, dtype=np.float64) ** power
        # p < 0: present -> +k^p, absent -> 0.  p > 0: shifted by (K+1)^p, see module docstring.
        # A weight scales the model's whole term, the absent-entity shift included.
        table[(m << pk.rank_bits) : (m << pk.rank_bits) + k] = weights[m] * (r if power < 0 else (k + 1.0) ** power - r)
    return table


class _Groups(NamedTuple):
    """Candidates of queries [q0, q1): one row per (query, id), sorted by (query, id). None of it
    depends on the power or the weights, so a tuning grid groups each chunk once.

    query (C,) int64 local to q0, ids (C,) int64, best_rank (C,) int64 (the best rank in any model);
    low (E,) int64 the (model, rank - 1) index of each kept list entry into a contribution table,
    starts (C,) int64 where each candidate's entries begin in ``low``.
    """

    query: np.ndarray
    ids: np.ndarray
    best_rank: np.ndarray
    low: np.ndarray
    starts: np.ndarray

    def scores(self, table: np.ndarray) -> np.ndarray:
        """(C,) float64 s' (the score used for ranking) under one contribution table."""
        return np.add.reduceat(table[self.low], self.starts)


def _grouped(preds: list[np.ndarray], pk: _Packing, q0: int, q1: int) -> _Groups:
    """Group the list entries of queries [q0, q1) by (query, id)."""
    qidx = np.arange(q1 - q0, dtype=np.int64)[:, None] << (pk.id_bits + pk.low_bits)
    keys = []
    for m, a in enumerate(preds):
        block = a[q0:q1]
        col = np.arange(block.shape[1], dtype=np.int64)[None, :]
        key = qidx | (block << pk.low_bits) | (m << pk.rank_bits) | col
        keys.append(key[block >= 0])  # -1 padding is no candidate
    key = np.sort(np.concatenate(keys))
    if key.size == 0:
        e = np.zeros(0, dtype=np.int64)
        return _Groups(e, e, e, e, e)
    # A model listing an id twice: keep its first (best-ranked) entry only.
    qim = key >> pk.rank_bits
    keep = np.r_[True, qim[1:] != qim[:-1]]
    key = key[keep] if not keep.all() else key
    group = key >> pk.low_bits
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    low = key & ((1 << pk.low_bits) - 1)
    best = np.minimum.reduceat((low & ((1 << pk.rank_bits) - 1)) + 1, starts)
    gkey = group[starts]
    return _Groups(gkey >> pk.id_bits, gkey & ((1 << pk.id_bits) - 1), best, low, starts)


def rank_power_scores(predictions: Sequence[np.ndarray], power: float = -0.5, weights=None):
    """The RECIPE s(t) of every candidate: flat arrays sorted by (query, id).

    predictions: list of (Q, K_m) integer id arrays (rank order, -1 = padding).
    weights: optional (M,) member weights w_m; s(t) = sum_m w_m * term_m(t) (None = all 1).
    Returns (query (C,) int64, ids (C,) int64, s (C,) float64, best_rank (C,) int64).
    """
    preds = _validate(predictions, power)
    w = _weights(preds, weights)
    pk = _Packing(preds, preds[0].shape[0])
    table = _contribution_table(preds, power, pk, w)
    e = np.zeros(0, dtype=np.int64)
    q, ids, s, best = [e], [e], [np.zeros(0)], [e]
    for q0 in range(0, preds[0].shape[0], pk.query_chunk):
        groups = _grouped(preds, pk, q0, min(q0 + pk.query_chunk, preds[0].shape[0]))
        q.append(groups.query + q0), ids.append(groups.ids), s.append(groups.scores(table))
        best.append(groups.best_rank)
    q, ids, s, best = (np.concatenate(x) for x in (q, ids, s, best))
    if power > 0:
        s = s - sum(w_m * (a.shape[1] + 1.0) ** power for w_m, a in zip(w, preds))
    return q, ids, s, best


# |s| up to this keeps rint(s * 1e9) / 1e9 injective (consecutive integers 1e-9 apart stay distinct
# doubles), so the integers rint(s * 1e9) order and tie exactly as np.round(s, 9) does.
_EXACT_S = 1e6


def answer_order(q: np.ndarray, ids: np.ndarray, s: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Candidates in (query, id) order (as ``_grouped`` returns them) -> the permutation that sorts
    them by query, then s desc rounded to 9 decimals, then best rank, then id: equal to
    ``np.lexsort((ids, best, -np.round(s, 9), q))``.

    np.round(x, 9) is rint(x * 1e9) / 1e9, so the integers rint(s * 1e9) compare like the rounded s;
    packed with the query and the best rank into one int64, one stable argsort replaces the four
    passes of lexsort (the id order is the input's, kept by the stable sort). Falls back to the
    lexsort when the key does not fit in 63 bits.
    """
    if q.size and np.abs(s).max() <= _EXACT_S:
        scaled = np.rint(s * 1e9)
        top = scaled.max()
        span = int(top - scaled.min())
        s_bits, best_bits, q_bits = span.bit_length(), int(best.max()).bit_length(), int(q.max()).bit_length()
        if q_bits + s_bits + best_bits <= 63:
            below = (top - scaled).astype(np.int64)  # larger s first; exact: integers below 2^53
            key = (q << (s_bits + best_bits)) | (below << best_bits) | best
            return np.argsort(key, kind="stable")
    return np.lexsort((ids, best, -np.round(s, 9), q))


def rank_power_ensemble(
    predictions: Sequence[np.ndarray], power: float = -0.5, top: int = 10, query_chunk: int = 512, weights=None
) -> np.ndarray:
    """Ensemble top-K lists into the (Q, top) int64 answer (best first, -1 padded).

    predictions: list of (Q, K_m) integer id arrays, one per model, in rank order, -1 = padding.
    ``query_chunk`` bounds memory (queries processed at once); the result does not depend on it.
    ``weights`` (M,) scales each member's term (None = all 1 = the RECIPE formula).
    """
    return rank_power_grid(predictions, [(power, weights)], top=top, query_chunk=query_chunk)[0]


def rank_power_grid(
    predictions: Sequence[np.ndarray],
    settings: Sequence[tuple[float, object]],
    top: int = 10,
    query_chunk: int = 512,
    progress: str | None = None,
) -> list[np.ndarray]:
    """``rank_power_ensemble(predictions, power, top, weights=weights)`` for every (power, weights)
    in ``settings``, equal to calling it once per setting, but grouping each chunk of queries once:
    the packed sort is most of one ensemble's cost and does not depend on the setting.

    Returns one (Q, top) int64 answer per setting. ``progress``: a tqdm description for a bar over
    the query chunks on stderr (None: no bar).
    """
    if len(settings) == 0:
        raise KgeInputError("settings: expected at least one (power, weights) pair")
    for power, _ in settings[1:]:
        _check_power(power)
    preds = _validate(predictions, settings[0][0])
    if top < 1:
        raise KgeInputError(f"top: expected a positive answer width, got {top}")
    n_q = preds[0].shape[0]
    pk = _Packing(preds, query_chunk)
    tables = [_contribution_table(preds, power, pk, _weights(preds, w)) for power, w in settings]
    outs = [np.full((n_q, top), -1, dtype=np.int64) for _ in settings]
    chunks = range(0, n_q, pk.query_chunk)
    if progress is not None:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc=progress, unit="chunk", mininterval=5.0, file=sys.stderr)
    for q0 in chunks:
        groups = _grouped(preds, pk, q0, min(q0 + pk.query_chunk, n_q))
        if groups.query.size == 0:
            continue
        first = np.searchsorted(groups.query, groups.query)  # start of each row's query group
        for table, out in zip(tables, outs):
            order = answer_order(groups.query, groups.ids, groups.scores(table), groups.best_rank)
            q, ids = groups.query[order], groups.ids[order]
            pos = np.arange(q.size) - first  # q is still sorted: the same group starts
            sel = pos < top
            out[q0 + q[sel], pos[sel]] = ids[sel]
    return outs


def validation_halves(num_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tuning (Q//2,), held-out (Q - Q//2,)) sorted query indices of a seeded random split: ensemble
    parameters are chosen on the first half and reported on the second, never on the data they fit."""
    order = np.random.default_rng(seed).permutation(int(num_queries))
    half = int(num_queries) // 2
    return np.sort(order[:half]), np.sort(order[half:])


def tune_power(
    predictions: Sequence[np.ndarray], t_true, powers: Sequence[float] = DEFAULT_POWERS
) -> tuple[float, dict[float, float]]:
    """Validation MRR of the ensemble for each power -> (best power, {power: mrr}): ``tune_ensemble``
    with equal member weights (the RECIPE formula). Ties in MRR go to the power listed first.
    """
    if len(powers) == 0:
        raise KgeInputError("powers: expected at least one rank power to try")
    (best, _), results = tune_ensemble(predictions, t_true, [1.0] * len(predictions), powers, (0.0,))
    return best, {p: value for (p, _), value in results.items()}


def mrr_weights(member_mrr: Sequence[float], exponent: float) -> np.ndarray:
    """w_m = (MRR_m / max MRR)^exponent: 0 gives the RECIPE's equal weights; larger trusts the best more."""
    m = np.maximum(np.asarray(member_mrr, dtype=np.float64), 1e-12)  # a 0-MRR member keeps a tiny positive weight
    return (m / m.max()) ** exponent


def tune_ensemble(
    predictions: Sequence[np.ndarray],
    t_true,
    member_mrr: Sequence[float],
    powers: Sequence[float] = DEFAULT_POWERS,
    exponents: Sequence[float] = (0.0,),
) -> tuple[tuple[float, float], dict[tuple[float, float], float]]:
    """Validation MRR for each (power, weight exponent) -> (best pair, {(p, exponent): mrr}).

    Ties go to the pair listed first (powers outer, exponents inner).
    """
    if len(powers) == 0 or len(exponents) == 0:
        raise KgeInputError("powers / weight exponents: expected at least one value to try")
    grid = [(float(p), float(g)) for p in powers for g in exponents]
    # Tens of seconds with the 85 members: a bar with an ETA on stderr (the ensemble job's log).
    answers = rank_power_grid(
        predictions,
        [(p, mrr_weights(member_mrr, g)) for p, g in grid],
        top=10,
        progress="tune power x weights" if len(predictions) >= 10 else None,
    )
    results = {pair: mrr(ens, t_true) for pair, ens in zip(grid, answers)}
    order = list(results)
    best = max(results, key=lambda k: (results[k], -order.index(k)))
    return best, results
