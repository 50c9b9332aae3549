"""Scoring functions: hand-computed values, matrix path == element-wise reference, gradients."""

import math

import pytest
import torch

from kge.common.errors import KgeInputError
from kge.nn import fused_distance, scoring
from kge.nn.scoring import (
    SCORE_FNS,
    query_vectors,
    relation_dim,
    score_matrix,
    score_queries,
    score_triples,
    uses_normal,
)

D64 = torch.float64


def t64(*rows):
    return torch.tensor(rows, dtype=D64)


def both(score_fn, h, r, t, **kw):
    """Score through the reference and the matrix path (diagonal) and check they agree."""
    ref = score_triples(score_fn, h, r, t, **kw)
    mat = score_matrix(score_fn, h, r, t, **kw).diagonal()
    torch.testing.assert_close(mat, ref, rtol=0, atol=1e-7)
    return ref


# ---------------------------------------------------------------- hand computations
def test_transe_by_hand():
    h, r, t = t64([1.0, 2.0]), t64([0.5, -1.0]), t64([2.0, 0.0])
    # h + r - t = [-0.5, 1.0]: L1 = 1.5, L2 = sqrt(0.25 + 1) = 1.1180339887
    assert both("transe", h, r, t, p=1, gamma=3.0).item() == pytest.approx(3.0 - 1.5)
    assert both("transe", h, r, t, p=2, gamma=3.0).item() == pytest.approx(3.0 - 1.1180339887498949)


def test_transh_by_hand():
    # w_r = [0, 2] -> w = [0, 1]; h = [1, 2] -> h_perp = [1, 0]; t = [3, 5] -> t_perp = [3, 0]
    # h_perp + r - t_perp = [1 + 1 - 3, 0 + 1 - 0] = [-1, 1]: L1 = 2, L2 = sqrt(2)
    h, r, t, w = t64([1.0, 2.0]), t64([1.0, 1.0]), t64([3.0, 5.0]), t64([0.0, 2.0])
    assert both("transh", h, r, t, p=1, gamma=1.0, normal=w).item() == pytest.approx(1.0 - 2.0)
    assert both("transh", h, r, t, p=2, gamma=1.0, normal=w).item() == pytest.approx(1.0 - math.sqrt(2))


def test_rotate_by_hand():
    # d = 4 -> 2 complex numbers, [re | im]: h = (1 + 0i, 0 + 2i); phases (pi/2, pi)
    # h * exp(i r) = (i, -2i); t = (1 + 1i, 1 + 0i)
    # z = (i - 1 - i, -2i - 1) = (-1, -1 - 2i)
    # p=2: sqrt(1 + 1 + 4) = sqrt(6) = 2.4494897428; p=1: |z1| + |z2| = 1 + sqrt(5) = 3.2360679775
    h = t64([1.0, 0.0, 0.0, 2.0])
    r = t64([math.pi / 2, math.pi])
    t = t64([1.0, 1.0, 1.0, 0.0])
    assert both("rotate", h, r, t, p=2, gamma=5.0).item() == pytest.approx(5.0 - math.sqrt(6))
    assert both("rotate", h, r, t, p=1, gamma=5.0).item() == pytest.approx(5.0 - 1.0 - math.sqrt(5))


def test_distmult_by_hand():
    # 1*2*4 + 2*0*5 + 3*(-1)*6 = 8 + 0 - 18 = -10
    h, r, t = t64([1.0, 2.0, 3.0]), t64([2.0, 0.0, -1.0]), t64([4.0, 5.0, 6.0])
    assert both("distmult", h, r, t, gamma=7.0).item() == pytest.approx(-10.0)  # gamma ignored


def test_complex_by_hand():
    # h = (1 + 3i, 2 + 4i), r = (0 + 1i, 1 + 0i), t = (1 + 2i, 0 - 1i)
    # k=1: (1 + 3i) i = -3 + i; (-3 + i)(1 - 2i) = -3 + 6i + i + 2 = -1 + 7i -> Re = -1
    # k=2: (2 + 4i) 1 = 2 + 4i; (2 + 4i)(0 + i) = -4 + 2i -> Re = -4;  total -5
    h = t64([1.0, 2.0, 3.0, 4.0])
    r = t64([0.0, 1.0, 1.0, 0.0])
    t = t64([1.0, 0.0, 2.0, -1.0])
    assert both("complex", h, r, t).item() == pytest.approx(-5.0)


def test_helpers_and_validation():
    assert relation_dim("rotate", 256) == 128
    assert relation_dim("complex", 400) == 400
    assert uses_normal("transh") and not uses_normal("transe")
    with pytest.raises(KgeInputError):
        relation_dim("hole", 8)
    with pytest.raises(KgeInputError):
        relation_dim("rotate", 7)
    x = torch.zeros(2, 4)
    with pytest.raises(KgeInputError):
        score_matrix("transe", x, x, x, p=3)
    with pytest.raises(KgeInputError):
        score_matrix("transh", x, x, x, p=2)  # no normal


# ---------------------------------------------------------------- matrix == reference
def make_inputs(score_fn, b=5, m=7, d=8, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    dr = relation_dim(score_fn, d)
    h = torch.randn(b, d, generator=g, dtype=D64)
    r = torch.randn(b, dr, generator=g, dtype=D64)
    t = torch.randn(m, d, generator=g, dtype=D64)
    w = torch.randn(b, d, generator=g, dtype=D64) if uses_normal(score_fn) else None
    out = [h, r, t, w]
    if requires_grad:
        out = [x.requires_grad_() if x is not None else None for x in out]
    return out


def reference_matrix(score_fn, h, r, t, w, **kw):
    b, m = h.shape[0], t.shape[0]
    bi = torch.arange(b).repeat_interleave(m)
    mi = torch.arange(m).repeat(b)
    ww = w[bi] if w is not None else None
    return score_triples(score_fn, h[bi], r[bi], t[mi], normal=ww, **kw).view(b, m)


CASES = [(fn, p) for fn in sorted(SCORE_FNS) for p in ((1, 2) if fn in scoring.DISTANCE_FNS else (2,))]


@pytest.mark.parametrize("score_fn,p", CASES)
def test_matrix_equals_reference(score_fn, p):
    h, r, t, w = make_inputs(score_fn)
    got = score_matrix(score_fn, h, r, t, p=p, gamma=2.5, normal=w)
    want = reference_matrix(score_fn, h, r, t, w, p=p, gamma=2.5)
    assert got.shape == (5, 7)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("score_fn,p", CASES)
def test_matrix_gradients_equal_reference(score_fn, p):
    h, r, t, w = make_inputs(score_fn, requires_grad=True)
    weights = torch.randn(5, 7, dtype=D64, generator=torch.Generator().manual_seed(1))
    leaves = [x for x in (h, r, t, w) if x is not None]
    got = torch.autograd.grad((score_matrix(score_fn, h, r, t, p=p, gamma=1.0, normal=w) * weights).sum(), leaves)
    want = torch.autograd.grad((reference_matrix(score_fn, h, r, t, w, p=p, gamma=1.0) * weights).sum(), leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("score_fn,p", [c for c in CASES if c[0] in scoring.DISTANCE_FNS])
def test_l1_chunked_path(monkeypatch, score_fn, p):
    """Force many tiny chunks of the eager distance path (float64 runs there): values and gradients unchanged."""
    h, r, t, w = make_inputs(score_fn, m=11, requires_grad=True)
    leaves = [x for x in (h, r, t, w) if x is not None]
    full = score_matrix(score_fn, h, r, t, p=p, normal=w)
    g_full = torch.autograd.grad(full.pow(2).sum(), leaves)
    monkeypatch.setattr(fused_distance, "CHUNK_ELEMENTS", 5 * 8 * 3)  # 3 tails per chunk, 11 tails
    chunked = score_matrix(score_fn, h, r, t, p=p, normal=w)
    g_chunk = torch.autograd.grad(chunked.pow(2).sum(), leaves)
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-12)
    for a, b in zip(g_chunk, g_full):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("score_fn,p", [c for c in CASES if c[0] in scoring.DISTANCE_FNS])
def test_zero_distance_gradients_finite(score_fn, p):
    """A tail that exactly equals the folded query (h + r = t) must not produce NaN/inf."""
    h, r, t, w = make_inputs(score_fn)
    if score_fn == "transh":
        wu = w / w.norm(dim=-1, keepdim=True)
        r = r - (r * wu).sum(-1, keepdim=True) * wu  # r perpendicular to w
    if score_fn == "pairre":
        # r_T = r_H and t = 2 h: h/|h| o r_H = t/|t| o r_T (the query is [a | r_T], not a tail).
        r = torch.cat([r[:, :8], r[:, :8]], dim=1)
        t = torch.cat([2.0 * h, t])
    else:
        q = query_vectors(score_fn, h, r, w)
        t = torch.cat([q.detach(), t])  # tail b equals query b (b < 5)
    for x in (h, r, t, w):
        if x is not None:
            x.requires_grad_()
    leaves = [x for x in (h, r, t, w) if x is not None]
    s = score_matrix(score_fn, h, r, t, p=p, gamma=0.0, normal=w)
    assert s.diagonal().abs().max() < 1e-6  # distance ~ 0 on the diagonal
    grads = torch.autograd.grad(s.sum(), leaves)
    assert all(torch.isfinite(g_).all() for g_ in grads)
    if score_fn == "transe":  # exact zeros: reference uses subgradient 0
        ref = torch.autograd.grad(reference_matrix(score_fn, h, r, t, w, p=p).sum(), leaves)
        for a, b in zip(grads, ref):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_score_queries_with_precomputed_norms():
    h, r, t, _ = make_inputs("transe")
    q = query_vectors("transe", h, r)
    a = score_queries("transe", q, t, p=2, gamma=1.0, tails_sq=(t * t).sum(-1))
    torch.testing.assert_close(a, score_matrix("transe", h, r, t, p=2, gamma=1.0))


def test_float32_matrix_close_to_reference():
    for fn, p in CASES:
        h, r, t, w = [x.float() if x is not None else None for x in make_inputs(fn, b=16, m=32, d=64)]
        got = score_matrix(fn, h, r, t, p=p, gamma=1.0, normal=w)
        want = reference_matrix(fn, h, r, t, w, p=p, gamma=1.0)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("score_fn,p", CASES)
def test_head_queries_equal_reference(score_fn, p):
    """Head prediction (?, r, t): every candidate head h scored through head_query_vectors equals
    score_triples(h, r, t) for the query's own (r, t)."""
    h, r, t, w = make_inputs(score_fn)  # 5 queries (r, w, and the tails t[:5]); 7 candidate heads h'
    tails = t[:5]
    heads = torch.randn(7, h.shape[1], dtype=D64, generator=torch.Generator().manual_seed(3))
    q = scoring.head_query_vectors(score_fn, tails, r, w)
    got = score_queries(score_fn, q, heads, p=p, gamma=2.5, normal=w)
    bi = torch.arange(5).repeat_interleave(7)
    mi = torch.arange(7).repeat(5)
    want = score_triples(
        score_fn, heads[mi], r[bi], tails[bi], p=p, gamma=2.5, normal=w[bi] if w is not None else None
    ).view(5, 7)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("score_fn", ["transe", "rotate"])
def test_in_place_l2_scores_are_bit_identical(score_fn):
    # Prediction's in-place L2 path must give exactly score_queries' values: evaluation compares a
    # target's score with its block's bit for bit. The last block is a non-contiguous buffer view.
    g = torch.Generator().manual_seed(5)
    query, tails = torch.randn(37, 16, generator=g), torch.randn(50, 16, generator=g)
    tails[3] = query[0]  # a zero distance: the clamp at eps
    tails_sq = (tails * tails).sum(-1)
    out, scratch = torch.empty(40, 64), torch.empty(40, 64)
    got = scoring.l2_distance_scores_into(query, tails, tails_sq, 6.5, out[:37, :50], scratch[:37, :50])
    want = scoring.score_queries(score_fn, query, tails, p=2, gamma=6.5, tails_sq=tails_sq)
    assert torch.equal(got, want)
