"""Losses: hand-computed values, stop-gradient, masking, sampling correction, L3."""

import math

import pytest
import torch

from kge.common.errors import KgeInputError
from kge.nn.losses import (
    batch_softmax_loss,
    dot_softmax_loss,
    l3_penalty,
    logsigmoid_loss,
    sampling_correction,
    softmax_loss,
)

D64 = torch.float64


def lsig(x):
    return -math.log1p(math.exp(-x))  # log sigma(x)


def test_logsigmoid_uniform_by_hand():
    # one query: s+ = 2, s- = (0, 1); a = 0 -> w = (1/2, 1/2)
    # L = -0.5 log s(2) - 0.5 * (0.5 log s(0) + 0.5 log s(-1))
    #   = 0.5 * 0.126928 + 0.25 * (0.693147 + 1.313262) = 0.063464 + 0.501602 = 0.565066
    pos, neg = torch.tensor([2.0], dtype=D64), torch.tensor([[0.0, 1.0]], dtype=D64)
    want = -0.5 * lsig(2) - 0.5 * (0.5 * lsig(0) + 0.5 * lsig(-1))
    assert want == pytest.approx(0.565066, abs=1e-6)
    assert logsigmoid_loss(pos, neg).item() == pytest.approx(want, rel=1e-12)


def test_logsigmoid_adversarial_by_hand():
    # a = 1, s- = (0, ln 3): softmax(0, ln 3) = (1/4, 3/4); s+ = 1; pos/neg weights 1 and 1
    # L = -log s(1) - (1/4 log s(0) + 3/4 log s(-ln 3)) with s(-ln 3) = 1/4
    #   = 0.313262 + 0.25 * 0.693147 + 0.75 * 1.386294 = 0.313262 + 0.173287 + 1.039721 = 1.526270
    pos, neg = torch.tensor([1.0], dtype=D64), torch.tensor([[0.0, math.log(3)]], dtype=D64)
    got = logsigmoid_loss(pos, neg, adversarial_scale=1.0, pos_weight=1.0, neg_weight=1.0)
    assert got.item() == pytest.approx(1.526270, abs=1e-6)


def test_logsigmoid_mean_over_batch():
    pos = torch.tensor([2.0, -1.0], dtype=D64)
    neg = torch.tensor([[0.0, 1.0], [3.0, -2.0]], dtype=D64)
    each = [logsigmoid_loss(pos[i : i + 1], neg[i : i + 1], adversarial_scale=2.0) for i in range(2)]
    assert logsigmoid_loss(pos, neg, adversarial_scale=2.0).item() == pytest.approx((each[0] + each[1]).item() / 2)


def test_adversarial_weights_are_stop_gradient():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(4, dtype=D64, generator=g).requires_grad_()
    neg = torch.randn(4, 6, dtype=D64, generator=g).requires_grad_()
    a = 3.0
    loss = logsigmoid_loss(pos, neg, adversarial_scale=a)
    gp, gn = torch.autograd.grad(loss, [pos, neg])
    # the same loss with the weights as explicit constants
    w = torch.softmax(a * neg.detach(), dim=1)
    manual = (
        -0.5 * torch.nn.functional.logsigmoid(pos) - 0.5 * (w * torch.nn.functional.logsigmoid(-neg)).sum(1)
    ).mean()
    mp, mn = torch.autograd.grad(manual, [pos, neg])
    torch.testing.assert_close(gp, mp)
    torch.testing.assert_close(gn, mn)
    # and it differs from letting the gradient flow through the weights
    w_live = torch.softmax(a * neg, dim=1)
    live = (
        -0.5 * torch.nn.functional.logsigmoid(pos) - 0.5 * (w_live * torch.nn.functional.logsigmoid(-neg)).sum(1)
    ).mean()
    ln = torch.autograd.grad(live, [neg])[0]
    assert not torch.allclose(ln, gn)


@pytest.mark.parametrize("loss", ["logsigmoid", "softmax"])
def test_masked_columns_equal_removed_columns(loss):
    g = torch.Generator().manual_seed(1)
    pos = torch.randn(3, dtype=D64, generator=g).requires_grad_()
    neg = torch.randn(3, 5, dtype=D64, generator=g)
    neg[0, 1] = float("inf")  # garbage in masked cells must not leak
    neg[2, 4] = float("-inf")
    neg.requires_grad_()
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 1] = mask[1, 3] = mask[2, 4] = False

    def f(p, n, m):
        if loss == "logsigmoid":
            return logsigmoid_loss(p, n, m, adversarial_scale=2.0)
        return softmax_loss(p, n, m, correction=0.7)

    masked = f(pos, neg, mask)
    assert torch.isfinite(masked)
    rows = [f(pos[i : i + 1], neg[i : i + 1, mask[i]], None) for i in range(3)]
    torch.testing.assert_close(masked, sum(rows) / 3)
    gp, gn = torch.autograd.grad(masked, [pos, neg])
    assert torch.isfinite(gn).all() and (gn[~mask] == 0).all()


def test_softmax_by_hand():
    # s+ = 1, s- = (0, 2), c = 0: L = log(e^1 + e^0 + e^2) - 1 = log(2.718282 + 1 + 7.389056) - 1
    #   = log(11.107338) - 1 = 2.407606 - 1 = 1.407606
    pos, neg = torch.tensor([1.0], dtype=D64), torch.tensor([[0.0, 2.0]], dtype=D64)
    assert softmax_loss(pos, neg).item() == pytest.approx(1.407606, abs=1e-6)


def test_softmax_correction_shift():
    # E = 11, N = 2 -> c = log(10 / 2) = log 5: negatives weigh 5 times as much:
    # L = log(e^1 + 5 e^0 + 5 e^2) - 1 = log(2.718282 + 5 + 36.945280) - 1 = log(44.663562) - 1
    #   = 3.799158 - 1 = 2.799158
    c = sampling_correction(11, 2)
    assert c == pytest.approx(math.log(5))
    pos, neg = torch.tensor([1.0], dtype=D64), torch.tensor([[0.0, 2.0]], dtype=D64)
    assert softmax_loss(pos, neg, correction=c).item() == pytest.approx(2.799158, abs=1e-6)
    # exactly the same as adding log((E-1)/N) to every negative logit by hand
    assert softmax_loss(pos, neg, correction=c).item() == pytest.approx(
        softmax_loss(pos, neg + math.log(5)).item(), rel=1e-12
    )


def test_sampling_correction_values():
    assert sampling_correction(91_230_610, 96 * 16) == pytest.approx(math.log(91_230_609 / 1536))
    assert sampling_correction(101, 10, weight=0.5) == pytest.approx(0.5 * math.log(10))
    with pytest.raises(KgeInputError):
        sampling_correction(1, 10)
    with pytest.raises(KgeInputError):
        sampling_correction(10, 0)


def test_l3_penalty_by_hand():
    a = torch.tensor([1.0, -2.0], dtype=D64)
    b = torch.tensor([[0.5]], dtype=D64)
    # |1|^3 + |-2|^3 + |0.5|^3 = 1 + 8 + 0.125 = 9.125, times 0.1
    assert l3_penalty([a, b], 0.1).item() == pytest.approx(0.9125)
    assert l3_penalty([a, b], 1.0, power=2).item() == pytest.approx(1 + 4 + 0.25)
    assert l3_penalty([a], 0.0).item() == 0.0
    x = torch.tensor([-2.0], dtype=D64, requires_grad=True)
    (g,) = torch.autograd.grad(l3_penalty([x], 1.0), [x])
    assert g.item() == pytest.approx(-12.0)  # d/dx |x|^3 = 3 x |x| = -12


def test_shape_validation():
    # Shapes are the caller's (kge's own) contract: a programming error, not user input.
    with pytest.raises(ValueError, match="expected pos"):
        softmax_loss(torch.zeros(3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="neg_mask"):
        logsigmoid_loss(torch.zeros(2), torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool))


def _trainer_softmax(scores, correction, in_batch):
    """The trainer's former composition: diagonal positive, shift on shared columns, mask."""
    B, M = scores.shape
    diag = torch.arange(B)
    mask = torch.ones(B, M, dtype=torch.bool)
    mask[diag, diag] = False
    if not in_batch:
        mask[:, :B] = False
    shift = torch.zeros(M, dtype=scores.dtype)
    shift[B:] = correction
    return softmax_loss(scores[diag, diag], scores + shift, mask, correction=0.0)


@pytest.mark.parametrize("in_batch", [True, False])
@pytest.mark.parametrize("correction", [0.0, 2.5])
@pytest.mark.parametrize("dtype", [torch.float32, D64])
def test_batch_softmax_matches_masked_softmax(in_batch, correction, dtype):
    g = torch.Generator().manual_seed(1)
    scores = (3 * torch.randn(6, 15, dtype=torch.float64, generator=g)).to(dtype)
    a = scores.clone().requires_grad_()
    b = scores.clone().requires_grad_()
    want = _trainer_softmax(a, correction, in_batch)
    got = batch_softmax_loss(b, correction, in_batch)
    torch.testing.assert_close(got, want)
    (want * 1.7).backward()
    (got * 1.7).backward()
    torch.testing.assert_close(b.grad, a.grad)
    if not in_batch:  # off-diagonal in-batch columns take no part
        off = ~torch.eye(6, 15, dtype=torch.bool)
        off[:, 6:] = False
        assert (b.grad[off] == 0).all()


def test_batch_softmax_by_hand():
    # B = 1, M = 2: logits (1, 0 + ln 2) -> -log(e / (e + 2)) = log(1 + 2/e)
    got = batch_softmax_loss(torch.tensor([[1.0, 0.0]], dtype=D64), correction=math.log(2))
    assert got.item() == pytest.approx(math.log1p(2 / math.e), rel=1e-12)


@pytest.mark.parametrize("in_batch", [True, False])
def test_batch_softmax_underflowed_positive_stays_finite(in_batch):
    # A positive 200 below its negatives: p underflows in float32, the loss must still be ~200.
    scores = torch.zeros(3, 7)
    scores[:, 3:] = 200.0
    scores[1, 1] = 5.0
    got = batch_softmax_loss(scores.clone().requires_grad_(), 0.0, in_batch)
    want = _trainer_softmax(scores.double(), 0.0, in_batch)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("in_batch", [True, False])
@pytest.mark.parametrize("correction", [0.0, 2.5])
@pytest.mark.parametrize("dtype", [torch.float32, D64])
def test_dot_softmax_matches_scores_then_loss(in_batch, correction, dtype):
    g = torch.Generator().manual_seed(2)
    q0 = torch.randn(5, 8, dtype=torch.float64, generator=g).to(dtype)
    t0 = torch.randn(13, 8, dtype=torch.float64, generator=g).to(dtype)
    q1, t1 = q0.clone().requires_grad_(), t0.clone().requires_grad_()
    q2, t2 = q0.clone().requires_grad_(), t0.clone().requires_grad_()
    want = _trainer_softmax(q1 @ t1.T, correction, in_batch)
    got = dot_softmax_loss(q2, t2, correction, in_batch)
    torch.testing.assert_close(got, want)
    (want * 0.3).backward()
    (got * 0.3).backward()
    torch.testing.assert_close(q2.grad, q1.grad)
    torch.testing.assert_close(t2.grad, t1.grad)


@pytest.mark.parametrize("in_batch", [True, False])
def test_dot_softmax_underflowed_positive_stays_finite(in_batch):
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[-100.0, 0.0], [0.0, 3.0], [100.0, 0.0], [0.0, 100.0]])
    got = dot_softmax_loss(q, t, 0.0, in_batch)
    want = _trainer_softmax((q @ t.T).double(), 0.0, in_batch)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("in_batch", [True, False])
@pytest.mark.parametrize(
    "adversarial_scale, pos_weight, neg_weight", [(0.0, 0.5, 0.5), (2.5, 0.5, 0.5), (1.0, 0.3, 1.2)]
)
def test_dot_logsigmoid_loss_equals_the_masked_composition(in_batch, adversarial_scale, pos_weight, neg_weight):
    """The fused DistMult/ComplEx log-sigmoid loss: value and both gradients equal logsigmoid_loss on
    query @ tails.T with the query's own column masked (and the in-batch block masked when off)."""
    from kge.nn.losses import dot_logsigmoid_loss, logsigmoid_loss

    g = torch.Generator().manual_seed(3)
    B, M, d = 6, 15, 4
    q0 = torch.randn(B, d, generator=g, dtype=torch.float64)
    t0 = torch.randn(M, d, generator=g, dtype=torch.float64)
    q1, t1 = q0.clone().requires_grad_(), t0.clone().requires_grad_()
    fused = dot_logsigmoid_loss(q1, t1, adversarial_scale, pos_weight, neg_weight, in_batch)
    fused.backward()
    q2, t2 = q0.clone().requires_grad_(), t0.clone().requires_grad_()
    scores = q2 @ t2.T
    mask = torch.ones(B, M, dtype=torch.bool)
    mask[torch.arange(B), torch.arange(B)] = False
    if not in_batch:
        mask[:, :B] = False
    reference = logsigmoid_loss(scores.diagonal(), scores, mask, adversarial_scale, pos_weight, neg_weight)
    reference.backward()
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q1.grad, q2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(t1.grad, t2.grad, rtol=1e-10, atol=1e-12)


# ----- false negatives: columns holding a query's own tail id ------------------------------------
# Planted collisions: query 3's tail is query 0's (an in-batch duplicate), shared negative 8 is
# query 1's tail, shared negatives 10 and 12 are query 4's, and query 5's tail is every shared
# negative of the small pool used below (a row left without any negative when in-batch is off).
FN_TAILS = torch.tensor([7, 2, 9, 7, 4, 5])


def _fn_columns(shared: list[int]) -> torch.Tensor:
    return torch.cat([FN_TAILS, torch.tensor(shared)])


def _fn_mask(columns: torch.Tensor, in_batch: bool) -> torch.Tensor:
    """The explicit (B, M) bool mask of the generic losses, by a dense id compare."""
    B = FN_TAILS.shape[0]
    mask = FN_TAILS.unsqueeze(1) != columns.unsqueeze(0)  # own column and every false negative
    if not in_batch:
        mask[:, :B] = False
    return mask


def test_false_negative_pairs_by_hand():
    from kge.nn.losses import false_negative_pairs

    rows, cols = false_negative_pairs(FN_TAILS, _fn_columns([11, 2, 4, 13, 4, 0]))
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 3), (1, 7), (3, 0), (4, 8), (4, 10)]
    rows, cols = false_negative_pairs(torch.tensor([1, 2]), torch.tensor([1, 2, 3, 4]))
    assert rows.numel() == cols.numel() == 0 and rows.dtype == torch.int64


def test_false_negative_pairs_equal_the_dense_compare():
    from kge.nn.losses import false_negative_pairs

    g = torch.Generator().manual_seed(5)
    for B, N, E in ((64, 64, 50), (512, 512, 3000), (3, 1, 2)):
        tails = torch.randint(0, E, (B,), generator=g)
        columns = torch.cat([tails, torch.randint(0, E, (N,), generator=g)])
        want = tails.unsqueeze(1) == columns.unsqueeze(0)
        want.fill_diagonal_(False)
        got = torch.zeros_like(want)
        rows, cols = false_negative_pairs(tails, columns)
        got[rows, cols] = True
        assert rows.numel() == int(want.sum()) and torch.equal(got, want)


FN_CASES = [(in_batch, shared) for in_batch in (True, False) for shared in ([11, 2, 4, 13, 4, 0], [5, 5])]


def _fn_pairs(columns):
    from kge.nn.losses import false_negative_pairs

    return false_negative_pairs(FN_TAILS, columns)


@pytest.mark.parametrize("in_batch, shared", FN_CASES)
@pytest.mark.parametrize("correction", [0.0, 2.5])
@pytest.mark.parametrize("dtype", [torch.float32, D64])
def test_batch_softmax_masks_false_negatives_like_the_generic_loss(in_batch, shared, correction, dtype):
    columns = _fn_columns(shared)
    B, M = FN_TAILS.shape[0], columns.shape[0]
    g = torch.Generator().manual_seed(6)
    scores = (3 * torch.randn(B, M, dtype=torch.float64, generator=g)).to(dtype)
    rows, cols = _fn_pairs(columns)
    scores[rows, cols] = scores[rows, rows]  # the same entity scores as the positive, as in training
    a, b, c = (scores.clone().requires_grad_() for _ in range(3))
    shift = torch.zeros(M, dtype=dtype)
    shift[B:] = correction
    diag = torch.arange(B)
    want = softmax_loss(a[diag, diag], a + shift, _fn_mask(columns, in_batch))
    got = batch_softmax_loss(b, correction, in_batch, _fn_pairs(columns))
    torch.testing.assert_close(got, want)
    (want * 1.7).backward()
    (got * 1.7).backward()
    torch.testing.assert_close(b.grad, a.grad)
    plain = batch_softmax_loss(c, correction, in_batch)  # without the mask: the collisions mattered
    assert abs(plain.item() - got.item()) > 1e-3
    assert (b.grad[rows, cols] == 0).all()


def _dot_inputs(columns, dtype, seed):
    """query (B, d) and tails (M, d) = an entity table's rows at the column ids: a false
    negative's vector is the positive's, as in training."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(20, 4, dtype=torch.float64, generator=g)
    query = torch.randn(FN_TAILS.shape[0], 4, dtype=torch.float64, generator=g)
    return query.to(dtype), table[columns].to(dtype)


@pytest.mark.parametrize("in_batch, shared", FN_CASES)
@pytest.mark.parametrize("correction", [0.0, 2.5])
@pytest.mark.parametrize("dtype", [torch.float32, D64])
def test_dot_softmax_masks_false_negatives_like_the_generic_loss(in_batch, shared, correction, dtype):
    columns = _fn_columns(shared)
    B, M = FN_TAILS.shape[0], columns.shape[0]
    q0, t0 = _dot_inputs(columns, dtype, 7)
    q1, t1 = q0.clone().requires_grad_(), t0.clone().requires_grad_()
    q2, t2 = q0.clone().requires_grad_(), t0.clone().requires_grad_()
    scores = q1 @ t1.T
    shift = torch.zeros(M, dtype=dtype)
    shift[B:] = correction
    want = softmax_loss(scores.diagonal(), scores + shift, _fn_mask(columns, in_batch))
    got = dot_softmax_loss(q2, t2, correction, in_batch, _fn_pairs(columns))
    torch.testing.assert_close(got, want)
    (want * 0.3).backward()
    (got * 0.3).backward()
    torch.testing.assert_close(q2.grad, q1.grad)
    torch.testing.assert_close(t2.grad, t1.grad)
    assert abs(dot_softmax_loss(q0, t0, correction, in_batch).item() - got.item()) > 1e-3


@pytest.mark.parametrize("in_batch, shared", FN_CASES)
@pytest.mark.parametrize("adversarial_scale", [0.0, 3.0])
@pytest.mark.parametrize("dtype", [torch.float32, D64])
def test_dot_logsigmoid_masks_false_negatives_like_the_generic_loss(in_batch, shared, adversarial_scale, dtype):
    from kge.nn.losses import dot_logsigmoid_loss

    columns = _fn_columns(shared)
    q0, t0 = _dot_inputs(columns, dtype, 8)
    q1, t1 = q0.clone().requires_grad_(), t0.clone().requires_grad_()
    q2, t2 = q0.clone().requires_grad_(), t0.clone().requires_grad_()
    scores = q1 @ t1.T
    want = logsigmoid_loss(scores.diagonal(), scores, _fn_mask(columns, in_batch), adversarial_scale, 0.3, 1.2)
    got = dot_logsigmoid_loss(q2, t2, adversarial_scale, 0.3, 1.2, in_batch, _fn_pairs(columns))
    torch.testing.assert_close(got, want)
    want.backward()
    got.backward()
    torch.testing.assert_close(q2.grad, q1.grad)
    torch.testing.assert_close(t2.grad, t1.grad)
    assert abs(dot_logsigmoid_loss(q0, t0, adversarial_scale, 0.3, 1.2, in_batch).item() - got.item()) > 1e-3


@pytest.mark.parametrize("in_batch", [True, False])
def test_no_false_negatives_is_the_unmasked_loss_bit_for_bit(in_batch):
    """The switch off (None) and a step without collisions (no pairs) take the unmasked code path."""
    from kge.nn.losses import dot_logsigmoid_loss

    g = torch.Generator().manual_seed(9)
    q0, t0 = torch.randn(5, 8, generator=g), torch.randn(13, 8, generator=g)
    empty = (torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))
    calls = [
        lambda q, t, fn: batch_softmax_loss(q @ t.T, 2.5, in_batch, fn),
        lambda q, t, fn: dot_softmax_loss(q, t, 2.5, in_batch, fn),
        lambda q, t, fn: dot_logsigmoid_loss(q, t, 3.0, 0.5, 0.5, in_batch, fn),
    ]
    for call in calls:
        results = []
        for fn in ("absent", None, empty):
            q, t = q0.clone().requires_grad_(), t0.clone().requires_grad_()
            loss = call(q, t, None) if fn == "absent" else call(q, t, fn)
            loss.backward()
            results.append((loss.detach(), q.grad, t.grad))
        for other in results[1:]:
            assert all(torch.equal(x, y) for x, y in zip(results[0], other))


def test_false_negative_pairs_are_checked():
    with pytest.raises(ValueError):  # the diagonal is the positive, never a false negative
        batch_softmax_loss(torch.zeros(2, 4), 0.0, True, (torch.tensor([1]), torch.tensor([1])))
    with pytest.raises(ValueError):
        dot_softmax_loss(torch.zeros(2, 3), torch.zeros(4, 3), 0.0, True, (torch.tensor([0]), torch.tensor([4])))


@pytest.mark.parametrize("in_batch, shared", FN_CASES)
@pytest.mark.parametrize("adversarial_scale, pos_weight, neg_weight", [(0.0, 0.5, 0.5), (3.0, 0.3, 1.2)])
@pytest.mark.parametrize("dtype", [torch.float32, D64])
@pytest.mark.parametrize("with_pairs", [False, True])
def test_batch_logsigmoid_equals_the_masked_composition(
    in_batch, shared, adversarial_scale, pos_weight, neg_weight, dtype, with_pairs
):
    """The distance models' fused log-sigmoid loss on a (B, M) score matrix: value and gradient equal
    logsigmoid_loss with the diagonal, the in-batch block when off, and the false negatives masked."""
    from kge.nn.losses import batch_logsigmoid_loss

    columns = _fn_columns(shared)
    q0, t0 = _dot_inputs(columns, dtype, 8)
    base = 4.0 - torch.cdist(q0, t0, p=1)  # distance-like scores
    s1, s2 = base.clone().requires_grad_(), base.clone().requires_grad_()
    mask = _fn_mask(columns, in_batch) if with_pairs else torch.ones_like(base, dtype=torch.bool)
    if not with_pairs:
        mask.fill_diagonal_(False)
        if not in_batch:
            mask[:, : base.shape[0]] = False
    want = logsigmoid_loss(s1.diagonal(), s1, mask, adversarial_scale, pos_weight, neg_weight)
    got = batch_logsigmoid_loss(
        s2, adversarial_scale, pos_weight, neg_weight, in_batch, _fn_pairs(columns) if with_pairs else None
    )
    torch.testing.assert_close(got, want)
    (want * 0.7).backward()
    (got * 0.7).backward()
    torch.testing.assert_close(s2.grad, s1.grad)
    assert s2.grad.abs().sum() > 0
