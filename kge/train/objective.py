"""The batch loss of one step: one class per objective, chosen once when the trainer is built.

Every objective is a mean over the worker's B queries; column b < B of the M = B + N target
columns is query b's own tail (its positive), columns B: are the N shared negatives. Each takes
``false_negatives`` (rows, cols) (K,), cells that are not negatives (:func:`kge.nn.losses.false_negative_pairs`),
and the step's sampling ``correction`` log((E-1)/N) for its pool of N negatives (used by the softmax).

- ``DotSoftmax`` / ``DotLogSigmoid``: fused, for dot-product scorers whose tails moved to the
  queries (``kge.train.exchange.DotTailsExchange``): the scores ``queries @ tails.T`` (B, M) and the
  loss in one function, whose backward never forms a (B, M) gradient.
- ``Softmax`` / ``LogSigmoid``: on a (B, M) score matrix, from any scorer and either exchange.
"""

from __future__ import annotations

import torch

from kge.config import LossConfig, ModelConfig, RegularizationConfig
from kge.nn import losses
from kge.train.exchange import DotOperands, fuses_dot


class Softmax:
    """Sampled softmax over the M columns; the correction only on the shared negatives."""

    def __init__(self, loss_config: LossConfig):
        self.in_batch_negatives = loss_config.in_batch_negatives

    def __call__(self, scores: torch.Tensor, correction: float, false_negatives) -> torch.Tensor:
        """scores (B, M) -> 0-d loss."""
        return losses.batch_softmax_loss(scores, correction, self.in_batch_negatives, false_negatives)


class LogSigmoid:
    """Self-adversarial log-sigmoid: weighted positive and negative halves, closed-form gradient
    (equal to ``losses.logsigmoid_loss`` with the diagonal, in-batch columns if off, and false
    negatives masked)."""

    def __init__(self, loss_config: LossConfig):
        self.adversarial = loss_config.adversarial
        self.positive_weight = loss_config.positive_weight
        self.negative_weight = loss_config.negative_weight
        self.in_batch_negatives = loss_config.in_batch_negatives

    def __call__(self, scores: torch.Tensor, correction: float, false_negatives) -> torch.Tensor:
        """scores (B, M) -> 0-d loss (``correction`` unused: the weights are the model's own softmax)."""
        return losses.batch_logsigmoid_loss(
            scores,
            self.adversarial,
            self.positive_weight,
            self.negative_weight,
            self.in_batch_negatives,
            false_negatives,
        )


class DotSoftmax(Softmax):
    """``Softmax`` of ``queries @ tails.T``, matmuls and loss fused."""

    def __call__(self, operands: DotOperands, correction: float, false_negatives) -> torch.Tensor:
        """DotOperands(queries (B, dq), tails (M, d)) -> 0-d loss."""
        return losses.dot_softmax_loss(
            operands.queries, operands.tails, correction, self.in_batch_negatives, false_negatives
        )


class DotLogSigmoid(LogSigmoid):
    """``LogSigmoid`` of ``queries @ tails.T``, matmuls and loss fused."""

    def __call__(self, operands: DotOperands, correction: float, false_negatives) -> torch.Tensor:
        """DotOperands(queries (B, dq), tails (M, d)) -> 0-d loss."""
        return losses.dot_logsigmoid_loss(
            operands.queries,
            operands.tails,
            self.adversarial,
            self.positive_weight,
            self.negative_weight,
            self.in_batch_negatives,
            false_negatives,
        )


Objective = Softmax | LogSigmoid


def make_objective(config: ModelConfig, model) -> Objective:
    """The objective of ``config.loss.type`` (``softmax`` | ``logsigmoid``): fused exactly when
    the exchange hands over dot operands (``kge.train.exchange.fuses_dot``)."""
    loss_config = config.loss
    fused = fuses_dot(config, model)
    if loss_config.type == "softmax":
        return DotSoftmax(loss_config) if fused else Softmax(loss_config)
    return DotLogSigmoid(loss_config) if fused else LogSigmoid(loss_config)


class Penalties:
    """The regularisation terms of ``config.regularisation`` with a positive weight, added to the loss.

    Each is ``weight * sum |x|^power`` over the step's rows in one role: ``entity`` the encoded
    rows e, ``embedding`` their table rows e_S, ``feature`` their feature branch f. A worker
    penalises its heads and the tails it encoded for others: summed over workers, every worker's
    heads, tails and negatives, as in one process.
    """

    ROLES = ("entity", "embedding", "feature")

    def __init__(self, regularisation: RegularizationConfig):
        penalties = [(role, getattr(regularisation, role)) for role in self.ROLES]
        self.terms = [(role, penalty.weight, penalty.power) for role, penalty in penalties if penalty.weight > 0]

    def add_to(self, loss: torch.Tensor, rows: dict[str, list[torch.Tensor]]) -> torch.Tensor:
        """loss 0-d, rows {role: [heads (B, d), tails (W c, d)]} -> loss plus the penalties (in ROLES order)."""
        for role, weight, power in self.terms:
            loss = loss + losses.l3_penalty(rows[role], weight, power)
        return loss
