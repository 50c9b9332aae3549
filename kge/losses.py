"""Training losses of the recipe (RECIPE.md).

Shapes: ``pos`` (B,) scores of the true triples; ``neg`` (B, M) scores of each query against the
candidate negatives; ``neg_mask`` (B, M) bool, True where the column is a valid negative for that
query (the trainer scores every query against [batch tails; shared negatives] and masks the
query's own positive column). ``neg_mask=None`` means every column is valid.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F

from kge.errors import KgeInputError


def _check(pos: torch.Tensor, neg: torch.Tensor, neg_mask: torch.Tensor | None) -> torch.Tensor:
    if pos.ndim != 1 or neg.ndim != 2 or neg.shape[0] != pos.shape[0]:
        raise KgeInputError(f"loss: expected pos (B,) and neg (B, M), got {tuple(pos.shape)} "
                            f"and {tuple(neg.shape)}")
    if neg_mask is None:
        return torch.ones_like(neg, dtype=torch.bool)
    if neg_mask.shape != neg.shape or neg_mask.dtype != torch.bool:
        raise KgeInputError(f"loss: neg_mask must be a bool tensor of shape {tuple(neg.shape)}")
    return neg_mask


def logsigmoid_loss(pos: torch.Tensor, neg: torch.Tensor, neg_mask: torch.Tensor | None = None,
                    adversarial_scale: float = 0.0, pos_weight: float = 0.5,
                    neg_weight: float = 0.5) -> torch.Tensor:
    """Self-adversarial log-sigmoid loss, a scalar:

        L = mean_b [ -pos_weight * log sigma(s+_b) - neg_weight * sum_i w_bi log sigma(-s-_bi) ]
        w_b = stopgrad(softmax over the valid i of a * s-_bi)   (a = 0: uniform 1/N_valid)

    A query without any valid negative contributes only its positive term.
    """
    mask = _check(pos, neg, neg_mask)
    # Weights are constants (stop-gradient): computed from detached scores.
    logits = (adversarial_scale * neg.detach()).masked_fill(~mask, float("-inf"))
    w = torch.nan_to_num(torch.softmax(logits, dim=1), nan=0.0)   # all-masked row -> zeros
    # where() rather than w * term: a masked column may hold +-inf scores (0 * inf = NaN).
    neg_term = torch.where(mask, w * F.logsigmoid(-neg), torch.zeros_like(neg)).sum(dim=1)
    return (-pos_weight * F.logsigmoid(pos) - neg_weight * neg_term).mean()


def softmax_loss(pos: torch.Tensor, neg: torch.Tensor, neg_mask: torch.Tensor | None = None,
                 correction: float = 0.0) -> torch.Tensor:
    """Sampled-softmax cross-entropy, a scalar: mean_b of -log softmax([s+_b, s-_b + c])[0].

    Every valid negative logit gets + ``correction`` (see ``sampling_correction``); masked columns are
    excluded from the normaliser.
    """
    mask = _check(pos, neg, neg_mask)
    neg_logits = (neg + correction).masked_fill(~mask, float("-inf"))
    logits = torch.cat([pos.unsqueeze(1), neg_logits], dim=1)      # (B, 1 + M), positive first
    return (torch.logsumexp(logits, dim=1) - pos).mean()


def sampling_correction(num_entities: int, num_negatives: int, weight: float = 1.0) -> float:
    """weight * log((E - 1) / N): each of N uniform negatives stands for (E - 1) / N entities."""
    if num_entities < 2 or num_negatives < 1:
        raise KgeInputError(f"sampling_correction: need num_entities >= 2 and num_negatives >= 1, "
                            f"got {num_entities} and {num_negatives}")
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
