"""Training losses of the recipe (RECIPE.md).

Shapes: ``pos`` (B,) scores of the true triples; ``neg`` (B, M) scores of each query against the
candidate negatives; ``neg_mask`` (B, M) bool, True where the column is a valid negative for that
query (the trainer scores every query against [batch tails; shared negatives] and masks the
query's own positive column). ``neg_mask=None`` means every column is valid.

False negatives: a column holding the same entity as query b's own positive tail (another query's
tail with the same id, or a shared negative that drew it) would score b's true answer as a
negative. ``false_negative_pairs`` finds them as a sparse list of (row, column) pairs (on the
miniature, B = N = 512: about 280 per step, against B x M = 524,288 cells) and the fused losses take that list
(``false_negatives=(rows, cols)``, each (K,) int64) and treat those columns exactly as the generic
losses treat a False in ``neg_mask``: absent from the value and with zero gradient.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from kge.common.errors import KgeInputError


def _check(pos: torch.Tensor, neg: torch.Tensor, neg_mask: torch.Tensor | None) -> torch.Tensor:
    if pos.ndim != 1 or neg.ndim != 2 or neg.shape[0] != pos.shape[0]:
        raise ValueError(f"loss: expected pos (B,) and neg (B, M), got {tuple(pos.shape)} and {tuple(neg.shape)}")
    if neg_mask is None:
        return torch.ones_like(neg, dtype=torch.bool)
    if neg_mask.shape != neg.shape or neg_mask.dtype != torch.bool:
        raise ValueError(f"loss: neg_mask must be a bool tensor of shape {tuple(neg.shape)}")
    return neg_mask


Pairs = tuple[torch.Tensor, torch.Tensor]


def false_negative_pairs(tails: torch.Tensor, columns: torch.Tensor) -> Pairs:
    """(rows, cols), each (K,) int64 on the CPU: every j != b with columns[j] == tails[b].

    tails (B,) the queries' positive tail ids; columns (M,) the ids of the scored columns, with
    columns[:B] == tails (the trainer's [batch tails; shared negatives]). One sort of the M ids and
    two binary searches per query, in NumPy (a few dozen small torch ops cost more in dispatch):
    about 0.15 ms for B = N = 512, no (B, M) pass.
    """
    B = tails.shape[0]
    if tails.ndim != 1 or columns.ndim != 1 or columns.shape[0] < B:
        raise ValueError(
            f"false_negative_pairs: expected tails (B,) and columns (M,) with M >= B, got "
            f"{tuple(tails.shape)} and {tuple(columns.shape)}"
        )
    t, c = tails.cpu().numpy(), columns.cpu().numpy()
    order = np.argsort(c, kind="stable")
    sorted_ids = c[order]
    lo = np.searchsorted(sorted_ids, t, "left")
    counts = np.searchsorted(sorted_ids, t, "right") - lo  # >= 1 when columns[b] == tails[b]
    hit = np.flatnonzero(counts > 1)  # queries whose tail id occurs in another column too
    n = counts[hit]
    rows = np.repeat(hit, n)
    within = np.arange(rows.size) - np.repeat(np.cumsum(n) - n, n)  # k-th match of its row
    cols = order[np.repeat(lo[hit], n) + within]
    keep = cols != rows  # the own column is the positive, which every loss excludes already
    return torch.from_numpy(rows[keep].astype(np.int64)), torch.from_numpy(cols[keep].astype(np.int64))


def _pairs(false_negatives: Pairs | None, B: int, M: int, device) -> Pairs | None:
    """Validate (rows, cols) where they are (the trainer's: CPU) and move them to ``device``;
    None or no pairs -> None."""
    if false_negatives is None:
        return None
    rows, cols = false_negatives
    if rows.ndim != 1 or rows.shape != cols.shape:
        raise ValueError(
            f"false_negatives: expected rows (K,) and cols (K,), got {tuple(rows.shape)} and {tuple(cols.shape)}"
        )
    if rows.numel() == 0:
        return None
    if bool((rows < 0).any() | (rows >= B).any() | (cols < 0).any() | (cols >= M).any() | (rows == cols).any()):
        raise ValueError(f"false_negatives: pairs must lie in [0, {B}) x [0, {M}) off the diagonal")
    return rows.to(device=device, dtype=torch.long), cols.to(device=device, dtype=torch.long)


def _shared_pairs(pairs: Pairs | None, B: int) -> Pairs | None:
    """The pairs on shared-negative columns, re-indexed from B (possibly none): without in-batch
    negatives the in-batch block is masked whole, and the fused paths score only columns B:."""
    if pairs is None:
        return None
    rows, cols = pairs
    keep = cols >= B
    return rows[keep], cols[keep] - B


def logsigmoid_loss(
    pos: torch.Tensor,
    neg: torch.Tensor,
    neg_mask: torch.Tensor | None = None,
    adversarial_scale: float = 0.0,
    pos_weight: float = 0.5,
    neg_weight: float = 0.5,
) -> torch.Tensor:
    """Self-adversarial log-sigmoid loss, a scalar:

        L = mean_b [ -pos_weight * log sigma(s+_b) - neg_weight * sum_i w_bi log sigma(-s-_bi) ]
        w_b = stopgrad(softmax over the valid i of a * s-_bi)   (a = 0: uniform 1/N_valid)

    A query without any valid negative contributes only its positive term.
    """
    mask = _check(pos, neg, neg_mask)
    # Weights are constants (stop-gradient): computed from detached scores.
    logits = (adversarial_scale * neg.detach()).masked_fill(~mask, float("-inf"))
    w = torch.nan_to_num(torch.softmax(logits, dim=1), nan=0.0)  # all-masked row -> zeros
    # where() rather than w * term: a masked column may hold +-inf scores (0 * inf = NaN).
    neg_term = torch.where(mask, w * F.logsigmoid(-neg), torch.zeros_like(neg)).sum(dim=1)
    return (-pos_weight * F.logsigmoid(pos) - neg_weight * neg_term).mean()


def softmax_loss(
    pos: torch.Tensor, neg: torch.Tensor, neg_mask: torch.Tensor | None = None, correction: float = 0.0
) -> torch.Tensor:
    """Sampled-softmax cross-entropy, a scalar: mean_b of -log softmax([s+_b, s-_b + c])[0].

    Every valid negative logit gets + ``correction`` (see ``sampling_correction``); masked columns are
    excluded from the normalizer.
    """
    mask = _check(pos, neg, neg_mask)
    neg_logits = (neg + correction).masked_fill(~mask, float("-inf"))
    logits = torch.cat([pos.unsqueeze(1), neg_logits], dim=1)  # (B, 1 + M), positive first
    return (torch.logsumexp(logits, dim=1) - pos).mean()


class _BatchSoftmaxLoss(torch.autograd.Function):
    """Forward and backward of ``batch_softmax_loss``: the arithmetic of ``softmax_loss`` on the same
    (B, 1 + M) logits, bit for bit, without the bool mask, masked fill and concatenation passes."""

    @staticmethod
    def forward(
        ctx, scores: torch.Tensor, correction: float, in_batch_negatives: bool, pairs: Pairs | None
    ) -> torch.Tensor:
        B, M = scores.shape
        rows = torch.arange(B, device=scores.device)
        shift = torch.zeros(M, dtype=scores.dtype, device=scores.device)
        shift[B:] = correction
        logits = torch.empty(B, 1 + M, dtype=scores.dtype, device=scores.device)  # [positive, negatives]
        logits[:, 0] = scores.diagonal()
        torch.add(scores, shift, out=logits[:, 1:])
        logits[rows, rows + 1] = float("-inf")  # a query's own tail is its positive, not a negative
        if not in_batch_negatives:
            logits[:, 1 : B + 1] = float("-inf")
        if pairs is not None:  # false negatives: the query's own tail again, not a negative
            logits[pairs[0], pairs[1] + 1] = float("-inf")
        lse = torch.logsumexp(logits, dim=1)
        ctx.save_for_backward(logits, lse)
        return (lse - logits[:, 0]).mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        logits, lse = ctx.saved_tensors
        B = logits.shape[0]
        scale = grad_output / B
        grad = scale * (logits - lse.unsqueeze(1)).exp()  # as logsumexp's backward; masked columns 0
        rows = torch.arange(B, device=logits.device)
        grad_scores = grad[:, 1:]
        grad_scores[rows, rows] = grad[:, 0] - scale  # the positive: d(lse - pos)
        return grad_scores, None, None, None


def batch_softmax_loss(
    scores: torch.Tensor, correction: float = 0.0, in_batch_negatives: bool = True, false_negatives: Pairs | None = None
) -> torch.Tensor:
    """The trainer's sampled softmax on its (B, M) score matrix, fused; a scalar.

    Column b < B holds query b's own tail (its positive); columns B: are the shared negatives.
    Equal to ``softmax_loss(pos, neg, mask, correction=0.0)`` with pos the diagonal, neg = scores +
    ``correction`` on columns B: and mask excluding the diagonal and, when not ``in_batch_negatives``,
    every in-batch column (same value and gradient, same rounding) in fewer passes over B x M.
    ``false_negatives`` (rows, cols) (K,): cells also excluded (``false_negative_pairs``).
    """
    if scores.ndim != 2 or scores.shape[0] > scores.shape[1]:
        raise ValueError(f"batch_softmax_loss: expected scores (B, M) with B <= M, got {tuple(scores.shape)}")
    pairs = _pairs(false_negatives, *scores.shape, scores.device)
    return _BatchSoftmaxLoss.apply(scores, float(correction), bool(in_batch_negatives), pairs)


class _DotSoftmaxLoss(torch.autograd.Function):
    """``batch_softmax_loss(query @ tails.T, ...)`` with the score matrix kept inside: backward never
    forms a (B, M) gradient, it multiplies the saved probabilities straight into the two matmuls."""

    @staticmethod
    def forward(
        ctx, query: torch.Tensor, tails: torch.Tensor, correction: float, in_batch_negatives: bool, pairs: Pairs | None
    ) -> torch.Tensor:
        B = query.shape[0]
        if in_batch_negatives:
            scores = query @ tails.T  # (B, M), ours: shifted in place
            if correction != 0.0:
                scores[:, B:] += correction
            if pairs is not None:  # false negatives: probability exactly 0, so no gradient either
                scores[pairs[0], pairs[1]] = float("-inf")
            probs = torch.softmax(scores, dim=1)
            log_p = torch.log(probs.diagonal())
            bad = log_p < -69.0  # p below 1e-30: that row's log-normalizer the long way
            if bool(bad.any()):
                idx = torch.nonzero(bad).squeeze(1)
                log_p[idx] = scores[idx, idx] - torch.logsumexp(scores[idx], dim=1)
            ctx.save_for_backward(query, tails, probs)
            ctx.in_batch_negatives = True
            return -log_p.mean()
        # Only the shared negatives are scored; softmax(s + c) = softmax(s), and the negatives'
        # log-normalizer is read off the largest probability (>= 1/N, so never underflowed).
        scores = query @ tails[B:].T  # (B, N)
        shared = _shared_pairs(pairs, B)
        if shared is not None:  # a masked negative leaves the max and the normalizer alike
            scores[shared[0], shared[1]] = float("-inf")
        probs = torch.softmax(scores, dim=1)
        top = scores.amax(dim=1)
        lse_neg = top - torch.log(probs.amax(dim=1)) + correction
        if shared is not None:
            empty = torch.isneginf(top)  # every negative of the row masked: no negative term
            if bool(empty.any()):
                probs[empty] = 0.0
                lse_neg[empty] = float("-inf")
        pos = (query * tails[:B]).sum(dim=1)
        lse = torch.logaddexp(lse_neg, pos)
        ctx.save_for_backward(query, tails, probs, torch.exp(lse_neg - lse), torch.exp(pos - lse))
        ctx.in_batch_negatives = False
        return (lse - pos).mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        B = ctx.saved_tensors[0].shape[0]
        scale = grad_output / B
        grad_q = grad_t = None
        if ctx.in_batch_negatives:
            # d loss / d scores = scale * (probs - I): I @ tails = tails[:B], I.T @ query = [query; 0].
            query, tails, probs = ctx.saved_tensors
            if ctx.needs_input_grad[0]:
                grad_q = (probs @ tails).sub_(tails[:B]).mul_(scale)
            if ctx.needs_input_grad[1]:
                grad_t = probs.T @ query
                grad_t[:B] -= query
                grad_t.mul_(scale)
            return grad_q, grad_t, None, None, None
        query, tails, probs, neg_share, p_pos = ctx.saved_tensors
        w = (neg_share * scale).unsqueeze(1)  # d loss / d s_bj = scale * neg_share_b * probs_bj
        coef = ((p_pos - 1.0) * scale).unsqueeze(1)  # d loss / d pos_b
        if ctx.needs_input_grad[0]:
            grad_q = (probs @ tails[B:]).mul_(w).add_(coef * tails[:B])
        if ctx.needs_input_grad[1]:
            grad_t = torch.empty_like(tails)
            torch.mm(probs.T, query * w, out=grad_t[B:])
            torch.mul(query, coef, out=grad_t[:B])
        return grad_q, grad_t, None, None, None


def dot_softmax_loss(
    query: torch.Tensor,
    tails: torch.Tensor,
    correction: float = 0.0,
    in_batch_negatives: bool = True,
    false_negatives: Pairs | None = None,
) -> torch.Tensor:
    """``batch_softmax_loss(query @ tails.T, correction, in_batch_negatives)`` for dot-product scores
    (the dot scorers, ``Scorer.dot``: query (B, d) from ``scoring.query_vectors``, tails (M, d), B <= M), fused.

    Without in-batch negatives the B x B in-batch block is never computed (positives are row dots).
    ``false_negatives`` (rows, cols) (K,), columns in [0, M): cells excluded as in ``batch_softmax_loss``.
    """
    if query.ndim != 2 or tails.ndim != 2 or query.shape[1] != tails.shape[1] or query.shape[0] > tails.shape[0]:
        raise ValueError(
            f"dot_softmax_loss: expected query (B, d) and tails (M, d) with B <= M, got "
            f"{tuple(query.shape)} and {tuple(tails.shape)}"
        )
    pairs = _pairs(false_negatives, query.shape[0], tails.shape[0], query.device)
    return _DotSoftmaxLoss.apply(query, tails, float(correction), bool(in_batch_negatives), pairs)


def _logsigmoid_terms(
    pos: torch.Tensor,
    neg: torch.Tensor,
    adversarial_scale: float,
    pos_weight: float,
    neg_weight: float,
    in_batch_negatives: bool,
    pairs: Pairs | None,
):
    """The self-adversarial log-sigmoid loss of positives pos (B,) and negative scores neg (B, M) (the
    in-batch columns first) or (B, N) (shared ones only), with its closed-form gradient.

    Returns (loss scalar, d loss / d neg (B, M or N) with 0 on the masked cells, d loss / d pos (B,)).
    The weights softmax(a s) are constants, so once the scores are known the gradient is
    neg_weight * w * sigma(s-) / B on a negative and -pos_weight * sigma(-s+) / B on a positive.
    """
    B = pos.shape[0]
    logits = neg * adversarial_scale
    if in_batch_negatives:
        logits.diagonal().fill_(float("-inf"))  # a query's own tail is its positive
    masked = pairs if in_batch_negatives else _shared_pairs(pairs, B)
    if masked is not None:  # false negatives: weight exactly 0, so no term and no gradient
        logits[masked[0], masked[1]] = float("-inf")
    weights = torch.softmax(logits, dim=1)  # stop-gradient weights; exactly 0 where masked
    if masked is not None:  # a row with every negative masked: no weights (only masked rows can be)
        weights[masked[0]] = torch.nan_to_num(weights[masked[0]], nan=0.0)
    neg_term = (weights * F.logsigmoid(-neg)).sum(dim=1)
    loss = (-pos_weight * F.logsigmoid(pos) - neg_weight * neg_term).mean()
    grad = weights.mul_(torch.sigmoid(neg)).mul_(neg_weight / B)  # reuses the weights' memory
    pos_grad = torch.sigmoid(-pos).mul_(-pos_weight / B)
    return loss, grad, pos_grad


class _DotLogsigmoidLoss(torch.autograd.Function):
    """``logsigmoid_loss`` on dot-product scores ``query @ tails.T`` with the matmuls inside.

    The self-adversarial weights are constants, so d loss / d scores is known in closed form once
    the scores are: -pos_weight * sigma(-s+) / B on a positive, neg_weight * w * sigma(s-) / B on a
    negative. Forward builds that (B, M) matrix G once; backward is G @ tails and G.T @ query.
    """

    @staticmethod
    def forward(
        ctx,
        query,
        tails,
        adversarial_scale: float,
        pos_weight: float,
        neg_weight: float,
        in_batch_negatives: bool,
        pairs: Pairs | None,
    ):
        B = query.shape[0]
        pos = (query * tails[:B]).sum(dim=1)  # (B,)
        neg_tails = tails if in_batch_negatives else tails[B:]
        scores = query @ neg_tails.T  # (B, M) or (B, N)
        loss, grad, pos_grad = _logsigmoid_terms(
            pos, scores, adversarial_scale, pos_weight, neg_weight, in_batch_negatives, pairs
        )
        if in_batch_negatives:
            grad.diagonal().copy_(pos_grad)
        ctx.save_for_backward(query, tails, grad, pos_grad)
        ctx.in_batch_negatives = in_batch_negatives
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        query, tails, grad, pos_grad = ctx.saved_tensors
        B = query.shape[0]
        grad_q = grad_t = None
        if ctx.in_batch_negatives:
            if ctx.needs_input_grad[0]:
                grad_q = (grad @ tails).mul_(grad_output)
            if ctx.needs_input_grad[1]:
                grad_t = (grad.T @ query).mul_(grad_output)
        else:
            coef = pos_grad.unsqueeze(1)
            if ctx.needs_input_grad[0]:
                grad_q = (grad @ tails[B:]).add_(coef * tails[:B]).mul_(grad_output)
            if ctx.needs_input_grad[1]:
                grad_t = torch.empty_like(tails)
                torch.mm(grad.T, query, out=grad_t[B:])
                torch.mul(query, coef, out=grad_t[:B])
                grad_t.mul_(grad_output)
        return grad_q, grad_t, None, None, None, None, None


def dot_logsigmoid_loss(
    query: torch.Tensor,
    tails: torch.Tensor,
    adversarial_scale: float = 0.0,
    pos_weight: float = 0.5,
    neg_weight: float = 0.5,
    in_batch_negatives: bool = True,
    false_negatives: Pairs | None = None,
) -> torch.Tensor:
    """``logsigmoid_loss`` for dot-product scores, fused: query (B, d), tails (M, d) with the B
    positives first; the negatives of query b are every other column (in-batch) or the M - B shared
    ones only. Equal to ``logsigmoid_loss(s_diag, s, mask, ...)`` with ``s = query @ tails.T``;
    ``false_negatives`` (rows, cols) (K,), columns in [0, M): cells also False in that mask."""
    if query.ndim != 2 or tails.ndim != 2 or query.shape[1] != tails.shape[1] or query.shape[0] > tails.shape[0]:
        raise ValueError(
            f"dot_logsigmoid_loss: expected query (B, d) and tails (M, d) with B <= M, got "
            f"{tuple(query.shape)} and {tuple(tails.shape)}"
        )
    if not in_batch_negatives and query.shape[0] == tails.shape[0]:
        raise KgeInputError("dot_logsigmoid_loss: no negatives (M = B and in_batch_negatives off)")
    pairs = _pairs(false_negatives, query.shape[0], tails.shape[0], query.device)
    return _DotLogsigmoidLoss.apply(
        query, tails, float(adversarial_scale), float(pos_weight), float(neg_weight), bool(in_batch_negatives), pairs
    )


class _BatchLogsigmoidLoss(torch.autograd.Function):
    """``logsigmoid_loss`` on the trainer's (B, M) score matrix, with its gradient in closed form.

    The self-adversarial weights are constants, so d loss / d scores is known once the scores are:
    -pos_weight * sigma(-s+) / B on the diagonal, neg_weight * w * sigma(s-) / B on a negative.
    Forward builds that matrix once; backward scales it (no autograd chain through the mask, the
    masked fill, the softmax, the log-sigmoid and the weighted sum)."""

    @staticmethod
    def forward(
        ctx,
        scores,
        adversarial_scale: float,
        pos_weight: float,
        neg_weight: float,
        in_batch_negatives: bool,
        pairs: Pairs | None,
    ):
        B = scores.shape[0]
        pos = scores.diagonal()
        neg = scores if in_batch_negatives else scores[:, B:]
        loss, grad, pos_grad = _logsigmoid_terms(
            pos, neg, adversarial_scale, pos_weight, neg_weight, in_batch_negatives, pairs
        )
        if not in_batch_negatives:
            grad = torch.cat([torch.zeros_like(scores[:, :B]), grad], dim=1)
        grad.diagonal().copy_(pos_grad)  # the weights there are 0
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None, None, None, None


def batch_logsigmoid_loss(
    scores: torch.Tensor,
    adversarial_scale: float = 0.0,
    pos_weight: float = 0.5,
    neg_weight: float = 0.5,
    in_batch_negatives: bool = True,
    false_negatives: Pairs | None = None,
) -> torch.Tensor:
    """The trainer's self-adversarial log-sigmoid loss on its (B, M) score matrix (finite scores), fused.

    Column b < B holds query b's own tail (its positive); columns B: are the shared negatives. Equal
    to ``logsigmoid_loss(scores.diagonal(), scores, mask, ...)`` with mask excluding the diagonal,
    the in-batch columns when not ``in_batch_negatives``, and the ``false_negatives`` cells
    (rows, cols) (K,) (value and gradient, to rounding).
    """
    if scores.ndim != 2 or scores.shape[0] > scores.shape[1]:
        raise ValueError(f"batch_logsigmoid_loss: expected scores (B, M) with B <= M, got {tuple(scores.shape)}")
    if not in_batch_negatives and scores.shape[0] == scores.shape[1]:
        raise KgeInputError("batch_logsigmoid_loss: no negatives (M = B and in_batch_negatives off)")
    pairs = _pairs(false_negatives, *scores.shape, scores.device)
    return _BatchLogsigmoidLoss.apply(
        scores, float(adversarial_scale), float(pos_weight), float(neg_weight), bool(in_batch_negatives), pairs
    )


def sampling_correction(num_entities: int, num_negatives: int, weight: float = 1.0) -> float:
    """weight * log((E - 1) / N): each of N uniform negatives stands for (E - 1) / N entities."""
    if num_entities < 2 or num_negatives < 1:
        raise KgeInputError(
            f"sampling_correction: need num_entities >= 2 and num_negatives >= 1, "
            f"got {num_entities} and {num_negatives}"
        )
    return float(weight) * math.log((num_entities - 1) / num_negatives)


def l3_penalty(tensors: Iterable[torch.Tensor], weight: float, power: float = 3.0) -> torch.Tensor:
    """weight * sum over tensors of sum |x|^power, a scalar tensor (0 when weight == 0)."""
    tensors = list(tensors)
    if not tensors:
        return torch.zeros(())
    if weight == 0:
        # Skip the work (and the graph) entirely: the common configuration.
        return tensors[0].new_zeros(())
    total = sum(x.abs().pow(power).sum() for x in tensors)
    return weight * total
