"""Top-K over a large entity table, block by block, with memory independent of the table size."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from kge.common.errors import KgeInputError

# Block candidates are merged once their total width reaches this many times k (bounds memory on
# huge tables while merging rarely: one torch.topk over many blocks' candidates, not one per block).
MERGE_EVERY_K = 32
# Blocks at least this many times k wide take the grouped selection of ``block_topk``.
GROUPED_MIN_WIDTH_K = 32
GROUP_SIZE = 8


def block_topk(s: torch.Tensor, k: int, group: int = GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Unsorted top-k of each row of a (Q, n) block -> (values (Q, k), columns (Q, k) int64).

    Same values as ``torch.topk(s, k, sorted=False)`` (order, and which of exactly tied entries, may
    differ), but cheaper for wide blocks: torch.topk costs several ns per element on CPU, an amax a
    fraction of that. The columns are split into ``group``-element groups (column j belongs to group
    j mod m, m = n // group, so the max over groups is a fast strided reduction); only the k groups
    with the largest maxima can hold a top-k entry (each of the other groups is beaten by k distinct
    group maxima), so torch.topk runs on the n / group maxima and then on those k groups' k * group
    entries (plus the n mod group leftover columns).
    """
    q, n = s.shape
    m = n // group
    if group < 2 or n < GROUPED_MIN_WIDTH_K * k or m < k:
        return torch.topk(s, min(k, n), dim=1, sorted=False)
    maxima = s[:, : m * group].unflatten(1, (group, m)).amax(1)  # (Q, m)
    top_groups = torch.topk(maxima, k, dim=1, sorted=False).indices  # (Q, k)
    cols = (top_groups.unsqueeze(2) + torch.arange(0, m * group, m, device=s.device)).flatten(1)
    vals = torch.gather(s, 1, cols)  # (Q, k * group)
    if m * group < n:
        rest = torch.arange(m * group, n, device=s.device).expand(q, -1)
        vals = torch.cat([vals, s[:, m * group :]], dim=1)
        cols = torch.cat([cols, rest], dim=1)
    top_s, pos = torch.topk(vals, k, dim=1, sorted=False)
    return top_s, torch.gather(cols, 1, pos)


def valid_runs(valid_rows: torch.Tensor | None, num_rows: int) -> list[tuple[int, int]]:
    """Maximal runs [start, stop) of real rows: (num_rows,) bool mask -> list of (start, stop)."""
    if valid_rows is None:
        return [(0, num_rows)] if num_rows else []
    v = torch.as_tensor(valid_rows, dtype=torch.bool).cpu().to(torch.int8)
    edges = torch.diff(v, prepend=v.new_zeros(1), append=v.new_zeros(1))
    starts = torch.nonzero(edges == 1).flatten().tolist()
    stops = torch.nonzero(edges == -1).flatten().tolist()
    return list(zip(starts, stops))


def blocked_topk(
    query_scores_fn: Callable[[int, int], torch.Tensor],
    num_rows: int,
    k: int,
    block_rows: int = 65536,
    valid_rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Running top-K of Q queries over the rows [0, num_rows) of an entity table.

    ``query_scores_fn(start, stop)`` returns the (Q, stop - start) scores of every query against rows
    [start, stop); it may return a view of a buffer it reuses on the next call. ``valid_rows``
    (num_rows,) bool marks real rows (False = padding, never returned): blocks are cut inside the runs
    of real rows, so padding is never scored. Returns ``(scores (Q, k) float32, rows (Q, k) int64)``,
    best first. Each block's unsorted top-k (``block_topk``) is kept as candidates; the candidates are merged by one
    torch.topk once they reach ``MERGE_EVERY_K * k`` columns and at the end, so memory is
    O(Q * (MERGE_EVERY_K * k + block_rows)). Values equal those of torch.topk on the full matrix; the
    order among exactly tied scores may differ.
    """
    if k < 1:
        raise KgeInputError(f"k: expected a positive number of candidates, got {k}")
    if block_rows < 1:
        raise KgeInputError(f"block_rows: expected a positive block size, got {block_rows}")
    if valid_rows is not None:
        valid_rows = torch.as_tensor(valid_rows, dtype=torch.bool)
        if valid_rows.shape != (num_rows,):
            raise ValueError(f"valid_rows: expected a bool mask of shape ({num_rows},), got {tuple(valid_rows.shape)}")
    runs = valid_runs(valid_rows, num_rows)
    n_valid = sum(stop - start for start, stop in runs)
    if k > n_valid:
        raise KgeInputError(f"k: asked for top-{k} but only {n_valid} valid rows exist")

    cand_s: list[torch.Tensor] = []
    cand_i: list[torch.Tensor] = []
    width = 0

    def merge(final: bool) -> None:
        nonlocal width
        cat_s = cand_s[0] if len(cand_s) == 1 else torch.cat(cand_s, dim=1)
        cat_i = cand_i[0] if len(cand_i) == 1 else torch.cat(cand_i, dim=1)
        top_s, pos = torch.topk(cat_s, min(k, cat_s.shape[1]), dim=1, sorted=final)
        cand_s[:] = [top_s]
        cand_i[:] = [torch.gather(cat_i, 1, pos)]
        width = top_s.shape[1]

    for run_start, run_stop in runs:
        for start in range(run_start, run_stop, block_rows):
            stop = min(start + block_rows, run_stop)
            s = query_scores_fn(start, stop)
            if s.ndim != 2 or s.shape[1] != stop - start:
                raise ValueError(
                    f"query_scores_fn: expected (Q, {stop - start}) scores for rows "
                    f"[{start}, {stop}), got {tuple(s.shape)}"
                )
            if s.dtype != torch.float32:
                s = s.float()
            # Only the block's own top-k can enter the global top-k; order is recovered at the merge.
            bs, bi = block_topk(s, k)
            cand_s.append(bs)
            cand_i.append(bi + start if start else bi)
            width += bs.shape[1]
            if width >= MERGE_EVERY_K * k:
                merge(final=False)
    merge(final=True)
    return cand_s[0], cand_i[0]


def merge_topk(
    parts: Sequence[tuple[torch.Tensor, torch.Tensor]], k: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge candidate lists ``[(scores (Q, k_i), ids (Q, k_i)), ...]`` (e.g. one per entity shard)
    into the global ``(scores (Q, k), ids (Q, k))``, best first.

    ``k`` defaults to the widest part (the usual case: every shard gave its own top-k). The ids are
    returned as given (global ids are expected); entries scored -inf (padding) sort last.
    """
    if not parts:
        raise ValueError("merge_topk: expected at least one (scores, ids) part")
    scores = torch.cat([torch.as_tensor(s).float() for s, _ in parts], dim=1)
    ids = torch.cat([torch.as_tensor(i).long().to(scores.device) for _, i in parts], dim=1)
    if scores.shape != ids.shape:
        raise ValueError(f"merge_topk: scores {tuple(scores.shape)} and ids {tuple(ids.shape)} differ")
    if k is None:
        k = max(int(s.shape[1]) for s, _ in parts)
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k: expected 1..{scores.shape[1]} merged candidates, got {k}")
    top_s, pos = torch.topk(scores, k, dim=1)
    return top_s, torch.gather(ids, 1, pos)
