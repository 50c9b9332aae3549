"""The standard link-prediction evaluation of KGE research (EVALUATION.md, section 2).

Every evaluated triple (h, r, t) gives two queries: tail prediction (h, r, ?) and head prediction
(?, r, t). The target's rank is taken among all entities ("full" ranking) with, in the filtered
setting, every other known true answer removed: (h, r, e) resp. (e, r, t) in train + valid + test.
With n_> candidates scoring strictly higher and n_= scoring equal (other than the target):

    optimistic  = 1 + n_>
    pessimistic = 1 + n_> + n_=
    realistic   = 1 + n_> + n_= / 2      (the expected rank under random tie-breaking; the default)

Metrics per split, direction (tail, head, both = the mean over all 2Q queries) and tie policy:
MRR = mean 1/rank, MR = mean rank, Hits@k = mean(rank <= k), k = 1, 3, 10; and per relation.

Exact ties without a second pass: every score the counts compare comes out of the same block
computation. A query batch's threshold is first its target's score computed by ``score_rows`` (the
same kernel family as the blocks, normally bit-identical); while the blocks are scanned, the target's
own entry is read from its block. Where the two differ in any bit, the batch is scanned again with
the block's value, so ``n_>`` and ``n_=`` are always counted against the value the target has among
its competitors. Memory is O(query_batch x block_rows), independent of |E| apart from the model.

Sampled mode (explicitly labelled, for graphs too large for full ranking): each query batch draws
``samples`` candidate entities uniformly (with replacement, seeded) and ranks the target among those
that are not known answers; its numbers are not comparable with full ranking.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from kge.predict.topk import blocked_topk

TIE_POLICIES = ("optimistic", "pessimistic", "realistic")
HITS_AT = (1, 3, 10)
FILTER_CHUNK_ROWS = 4_000_000  # triples read at once while collecting known answers


# ----- known answers ------------------------------------------------------------------------------
def query_keys(anchors: np.ndarray, relations: np.ndarray, num_relations: int) -> np.ndarray:
    """(Q,) anchors and relations -> (Q,) int64 keys anchor * R + relation."""
    return np.asarray(anchors, dtype=np.int64) * int(num_relations) + np.asarray(relations, dtype=np.int64)


def known_answers(
    keys: np.ndarray, sources: list[np.ndarray], direction: str, num_relations: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every known answer of each query, as flat pairs.

    keys (Q,) from ``query_keys`` (anchor = head for direction "tail", tail for "head"); sources: (T_i, 3)
    (h, r, t) triple arrays (memory-mapped is fine: read in chunks). Returns (query index (P,), entity
    (P,)) int64, each (query, entity) once; the query's own target is among them. Only triples whose key
    is queried are kept, so memory is O(answers of the queried keys), not O(T).
    """
    wanted = np.unique(keys)
    anchor_col, answer_col = (0, 2) if direction == "tail" else (2, 0)
    found_keys, found_answers = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for triples in sources:
        for start in range(0, len(triples), FILTER_CHUNK_ROWS):
            chunk = np.asarray(triples[start : start + FILTER_CHUNK_ROWS], dtype=np.int64)
            k = chunk[:, anchor_col] * int(num_relations) + chunk[:, 1]
            pos = np.minimum(np.searchsorted(wanted, k), len(wanted) - 1)
            hit = wanted[pos] == k
            found_keys.append(k[hit])
            found_answers.append(chunk[hit, answer_col])
    pair_keys, pair_answers = np.concatenate(found_keys), np.concatenate(found_answers)
    pairs = (
        np.unique(np.stack([pair_keys, pair_answers], axis=1), axis=0) if len(pair_keys) else np.zeros((0, 2), np.int64)
    )
    # Expand per query: query i gets every answer of its key (pairs are sorted by key).
    lo = np.searchsorted(pairs[:, 0], keys, side="left")
    hi = np.searchsorted(pairs[:, 0], keys, side="right")
    counts = hi - lo
    query_index = np.repeat(np.arange(len(keys), dtype=np.int64), counts)
    offsets = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return query_index, pairs[np.repeat(lo, counts) + offsets, 1]


# ----- counting one query batch -------------------------------------------------------------------
@dataclass
class BatchRanks:
    """Counts of one query batch. greater, ties (Q,) int64 (filtered; raw_* without the filter);
    target_score (Q,) float32; top_scores / top_rows (Q, k): the filtered top-k (the target stays a
    candidate), rows -1 where fewer than k candidates remain."""

    greater: torch.Tensor
    ties: torch.Tensor
    raw_greater: torch.Tensor
    raw_ties: torch.Tensor
    target_score: torch.Tensor
    top_scores: torch.Tensor
    top_rows: torch.Tensor


def rank_batch(
    block_scores,
    score_rows,
    num_rows: int,
    target_rows: torch.Tensor,
    filter_query: torch.Tensor,
    filter_rows: torch.Tensor,
    k: int,
    block_rows: int,
    valid_rows: torch.Tensor | None = None,
) -> BatchRanks:
    """Filtered (and raw) rank counts of Q targets among all real rows, block by block.

    block_scores(lo, hi) -> (Q, hi - lo) scores (it may return a reused buffer; it is modified in
    place); score_rows(rows (Q,)) -> (Q, Q) scores of every query against the target rows (only the
    diagonal is used); target_rows (Q,) int64; filter_query, filter_rows (P,) int64: the known answers
    to remove (pairs equal to a query's own target are ignored); valid_rows (num_rows,) bool.
    """
    Q = target_rows.shape[0]
    device = target_rows.device
    own = filter_rows == target_rows[filter_query]
    order = torch.argsort(filter_rows[~own], stable=True)
    f_rows, f_query = filter_rows[~own][order], filter_query[~own][order]
    threshold = torch.diagonal(score_rows(target_rows)).float().clone()
    n_valid = int(valid_rows.sum()) if valid_rows is not None else num_rows
    k = min(k, n_valid)

    def scan(threshold: torch.Tensor) -> tuple[BatchRanks, torch.Tensor]:
        counts = {name: torch.zeros(Q, dtype=torch.int64, device=device) for name in ("g", "e", "rg", "re")}
        exact = torch.full((Q,), float("nan"), device=device)
        column = threshold.unsqueeze(1)

        def scores(lo: int, hi: int) -> torch.Tensor:
            s = block_scores(lo, hi)
            if s.dtype != torch.float32:
                s = s.float()
            inside = torch.nonzero((target_rows >= lo) & (target_rows < hi)).squeeze(1)
            exact[inside] = s[inside, target_rows[inside] - lo]
            a, b = torch.searchsorted(f_rows, lo), torch.searchsorted(f_rows, hi)
            if b > a:  # known answers leave the candidates; raw counts = filtered + these few entries
                q, col = f_query[a:b], f_rows[a:b] - lo
                known = s[q, col]
                counts["rg"].index_add_(0, q, (known > threshold[q]).long())
                counts["re"].index_add_(0, q, (known == threshold[q]).long())
                s[q, col] = float("-inf")
            greater, equal = (s > column).sum(1), (s == column).sum(1)
            counts["g"] += greater
            counts["e"] += equal
            counts["rg"] += greater
            counts["re"] += equal
            return s

        top_scores, top_rows = blocked_topk(scores, num_rows, k, block_rows=block_rows, valid_rows=valid_rows)
        top_rows = torch.where(torch.isinf(top_scores) & (top_scores < 0), torch.full_like(top_rows, -1), top_rows)
        # The target matched itself once in each "equal" count (exact == threshold when accepted).
        result = BatchRanks(counts["g"], counts["e"] - 1, counts["rg"], counts["re"] - 1, exact, top_scores, top_rows)
        return result, exact

    result, exact = scan(threshold)
    if not torch.equal(exact, threshold):
        # A bit differs between the two computations: count again against the block's own value.
        result, exact = scan(exact)
    return result


# ----- metrics --------------------------------------------------------------------------------------
def ranks_from_counts(greater: np.ndarray, ties: np.ndarray) -> dict[str, np.ndarray]:
    """(Q,) counts -> {policy: (Q,) float64 ranks}."""
    g, e = np.asarray(greater, dtype=np.float64), np.asarray(ties, dtype=np.float64)
    return {"optimistic": 1.0 + g, "pessimistic": 1.0 + g + e, "realistic": 1.0 + g + e / 2.0}


def rank_metrics(ranks: np.ndarray) -> dict[str, float]:
    """(Q,) ranks -> {mrr, mr, hits@1, hits@3, hits@10}; empty -> NaN-free zeros with count 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        return {"mrr": 0.0, "mr": 0.0, **{f"hits@{k}": 0.0 for k in HITS_AT}}
    return {
        "mrr": float(np.mean(1.0 / ranks)),
        "mr": float(np.mean(ranks)),
        **{f"hits@{k}": float(np.mean(ranks <= k)) for k in HITS_AT},
    }


def split_metrics(
    counts: dict[str, tuple[np.ndarray, np.ndarray]], relations: np.ndarray, relation_labels=None
) -> dict:
    """{direction: (greater, ties)} of one split (each (Q,), aligned with relations (Q,)) -> metrics.

    Returns {direction and "both": {policy: metrics}, "queries": Q, "per_relation": {label: {direction
    and "both": realistic metrics, "queries": n}}}; "both" pools the tail and head queries.
    """
    ranks = {d: ranks_from_counts(*c) for d, c in counts.items()}
    directions = list(ranks)
    out: dict = {"queries": int(len(relations))}
    for d in directions:
        out[d] = {policy: rank_metrics(ranks[d][policy]) for policy in TIE_POLICIES}
    if len(directions) > 1:
        out["both"] = {
            policy: rank_metrics(np.concatenate([ranks[d][policy] for d in directions])) for policy in TIE_POLICIES
        }
    per_relation = {}
    for r in np.unique(relations):
        sel = relations == r
        label = str(relation_labels[r]) if relation_labels is not None else str(int(r))
        entry = {"queries": int(sel.sum())}
        for d in directions:
            entry[d] = rank_metrics(ranks[d]["realistic"][sel])
        if len(directions) > 1:
            entry["both"] = rank_metrics(np.concatenate([ranks[d]["realistic"][sel] for d in directions]))
        per_relation[label] = entry
    out["per_relation"] = per_relation
    return out


# ----- one model ------------------------------------------------------------------------------------
def evaluate_queries(
    predictor,
    anchors: np.ndarray,
    relations: np.ndarray,
    targets: np.ndarray,
    filter_query: np.ndarray,
    filter_entity: np.ndarray,
    k: int,
    query_batch: int,
    samples: int | None = None,
    seed: int = 0,
    desc: str = "evaluate",
) -> dict[str, np.ndarray]:
    """Ranks of ``targets`` (Q,) for the queries (anchor, relation) of one direction.

    ``predictor`` is a kge.predict.predictor.Predictor (single process) whose direction matches the queries;
    relations are the model's relation ids (r + R for inverse-relation head queries). filter pairs
    from ``known_answers`` (global ids). Returns numpy arrays: greater, ties, raw_greater, raw_ties (Q,),
    top_ids (Q, k) global ids of the filtered top-k (-1 padded), and for sampled mode the same counts
    among the samples.
    """
    partition = predictor.partition
    Q = len(targets)
    k = max(1, min(k, int(predictor.valid_rows.sum())))
    out = {name: np.zeros(Q, dtype=np.int64) for name in ("greater", "ties", "raw_greater", "raw_ties")}
    out["top_ids"] = np.full((Q, k), -1, dtype=np.int64)
    target_rows_all = torch.from_numpy(
        np.asarray(partition.row_of(np.asarray(targets, dtype=np.int64)), dtype=np.int64)
    )
    filter_rows_all = (
        torch.from_numpy(np.asarray(partition.row_of(filter_entity), dtype=np.int64))
        if len(filter_entity)
        else torch.zeros(0, dtype=torch.int64)
    )
    filter_query_t = torch.from_numpy(np.asarray(filter_query, dtype=np.int64))
    query_starts = np.searchsorted(np.asarray(filter_query), np.arange(0, Q + query_batch, query_batch))
    hr = torch.from_numpy(
        np.stack([np.asarray(anchors, dtype=np.int64), np.asarray(relations, dtype=np.int64)], axis=1)
    )
    generator = torch.Generator().manual_seed(seed)
    real_rows = torch.nonzero(predictor.valid_rows.cpu()).squeeze(1)
    for bi, start in enumerate(
        tqdm(range(0, Q, query_batch), desc=desc, unit="batch", mininterval=2.0, file=sys.stderr)
    ):
        stop = min(start + query_batch, Q)
        query, normal = predictor.query_vectors(hr[start:stop])
        device = query.device
        target_rows = target_rows_all[start:stop].to(device)
        a, b = query_starts[bi], query_starts[bi + 1]
        f_query = (filter_query_t[a:b] - start).to(device)
        f_rows = filter_rows_all[a:b].to(device)
        if samples:
            sampled = real_rows[torch.randint(len(real_rows), (samples,), generator=generator)].to(device)
            columns = torch.cat([sampled, target_rows])
            s = predictor.score_rows(query, normal, columns).float()
            target_score = s[:, samples:].diagonal().unsqueeze(1)
            s = s[:, :samples]
            # A sample that is a known answer of its query (the target included) is no candidate.
            known_keys = torch.sort(
                torch.cat(
                    [
                        f_query * predictor.num_rows + f_rows,
                        torch.arange(stop - start, device=device) * predictor.num_rows + target_rows,
                    ]
                )
            ).values
            keys = torch.arange(stop - start, device=device).unsqueeze(1) * predictor.num_rows + sampled.unsqueeze(0)
            pos = torch.searchsorted(known_keys, keys).clamp(max=len(known_keys) - 1)
            known = known_keys[pos] == keys
            not_target = sampled.unsqueeze(0) != target_rows.unsqueeze(1)
            out["greater"][start:stop] = ((s > target_score) & ~known).sum(1).cpu().numpy()
            out["ties"][start:stop] = ((s == target_score) & ~known).sum(1).cpu().numpy()
            out["raw_greater"][start:stop] = ((s > target_score) & not_target).sum(1).cpu().numpy()
            out["raw_ties"][start:stop] = ((s == target_score) & not_target).sum(1).cpu().numpy()
            continue
        block_scores = predictor.block_scorer(query, normal)
        # rank_batch calls the lambda before the loop moves on (query and normal are this batch's).
        ranks = rank_batch(
            block_scores,
            lambda rows: predictor.score_rows(query, normal, rows),  # noqa: B023
            predictor.num_rows,
            target_rows,
            f_query,
            f_rows,
            k,
            predictor.block_rows,
            predictor.valid_rows,
        )
        out["greater"][start:stop] = ranks.greater.cpu().numpy()
        out["ties"][start:stop] = ranks.ties.cpu().numpy()
        out["raw_greater"][start:stop] = ranks.raw_greater.cpu().numpy()
        out["raw_ties"][start:stop] = ranks.raw_ties.cpu().numpy()
        rows = ranks.top_rows.cpu()
        ids = predictor.row_to_entity[rows.clamp(min=0)]
        out["top_ids"][start:stop, : rows.shape[1]] = torch.where(rows >= 0, ids, torch.full_like(ids, -1)).numpy()
    return out


def head_mode(requested: str, inverse_relations: bool) -> str:
    """'auto' -> 'inverse' for a model trained with inverse relations, else 'direct'."""
    if requested == "auto":
        return "inverse" if inverse_relations else "direct"
    return requested


def evaluation_cost(num_queries: int, num_entities: int, dim: int, samples: int | None) -> dict:
    """Scored (query, candidate) pairs and multiply-adds of one direction of a split."""
    candidates = samples if samples else num_entities
    pairs = int(num_queries) * int(candidates)
    return {"scored_pairs": pairs, "multiply_adds": pairs * int(dim)}
