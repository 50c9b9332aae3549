"""Scoring functions of the recipe (RECIPE.md): plausibility, higher is better.

Conventions (all functions):
- Entity vectors have width ``d``. Complex vectors (RotatE, ComplEx) store ``d/2`` complex numbers
  as ``[re | im]`` halves of the last axis, so ``d`` must be even for them.
- Relation vectors have width ``relation_dim(score_fn, d)``: ``d/2`` phases for RotatE, ``d`` else.
- TransH additionally takes ``normal`` (B, d), the unnormalised w_r of each query's relation;
  it is normalised here (w = w_r / ||w_r||).
- ``gamma`` is the margin of the distance scores (TransE, TransH, RotatE); ignored for DistMult and
  ComplEx.
- RotatE distance: for p = 2 the L2 norm over all d real components (= sqrt(sum_k |z_k|^2));
  for p = 1 the sum over the d/2 complex components of their modulus sum_k |z_k| (the RotatE
  paper's L1), NOT the sum of |re| + |im|.

Two implementations on purpose:
- ``score_triples`` is the plain element-wise formula (torch.complex / torch.polar for complex
  models); it is the reference.
- ``score_matrix`` / ``score_queries`` are the hot path (every query against every tail): the head
  and relation are folded into one query vector, then matmuls (DistMult, ComplEx, all L2 distances via
  |q|^2 + |t|^2 - 2 q.t), torch.cdist(p=1) for TransE L1, and a chunked broadcast for RotatE/TransH
  L1 (memory capped; with autograd each chunk is checkpointed so backward also holds one chunk only;
  these two are memory-bound and the slowest paths by far).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from kge import fused_distance
from kge.errors import KgeInputError

SCORE_FNS = frozenset({"transe", "transh", "rotate", "distmult", "complex"})
DISTANCE_FNS = frozenset({"transe", "transh", "rotate"})
COMPLEX_FNS = frozenset({"rotate", "complex"})
# Scores are query_vectors(...) @ tails.T: a plain matmul (the trainer fuses it with the softmax loss).
DOT_FNS = frozenset({"distmult", "complex"})

# Elements of one (B, chunk, d) broadcast block of the L1 paths (about 128 MiB in float32).
L1_CHUNK_ELEMENTS = 1 << 25


def _check_fn(score_fn: str) -> None:
    if score_fn not in SCORE_FNS:
        raise KgeInputError(f"score_fn: expected one of {sorted(SCORE_FNS)}, got {score_fn!r}")


def _check_p(score_fn: str, p) -> None:
    if score_fn in DISTANCE_FNS and p not in (1, 2):
        raise KgeInputError(f"p: expected 1 or 2 for {score_fn}, got {p!r}")


def _check_dims(score_fn: str, d: int) -> None:
    if score_fn in COMPLEX_FNS and d % 2:
        raise KgeInputError(f"dim: {score_fn} stores [re | im] halves and needs an even d, got {d}")


def relation_dim(score_fn: str, d: int) -> int:
    """Width of a relation embedding: d/2 phases for RotatE, d otherwise."""
    _check_fn(score_fn)
    _check_dims(score_fn, d)
    return d // 2 if score_fn == "rotate" else d


def uses_normal(score_fn: str) -> bool:
    """True when the score function needs a per-relation normal vector (TransH)."""
    _check_fn(score_fn)
    return score_fn == "transh"


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


def _modulus(re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
    """|re + i im| with a zero (not NaN) gradient at 0 (double-where trick)."""
    sq = re * re + im * im
    pos = sq > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))), torch.zeros_like(sq))


def _rotate_query(head: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """h * exp(i r) as [re | im]: head (B, d), phase (B, d/2) -> (B, d)."""
    hr, hi = head.chunk(2, dim=-1)
    c, s = torch.cos(phase), torch.sin(phase)
    return torch.cat([hr * c - hi * s, hr * s + hi * c], dim=-1)


def query_vectors(score_fn: str, head: torch.Tensor, relation: torch.Tensor,
                  normal: torch.Tensor | None = None) -> torch.Tensor:
    """Fold head and relation into one query vector q (B, d), so that for every tail t:

    - transe:   score = gamma - ||q - t||_p,            q = h + r
    - transh:   score = gamma - ||q - (t - (w.t) w)||_p, q = (h - (w.h) w) + r
    - rotate:   score = gamma - ||q - t||_p (complex),  q = h * exp(i r)  as [re | im]
    - distmult: score = q . t,                          q = h * r
    - complex:  score = q . t (real dot),               q = [Re(h r) | Im(h r)]
      since Re(sum h r conj(t)) = sum Re(hr) Re(t) + Im(hr) Im(t).

    Compute it once per query and pass it to ``score_queries`` for every block of tails.
    """
    _check_fn(score_fn)
    _check_dims(score_fn, head.shape[-1])
    if score_fn == "transe":
        return head + relation
    if score_fn == "transh":
        w = _unit(normal, score_fn)
        return head - (head * w).sum(-1, keepdim=True) * w + relation
    if score_fn == "rotate":
        return _rotate_query(head, relation)
    if score_fn == "distmult":
        return head * relation
    hr, hi = head.chunk(2, dim=-1)
    rr, ri = relation.chunk(2, dim=-1)
    return torch.cat([hr * rr - hi * ri, hr * ri + hi * rr], dim=-1)


def head_query_vectors(score_fn: str, tail: torch.Tensor, relation: torch.Tensor,
                       normal: torch.Tensor | None = None) -> torch.Tensor:
    """Fold tail and relation into one query vector q (B, d) for head prediction (?, r, t), so that
    ``score_queries(score_fn, q, heads, ...)`` equals ``score_triples(score_fn, h, r, t)`` for every
    candidate head h (encoded in the head role), with the same ``p``, ``gamma`` and ``normal``:

    - transe:   ||h + r - t||                 = ||h - q||,                 q = t - r
    - transh:   ||h_w + r - t_w||             = ||q - h_w||,               q = t_w - r  (x_w = x - (w.x) w)
    - rotate:   |h_k e^{i r_k} - t_k|         = |h_k - t_k e^{-i r_k}|,    q = t * exp(-i r)  (per complex
      component, so both the L1 sum of moduli and the L2 norm are unchanged)
    - distmult: sum h r t                     = q . h,                     q = r * t
    - complex:  Re(sum h r conj(t)) = Re(sum h u) = q . h with u = r conj(t), q = [Re u | -Im u]
    """
    _check_fn(score_fn)
    _check_dims(score_fn, tail.shape[-1])
    if score_fn == "transe":
        return tail - relation
    if score_fn == "transh":
        w = _unit(normal, score_fn)
        return tail - (tail * w).sum(-1, keepdim=True) * w - relation
    if score_fn == "rotate":
        return _rotate_query(tail, -relation)
    if score_fn == "distmult":
        return tail * relation
    tr, ti = tail.chunk(2, dim=-1)
    rr, ri = relation.chunk(2, dim=-1)
    return torch.cat([rr * tr + ri * ti, rr * ti - ri * tr], dim=-1)


def _l2_from_dots(q: torch.Tensor, tails: torch.Tensor, qt: torch.Tensor,
                  t_sq: torch.Tensor | None = None) -> torch.Tensor:
    q_sq = (q * q).sum(-1, keepdim=True)                        # (B, 1)
    if t_sq is None:
        t_sq = (tails * tails).sum(-1).unsqueeze(0)             # (1, M)
    return _sqrt_safe(q_sq + t_sq - 2.0 * qt)


def _chunked_l1(fn, q: torch.Tensor, tails: torch.Tensor, extra: tuple = ()) -> torch.Tensor:
    """Apply ``fn(q, tail_chunk, *extra_chunk) -> (B, c)`` over chunks of tails and concatenate.

    ``extra`` are (B, M) tensors sliced along M together with the tails. Each chunk materialises a
    (B, c, d) block; under autograd the chunk is checkpointed so that backward recomputes it rather
    than keeping every block alive.
    """
    b, d = q.shape
    m = tails.shape[0]
    chunk = max(1, L1_CHUNK_ELEMENTS // max(1, b * d))
    grad = torch.is_grad_enabled() and (q.requires_grad or tails.requires_grad
                                        or any(e.requires_grad for e in extra))
    outs = []
    for start in range(0, m, chunk):
        args = (q, tails[start:start + chunk]) + tuple(e[:, start:start + chunk] for e in extra)
        if grad and m > chunk:
            outs.append(checkpoint(fn, *args, use_reentrant=False))
        else:
            outs.append(fn(*args))
    if not outs:
        return q.new_zeros((b, 0))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def _rotate_l1_block(q, t):
    diff = q.unsqueeze(1) - t.unsqueeze(0)                      # (B, c, d)
    re, im = diff.chunk(2, dim=-1)
    return _modulus(re, im).sum(-1)


def _transh_l1_block(q, t, w, wt):
    # q - (t - (w.t) w) for every (b, m): the tail projection depends on the query's relation.
    diff = q.unsqueeze(1) - t.unsqueeze(0) + wt.unsqueeze(-1) * w.unsqueeze(1)
    return diff.abs().sum(-1)


def _transe_l1(q: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """sum_k |q_bk - t_mk|: q (B, d), t (M, d) -> (B, M), fused (kge.fused_distance)."""
    return fused_distance.l1_distance(q, t)


def _rotate_l1(q: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Sum of the d/2 complex moduli |q_j - t_j| ([re | im] halves): (B, d), (M, d) -> (B, M), fused."""
    return fused_distance.complex_l1_distance(q, t)


def _transh_l1(q: torch.Tensor, t: torch.Tensor, w: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
    """sum_k |q_bk - (t_mk - wt_bm w_bk)|: q, w (B, d), t (M, d), wt = w @ t.T (B, M) -> (B, M), fused."""
    return fused_distance.shifted_l1_distance(q, t, w, wt)


def score_queries(score_fn: str, query: torch.Tensor, tails: torch.Tensor, *, p: int = 2,
                  gamma: float = 0.0, normal: torch.Tensor | None = None,
                  tails_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Scores (B, M) of query vectors (B, d) from ``query_vectors`` against tails (M, d).

    ``normal`` (B, d) is required for TransH. ``tails_sq`` (M,) optionally supplies the precomputed
    squared norms of the tails for the L2 paths (inference reuses it per entity block).
    """
    _check_fn(score_fn)
    _check_p(score_fn, p)
    if query.ndim != 2 or tails.ndim != 2 or query.shape[1] != tails.shape[1]:
        raise KgeInputError(f"score_queries: expected query (B, d) and tails (M, d), got "
                            f"{tuple(query.shape)} and {tuple(tails.shape)}")
    if score_fn in ("distmult", "complex"):
        return query @ tails.T
    t_sq = None if tails_sq is None else tails_sq.unsqueeze(0)
    if score_fn == "transh":
        w = _unit(normal, score_fn)
        if p == 2:
            # ||q - t'||^2 with t' = t - (w.t) w and |w| = 1:
            #   = |q|^2 + |t|^2 - (w.t)^2 - 2 (q - (q.w) w).t
            q_perp = query - (query * w).sum(-1, keepdim=True) * w
            dots = torch.cat([q_perp, w], dim=0) @ tails.T      # one matmul for both (2B, M)
            qt, wt = dots.split(query.shape[0], dim=0)
            if t_sq is None:
                t_sq = (tails * tails).sum(-1).unsqueeze(0)
            q_sq = (query * query).sum(-1, keepdim=True)
            dist = _sqrt_safe(q_sq + t_sq - wt * wt - 2.0 * qt)
        else:
            dist = _transh_l1(query, tails, w, w @ tails.T)
        return gamma - dist
    # transe and rotate: a plain distance between q and t in R^d.
    if p == 2:
        dist = fused_distance.l2_distance(query, tails, tails_sq)
    elif score_fn == "transe":
        dist = _transe_l1(query, tails)
    else:
        dist = _rotate_l1(query, tails)
    return gamma - dist


def l2_distance_scores_into(query: torch.Tensor, tails: torch.Tensor, tails_sq: torch.Tensor, gamma: float,
                            out: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """gamma - ||q - t||_2 of queries (B, d) against tails (M, d) into ``out`` (B, M), for TransE and
    RotatE L2 at inference, using ``scratch`` (B, M) and the tails' squared norms (M,).

    Bit-identical to ``score_queries(..., p=2, tails_sq=tails_sq)`` (the same operations in the same
    order, in place): the out-of-place form allocates five fresh (B, M) tensors per block, and their
    page faults made a top-K block 3.5x slower than these two reused buffers (1000 x 65,536, d = 128).
    """
    torch.matmul(query, tails.T, out=out)
    out.mul_(2.0)                                                # 2 q.t, exactly
    torch.add((query * query).sum(-1, keepdim=True), tails_sq.unsqueeze(0), out=scratch)
    torch.sub(scratch, out, out=out)                             # |q|^2 + |t|^2 - 2 q.t
    out.clamp_min_(torch.finfo(out.dtype).eps).sqrt_()           # _sqrt_safe
    return out.neg_().add_(gamma)                                # gamma - dist, exactly


def score_matrix(score_fn: str, head: torch.Tensor, relation: torch.Tensor, tails: torch.Tensor, *,
                 p: int = 2, gamma: float = 0.0, normal: torch.Tensor | None = None) -> torch.Tensor:
    """Every query (head (B, d), relation (B, dr)) against every tail (M, d) -> scores (B, M).

    ``normal`` (B, d) is the TransH normal w_r of each query's relation (required for TransH).
    """
    _check_fn(score_fn)
    if head.shape[0] != relation.shape[0]:
        raise KgeInputError(f"score_matrix: head {tuple(head.shape)} and relation "
                            f"{tuple(relation.shape)} must have the same batch size")
    q = query_vectors(score_fn, head, relation, normal)
    return score_queries(score_fn, q, tails, p=p, gamma=gamma, normal=normal)


def _as_complex(x: torch.Tensor) -> torch.Tensor:
    re, im = x.chunk(2, dim=-1)
    return torch.complex(re.contiguous(), im.contiguous())


def score_triples(score_fn: str, head: torch.Tensor, relation: torch.Tensor, tail: torch.Tensor, *,
                  p: int = 2, gamma: float = 0.0, normal: torch.Tensor | None = None) -> torch.Tensor:
    """Scores (B,) of aligned triples: head (B, d), relation (B, dr), tail (B, d).

    The direct element-wise formula of RECIPE.md (the reference for ``score_matrix``).
    """
    _check_fn(score_fn)
    _check_p(score_fn, p)
    _check_dims(score_fn, head.shape[-1])
    if score_fn == "transe":
        return gamma - torch.linalg.vector_norm(head + relation - tail, ord=p, dim=-1)
    if score_fn == "transh":
        if normal is None:
            raise KgeInputError("normal: transh needs the relation normal vectors w_r")
        w = normal / torch.linalg.vector_norm(normal, ord=2, dim=-1, keepdim=True)
        hp = head - (w * head).sum(-1, keepdim=True) * w
        tp = tail - (w * tail).sum(-1, keepdim=True) * w
        return gamma - torch.linalg.vector_norm(hp + relation - tp, ord=p, dim=-1)
    if score_fn == "rotate":
        z = _as_complex(head) * torch.polar(torch.ones_like(relation), relation) - _as_complex(tail)
        # p=2: sqrt(sum |z_k|^2) over all real components; p=1: sum of complex moduli.
        return gamma - torch.linalg.vector_norm(z, ord=p, dim=-1)
    if score_fn == "distmult":
        return (head * relation * tail).sum(-1)
    prod = _as_complex(head) * _as_complex(relation) * torch.conj(_as_complex(tail))
    return prod.real.sum(-1)
