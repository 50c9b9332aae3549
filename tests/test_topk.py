"""Blocked top-K equals torch.topk on the full matrix; padding is never returned."""

import pytest
import torch

from kge.common.errors import KgeInputError
from kge.predict.topk import blocked_topk, merge_topk


def full_scores(q=6, n=1000, seed=0):
    return torch.rand(q, n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("block", [1, 7, 128, 250, 999, 1000, 5000])
@pytest.mark.parametrize("k", [1, 10, 100])
def test_blocked_equals_full_topk(block, k):
    s = full_scores()
    calls = []

    def fn(a, b):
        calls.append((a, b))
        return s[:, a:b]

    got_s, got_i = blocked_topk(fn, s.shape[1], k, block_rows=block)
    want_s, want_i = torch.topk(s, k, dim=1)
    assert got_s.dtype == torch.float32 and got_i.dtype == torch.int64
    assert torch.equal(got_s, want_s)
    assert torch.equal(got_i, want_i)  # continuous random scores: no ties
    assert calls[0][0] == 0 and calls[-1][1] == 1000 and all(b - a <= block for a, b in calls)


def test_padding_rows_never_returned():
    s = full_scores(n=300)
    valid = torch.ones(300, dtype=torch.bool)
    valid[::3] = False
    s[:, ~valid] += 10.0  # padding rows score best: must still be excluded
    got_s, got_i = blocked_topk(lambda a, b: s[:, a:b], 300, 50, block_rows=64, valid_rows=valid)
    assert valid[got_i].all()
    masked = s.masked_fill(~valid, float("-inf"))
    want_s, want_i = torch.topk(masked, 50, dim=1)
    assert torch.equal(got_s, want_s) and torch.equal(got_i, want_i)


def test_k_larger_than_valid_rows_is_an_error():
    s = full_scores(n=20)
    valid = torch.zeros(20, dtype=torch.bool)
    valid[:5] = True
    with pytest.raises(KgeInputError):
        blocked_topk(lambda a, b: s[:, a:b], 20, 6, valid_rows=valid)
    with pytest.raises(KgeInputError):
        blocked_topk(lambda a, b: s[:, a:b], 20, 21)
    got_s, got_i = blocked_topk(lambda a, b: s[:, a:b], 20, 5, block_rows=3, valid_rows=valid)
    assert sorted(got_i[0].tolist()) == [0, 1, 2, 3, 4]


def test_scores_from_half_precision_blocks():
    s = full_scores(n=100).half()
    got_s, got_i = blocked_topk(lambda a, b: s[:, a:b], 100, 10, block_rows=33)
    assert got_s.dtype == torch.float32
    torch.testing.assert_close(got_s, torch.topk(s.float(), 10, dim=1).values)


def test_merge_topk_equals_global_topk():
    s = full_scores(n=900)
    # three "shards" holding arbitrary global ids
    perm = torch.randperm(900, generator=torch.Generator().manual_seed(3))
    shards = [perm[:300], perm[300:600], perm[600:]]
    parts = []
    for ids in shards:
        ps, pi = torch.topk(s[:, ids], 20, dim=1)
        parts.append((ps, ids[pi]))
    got_s, got_i = merge_topk(parts)
    want_s, want_i = torch.topk(s, 20, dim=1)
    assert torch.equal(got_s, want_s) and torch.equal(got_i, want_i)
    got_s5, got_i5 = merge_topk(parts, k=5)
    assert torch.equal(got_i5, want_i[:, :5])
    with pytest.raises(ValueError, match="merged candidates"):
        merge_topk(parts, k=61)
    with pytest.raises(ValueError, match="at least one"):
        merge_topk([])
