"""A WikiKG90Mv2-shaped graph at 1/F of the real size, streamed to the exact OGB layout.

``generate_scaled(root, fraction=F, seed=S)`` (``kge data scaled --fraction F --out ROOT --seed S``) writes

- E = round(91,230,610 / F) entities, T = round(601,062,811 / F) training triples (so T / E = 6.59 as in
  the real graph), R = clip(round(1,387 / sqrt(F)), 100, 1,387) relations (rule and reason below);
- relation 0 dominant (any entity -> a small "class" type, 41 % of training, like P31 / relation 481),
  the other R - 1 relations Zipf-like over a random order, the exponent solved so that the cube-root
  law gives relation 0 4.5 % of the queries (the real 3-6 %) at every R;
- 15,000 validation, 15,000 test-dev and 10,000 test-challenge queries at every F, relations drawn with
  p(r) ∝ n_r^(1/3) of the training counts (so the dominant relation is 4.5 % of the queries), some
  with a "cold" tail that is never a training tail, as many as make about 20 % of the query tails
  unseen as a training tail together with the rare warm tails that training misses (a share that grows
  with E, estimated up front); no query triple is in training, training triples are distinct;
- Zipf popularity (exponent 1.05 over random ranks, so ids carry no information): tails are drawn by
  popularity, heads by a flatter popularity^0.35, so degrees follow a power law;
- entity_feat (E, 768) float16 and relation_feat (R, 768) float16;
- hidden test tails in ``ROOT/mini-answers/{test-dev_t,test-challenge_t}.npy`` and the generator's
  parameters in ``ROOT/mini-answers/scaled.json``.

Relation count rule: R = 1,387 / sqrt(F), at least 100. Keeping all 1,387 relations at 1/F of the triples
would leave the Zipf-tail relations with a handful of triples each (at F = 512 the mean is 847 per
relation); R ∝ 1/F would shrink the vocabulary to 3 relations at F = 512. The square root is the middle
course (245 relations at F = 32, 123 at F = 128). The floor of 100 (reached from F = 193 on) is what the
cube-root law needs: with a 41 % dominant relation and R - 1 others, relation 0's query share is at
least 0.41^(1/3) / (0.41^(1/3) + (R - 1)^(2/3) 0.59^(1/3)) (equal others), which is 6.4 % at R = 48
and falls to 4.5 % only from R = 83 on; the queries count 40,000 whatever F is, so they must keep
the real relation mix.

Planted, learnable structure (after ``kge.data.mini``, made streamable): every entity has a type and a
latent complex vector z in C^8 around its type mean; relation r has a head type, a tail type and a
complex operator w_r. A triple's tail is the Gumbel-max over 8 popularity-drawn candidates of the tail
type of ``3 * Re<z_h, w_r, conj z_t> / sqrt(8)``; features are unit rows of a fixed random linear map of
[z + noise, type one-hot, log popularity, nuisance] plus noise. (Mini's symmetric/inverse/composition
patterns are not planted here: they need whole-relation joins, which do not stream.)

Streaming: the heads are cut into fixed blocks of ``BLOCK`` entities. Block b's triples (every triple
whose head is in the block) and feature rows are drawn from their own generator seeded by (seed, b),
so duplicates are removed exactly within the block and the output does not depend on ``chunk``:
``chunk`` only sets how many train rows (and as many bytes of feature rows) are buffered before they
are written through a memory-mapped window of the .npy, which is then unmapped, so the peak memory
is bounded by the chunk plus O(E) per-entity state (about 100 bytes an entity: 0.3 GB at F = 32, against
4.4 GB of features and 0.45 GB of triples written). Training rows come out grouped by head block and
shuffled within it.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from kge.common.atomic import atomic_path, save_json, save_npy
from kge.common.errors import KgeInputError
from kge.data.layout import (
    FEATURE_DIM,
    SPLIT_FILES,
    answers_dir,
    dataset_dir,
    remove_marker,
    write_marker,
    write_meta,
    write_split_arrays,
)

REAL_ENTITIES = 91_230_610
REAL_TRIPLES = 601_062_811
REAL_RELATIONS = 1_387
MIN_RELATIONS = 100
N_VALID, N_TEST_DEV, N_TEST_CHALLENGE = 15000, 15000, 10000

BLOCK = 8192  # heads per block: the unit of randomness (part of the generator's definition)
DEFAULT_CHUNK = 2_000_000  # train rows per written window (48 MB; features get the same byte count)
N_TYPES = 10
CLASS_SHARE = 0.03  # type 0: the targets of the dominant relation
ZIPF = 1.05  # popularity weight = rank^-ZIPF
HEAD_FLAT = 0.35  # head weight = popularity^HEAD_FLAT: most items have a few outgoing facts
QUERY_DOMINANT_SHARE = 0.045  # the dominant relation's share of the queries (real: 3-6 %)
DOMINANT_SHARE = 0.41
COLD_ENTITY_SHARE = 0.10  # never a training tail
UNSEEN_QUERY_SHARE = 0.20  # queries whose tail is never a training tail: cold tails + rare warm ones
LATENT_C = 8
BETA = 3.0
N_CAND = 8  # popularity-drawn tail candidates per triple
OVERSAMPLE = 1.15  # first draw per relation; duplicates and query triples are dropped, then topped up
TOPUP_ROUNDS = 10


def scaled_sizes(fraction: float) -> tuple[int, int, int]:
    """(entities, training triples, relations) at 1/fraction of WikiKG90Mv2."""
    if not (isinstance(fraction, (int, float)) and math.isfinite(fraction) and fraction >= 1):
        raise KgeInputError(f"--fraction {fraction!r}: expected a number >= 1 (1/F of the real WikiKG90Mv2)")
    E = int(round(REAL_ENTITIES / fraction))
    T = int(round(REAL_TRIPLES / fraction))
    R = int(min(REAL_RELATIONS, max(MIN_RELATIONS, round(REAL_RELATIONS / math.sqrt(fraction)))))
    if E < 1000:
        raise KgeInputError(
            f"--fraction {fraction:g}: gives {E} entities; expected F <= 91230 (at least 1000 entities)"
        )
    return E, T, R


def _progress(iterable, desc: str, total: int):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, unit="block", smoothing=0.1)


def _zipf_index(u: np.ndarray, n: np.ndarray | int, a: float) -> np.ndarray:
    """Index in [0, n) with p(j) ≈ (j + 1)^-a, by inverse transform of the continuous law on [1, n + 1)."""
    n = np.asarray(n, np.float64)
    top = (n + 1.0) ** (1.0 - a)
    x = ((top - 1.0) * u + 1.0) ** (1.0 / (1.0 - a))
    return np.minimum(np.floor(x).astype(np.int64) - 1, (n - 1).astype(np.int64)).clip(0)


def _keys(h: np.ndarray, r: np.ndarray, t: np.ndarray, R: int, E: int) -> np.ndarray:
    """Triple keys (h * R + r) * E + t as uint64 (int64 would overflow at F = 1); (n,) each -> (n,)."""
    return (h.astype(np.uint64) * np.uint64(R) + r.astype(np.uint64)) * np.uint64(E) + t.astype(np.uint64)


def _relation_shares(R: int) -> np.ndarray:
    """Training shares (R,): DOMINANT_SHARE for relation 0, rank^-a for the others, with the Zipf
    exponent a solved (bisection) so that the cube-root law gives relation 0 QUERY_DOMINANT_SHARE of
    the queries, whatever R is."""

    def shares(a: float) -> np.ndarray:
        rest = (1.0 + np.arange(R - 1)) ** -a
        return np.concatenate([[DOMINANT_SHARE], rest / rest.sum() * (1 - DOMINANT_SHARE)])

    def query_share(a: float) -> float:
        c = shares(a) ** (1 / 3)
        return float(c[0] / c.sum())

    lo, hi = 0.0, 8.0  # query_share grows with a (a steeper tail has smaller cube roots)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if query_share(mid) < QUERY_DOMINANT_SHARE else (lo, mid)
    return shares(lo)


def _largest_remainder(x: np.ndarray, total: int) -> np.ndarray:
    """Non-negative integers summing to ``total`` closest to x (x sums to about total); (n,) -> (n,)."""
    base = np.floor(x).astype(np.int64)
    short = int(total - base.sum())
    if short > 0:
        base[np.argsort(-(x - base), kind="stable")[:short]] += 1
    return base


class _Plan:
    """Everything global: O(E) per-entity state (type, rank, cold flag, latent z) and the relation plan."""

    def __init__(self, fraction: float, seed: int):
        self.E, self.T, self.R = scaled_sizes(fraction)
        E, R = self.E, self.R
        rng = np.random.default_rng([seed, 0])
        type_share = np.concatenate([[CLASS_SHARE], rng.dirichlet(np.full(N_TYPES - 1, 3.0)) * (1 - CLASS_SHARE)])
        self.etype = rng.choice(N_TYPES, size=E, p=type_share).astype(np.int8)  # (E,)
        self.etype[:N_TYPES] = np.arange(N_TYPES)  # every type non-empty
        rng.shuffle(self.etype)
        self.rank = (rng.permutation(E) + 1).astype(np.int64)  # (E,) popularity rank, 1 = most popular
        self.cold = rng.random(E) < COLD_ENTITY_SHARE  # (E,)
        type_mean = rng.normal(size=(N_TYPES, 2 * LATENT_C)).astype(np.float32) * 0.6
        z = rng.standard_normal(size=(E, 2 * LATENT_C), dtype=np.float32) * np.float32(0.8)
        z += type_mean[self.etype]
        self.z = z  # (E, 2C) float32: [Re z, Im z]
        # Entity ids by type in popularity order: all / warm (training tails) / cold (some query tails).
        by_rank = np.empty(E, np.int64)
        by_rank[self.rank - 1] = np.arange(E)
        t_by_rank = self.etype[by_rank]
        c_by_rank = self.cold[by_rank]
        self.members = {k: by_rank[t_by_rank == k] for k in range(N_TYPES)}
        self.members[-1] = by_rank
        self.warm = {k: by_rank[(t_by_rank == k) & ~c_by_rank] for k in range(N_TYPES)}
        self.cold_members = {k: by_rank[(t_by_rank == k) & c_by_rank] for k in range(N_TYPES)}
        for k in range(N_TYPES):
            if len(self.warm[k]) == 0:
                raise KgeInputError(f"--fraction {fraction}: too few entities for every type to have a training tail")

        # Relations: 0 is dominant (any -> class); the others map a random head type to a tail type.
        self.head_type = np.concatenate([[-1], rng.integers(1, N_TYPES, size=R - 1)]).astype(np.int64)
        self.tail_type = np.concatenate([[0], rng.integers(1, N_TYPES, size=R - 1)]).astype(np.int64)
        phase = rng.uniform(-np.pi, np.pi, size=(R, LATENT_C))
        self.w = np.concatenate([np.cos(phase), np.sin(phase)], axis=1).astype(np.float32)  # (R, 2C)
        x = _relation_shares(R)
        x = np.concatenate([x[:1], x[1:][rng.permutation(R - 1)]]) * self.T  # Zipf ranks in random order
        self.n_train = _largest_remainder(x, self.T)  # (R,) exact training triples per relation

        # Per block and relation: the relation's triples split by the block's share of its head weight.
        self.n_blocks = -(-E // BLOCK)
        hw = self.rank.astype(np.float64) ** (-ZIPF * HEAD_FLAT)
        blk = np.arange(E) // BLOCK
        w_bt = np.zeros((self.n_blocks, N_TYPES + 1))  # column N_TYPES: any type
        np.add.at(w_bt, (blk, self.etype.astype(np.int64)), hw)
        w_bt[:, N_TYPES] = w_bt[:, :N_TYPES].sum(1)
        col = np.where(self.head_type < 0, N_TYPES, self.head_type)
        share = w_bt[:, col] / w_bt[:, col].sum(0, keepdims=True)  # (n_blocks, R)
        self.block_counts = np.stack(
            [_largest_remainder(share[:, r] * self.n_train[r], int(self.n_train[r])) for r in range(R)], axis=1
        )  # (n_blocks, R)
        # Feature standardisation constants (known for the whole graph, so blocks agree).
        self.z_mean, self.z_std = z.mean(0), z.std(0) + 1e-6
        lr = np.log(self.rank.astype(np.float64))
        self.lr_mean, self.lr_std = float(lr.mean()), float(lr.std() + 1e-6)
        n_in = 2 * LATENT_C + N_TYPES + 1 + 32
        self.proj = rng.standard_normal(size=(n_in, FEATURE_DIM), dtype=np.float32) / np.float32(np.sqrt(n_in))
        self.rng = rng  # continues into the queries and relation features

    def cold_query_share(self) -> float:
        """Share of queries to give a cold tail so that UNSEEN_QUERY_SHARE of all query tails are never
        a training tail: rare warm tails are missed by training more often as E grows, so subtract the
        expected share u of warm query tails never drawn in training (Poisson approximation over the
        Zipf candidate law): cold share c with c + (1 - c) u = UNSEEN_QUERY_SHARE."""
        tail_triples = np.bincount(self.tail_type, weights=self.n_train, minlength=N_TYPES)
        qp = self.n_train ** (1 / 3)
        q_type = np.bincount(self.tail_type, weights=qp / qp.sum(), minlength=N_TYPES)
        u = 0.0
        for k in range(N_TYPES):
            n = len(self.warm[k])
            edge = np.arange(1, n + 2, dtype=np.float64) ** (1 - ZIPF)
            p = np.diff((edge - 1) / (edge[-1] - 1))  # (n,) probability of each warm member
            u += q_type[k] * float(np.sum(p * np.exp(-tail_triples[k] * p)))
        return max(0.0, (UNSEEN_QUERY_SHARE - u) / (1 - u))

    def pick_tails(self, rng, h: np.ndarray, r: np.ndarray, pools: dict) -> np.ndarray:
        """Tails for (h, r) pairs, (n,) each: Gumbel-max of the planted score over N_CAND candidates.

        Candidates come from ``pools[tail_type[r]]`` (ids in popularity order) by Zipf rank, so the tail
        marginal follows popularity and the score tilts it towards tails whose z fits z_h * w_r.
        """
        n = len(h)
        out = np.full(n, -1, np.int64)
        tt = self.tail_type[r]
        u = rng.random((n, N_CAND))
        g = rng.gumbel(size=(n, N_CAND)).astype(np.float32)
        for k in np.unique(tt):
            sel = np.flatnonzero(tt == k)
            pool = pools[int(k)]
            if len(pool) == 0:
                continue
            cand = pool[_zipf_index(u[sel], len(pool), ZIPF)]  # (m, N_CAND)
            zh, wr = self.z[h[sel]], self.w[r[sel]]
            C = LATENT_C
            q_re = zh[:, :C] * wr[:, :C] - zh[:, C:] * wr[:, C:]
            q_im = zh[:, :C] * wr[:, C:] + zh[:, C:] * wr[:, :C]
            zc = self.z[cand]  # (m, N_CAND, 2C)
            score = (zc[:, :, :C] * q_re[:, None, :]).sum(-1) + (zc[:, :, C:] * q_im[:, None, :]).sum(-1)
            logit = score * np.float32(BETA / np.sqrt(C)) + g[sel]
            out[sel] = cand[np.arange(len(sel)), logit.argmax(1)]
        return out

    def entity_features(self, rng, ids: np.ndarray) -> np.ndarray:
        """Feature rows for entity ids (n,) -> (n, 768) float16, unit norm."""
        n = len(ids)
        z_obs = (
            self.z[ids] + rng.standard_normal(size=(n, 2 * LATENT_C), dtype=np.float32) * np.float32(0.5) - self.z_mean
        ) / self.z_std
        onehot = np.zeros((n, N_TYPES), np.float32)
        onehot[np.arange(n), self.etype[ids]] = 2.0
        lp = ((np.log(self.rank[ids].astype(np.float64)) - self.lr_mean) / self.lr_std).astype(np.float32)[:, None]
        x = np.concatenate([z_obs, onehot, lp, rng.standard_normal(size=(n, 32), dtype=np.float32)], axis=1)
        f = x @ self.proj
        f += rng.standard_normal(size=f.shape, dtype=np.float32) * np.float32(0.6)
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        return f.astype(np.float16)


def _queries(plan: _Plan) -> np.ndarray:
    """40,000 distinct query triples (n, 3): relation by the cube-root law, then head, then tail."""
    rng, R = plan.rng, plan.R
    n_query = N_VALID + N_TEST_DEV + N_TEST_CHALLENGE
    p = plan.n_train ** (1 / 3)
    p = p / p.sum()
    cold_share = plan.cold_query_share()
    out = np.empty((0, 3), np.int64)
    while len(out) < n_query:
        n = int((n_query - len(out)) * 1.3) + 100
        r = np.sort(rng.choice(R, size=n, p=p))
        h = np.empty(n, np.int64)
        u = rng.random(n)
        for k in np.unique(plan.head_type[r]):
            sel = plan.head_type[r] == k
            pool = plan.members[int(k)]
            h[sel] = pool[_zipf_index(u[sel], len(pool), ZIPF * HEAD_FLAT)]
        is_cold = rng.random(n) < cold_share
        t = plan.pick_tails(rng, h, r, plan.warm)
        has_cold = np.array([len(plan.cold_members[int(k)]) > 0 for k in plan.tail_type[r]], bool)
        c = np.flatnonzero(is_cold & has_cold)
        t[c] = plan.pick_tails(rng, h[c], r[c], plan.cold_members)
        new = np.stack([h, r, t], 1)[h != t]
        out = np.concatenate([out, new[rng.permutation(len(new))]])
        _, first = np.unique(_keys(out[:, 0], out[:, 1], out[:, 2], R, plan.E), return_index=True)
        out = out[np.sort(first)]
    return out[:n_query]


def _block(plan: _Plan, seed: int, b: int, want: np.ndarray, query_keys: np.ndarray):
    """Training triples of head block b: ``want`` (R,) per relation, distinct, none a query.

    Returns (triples (n, 3) int64 in random order, shortfall (R,)) and the block's feature rows
    (BLOCK or fewer, 768) float16. ``query_keys``: sorted keys (h * R + r) * E + t of all queries.
    """
    E, R = plan.E, plan.R
    rng = np.random.default_rng([seed, 1, b])
    lo, hi = b * BLOCK, min(E, (b + 1) * BLOCK)
    feats = plan.entity_features(rng, np.arange(lo, hi))
    ids = np.arange(lo, hi)
    ty = plan.etype[lo:hi]
    hw = plan.rank[lo:hi].astype(np.float64) ** (-ZIPF * HEAD_FLAT)
    heads = {k: ids[ty == k] for k in range(N_TYPES)}
    heads[-1] = ids
    cdfs = {k: np.cumsum(hw[v - lo]) for k, v in heads.items()}
    q_lo, q_hi = np.searchsorted(query_keys, np.array([lo, hi], np.uint64) * np.uint64(R * E))
    qk = query_keys[q_lo:q_hi]

    parts_h, parts_r, parts_t = [], [], []
    need = want.copy()
    first = True
    for _ in range(TOPUP_ROUNDS):
        if need.sum() == 0:
            break
        m = np.ceil(need * OVERSAMPLE).astype(np.int64) + (need > 0) * 2 if first else need * 2 + (need > 0) * 4
        first = False
        r = np.repeat(np.arange(R), m)
        h = np.full(len(r), -1, np.int64)
        u = rng.random(len(r))
        for k in np.unique(plan.head_type[r]):
            sel = plan.head_type[r] == k
            cdf = cdfs[int(k)]
            if len(cdf):
                h[sel] = heads[int(k)][np.searchsorted(cdf, u[sel] * cdf[-1], side="right").clip(0, len(cdf) - 1)]
        ok = h >= 0
        r, h = r[ok], h[ok]
        t = plan.pick_tails(rng, h, r, plan.warm)
        parts_h.append(h)
        parts_r.append(r)
        parts_t.append(t)
        h, r, t = (np.concatenate(p) for p in (parts_h, parts_r, parts_t))
        key = _keys(h, r, t, R, E)
        _, idx = np.unique(key, return_index=True)  # first occurrence in draw order
        idx.sort()
        idx = idx[(h[idx] != t[idx]) & ~np.isin(key[idx], qk)]
        h, r, t = h[idx], r[idx], t[idx]
        # Keep the first want[r] of each relation (draws are in random head order).
        order = np.argsort(r, kind="stable")
        counts = np.bincount(r, minlength=R)
        rank_in = np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)
        keep = np.zeros(len(r), bool)
        keep[order[rank_in < want[r[order]]]] = True
        parts_h, parts_r, parts_t = [h[keep]], [r[keep]], [t[keep]]
        need = want - np.minimum(counts, want)
    h, r, t = parts_h[0], parts_r[0], parts_t[0]
    perm = rng.permutation(len(h))
    return np.stack([h[perm], r[perm], t[perm]], 1), need, feats


class _WindowWriter:
    """Fill a preallocated .npy (rows, *row_shape) by appending; every ``chunk_rows`` rows are written
    through a memory-mapped window that is flushed and unmapped, so the file never stays resident."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype, chunk_rows: int):
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        self.offset = arr.offset
        del arr
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.chunk_rows, self.pos, self.buf, self.buffered = max(1, chunk_rows), 0, [], 0

    def append(self, rows: np.ndarray) -> None:
        self.buf.append(rows)
        self.buffered += len(rows)
        while self.buffered >= self.chunk_rows:
            self._flush(self.chunk_rows)

    def _flush(self, n: int) -> None:
        data = np.concatenate(self.buf) if len(self.buf) > 1 else self.buf[0]
        head, rest = data[:n], data[n:]
        if self.pos + len(head) > self.shape[0]:
            raise RuntimeError(f"{self.path}: more than {self.shape[0]} rows written")
        if len(head):
            win = np.memmap(
                self.path,
                dtype=self.dtype,
                mode="r+",
                shape=(len(head),) + self.shape[1:],
                offset=self.offset + self.pos * self.row_bytes,
            )
            win[:] = head
            win.flush()
            del win
        self.pos += len(head)
        self.buf, self.buffered = ([rest] if len(rest) else []), len(rest)

    def close(self) -> None:
        if self.buffered:
            self._flush(self.buffered)
        if self.pos != self.shape[0]:
            raise RuntimeError(f"{self.path}: {self.pos} rows written; expected {self.shape[0]}")


def generate_scaled(
    root: str | os.PathLike, fraction: float = 512, seed: int = 0, chunk: int = DEFAULT_CHUNK, progress: bool = True
) -> Path:
    """Write a 1/fraction WikiKG90Mv2-shaped graph to ``ROOT/wikikg90m-v2`` (OGB layout), answers to
    ``ROOT/mini-answers``. Same seed and fraction give identical bytes whatever ``chunk`` (train rows
    per written window) is. Returns the dataset folder."""
    if not (isinstance(chunk, int) and chunk >= 1):
        raise KgeInputError(f"--chunk {chunk!r}: expected a positive number of training rows")
    t0 = time.perf_counter()
    plan = _Plan(fraction, seed)
    E, T, R = plan.E, plan.T, plan.R
    queries = _queries(plan)
    query_keys = np.sort(_keys(queries[:, 0], queries[:, 1], queries[:, 2], R, E))
    rel_signal = np.concatenate(
        [
            plan.w,
            np.eye(N_TYPES + 1)[plan.head_type + 1],
            np.eye(N_TYPES)[plan.tail_type],
            (np.arange(R) == 0)[:, None],
        ],
        axis=1,
    ).astype(np.float32)
    x = np.concatenate([rel_signal, plan.rng.standard_normal(size=(R, 8), dtype=np.float32)], axis=1)
    rel_feat = x @ (
        plan.rng.standard_normal(size=(x.shape[1], FEATURE_DIM), dtype=np.float32) / np.float32(np.sqrt(x.shape[1]))
    )
    rel_feat += plan.rng.standard_normal(size=rel_feat.shape, dtype=np.float32) * np.float32(0.3)
    rel_feat = (rel_feat / np.linalg.norm(rel_feat, axis=1, keepdims=True)).astype(np.float16)

    ds = dataset_dir(root)
    proc = ds / "processed"
    proc.mkdir(parents=True, exist_ok=True)
    remove_marker(ds)  # an interrupted rewrite must not look complete
    carry = np.zeros(R, np.int64)
    with contextlib.ExitStack() as stack:
        train_tmp = stack.enter_context(atomic_path(proc / SPLIT_FILES["train_hrt"], suffix=".npy"))
        feat_tmp = stack.enter_context(atomic_path(proc / SPLIT_FILES["entity_feat"], suffix=".npy"))
        train_w = _WindowWriter(train_tmp, (T, 3), np.int64, chunk)
        # Feature windows hold as many bytes as a train window.
        feat_w = _WindowWriter(feat_tmp, (E, FEATURE_DIM), np.float16, max(1, chunk * 24 // (2 * FEATURE_DIM)))
        blocks = range(plan.n_blocks)
        for b in _progress(blocks, f"scaled 1/{fraction:g}", plan.n_blocks) if progress else blocks:
            hrt, carry, feats = _block(plan, seed, b, plan.block_counts[b] + carry, query_keys)
            train_w.append(hrt)
            feat_w.append(feats)
        if carry.sum():
            raise RuntimeError(
                f"scaled graph: {int(carry.sum())} training triples could not be placed "
                f"(relations {np.flatnonzero(carry).tolist()[:10]}); the graph is too small"
            )
        train_w.close()
        feat_w.close()
    val, dev, chal = np.split(queries, [N_VALID, N_VALID + N_TEST_DEV])
    write_split_arrays(
        ds,
        relation_feat=rel_feat,
        val_hr=val[:, :2],
        val_t=val[:, 2],
        test_dev_hr=dev[:, :2],
        test_challenge_hr=chal[:, :2],
    )
    write_meta(ds, E, R)
    ans = answers_dir(root)
    save_npy(ans / "test-dev_t.npy", np.ascontiguousarray(dev[:, 2]))
    save_npy(ans / "test-challenge_t.npy", np.ascontiguousarray(chal[:, 2]))
    save_json(
        ans / "scaled.json",
        {
            "generator": "kge.data.scaled",
            "fraction": float(fraction),
            "seed": int(seed),
            "num_entities": E,
            "num_relations": R,
            "training_triples": T,
            "dominant_relation": 0,
            "block": BLOCK,
            "head_type": plan.head_type.tolist(),
            "tail_type": plan.tail_type.tolist(),
            "num_cold_entities": int(plan.cold.sum()),
            "n_train": plan.n_train.tolist(),
        },
    )
    write_marker(ds)
    if progress:
        print(
            f"scaled: wrote {ds} ({E} entities, {R} relations, {T} training triples) "
            f"in {time.perf_counter() - t0:.1f}s",
            file=sys.stderr,
        )
    return ds
