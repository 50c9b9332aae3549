"""Top-K over a large entity table, block by block, with memory independent of the table size."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from kge.errors import KgeInputError


def blocked_topk(query_scores_fn: Callable[[int, int], torch.Tensor], num_rows: int, k: int,
                 block_rows: int = 65536, valid_rows: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Running top-K of Q queries over the rows [0, num_rows) of an entity table.

    ``query_scores_fn(start, stop)`` returns the (Q, stop - start) scores of every query against rows
    [start, stop). ``valid_rows`` (num_rows,) bool marks real rows (False = padding, never returned).
    Returns ``(scores (Q, k) float32, rows (Q, k) int64)``, best first. Each block's top-k is merged with
    the running top-k via torch.topk on their concatenation, so memory is O(Q * (k + block_rows)).
    Values equal those of torch.topk on the full matrix; the order among exactly tied scores may differ.
    """
    if k < 1:
        raise KgeInputError(f"k: expected a positive number of candidates, got {k}")
    if block_rows < 1:
        raise KgeInputError(f"block_rows: expected a positive block size, got {block_rows}")
    if valid_rows is not None:
        valid_rows = torch.as_tensor(valid_rows, dtype=torch.bool)
        if valid_rows.shape != (num_rows,):
            raise KgeInputError(f"valid_rows: expected a bool mask of shape ({num_rows},), "
                                f"got {tuple(valid_rows.shape)}")
        n_valid = int(valid_rows.sum())
    else:
        n_valid = num_rows
    if k > n_valid:
        raise KgeInputError(f"k: asked for top-{k} but only {n_valid} valid rows exist")

    best_s = best_i = None
    for start in range(0, num_rows, block_rows):
        stop = min(start + block_rows, num_rows)
        s = query_scores_fn(start, stop).float()
        if s.ndim != 2 or s.shape[1] != stop - start:
            raise KgeInputError(f"query_scores_fn: expected (Q, {stop - start}) scores for rows "
                                f"[{start}, {stop}), got {tuple(s.shape)}")
        if valid_rows is not None:
            block_valid = valid_rows[start:stop].to(s.device)
            if not bool(block_valid.all()):
                s = s.masked_fill(~block_valid, float("-inf"))
        # Only the block's own top-k can enter the global top-k: shrink before concatenating.
        bs, bi = torch.topk(s, min(k, stop - start), dim=1)
        bi = bi + start
        if best_s is None:
            best_s, best_i = bs, bi
        else:
            cat_s = torch.cat([best_s, bs], dim=1)
            cat_i = torch.cat([best_i, bi], dim=1)
            best_s, pos = torch.topk(cat_s, min(k, cat_s.shape[1]), dim=1)
            best_i = torch.gather(cat_i, 1, pos)
    return best_s.float(), best_i.long()


def merge_topk(parts: Sequence[tuple[torch.Tensor, torch.Tensor]], k: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge candidate lists ``[(scores (Q, k_i), ids (Q, k_i)), ...]`` (e.g. one per entity shard)
    into the global ``(scores (Q, k), ids (Q, k))``, best first.

    ``k`` defaults to the widest part (the usual case: every shard gave its own top-k). The ids are
    returned as given (global ids are expected); entries scored -inf (padding) sort last.
    """
    if not parts:
        raise KgeInputError("merge_topk: expected at least one (scores, ids) part")
    scores = torch.cat([torch.as_tensor(s).float() for s, _ in parts], dim=1)
    ids = torch.cat([torch.as_tensor(i).long().to(scores.device) for _, i in parts], dim=1)
    if scores.shape != ids.shape:
        raise KgeInputError(f"merge_topk: scores {tuple(scores.shape)} and ids {tuple(ids.shape)} differ")
    if k is None:
        k = max(int(s.shape[1]) for s, _ in parts)
    if not 1 <= k <= scores.shape[1]:
        raise KgeInputError(f"k: expected 1..{scores.shape[1]} merged candidates, got {k}")
    top_s, pos = torch.topk(scores, k, dim=1)
    return top_s, torch.gather(ids, 1, pos)
