"""OGB's MRR of top-10 tail predictions: the metric of the WikiKG90Mv2 leaderboard (EVALUATION.md
section 1), used by validation during training, by prediction, by the ensemble and the submission."""

from __future__ import annotations

import numpy as np

from kge.common.errors import KgeInputError


def mrr(t_pred_top10, t) -> float:
    """MRR of (Q, 10) predictions against the true tails (Q,), exactly as ogb's WikiKG90Mv2Evaluator
    computes it (reciprocal rank within the 10, 0 if absent; any row repeating a non-negative id
    makes the whole result 0), bit for bit, vectorised: ogb checks duplicates row by row in Python
    (about 7 s for 15,000 queries), which dominated ensemble tuning. tests/test_ensemble.py holds it
    against ogb's evaluator."""
    pred = np.asarray(t_pred_top10.cpu() if hasattr(t_pred_top10, "cpu") else t_pred_top10)
    true = np.asarray(t.cpu() if hasattr(t, "cpu") else t)
    if pred.ndim != 2 or pred.shape[1] != 10 or true.shape != (pred.shape[0],):
        raise KgeInputError(f"mrr: expected t_pred_top10 (Q, 10) and t (Q,), got {pred.shape} and {true.shape}")
    pred = pred.astype(np.int64)
    ordered = np.sort(pred, axis=1)
    if ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any():
        print("Found duplicated tail prediction for some triplets! MRR is automatically set to 0.")
        return 0.0
    # ogb's arithmetic: float32 reciprocal ranks, a float32 mean.
    import torch

    hits = torch.nonzero(torch.from_numpy(true.astype(np.int64)).view(-1, 1) == torch.from_numpy(pred), as_tuple=False)
    rr = torch.zeros(len(true))
    rr[hits[:, 0]] = 1.0 / (hits[:, 1].float() + 1.0)
    return float(rr.mean().item())


def ogb_mrr(t_pred_top10, t) -> float:
    """The same MRR through ogb's own WikiKG90Mv2Evaluator (the reference of ``mrr``)."""
    from ogb.lsc import WikiKG90Mv2Evaluator

    result = WikiKG90Mv2Evaluator().eval(
        {"h,r->t": {"t_pred_top10": np.asarray(t_pred_top10).astype(np.int64), "t": np.asarray(t).astype(np.int64)}}
    )
    return float(result["mrr"])
