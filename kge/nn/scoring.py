"""Shared numerics of the scoring functions, and the public entry points that dispatch to them.

What each scoring function *is* (its formula, relation width, query folding, matrix scoring,
reference formula, initialisation, cost) lives in one entry of the registry ``kge.nn.scorers.SCORERS``;
the functions here (``query_vectors``, ``head_query_vectors``, ``score_queries``, ``score_matrix``,
``score_triples``, ``relation_dim``, ``uses_normal``) check their arguments and call that entry.

Conventions (all functions; plausibility, higher is better):
- Entity vectors have width ``d``. Complex vectors (RotatE, ComplEx) store ``d/2`` complex numbers
  as ``[re | im]`` halves of the last axis, so ``d`` must be even for them.
- Relation vectors have width ``relation_dim(score_fn, d)``: ``d/2`` phases for RotatE, ``d*d`` for
  RESCAL, ``2d`` for PairRE, ``d`` else.
- Folded query vectors have width ``d``, except PairRE's ``2d`` (see kge/nn/scorers.py).
- TransH additionally takes ``normal`` (B, d), the unnormalized w_r of each query's relation;
  it is normalized here (w = w_r / ||w_r||).
- ``gamma`` is the margin of the distance scores (TransE, TransH, RotatE, PairRE); ignored by the
  dot-product scores (DistMult, ComplEx, RESCAL).
- RotatE distance: for p = 2 the L2 norm over all d real components (= sqrt(sum_k |z_k|^2));
  for p = 1 the sum over the d/2 complex components of their modulus sum_k |z_k| (the RotatE
  paper's L1), NOT the sum of |re| + |im|.

Two implementations on purpose:
- ``score_triples`` is the plain element-wise formula (torch.complex / torch.polar for complex
  models); it is the reference.
- ``score_matrix`` / ``score_queries`` are the hot path (every query against every tail): the head
  and relation are folded into one query vector, then matmuls (DistMult, ComplEx, RESCAL, all L2
  distances via |q|^2 + |t|^2 - 2 q.t, with ``fused_distance.l2_distance``'s two-matmul backward
  where the query is folded), and the fused L1 kernels of ``kge.nn.fused_distance`` for TransE,
  TransH, RotatE and PairRE L1 (``_transe_l1``, ``_transh_l1``, ``_rotate_l1``, ``_pairre_l1``:
  memory O(B x M), forward and backward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kge.common.errors import KgeInputError
from kge.nn import fused_distance

# Name sets derived from the registry, kept for callers that test membership (module __getattr__:
# kge.nn.scorers imports this module, so they are built on first use, not at import).
_DERIVED = {
    "SCORE_FNS": lambda s: True,
    "DISTANCE_FNS": lambda s: s.distance,
    "COMPLEX_FNS": lambda s: s.complex,
    # Scores are query_vectors(...) @ tails.T: a plain matmul (the trainer fuses it with its loss).
    "DOT_FNS": lambda s: s.dot,
}


def __getattr__(name: str):
    if name in _DERIVED:
        from kge.nn.scorers import SCORERS

        return frozenset(n for n, s in SCORERS.items() if _DERIVED[name](s))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _scorer(score_fn: str):
    from kge.nn.scorers import get_scorer  # kge.nn.scorers imports this module's helpers

    return get_scorer(score_fn)


def _check_p(scorer, p) -> None:
    if scorer.distance and p not in (1, 2):
        raise KgeInputError(f"p: expected 1 or 2 for {scorer.name}, got {p!r}")


def _check_dims(scorer, d: int) -> None:
    if scorer.complex and d % 2:
        raise KgeInputError(f"dim: {scorer.name} stores [re | im] halves and needs an even d, got {d}")


def relation_dim(score_fn: str, d: int) -> int:
    """Width of a relation embedding for entity width d (the registry's ``relation_dim``)."""
    scorer = _scorer(score_fn)
    _check_dims(scorer, d)
    return scorer.relation_dim(d)


def uses_normal(score_fn: str) -> bool:
    """True when the score function needs a per-relation normal vector (TransH)."""
    return _scorer(score_fn).init_normal is not None


def _unit(normal: torch.Tensor | None, score_fn: str) -> torch.Tensor:
    if normal is None:
        raise KgeInputError(f"normal: {score_fn} needs the relation normal vectors w_r")
    # eps only guards an all-zero w_r (which has no direction); otherwise exactly w_r / ||w_r||.
    return F.normalize(normal, p=2, dim=-1, eps=1e-12)


def _sqrt_safe(sq: torch.Tensor) -> torch.Tensor:
    """sqrt of a squared distance from the |q|^2+|t|^2-2q.t expansion.

    The expansion can go slightly negative by cancellation; the clamp at the dtype's machine epsilon
    keeps the value real and the gradient finite at zero distance (sqrt'(0) = inf would give NaN).
    The floor on the distance is sqrt(eps): 1.5e-8 in float64, 3.5e-4 in float32.
    """
    return torch.sqrt(torch.clamp(sq, min=torch.finfo(sq.dtype).eps))


def _rotate_query(head: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """h * exp(i r) as [re | im]: head (B, d), phase (B, d/2) -> (B, d)."""
    hr, hi = head.chunk(2, dim=-1)
    c, s = torch.cos(phase), torch.sin(phase)
    return torch.cat([hr * c - hi * s, hr * s + hi * c], dim=-1)


def _transe_l1(q: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """sum_k |q_bk - t_mk|: q (B, d), t (M, d) -> (B, M), fused (kge.nn.fused_distance)."""
    return fused_distance.l1_distance(q, t)


def _rotate_l1(q: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Sum of the d/2 complex moduli |q_j - t_j| ([re | im] halves): (B, d), (M, d) -> (B, M), fused."""
    return fused_distance.complex_l1_distance(q, t)


def _transh_l1(q: torch.Tensor, t: torch.Tensor, w: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
    """sum_k |q_bk - (t_mk - wt_bm w_bk)|: q, w (B, d), t (M, d), wt = w @ t.T (B, M) -> (B, M), fused."""
    return fused_distance.shifted_l1_distance(q, t, w, wt)


def _pairre_l1(a: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """||a_b - s_b o t_m||_1 -> (B, M): a, s (B, d), t (M, d) (PairRE: a = h/|h| o r_H, s = r_T, t = t/|t|), fused."""
    return fused_distance.scaled_l1_distance(a, t, s)


def query_vectors(
    score_fn: str, head: torch.Tensor, relation: torch.Tensor, normal: torch.Tensor | None = None
) -> torch.Tensor:
    """Fold head (B, d) and relation (B, dr) into one query vector q (B, dq) (dq = d except PairRE's
    2d) such that ``score_queries(score_fn, q, tails)`` scores every tail; each scorer's fold is
    documented beside its entry in kge/nn/scorers.py (e.g. TransE q = h + r, DistMult q = h * r).

    Compute it once per query and pass it to ``score_queries`` for every block of tails.
    """
    scorer = _scorer(score_fn)
    _check_dims(scorer, head.shape[-1])
    return scorer.query(head, relation, normal)


def head_query_vectors(
    score_fn: str, tail: torch.Tensor, relation: torch.Tensor, normal: torch.Tensor | None = None
) -> torch.Tensor:
    """Fold tail (B, d) and relation (B, dr) into one query vector q (B, dq) for head prediction
    (?, r, t), so that ``score_queries(score_fn, q, heads, ...)`` equals ``score_triples(score_fn, h,
    r, t)`` for every candidate head h (encoded in the head role), with the same ``p``, ``gamma`` and
    ``normal`` (e.g. TransE q = t - r, RotatE q = t * exp(-i r); each beside its entry in kge/nn/scorers.py).
    """
    scorer = _scorer(score_fn)
    _check_dims(scorer, tail.shape[-1])
    return scorer.head_query(tail, relation, normal)


def score_queries(
    score_fn: str,
    query: torch.Tensor,
    tails: torch.Tensor,
    *,
    p: int = 2,
    gamma: float = 0.0,
    normal: torch.Tensor | None = None,
    tails_sq: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scores (B, M) of query vectors (B, dq) from ``query_vectors`` against tails (M, d).

    ``normal`` (B, d) is required for TransH. ``tails_sq`` (M,) optionally supplies the precomputed
    squared norms of the tails for the scorers whose L2 path uses them (``Scorer.tails_sq``;
    inference reuses it per entity block); the others ignore it.
    """
    scorer = _scorer(score_fn)
    _check_p(scorer, p)
    if query.ndim != 2 or tails.ndim != 2 or query.shape[1] != scorer.query_dim(tails.shape[1]):
        raise ValueError(
            f"score_queries: expected query (B, {scorer.query_dim(tails.shape[-1])}) and tails (M, d) "
            f"for {score_fn}, got {tuple(query.shape)} and {tuple(tails.shape)}"
        )
    return scorer.score(query, tails, p=p, gamma=gamma, normal=normal, tails_sq=tails_sq)


def l2_distance_scores_into(
    query: torch.Tensor,
    tails: torch.Tensor,
    tails_sq: torch.Tensor,
    gamma: float,
    out: torch.Tensor,
    scratch: torch.Tensor,
) -> torch.Tensor:
    """gamma - ||q - t||_2 of queries (B, d) against tails (M, d) into ``out`` (B, M), for TransE and
    RotatE L2 at inference, using ``scratch`` (B, M) and the tails' squared norms (M,).

    Bit-identical to ``score_queries(..., p=2, tails_sq=tails_sq)`` (the same operations in the same
    order, in place): the out-of-place form allocates five fresh (B, M) tensors per block, and their
    page faults made a top-K block 3.5x slower than these two reused buffers (1000 x 65,536, d = 128).
    """
    fused_distance.squared_l2_into(query, tails, tails_sq, out, scratch)
    out.clamp_min_(torch.finfo(out.dtype).eps).sqrt_()  # _sqrt_safe
    return out.neg_().add_(gamma)  # gamma - dist, exactly


def score_matrix(
    score_fn: str,
    head: torch.Tensor,
    relation: torch.Tensor,
    tails: torch.Tensor,
    *,
    p: int = 2,
    gamma: float = 0.0,
    normal: torch.Tensor | None = None,
) -> torch.Tensor:
    """Every query (head (B, d), relation (B, dr)) against every tail (M, d) -> scores (B, M).

    ``normal`` (B, d) is the TransH normal w_r of each query's relation (required for TransH).
    """
    _scorer(score_fn)
    if head.shape[0] != relation.shape[0]:
        raise ValueError(
            f"score_matrix: head {tuple(head.shape)} and relation {tuple(relation.shape)} must have the same batch size"
        )
    q = query_vectors(score_fn, head, relation, normal)
    return score_queries(score_fn, q, tails, p=p, gamma=gamma, normal=normal)


def _as_complex(x: torch.Tensor) -> torch.Tensor:
    re, im = x.chunk(2, dim=-1)
    return torch.complex(re.contiguous(), im.contiguous())


def score_triples(
    score_fn: str,
    head: torch.Tensor,
    relation: torch.Tensor,
    tail: torch.Tensor,
    *,
    p: int = 2,
    gamma: float = 0.0,
    normal: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scores (B,) of aligned triples: head (B, d), relation (B, dr), tail (B, d).

    The direct element-wise formula of each scorer (RECIPE.md for the recipe's five): the reference
    for ``score_matrix``.
    """
    scorer = _scorer(score_fn)
    _check_p(scorer, p)
    _check_dims(scorer, head.shape[-1])
    return scorer.triples(head, relation, tail, p=p, gamma=gamma, normal=normal)
