"""A deterministic miniature WikiKG90Mv2 with planted, learnable structure, in exactly the OGB layout.

Generative model (all numpy, vectorised, one ``numpy.random.Generator(seed)``):

- Entities have a type (``N_TYPES`` types of uneven size, one small "class" type), a Zipf popularity
  (power-law degrees) and a latent complex vector z (C^8, i.e. 16 reals) scattered around a type mean.
- Each relation has a head type, a tail type, a pattern and a complex operator w_r. A triple of
  relation r from head h picks its tail as the argmax over ~64 popularity-drawn candidates t of the
  right type of ``beta * Re(<z_h, w_r, conj(z_t)>) + Gumbel`` (a ComplEx-style planted score), so a
  model that recovers z (from e_S or from the features) ranks tails better than popularity alone and
  generalises to tails unseen in training.
- Patterns: one dominant relation (any entity -> class, ~40% of training, like P31 "instance of");
  symmetric (real w, both directions written); antisymmetric (imaginary w, at most one direction per
  pair); inverse pairs (r2 = r1 reversed); compositions (r3(h,t) from r1(h,x), r2(x,t)); 1-to-N;
  N-to-1 (tails from a few popular targets); generic.
- Queries: 15000 validation, 15000 test-dev, 10000 test-challenge (the real counts at every scale),
  relations drawn with p(r) ∝ n_r^(1/3) of the training counts; about 20% of validation tails are
  "cold" entities that never occur as a training tail; every query triple is removed from training.
- Features: entity_feat (E, 768) float16 = unit rows of a fixed random linear map of
  [noisy z, type one-hot, log popularity, nuisance] plus Gaussian noise; relation_feat likewise from
  [w_r, head/tail type, pattern].

Hidden test tails go to ``ROOT/mini-answers/{test-dev_t,test-challenge_t}.npy`` and the planted
relation patterns to ``ROOT/mini-answers/planted.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from kge.common.atomic import save_json, save_npy
from kge.data.layout import (
    FEATURE_DIM,
    answers_dir,
    dataset_dir,
    remove_marker,
    write_marker,
    write_meta,
    write_split_arrays,
)

N_VALID, N_TEST_DEV, N_TEST_CHALLENGE = 15000, 15000, 10000
N_TYPES = 10
LATENT_C = 8  # complex latent dimension (16 reals)
TOP_K = 16  # tails are sampled among the 16 best logits of (h, r)
BETA = 3.0  # strength of the planted score against Gumbel(1) noise
COLD_ENTITY_SHARE = 0.12  # entities that never appear as a training tail
COLD_QUERY_SHARE = 0.20  # share of queries whose tail is cold (plus a few naturally unseen ones)
DOMINANT_SHARE = 0.42
CHUNK = 4096

# Pattern counts for the 60 relations (relation 0 is the dominant one).
PATTERNS = (
    ["dominant"]
    + ["symmetric"] * 8
    + ["antisymmetric"] * 8
    + ["inverse_a", "inverse_b"] * 6
    + ["comp_1", "comp_2", "comp_3"] * 4
    + ["one_to_n"] * 5
    + ["n_to_one"] * 5
    + ["generic"] * 9
)
PATTERN_NAMES = [
    "dominant",
    "symmetric",
    "antisymmetric",
    "inverse_a",
    "inverse_b",
    "comp_1",
    "comp_2",
    "comp_3",
    "one_to_n",
    "n_to_one",
    "generic",
]


def _progress(iterable, desc: str, total: int | None = None):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False)


class _Sampler:
    """The entities of one type with normalized weights (cumulative, for vectorised sampling)."""

    def __init__(self, ids: np.ndarray, weight: np.ndarray):
        self.ids = ids
        cdf = np.cumsum(weight[ids], dtype=np.float64)
        self.cdf = cdf / cdf[-1]

    def cycle(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n heads spread as evenly as possible: a weighted random order of the type, repeated.

        Few tails per (h, r) keep the conditional p(t | h, r) sharp, i.e. learnable; the weight only
        decides which heads get the one extra tail.
        """
        order = self.ids[np.argsort(-(np.log(self.cdf_weights()) + rng.gumbel(size=len(self.ids))), kind="stable")]
        return np.resize(order, n)

    def cdf_weights(self) -> np.ndarray:
        return np.diff(self.cdf, prepend=0.0) + 1e-300


def _pick_tails(rng, z, w, heads, ids, logpop, top_k: int = 0) -> np.ndarray:
    """Tails for heads (n,) of one relation with operator w (C,) complex, among candidate ids (m,).

    Planted model: logit(t) = log pop_t + beta * Re<z_h, w, conj z_t> / sqrt(C); each tail is a
    Gumbel-max sample from the TOP_K logits of its head. Ranking by the logit is therefore the
    Bayes-optimal answer, which a bilinear KGE model can approximate. Logits are computed once per
    distinct head with a real matmul (Re<q, conj z> = q.re z.re + q.im z.im).
    """
    uh, inv = np.unique(heads, return_inverse=True)
    zt = np.concatenate([z[ids].real, z[ids].imag], axis=1).T.astype(np.float32)  # (2C, m)
    lp = logpop[ids].astype(np.float32)
    m = len(ids)
    k = min(top_k or TOP_K, m)
    scale = np.float32(BETA / np.sqrt(LATENT_C))
    top = np.empty((len(uh), k), np.int64)
    top_logit = np.empty((len(uh), k), np.float32)
    for s in range(0, len(uh), CHUNK):
        q = z[uh[s : s + CHUNK]] * w
        logits = np.concatenate([q.real, q.imag], axis=1).astype(np.float32) @ zt * scale + lp  # (n, m)
        t = np.argpartition(logits, m - k, axis=1)[:, m - k :] if k < m else np.broadcast_to(np.arange(m), (len(q), m))
        top[s : s + CHUNK] = t
        top_logit[s : s + CHUNK] = np.take_along_axis(logits, t, axis=1)
    choice = (top_logit[inv] + rng.gumbel(size=(len(heads), k))).argmax(axis=1)
    return ids[top[inv, choice]]


def _compose_keys(h1, x1, h2, t2, num_entities) -> np.ndarray:
    """Keys h * E + t of every path h -r1-> x -r2-> t (a sort-merge join, no Python loop)."""
    order = np.argsort(h2, kind="stable")
    h2s, t2s = h2[order], t2[order]
    lo, hi = np.searchsorted(h2s, x1, "left"), np.searchsorted(h2s, x1, "right")
    cnt = hi - lo
    rows = np.repeat(np.arange(len(x1)), cnt)
    pos = np.repeat(lo - np.cumsum(cnt) + cnt, cnt) + np.arange(cnt.sum())
    return np.unique(h1[rows] * num_entities + t2s[pos])


def _dedupe(h, t, num_entities):
    """Unique (h, t) pairs, first occurrence kept in the original (random) order; (n,) -> (m,)."""
    _, idx = np.unique(h * num_entities + t, return_index=True)
    idx.sort()
    return h[idx], t[idx]


def _relation_plan(rng, num_entities: int, scale: float):
    """Types, popularity, latent vectors, relation schemas and target training counts."""
    E = num_entities
    R = len(PATTERNS)
    # Uneven type sizes; type 0 is the small "class" type (targets of the dominant relation).
    type_share = rng.dirichlet(np.full(N_TYPES - 1, 3.0)) * 0.97
    type_share = np.concatenate([[0.03], type_share])
    etype = rng.choice(N_TYPES, size=E, p=type_share)
    etype[:N_TYPES] = np.arange(N_TYPES)  # every type non-empty at tiny scales
    rng.shuffle(etype)
    # Zipf popularity with random ranks -> power-law degrees; ids carry no information.
    pop = (1.0 + rng.permutation(E)) ** -1.05
    type_mean = (rng.normal(size=(N_TYPES, LATENT_C)) + 1j * rng.normal(size=(N_TYPES, LATENT_C))) * 0.6
    z = type_mean[etype] + (rng.normal(size=(E, LATENT_C)) + 1j * rng.normal(size=(E, LATENT_C))) * 0.8
    z = z.astype(np.complex64)

    pattern = np.array(PATTERNS)
    head_type = np.zeros(R, np.int64)
    tail_type = np.zeros(R, np.int64)
    w = np.exp(1j * rng.uniform(-np.pi, np.pi, size=(R, LATENT_C))).astype(np.complex64)
    ordinary = np.arange(1, N_TYPES)
    for r, pat in enumerate(PATTERNS):
        a, b = rng.choice(ordinary, size=2, replace=False)
        if pat == "dominant":
            head_type[r], tail_type[r] = -1, 0  # -1: any type
        elif pat == "symmetric":
            head_type[r] = tail_type[r] = a
            w[r] = rng.choice([-1.0, 1.0], size=LATENT_C) * rng.uniform(0.5, 1.5, size=LATENT_C)
        elif pat == "antisymmetric":
            head_type[r] = tail_type[r] = a
            w[r] = 1j * rng.choice([-1.0, 1.0], size=LATENT_C) * rng.uniform(0.5, 1.5, size=LATENT_C)
        elif pat == "inverse_b":
            head_type[r], tail_type[r] = tail_type[r - 1], head_type[r - 1]
            w[r] = np.conj(w[r - 1])
        elif pat == "comp_2":
            head_type[r], tail_type[r] = tail_type[r - 1], b if b != tail_type[r - 1] else a
        elif pat == "comp_3":
            head_type[r], tail_type[r] = head_type[r - 2], tail_type[r - 1]
            w[r] = w[r - 2] * w[r - 1]
        else:
            head_type[r], tail_type[r] = a, b

    # Target training counts: dominant ~40%, the rest Zipf-like over a random order, with a floor so
    # that every relation keeps training triples after its cube-root share of queries is removed.
    total = int(round(600_000 * scale))
    rest = (1.0 + rng.permutation(R - 1)) ** -0.7
    rest = rest / rest.sum() * total * (1 - DOMINANT_SHARE)
    floor = max(300, int(2500 * scale))
    rest = np.maximum(rest, floor)
    n_train = np.concatenate([[total * DOMINANT_SHARE], rest]).astype(np.int64)
    # Derived relations copy their parent's size (their pools come from the parent's triples).
    for r, pat in enumerate(PATTERNS):
        if pat == "inverse_b":
            n_train[r] = int(n_train[r - 1] * 0.9)
    return etype, pop, z, pattern, head_type, tail_type, w, n_train


def _generate_pool(rng, r, pat, n, pop, z, w, head_type, tail_type, samplers, any_sampler, pools, train_pairs):
    """Draw about n raw (h, t) pairs of relation r (duplicates possible; see ``_clean``)."""
    if pat == "inverse_b":
        h, t = pools[r - 1]
        keep = rng.random(len(h)) < 0.95
        return t[keep], h[keep]
    if pat == "comp_3":
        # Paths through the parents' *training* triples, so the composition is visible in training.
        (h1, x1), (h2, t2) = train_pairs[r - 2], train_pairs[r - 1]
        order = np.argsort(h2, kind="stable")
        h2s, t2s = h2[order], t2[order]
        pick = rng.integers(0, len(h1), size=n)
        x = x1[pick]
        lo, hi = np.searchsorted(h2s, x, "left"), np.searchsorted(h2s, x, "right")
        ok = hi > lo  # r1 edges whose middle entity has an r2 edge
        j = lo[ok] + (rng.random(ok.sum()) * (hi[ok] - lo[ok])).astype(np.int64)
        return h1[pick][ok], t2s[j]
    tail_ids = samplers[tail_type[r]][0].ids
    logpop = np.log(pop)
    head_s = any_sampler if head_type[r] < 0 else samplers[head_type[r]][1]
    if pat == "symmetric":
        h = head_s.cycle(rng, n // 2 + 1)
        t = _pick_tails(rng, z, w[r], h, tail_ids, logpop)
        return np.concatenate([h, t]), np.concatenate([t, h])
    if pat == "one_to_n":
        # Fewer hub heads, each with many tails (fan-out ~ Pareto).
        # The hubs are the most popular ~10% of the head type, the same set on every top-up call.
        ids = head_s.ids
        n_heads = max(2, len(ids) // 10)
        hubs = ids[np.argsort(-pop[ids], kind="stable")[:n_heads]]
        fan = rng.pareto(2.0, size=n_heads) + 1.0
        h = hubs[np.searchsorted(np.cumsum(fan) / fan.sum(), rng.random(n), side="right").clip(0, n_heads - 1)]
        # A hub spreads over many tails: a wide top-k and no popularity term.
        return h, _pick_tails(rng, z, w[r], h, tail_ids, np.zeros_like(logpop), top_k=16 * TOP_K)
    if pat == "n_to_one":
        # Tails from a handful of popular targets of the tail type (e.g. "country").
        ids = tail_ids
        k = int(min(len(ids), max(8, len(ids) // 40)))
        targets = ids[np.argsort(-pop[ids], kind="stable")[:k]]
        h = head_s.cycle(rng, n)
        return h, _pick_tails(rng, z, w[r], h, targets, logpop)
    # dominant, antisymmetric, inverse_a, comp_1, comp_2, generic: one tail per drawn head.
    h = head_s.cycle(rng, n)
    return h, _pick_tails(rng, z, w[r], h, tail_ids, logpop)


def _clean(pat, h, t, num_entities):
    """Drop self loops and duplicates; antisymmetric relations keep one direction per pair."""
    keep = h != t
    h, t = _dedupe(h[keep], t[keep], num_entities)
    if pat == "antisymmetric":
        # The first of the two directions in the random draw order wins.
        _, idx = np.unique(np.minimum(h, t) * num_entities + np.maximum(h, t), return_index=True)
        idx.sort()
        h, t = h[idx], t[idx]
    return h, t


def _features(rng, signal: np.ndarray, dim: int, noise: float, nuisance: int) -> np.ndarray:
    """Unit-norm rows of (signal, nuisance) @ fixed random map + noise; (n, k) -> (n, dim) float16."""
    signal = (signal - signal.mean(0)) / (signal.std(0) + 1e-6)
    n = len(signal)
    x = np.concatenate([signal, rng.normal(size=(n, nuisance))], axis=1).astype(np.float32)
    proj = rng.normal(size=(x.shape[1], dim)).astype(np.float32) / np.sqrt(x.shape[1])
    out = np.empty((n, dim), np.float16)
    for s in range(0, n, CHUNK):
        f = x[s : s + CHUNK] @ proj + noise * rng.standard_normal(size=(len(x[s : s + CHUNK]), dim), dtype=np.float32)
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        out[s : s + CHUNK] = f
    return out


def _split(r, pool, pattern, q_r, n_train, cold, E, train_parts, query_parts) -> None:
    """Split relation r's pool: queries (a cold-tail share, rest warm) | training (warm tails) | dropped.

    Appends (n, 3) arrays to train_parts / query_parts.
    """
    h, t = pool
    is_cold = cold[t]
    warm_idx, cold_idx = np.flatnonzero(~is_cold), np.flatnonzero(is_cold)
    q_cold = min(int(round(q_r[r] * COLD_QUERY_SHARE)), len(cold_idx))
    q_warm = min(q_r[r] - q_cold, max(0, len(warm_idx) - 50))
    q_idx = np.concatenate([cold_idx[:q_cold], warm_idx[:q_warm]])
    rest = warm_idx[q_warm:]
    if pattern[r] == "inverse_b":
        # Prefer the reverses of r1's training triples, so the inverse pattern is visible in training.
        prev = train_parts[r - 1]
        prio = np.isin(h[rest] * E + t[rest], prev[:, 2] * E + prev[:, 0])
        rest = np.concatenate([rest[prio], rest[~prio]])
    if pattern[r] == "comp_3":
        # Prefer triples whose path r1(h, x), r2(x, t) survives in training.
        p1, p2 = train_parts[r - 2], train_parts[r - 1]
        prio = np.isin(h[rest] * E + t[rest], _compose_keys(p1[:, 0], p1[:, 2], p2[:, 0], p2[:, 2], E))
        rest = np.concatenate([rest[prio], rest[~prio]])
    tr_idx = rest[: n_train[r]]
    if pattern[r] == "symmetric":
        # Keep both directions in training: add the reverse of every kept triple and query
        # when it is in the pool, not itself a query, and its tail is warm.
        key = h * E + t
        rev_key = np.concatenate([t[tr_idx] * E + h[tr_idx], t[q_idx] * E + h[q_idx]])
        extra = np.flatnonzero(np.isin(key, rev_key) & ~is_cold & ~np.isin(key, key[q_idx]))
        tr_idx = np.union1d(tr_idx, extra)
    query_parts.append(np.stack([h[q_idx], np.full(len(q_idx), r), t[q_idx]], 1))
    train_parts.append(np.stack([h[tr_idx], np.full(len(tr_idx), r), t[tr_idx]], 1))


def generate_mini(root: str | os.PathLike, seed: int = 0, scale: float = 1.0, progress: bool = True) -> Path:
    """Write the miniature to ``ROOT/wikikg90m-v2`` (OGB layout) and answers to ``ROOT/mini-answers``.

    scale=1: ~30,000 entities, 60 relations, ~600,000 training triples; ``scale`` multiplies entities
    and triples; the query counts stay 15000 / 15000 / 10000. Same seed and scale -> identical bytes.
    Returns the dataset folder.
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    E = max(int(round(30_000 * scale)), 500)
    R = len(PATTERNS)
    etype, pop, z, pattern, head_type, tail_type, w, n_train = _relation_plan(rng, E, scale)

    # Cold entities: never a training tail (the "new items" of the real data), random w.r.t. type.
    cold = np.zeros(E, bool)
    cold[rng.choice(E, size=int(E * COLD_ENTITY_SHARE), replace=False)] = True

    # Query relations follow the cube root of the training counts (as in the real data).
    n_query = N_VALID + N_TEST_DEV + N_TEST_CHALLENGE
    p_query = n_train ** (1 / 3)
    q_r = rng.multinomial(n_query, p_query / p_query.sum())

    # (tail sampler, head sampler) per type: heads use a flatter popularity, as every item has a few
    # outgoing facts while incoming links concentrate on popular items.
    samplers = {
        k: (_Sampler(np.flatnonzero(etype == k), pop), _Sampler(np.flatnonzero(etype == k), pop**0.2))
        for k in range(N_TYPES)
    }
    # Dominant heads: every entity, flattened popularity (most items have an "instance of").
    any_sampler = _Sampler(np.arange(E), pop**0.35)
    pools: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    train_pairs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    train_parts, query_parts = [], []
    for r in _progress(range(R), "mini: relations") if progress else range(R):
        # Oversample: cold tails and duplicates are dropped from training.
        need = int((n_train[r] + q_r[r]) / (1 - COLD_ENTITY_SHARE) * 1.25) + 16
        args = (pop, z, w, head_type, tail_type, samplers, any_sampler, pools, train_pairs)
        h, t = _clean(pattern[r], *_generate_pool(rng, r, pattern[r], need, *args), E)
        for _ in range(4):
            # Popular heads/tails repeat pairs: top up until the pool is large enough (or saturated).
            if len(h) >= need or pattern[r] in ("inverse_b",):
                break
            more = int((need - len(h)) * min(8.0, 1.5 * need / max(len(h), 1))) + 64
            h2, t2 = _generate_pool(rng, r, pattern[r], more, *args)
            h, t = _clean(pattern[r], np.concatenate([h, h2]), np.concatenate([t, t2]), E)
        perm = rng.permutation(len(h))
        pools[r] = (h[perm], t[perm])
        _split(r, pools[r], pattern, q_r, n_train, cold, E, train_parts, query_parts)
        train_pairs[r] = (train_parts[r][:, 0], train_parts[r][:, 2])

    queries = np.concatenate(query_parts).astype(np.int64)
    if len(queries) < n_query:
        # Only at very small scales: reuse query triples (distinct queries preferred, never training).
        extra = queries[rng.integers(0, len(queries), size=n_query - len(queries))]
        queries = np.concatenate([queries, extra])
    queries = queries[rng.permutation(len(queries))[:n_query]]
    train = np.concatenate(train_parts).astype(np.int64)
    train = train[rng.permutation(len(train))]

    val, dev, chal = np.split(queries, [N_VALID, N_VALID + N_TEST_DEV])

    # Features carry noisy latent structure: z observed with noise, type, log popularity.
    z_obs = z + (rng.normal(size=z.shape) + 1j * rng.normal(size=z.shape)) * 0.5
    ent_signal = np.concatenate([z_obs.real, z_obs.imag, np.eye(N_TYPES)[etype] * 2.0, np.log(pop)[:, None]], axis=1)
    entity_feat = _features(rng, ent_signal, FEATURE_DIM, noise=0.6, nuisance=32)
    rel_signal = np.concatenate(
        [
            w.real,
            w.imag,
            np.eye(N_TYPES + 1)[head_type + 1],
            np.eye(N_TYPES)[tail_type],
            (pattern[:, None] == np.array(PATTERN_NAMES)[None, :]).astype(float),
        ],
        axis=1,
    )
    relation_feat = _features(rng, rel_signal, FEATURE_DIM, noise=0.3, nuisance=8)

    ds = dataset_dir(root)
    ds.mkdir(parents=True, exist_ok=True)
    remove_marker(ds)  # an interrupted rewrite must not look complete
    write_split_arrays(
        ds,
        train_hrt=train,
        entity_feat=entity_feat,
        relation_feat=relation_feat,
        val_hr=val[:, :2],
        val_t=val[:, 2],
        test_dev_hr=dev[:, :2],
        test_challenge_hr=chal[:, :2],
    )
    write_meta(ds, E, R)
    ans = answers_dir(root)
    save_npy(ans / "test-dev_t.npy", np.ascontiguousarray(dev[:, 2]))
    save_npy(ans / "test-challenge_t.npy", np.ascontiguousarray(chal[:, 2]))
    planted = {
        "seed": int(seed),
        "scale": float(scale),
        "num_entities": E,
        "num_relations": R,
        "dominant_relation": 0,
        "patterns": {str(r): str(p) for r, p in enumerate(pattern)},
        "symmetric": [int(r) for r in np.flatnonzero(pattern == "symmetric")],
        "antisymmetric": [int(r) for r in np.flatnonzero(pattern == "antisymmetric")],
        "inverse_pairs": [[int(r), int(r) + 1] for r in np.flatnonzero(pattern == "inverse_a")],
        "compositions": [[int(r) - 2, int(r) - 1, int(r)] for r in np.flatnonzero(pattern == "comp_3")],
        "one_to_n": [int(r) for r in np.flatnonzero(pattern == "one_to_n")],
        "n_to_one": [int(r) for r in np.flatnonzero(pattern == "n_to_one")],
        "head_type": head_type.tolist(),
        "tail_type": tail_type.tolist(),
        "num_cold_entities": int(cold.sum()),
    }
    save_json(ans / "planted.json", planted)
    write_marker(ds)
    if progress:
        print(
            f"mini: wrote {ds} ({E} entities, {R} relations, {len(train)} training triples) "
            f"in {time.perf_counter() - t0:.1f}s",
            file=sys.stderr,
        )
    return ds


def _powerlaw_alpha(x: np.ndarray, xmin: int) -> float:
    """Discrete power-law exponent MLE (Clauset et al. 2009 approximation) over x >= xmin."""
    x = x[x >= xmin].astype(np.float64)
    return float(1.0 + len(x) / np.sum(np.log(x / (xmin - 0.5))))


def mini_statistics(root: str | os.PathLike) -> dict:
    """Statistics of a dataset in the OGB layout (the miniature or any other) as a flat dict."""
    from kge.data.layout import open_dataset

    kg = open_dataset(root, check=False, progress=False)
    E, R = kg.num_entities, kg.num_relations
    train = np.asarray(kg.train_hrt)
    n_r = np.bincount(train[:, 1], minlength=R)
    deg = np.bincount(train[:, 0], minlength=E) + np.bincount(train[:, 2], minlength=E)
    val_r = np.bincount(np.asarray(kg.val_hr)[:, 1], minlength=R)
    seen_tail = np.zeros(E, bool)
    seen_tail[train[:, 2]] = True
    has = n_r > 0
    stats = {
        "entities": E,
        "relations": R,
        "training_triples": int(len(train)),
        "validation_queries": int(len(kg.val_hr)),
        "test_dev_queries": int(len(kg.test_dev_hr)),
        "test_challenge_queries": int(len(kg.test_challenge_hr)),
        "dominant_relation": int(n_r.argmax()),
        "dominant_share_train": float(n_r.max() / len(train)),
        "dominant_share_valid": float(val_r[n_r.argmax()] / val_r.sum()),
        "degree_powerlaw_alpha_xmin10": _powerlaw_alpha(deg, 10),
        "degree_max": int(deg.max()),
        "degree_median": float(np.median(deg)),
        "entities_without_training_triples": int((deg == 0).sum()),
        "valid_tails_unseen_as_train_tail": float(1.0 - seen_tail[np.asarray(kg.val_t)].mean()),
        "corr_valid_rel_freq_vs_cuberoot_train": float(np.corrcoef(val_r[has], n_r[has] ** (1 / 3))[0, 1]),
        "corr_valid_rel_freq_vs_train": float(np.corrcoef(val_r[has], n_r[has])[0, 1]),
        "entity_feat_bytes": int(kg.entity_feat.nbytes),
        "relation_feat_bytes": int(kg.relation_feat.nbytes),
        "train_hrt_bytes": int(train.nbytes),
    }
    return stats


if __name__ == "__main__":  # python -m kge.data.mini ROOT [seed] [scale]
    root = sys.argv[1]
    ds = generate_mini(
        root, int(sys.argv[2]) if len(sys.argv) > 2 else 0, float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    )
    print(json.dumps(mini_statistics(root), indent=2))
