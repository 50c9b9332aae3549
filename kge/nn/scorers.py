"""The scorer registry: one entry per scoring function, with everything kge knows about it.

Each ``Scorer`` in ``SCORERS`` holds, beside its formula: the relation width, whether it is a
distance (p and gamma apply) or a dot product after folding (so ``scores = query @ tails.T`` and
the trainer's fused dot-product losses apply), whether it stores complex [re | im] halves (even d),
the relation initialisation, the TransH-style extra per-relation parameters, the query folding in
both directions, the matrix scoring, the reference per-triple formula, its FLOP counts for
``kge bench``, the name the recipe JSON uses for it (if any) and a one-line formula for exports.
Model, trainer, prediction, CLI, recipe, bench and inference export read these fields;
``kge.nn.scoring`` dispatches to them.

Adding a scorer is one entry here (its functions next to its formula), its name in the ``score_fn``
enum of kge/schemas/model.schema.json (kge.config sits below kge.nn, so the schema lists the names;
tests/test_scorers.py fails until they match) and its tests (tests/test_scorers.py). The CLI
choices are built from ``SCORERS``.

Shapes: head/tail/candidates (·, d) entity vectors; relation (B, dr) with dr = ``relation_dim(d)``;
folded queries (B, dq) with dq = ``query_dim(d)``; ``normal`` (B, d) TransH's unnormalized w_r.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kge.common.errors import KgeInputError
from kge.nn import fused_distance
from kge.nn.scoring import _as_complex, _pairre_l1, _rotate_l1, _rotate_query, _sqrt_safe, _transe_l1, _transh_l1, _unit

# Training FLOPs = 3 x forward: backward computes the gradients of both operands of every product.
TRAIN_FLOPS_FACTOR = 3


def _same(d: int) -> int:
    return d


def _no_query_flops(d: int) -> float:
    return 0.0


@dataclass(frozen=True)
class Scorer:
    """One scoring function (plausibility, higher is better). Callables, with B queries and M candidates:

    - ``relation_dim(d) -> dr``; ``query_dim(d) -> dq`` (width of the folded query, d unless stated).
    - ``init_relation(num_relations, d, init_scale, generator) -> (R, dr)``;
      ``init_normal(num_relations, d, generator) -> (R, d)`` or None when there are no per-relation
      normals (only TransH has them; the model keeps them as ``model.normal``).
    - ``query(head (B, d), relation (B, dr), normal) -> (B, dq)``: folds for tail prediction (h, r, ?);
      ``head_query(tail (B, d), relation, normal) -> (B, dq)``: folds for head prediction (?, r, t), so
      that ``score`` of the candidate heads equals ``triples``.
    - ``score(query (B, dq), candidates (M, d), *, p, gamma, normal, tails_sq (M,) or None) -> (B, M)``.
    - ``triples(head (B, d), relation (B, dr), tail (B, d), *, p, gamma, normal) -> (B,)``: the plain
      element-wise formula, the reference the matrix path is tested against.
    - ``pair_flops(d)``, ``query_flops(d)``: forward FLOPs per scored (query, candidate) pair and per
      folded query (O(d) folds count 0, as the dominant terms only are counted).

    Flags: ``distance`` (score = gamma - ||.||_p: p in {1, 2} and gamma apply); ``dot`` (score =
    query . candidate: fused dot losses, matmul prediction buffers); ``complex`` ([re | im] halves,
    even d); ``tails_sq`` (the p for which ``score`` reads the candidates' squared norms, which
    prediction caches); ``plain_l2`` (at p = 2 the score is gamma - ||q - t||_2 of the folded query,
    so prediction may use ``scoring.l2_distance_scores_into``); ``plain_l1`` (the ``kge.nn.fused_distance``
    form whose D makes the score gamma - D of the folded query at p = 1, so prediction scores its blocks
    in place with ``fused_distance.distance_scores_into``; None otherwise). ``bench_p``: the p ``kge bench`` uses.
    ``recipe_name``: the name in the submission's configs JSON (``config.model.score_fn``), None when
    the recipe has none. ``formula``: one line for export.json.
    """

    name: str
    formula: str
    relation_dim: Callable[[int], int]
    init_relation: Callable[[int, int, float, torch.Generator], torch.Tensor]
    query: Callable[..., torch.Tensor]
    head_query: Callable[..., torch.Tensor]
    score: Callable[..., torch.Tensor]
    triples: Callable[..., torch.Tensor]
    pair_flops: Callable[[int], float]
    distance: bool
    dot: bool
    complex: bool = False
    query_dim: Callable[[int], int] = _same
    init_normal: Callable[[int, int, torch.Generator], torch.Tensor] | None = None
    tails_sq: tuple[int, ...] = ()
    plain_l2: bool = False
    plain_l1: str | None = None
    query_flops: Callable[[int], float] = _no_query_flops
    bench_p: int = 1
    recipe_name: str | None = None

    def __post_init__(self):
        if self.distance == self.dot:
            raise ValueError(f"scorer {self.name}: exactly one of distance and dot")
        if self.dot and self.query_dim is not _same:
            raise ValueError(f"scorer {self.name}: the fused dot losses need queries as wide as the tails")

    def predict_flops(self, d: int, queries: int, pairs: int) -> float:
        """Forward FLOPs of scoring ``queries`` folded queries in ``pairs`` (query, candidate) pairs."""
        return float(pairs) * self.pair_flops(d) + float(queries) * self.query_flops(d)

    def train_flops(self, d: int, queries: int, pairs: int) -> float:
        """Forward + backward FLOPs of the same (``TRAIN_FLOPS_FACTOR`` x forward)."""
        return TRAIN_FLOPS_FACTOR * self.predict_flops(d, queries, pairs)


def _dot_pair_flops(d: int) -> float:
    return 2.0 * d  # one multiply-add per component


def _dot_scores(query, tails, *, p, gamma, normal, tails_sq):
    return query @ tails.T


def _gaussian_relations(num_relations, d, scale, generator):
    return torch.randn(num_relations, d, generator=generator) * scale


def _product_relations(num_relations, d, scale, generator):
    # Start near a useful product (1/sqrt(d) per component) instead of near zero.
    return torch.randn(num_relations, d, generator=generator) * scale + 1.0 / math.sqrt(d)


def _tails_sq_row(tails_sq):
    return None if tails_sq is None else tails_sq.unsqueeze(0)  # (1, M)


# ------------------------------------------------------------------------------------------ TransE
# score = gamma - ||h + r - t||_p.  Tail query q = h + r (score = gamma - ||q - t||); head query
# q = t - r (||h + r - t|| = ||h - q||).


def _transe_score(query, tails, *, p, gamma, normal, tails_sq):
    dist = fused_distance.l2_distance(query, tails, tails_sq) if p == 2 else _transe_l1(query, tails)
    return gamma - dist


def _transe_triples(head, relation, tail, *, p, gamma, normal):
    return gamma - torch.linalg.vector_norm(head + relation - tail, ord=p, dim=-1)


TRANSE = Scorer(
    name="transe",
    formula="score = gamma - ||h + r - t||_p",
    relation_dim=_same,
    init_relation=_gaussian_relations,
    query=lambda head, relation, normal: head + relation,
    head_query=lambda tail, relation, normal: tail - relation,
    score=_transe_score,
    triples=_transe_triples,
    pair_flops=_dot_pair_flops,
    distance=True,
    dot=False,
    tails_sq=(2,),
    plain_l2=True,
    plain_l1="l1",
    bench_p=1,
    recipe_name="TransE",
)


# ------------------------------------------------------------------------------------------ TransH
# score = gamma - ||h_w + r - t_w||_p with w = w_r / ||w_r||, x_w = x - (w.x) w (w_r: model.normal).
# Tail query q = h_w + r (score = gamma - ||q - t_w||); head query q = t_w - r (||h_w + r - t_w|| =
# ||q - h_w||). The candidates' projection depends on the query's relation, so score() needs w.


def _transh_query(head, relation, normal):
    w = _unit(normal, "transh")
    return head - (head * w).sum(-1, keepdim=True) * w + relation


def _transh_head_query(tail, relation, normal):
    w = _unit(normal, "transh")
    return tail - (tail * w).sum(-1, keepdim=True) * w - relation


def _transh_score(query, tails, *, p, gamma, normal, tails_sq):
    w = _unit(normal, "transh")
    if p == 2:
        # ||q - t'||^2 with t' = t - (w.t) w and |w| = 1:
        #   = |q|^2 + |t|^2 - (w.t)^2 - 2 (q - (q.w) w).t
        q_perp = query - (query * w).sum(-1, keepdim=True) * w
        dots = torch.cat([q_perp, w], dim=0) @ tails.T  # one matmul for both (2B, M)
        qt, wt = dots.split(query.shape[0], dim=0)
        t_sq = _tails_sq_row(tails_sq)
        if t_sq is None:
            t_sq = (tails * tails).sum(-1).unsqueeze(0)
        q_sq = (query * query).sum(-1, keepdim=True)
        dist = _sqrt_safe(q_sq + t_sq - wt * wt - 2.0 * qt)
    else:
        dist = _transh_l1(query, tails, w, w @ tails.T)
    return gamma - dist


def _transh_triples(head, relation, tail, *, p, gamma, normal):
    if normal is None:
        raise KgeInputError("normal: transh needs the relation normal vectors w_r")
    w = normal / torch.linalg.vector_norm(normal, ord=2, dim=-1, keepdim=True)
    hp = head - (w * head).sum(-1, keepdim=True) * w
    tp = tail - (w * tail).sum(-1, keepdim=True) * w
    return gamma - torch.linalg.vector_norm(hp + relation - tp, ord=p, dim=-1)


TRANSH = Scorer(
    name="transh",
    formula="score = gamma - ||h_w + r - t_w||_p with w = normal_r / ||normal_r||, x_w = x - (w.x) w",
    relation_dim=_same,
    init_relation=_gaussian_relations,
    init_normal=lambda num_relations, d, generator: torch.randn(num_relations, d, generator=generator),
    query=_transh_query,
    head_query=_transh_head_query,
    score=_transh_score,
    triples=_transh_triples,
    pair_flops=_dot_pair_flops,
    distance=True,
    dot=False,
    tails_sq=(2,),
    bench_p=2,
    recipe_name="TransH",
)


# ------------------------------------------------------------------------------------------ RotatE
# score = gamma - ||h o exp(i r) - t||_p over complex h = [re | im], r the d/2 phases; p = 2: L2 over
# all d real components, p = 1: the sum of the d/2 complex moduli (the RotatE paper's L1).
# Tail query q = h * exp(i r); head query q = t * exp(-i r) (|h_k e^{i r_k} - t_k| = |h_k - t_k
# e^{-i r_k}| per complex component, so both norms are unchanged).


def _rotate_score(query, tails, *, p, gamma, normal, tails_sq):
    dist = fused_distance.l2_distance(query, tails, tails_sq) if p == 2 else _rotate_l1(query, tails)
    return gamma - dist


def _rotate_triples(head, relation, tail, *, p, gamma, normal):
    z = _as_complex(head) * torch.polar(torch.ones_like(relation), relation) - _as_complex(tail)
    # p=2: sqrt(sum |z_k|^2) over all real components; p=1: sum of complex moduli.
    return gamma - torch.linalg.vector_norm(z, ord=p, dim=-1)


ROTATE = Scorer(
    name="rotate",
    formula="score = gamma - ||h o exp(i r) - t||_p over complex h = h[:d/2] + i h[d/2:], r the d/2 "
    "phases (p=2: L2 over all d real parts; p=1: sum of complex moduli)",
    relation_dim=lambda d: d // 2,
    # Relations are phases: uniform over the circle.
    init_relation=lambda num_relations, d, scale, generator: (
        (torch.rand(num_relations, d // 2, generator=generator) * 2 - 1) * math.pi
    ),
    query=lambda head, relation, normal: _rotate_query(head, relation),
    head_query=lambda tail, relation, normal: _rotate_query(tail, -relation),
    score=_rotate_score,
    triples=_rotate_triples,
    pair_flops=_dot_pair_flops,
    distance=True,
    dot=False,
    complex=True,
    tails_sq=(2,),
    plain_l2=True,
    plain_l1="complex_l1",
    bench_p=2,
    recipe_name="RotatE",
)


# ---------------------------------------------------------------------------------------- DistMult
# score = sum h r t. Tail query q = h * r, head query q = r * t; score = q . candidate.

DISTMULT = Scorer(
    name="distmult",
    formula="score = sum(h * r * t)",
    relation_dim=_same,
    init_relation=_product_relations,
    query=lambda head, relation, normal: head * relation,
    head_query=lambda tail, relation, normal: tail * relation,
    score=_dot_scores,
    triples=lambda head, relation, tail, *, p, gamma, normal: (head * relation * tail).sum(-1),
    pair_flops=_dot_pair_flops,
    distance=False,
    dot=True,
    recipe_name="DistMult",
)


# ----------------------------------------------------------------------------------------- ComplEx
# score = Re(sum h r conj(t)) over complex [re | im] halves.
# Tail query q = [Re(h r) | Im(h r)], since Re(sum h r conj(t)) = sum Re(hr) Re(t) + Im(hr) Im(t);
# head query: Re(sum h r conj(t)) = Re(sum h u) = q . h with u = r conj(t), q = [Re u | -Im u].


def _complex_query(head, relation, normal):
    hr, hi = head.chunk(2, dim=-1)
    rr, ri = relation.chunk(2, dim=-1)
    return torch.cat([hr * rr - hi * ri, hr * ri + hi * rr], dim=-1)


def _complex_head_query(tail, relation, normal):
    tr, ti = tail.chunk(2, dim=-1)
    rr, ri = relation.chunk(2, dim=-1)
    return torch.cat([rr * tr + ri * ti, rr * ti - ri * tr], dim=-1)


def _complex_triples(head, relation, tail, *, p, gamma, normal):
    prod = _as_complex(head) * _as_complex(relation) * torch.conj(_as_complex(tail))
    return prod.real.sum(-1)


COMPLEX = Scorer(
    name="complex",
    formula="score = Re(sum(h * r * conj(t))) over complex x = x[:d/2] + i x[d/2:]",
    relation_dim=_same,
    init_relation=_product_relations,
    query=_complex_query,
    head_query=_complex_head_query,
    score=_dot_scores,
    triples=_complex_triples,
    pair_flops=_dot_pair_flops,
    distance=False,
    dot=True,
    complex=True,
    recipe_name="ComplEx",
)


# ------------------------------------------------------------------------------------------ RESCAL
# score = h^T R_r t with R_r a full (d, d) matrix per relation, stored row-major as a flat row of
# d*d (R_r[i, j] = relation[i * d + j]). Bilinear, so it folds to a dot product in both directions:
# tail query q = h^T R_r (q_j = sum_i h_i R_ij), head query q = R_r t (q_i = sum_j R_ij t_j).
# Folding costs 2 d^2 per query, scoring 2 d per pair. Init: R_r = I / sqrt(d) + N(0, init_scale^2 / d)
# per entry, i.e. DistMult's start (1/sqrt(d) on the diagonal) with off-diagonal noise whose total
# contribution to h^T R t has DistMult's noise variance (d^2 entries of variance s^2/d against d of s^2).


def _rescal_matrices(relation: torch.Tensor, d: int) -> torch.Tensor:
    if relation.shape[-1] != d * d:
        raise KgeInputError(
            f"rescal: relation rows must hold d*d = {d * d} values for d = {d}, got {relation.shape[-1]}"
        )
    return relation.reshape(relation.shape[0], d, d)


def _rescal_query(head, relation, normal):
    return torch.matmul(head.unsqueeze(1), _rescal_matrices(relation, head.shape[-1])).squeeze(1)


def _rescal_head_query(tail, relation, normal):
    return torch.matmul(_rescal_matrices(relation, tail.shape[-1]), tail.unsqueeze(-1)).squeeze(-1)


def _rescal_triples(head, relation, tail, *, p, gamma, normal):
    return torch.einsum("bi,bij,bj->b", head, _rescal_matrices(relation, head.shape[-1]), tail)


def _rescal_relations(num_relations, d, scale, generator):
    noise = torch.randn(num_relations, d * d, generator=generator) * (scale / math.sqrt(d))
    return noise + (torch.eye(d) / math.sqrt(d)).reshape(1, d * d)


RESCAL = Scorer(
    name="rescal",
    formula="score = h^T R t with R = r.reshape(d, d) row-major (R[i, j] = r[i * d + j])",
    relation_dim=lambda d: d * d,
    init_relation=_rescal_relations,
    query=_rescal_query,
    head_query=_rescal_head_query,
    score=_dot_scores,
    triples=_rescal_triples,
    pair_flops=_dot_pair_flops,
    query_flops=lambda d: 2.0 * d * d,
    distance=False,
    dot=True,
)


# ------------------------------------------------------------------------------------------ PairRE
# PairRE (Chao et al. 2021): score = gamma - || h/|h| o r_H - t/|t| o r_T ||_p, relation row
# [r_H | r_T] (2d), entities L2-normalized inside the score; p = 1 (the paper) or 2.
# The candidates are scaled by the query relation's own r_T (r_H for heads), so the query cannot
# fold into d values: the folded query is (B, 2d) = [a | s] with a the known side already scaled
# and s the candidates' scaling. Tail query: [h/|h| o r_H | r_T]; head query: [t/|t| o r_T | r_H]
# (the norm is symmetric, ||a - s o c|| with c the normalized candidate, in both directions).
# Matrix form: p = 2 by one matmul, ||a - s o c||^2 = |a|^2 + (s o s).(c o c) - 2 (a o s).c;
# p = 1 by the fused scaled-L1 kernel (scoring._pairre_l1, kge.nn.fused_distance).
# Init: r_H = r_T = 1 + N(0, init_scale^2): the identity relation (score = gamma - ||h/|h| - t/|t|||),
# the noise separates the relations.


def _pairre_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = x.shape[-1] // 2
    return x[..., :d], x[..., d:]


def _pairre_check(entity: torch.Tensor, relation: torch.Tensor) -> None:
    if relation.shape[-1] != 2 * entity.shape[-1]:
        raise KgeInputError(
            f"pairre: relation rows must hold [r_H | r_T] = 2d = {2 * entity.shape[-1]} values, "
            f"got {relation.shape[-1]}"
        )


def _pairre_query(head, relation, normal):
    _pairre_check(head, relation)
    r_head, r_tail = _pairre_split(relation)
    return torch.cat([F.normalize(head, p=2, dim=-1) * r_head, r_tail], dim=-1)


def _pairre_head_query(tail, relation, normal):
    _pairre_check(tail, relation)
    r_head, r_tail = _pairre_split(relation)
    return torch.cat([F.normalize(tail, p=2, dim=-1) * r_tail, r_head], dim=-1)


def _pairre_score(query, candidates, *, p, gamma, normal, tails_sq):
    a, s = _pairre_split(query)  # (B, d) each
    c = F.normalize(candidates, p=2, dim=-1)  # (M, d)
    if p == 2:
        cross = torch.cat([s * s, -2.0 * (a * s)], dim=1) @ torch.cat([c * c, c], dim=1).T  # (B, M)
        dist = _sqrt_safe((a * a).sum(-1, keepdim=True) + cross)
    else:
        dist = _pairre_l1(a, c, s)
    return gamma - dist


def _pairre_triples(head, relation, tail, *, p, gamma, normal):
    r_head, r_tail = _pairre_split(relation)
    h = head / torch.linalg.vector_norm(head, ord=2, dim=-1, keepdim=True)
    t = tail / torch.linalg.vector_norm(tail, ord=2, dim=-1, keepdim=True)
    return gamma - torch.linalg.vector_norm(h * r_head - t * r_tail, ord=p, dim=-1)


PAIRRE = Scorer(
    name="pairre",
    formula="score = gamma - ||h / |h| o r_H - t / |t| o r_T||_p with r = [r_H | r_T] (2d)",
    relation_dim=lambda d: 2 * d,
    query_dim=lambda d: 2 * d,
    init_relation=lambda num_relations, d, scale, generator: (
        torch.randn(num_relations, 2 * d, generator=generator) * scale + 1.0
    ),
    query=_pairre_query,
    head_query=_pairre_head_query,
    score=_pairre_score,
    triples=_pairre_triples,
    # p = 2: one (B, 2d) x (2d, M) matmul; p = 1: multiply, subtract, |.|, add per component.
    pair_flops=lambda d: 4.0 * d,
    distance=True,
    dot=False,
    bench_p=1,
)


SCORERS: dict[str, Scorer] = {s.name: s for s in (TRANSE, TRANSH, ROTATE, DISTMULT, COMPLEX, RESCAL, PAIRRE)}


def get_scorer(name) -> Scorer:
    """The registry entry of ``name``; KgeInputError naming the accepted names otherwise."""
    scorer = SCORERS.get(name) if isinstance(name, str) else None
    if scorer is None:
        raise KgeInputError(f"score_fn: expected one of {sorted(SCORERS)}, got {name!r}")
    return scorer


def recipe_scorer(recipe_name: str) -> Scorer:
    """The scorer of a recipe JSON name (``config.model.score_fn``, e.g. "TransE"; case-insensitive)."""
    for scorer in SCORERS.values():
        if scorer.recipe_name is not None and scorer.recipe_name.lower() == str(recipe_name).lower():
            return scorer
    known = sorted(s.recipe_name for s in SCORERS.values() if s.recipe_name)
    raise KgeInputError(f"config.model.score_fn {recipe_name!r}: no kge scorer maps it; the recipe's names are {known}")
