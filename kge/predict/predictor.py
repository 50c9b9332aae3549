"""Top-K tail prediction over all entities, block by block, for validation and test queries."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kge.bess.features import FeatureStore
from kge.bess.partition import Partition, locate_rows
from kge.common.errors import KgeInputError
from kge.config import load_model_config
from kge.dist.comm import LocalComm
from kge.dist.device import resolve_device
from kge.nn import fused_distance, scoring
from kge.nn.model import KGEModel
from kge.predict.topk import blocked_topk, merge_topk
from kge.train.checkpoint import load_entity_rows, read_model

# Cache every tail embedding when it fits; otherwise recompute each block per query batch.
TAIL_CACHE_LIMIT_BYTES = 2 << 30


def load_model(
    path: str | Path,
    device: torch.device | str | None = None,
    shards: list[int] | None = None,
    saved: dict | None = None,
) -> tuple[KGEModel, dict, torch.device]:
    """model.pt written by ``kge train`` -> (model in eval mode, its metadata dict, its device).
    The model's typed config is ``model.config`` (``saved["config"]`` is the stored dict).

    ``device`` None places the model where its config's ``device`` setting says. ``shards``: load
    only those shards' entity rows (one worker of a sharded prediction); default all. ``saved``:
    ``read_model(path)`` when the caller has already read it (the file is not read again).
    """
    saved = read_model(path) if saved is None else saved
    # A model.pt saved before later config keys existed builds with what it was trained with.
    config = load_model_config(saved["config"], where=str(path))
    device = resolve_device(config.device) if device is None else torch.device(device)
    model = KGEModel(config, saved["num_relations"], saved["feature_dim"], torch.Generator().manual_seed(0))
    model.load_state_dict(saved["dense"])
    model.entity_table = load_entity_rows(path, saved, shards).float().to(device)
    model.to(device).eval()
    return model, saved, device


class Predictor:
    """Scores (head, relation) queries against every real entity row and keeps the top K.

    ``direction`` "tail" answers (h, r, ?): queries hold (head id, relation id), candidates are
    encoded in the tail role. "head" answers (?, r, t) scored directly: queries hold (tail id,
    relation id), the tail is folded with the relation by ``scoring.head_query_vectors`` and the
    candidates are encoded in the head role.

    Single process: ``Predictor(model, features, partition, device)`` with the whole (D*S, d)
    table in ``model.entity_table`` and the FeatureStore of every shard. One of W workers (BESS
    inference): ``owned`` = the worker's shards (its table rows and FeatureStore are those shards
    concatenated) and ``comm`` its communicator. Queries are grouped by the shard of their head:
    the owner encodes the head, the encoded heads are combined with one all-reduce (the other
    workers add zeros, so the sum is exact); each worker scans its own rows with a running top-K
    and the W candidate lists ((Q, k) each) are all-gathered and merged. Every worker returns the
    same merged result.
    """

    def __init__(
        self,
        model: KGEModel,
        features: FeatureStore,
        partition: Partition,
        device: torch.device,
        block_rows: int = 65536,
        owned: list[int] | None = None,
        comm=None,
        direction: str = "tail",
    ):
        if direction not in ("tail", "head"):
            raise ValueError(f"direction: expected 'tail' or 'head', got {direction!r}")
        self.direction = direction
        self.candidate_role, self.anchor_role = ("tail", "head") if direction == "tail" else ("head", "tail")
        self.model, self.features, self.partition, self.device = model, features, partition, device
        self.comm = comm if comm is not None else LocalComm()
        self.owned = list(range(partition.n_shards)) if owned is None else list(owned)
        self.block_rows = block_rows
        self.row_to_entity = torch.from_numpy(
            np.concatenate([partition.shard_entities[i] for i in self.owned]).astype(np.int64)
        )
        self.valid_rows = (self.row_to_entity >= 0).to(device)
        self.num_rows = int(self.row_to_entity.shape[0])
        self.local_entities = int((self.row_to_entity >= 0).sum())
        # Real entities over all shards: the most candidates a merged top-K can hold.
        self.num_entities = int(sum(int((np.asarray(e) >= 0).sum()) for e in partition.shard_entities))
        self._tail_cache: torch.Tensor | None = None
        self._buffer: torch.Tensor | None = None  # the matmul output of block_scorer, reused
        self._scratch: torch.Tensor | None = None  # the second buffer of the in-place L2 path
        if not model.use_features and model.entity_table.dtype == torch.float32:
            # Without features the encoded candidates are the table's rows: use them, do not copy them.
            self._tail_cache = model.entity_table
        elif self.num_rows * model.entity_table.shape[1] * 4 <= TAIL_CACHE_LIMIT_BYTES:
            # Filled block by block into one allocation (a list then torch.cat held the table twice).
            self._tail_cache = torch.empty(self.num_rows, model.entity_table.shape[1], device=device)
            for s in range(0, self.num_rows, block_rows):
                self._tail_cache[s : s + block_rows] = self._tail_block(s, min(s + block_rows, self.num_rows))
        # Squared tail norms for the L2 distance paths (|q|^2 + |t|^2 - 2 q.t), computed once.
        self._l2 = model.p in model.scorer.tails_sq
        self._tails_sq = (
            (self._tail_cache * self._tail_cache).sum(-1) if self._l2 and self._tail_cache is not None else None
        )

    @torch.no_grad()
    def _tail_block(self, start: int, stop: int) -> torch.Tensor:
        """Encoded candidate embeddings (tail role, or head role for direction "head") of local rows
        [start, stop) -> (stop-start, d) float32."""
        embedding = self.model.entity_table[start:stop].float()
        features = self.features.block(start, stop).to(self.device) if self.model.use_features else None
        return self.model.encode(embedding, features, self.candidate_role)[0]

    @torch.no_grad()
    def encode_queries(self, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hr (Q, 2) global (anchor id, relation id) -> (encoded anchors (Q, d), relations (Q,)), on every worker.

        The anchor is the query's known entity: the head for direction "tail", the tail for "head"."""
        heads = hr[:, 0]
        owner, local = locate_rows(self.partition.row_of(heads), self.partition.shard_size, self.comm.world_size)
        relations = hr[:, 1].to(self.device)
        if self.comm.world_size == 1:
            rows = local
        else:
            rows = local[owner == self.comm.rank]
        embedding = self.model.entity_table[rows.to(self.device)].float()
        features = self.features.gather(rows).to(self.device) if self.model.use_features else None
        encoded = self.model.encode(embedding, features, self.anchor_role)[0]
        if self.comm.world_size == 1:
            return encoded, relations
        out = torch.zeros(len(heads), encoded.shape[1], device=self.device)
        out[torch.nonzero(owner == self.comm.rank).squeeze(1).to(self.device)] = encoded
        self.comm.all_reduce_([out])
        return out, relations

    @torch.no_grad()
    def query_vectors(self, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hr (Q, 2) -> (folded query vectors q (Q, dq), TransH normals (Q, d) or None), see scoring.query_vectors."""
        anchors, relations = self.encode_queries(hr)
        normal = self.model.normal[relations] if self.model.normal is not None else None
        fold = scoring.query_vectors if self.direction == "tail" else scoring.head_query_vectors
        return fold(self.model.score_fn, anchors, self.model.relation[relations], normal), normal

    def block_scorer(self, query: torch.Tensor, normal: torch.Tensor | None):
        """``scores(lo, hi) -> (Q, hi - lo)``: folded queries (Q, dq) against local rows [lo, hi).

        Dot-product scorers' blocks (DistMult, ComplEx, RESCAL) are one matmul into a buffer reused
        across calls (the returned scores are a view of it, valid until the next call), and so are
        TransE/RotatE blocks (the fused L1 kernel or the in-place L2 expansion write into it); other
        distance models go through ``scoring.score_queries`` with the cached squared norms of the L2 paths.
        """
        model = self.model
        dot = model.scorer.dot
        # Plain L2 (TransE/RotatE) with cached norms: in place into two reused buffers (l2_distance_scores_into).
        in_place_l2 = model.scorer.plain_l2 and model.p == 2 and self._tails_sq is not None
        # Plain L1 (TransE/RotatE): the fused kernel writes into the same reused buffer.
        in_place_l1 = model.scorer.plain_l1 is not None and model.p == 1
        if dot or in_place_l2 or in_place_l1:
            rows = min(self.block_rows, self.num_rows)
            if self._buffer is None or self._buffer.shape[0] < len(query) or self._buffer.dtype != query.dtype:
                self._buffer = torch.empty(len(query), rows, device=query.device, dtype=query.dtype)
            if in_place_l2 and (self._scratch is None or self._scratch.shape != self._buffer.shape):
                self._scratch = torch.empty_like(self._buffer)

        def scores(lo: int, hi: int) -> torch.Tensor:
            tails = self._tail_cache[lo:hi] if self._tail_cache is not None else self._tail_block(lo, hi)
            if dot:
                return torch.matmul(query, tails.T, out=self._buffer[: len(query), : hi - lo])
            if in_place_l1:
                return fused_distance.distance_scores_into(
                    model.scorer.plain_l1, query, tails, model.gamma, self._buffer[: len(query), : hi - lo]
                )
            if in_place_l2:
                n = len(query)
                return scoring.l2_distance_scores_into(
                    query,
                    tails,
                    self._tails_sq[lo:hi],
                    model.gamma,
                    self._buffer[:n, : hi - lo],
                    self._scratch[:n, : hi - lo],
                )
            tails_sq = self._tails_sq[lo:hi] if self._tails_sq is not None else None
            return scoring.score_queries(
                model.score_fn, query, tails, p=model.p, gamma=model.gamma, normal=normal, tails_sq=tails_sq
            )

        return scores

    def score_rows(self, query: torch.Tensor, normal: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        """Folded queries (Q, dq) against arbitrary local rows (n,) -> (Q, n) scores, computed like a
        ``block_scorer`` block (a matmul for dot-product scorers, the cached squared norms for L2), so that
        a target's score read here is normally bit-identical to the same entry of its block."""
        model = self.model
        rows = rows.to(self.device)
        if self._tail_cache is not None:
            tails = self._tail_cache.index_select(0, rows)
            tails_sq = self._tails_sq.index_select(0, rows) if self._tails_sq is not None else None
        else:
            embedding = model.entity_table.index_select(0, rows).float()
            features = self.features.gather(rows.cpu()).to(self.device) if model.use_features else None
            tails, tails_sq = model.encode(embedding, features, self.candidate_role)[0], None
        if model.scorer.dot:
            return query @ tails.T
        return scoring.score_queries(
            model.score_fn, query, tails, p=model.p, gamma=model.gamma, normal=normal, tails_sq=tails_sq
        )

    @torch.no_grad()
    def topk(
        self, hr: np.ndarray, k: int, query_batch: int = 1000, progress: bool = False, desc: str = "predict"
    ) -> tuple[np.ndarray, np.ndarray]:
        """hr (Q, 2) -> (entity ids (Q, k) int64, scores (Q, k) float32), best first.

        Each query batch folds its anchor and relation into query vectors once, then scores them block
        by block (``block_scorer``; padding rows are skipped, never scored).
        """
        if not 1 <= k <= self.num_entities:
            raise KgeInputError(
                f"k: asked for top-{k} but the graph has {self.num_entities} entities; expected 1..{self.num_entities}"
            )
        # A worker may own fewer real rows than k: it pads its list with -inf / -1, which the merge sorts last.
        k_local = min(k, self.local_entities)
        hr_t = torch.as_tensor(np.array(hr, dtype=np.int64))
        ids_out = np.empty((len(hr_t), k), dtype=np.int64)
        scores_out = np.empty((len(hr_t), k), dtype=np.float32)
        show = progress and self.comm.rank == 0
        for start in tqdm(range(0, len(hr_t), query_batch), desc=desc, unit="batch", disable=not show, mininterval=2.0):
            query, normal = self.query_vectors(hr_t[start : start + query_batch])
            block_scores = self.block_scorer(query, normal)
            if k_local > 0:
                scores, rows = blocked_topk(
                    block_scores, self.num_rows, k_local, block_rows=self.block_rows, valid_rows=self.valid_rows
                )
                entity = self.row_to_entity[rows.cpu()]
            else:
                scores, entity = (
                    torch.empty(len(query), 0, device=query.device),
                    torch.empty(len(query), 0, dtype=torch.int64),
                )
            if k_local < k:
                scores = torch.cat(
                    [scores.float(), torch.full((len(query), k - k_local), float("-inf"), device=scores.device)], 1
                )
                entity = torch.cat([entity, torch.full((len(query), k - k_local), -1, dtype=torch.int64)], 1)
            if self.comm.world_size > 1:
                all_scores = self.comm.all_gather(scores.contiguous())  # (W, Q, k)
                all_ids = self.comm.all_gather_ints(entity.to(self.device).contiguous())  # (W, Q, k)
                scores, entity = merge_topk([(all_scores[w], all_ids[w]) for w in range(self.comm.world_size)], k)
            stop = start + len(query)
            ids_out[start:stop] = entity.cpu().numpy()
            scores_out[start:stop] = scores.float().cpu().numpy()
        return ids_out, scores_out


def clamp_k(k: int, num_entities: int, log: bool = True) -> int:
    """min(k, num_entities): a small graph cannot fill a top-K list longer than its entity count."""
    if k > num_entities and log:
        print(
            f"predict: top-{k} asked for but the graph has {num_entities} entities; returning top-{num_entities}",
            file=sys.stderr,
        )
    return min(k, num_entities)


def pad_top10(ids: np.ndarray) -> np.ndarray:
    """(Q, k) ids with k < 10 (a graph of fewer than 10 entities) -> (Q, 10), padded with -1 (never a tail,
    ignored by ogb's duplicate check), so ogb's top-10 MRR applies; wider inputs are cut to 10."""
    if ids.shape[1] >= 10:
        return ids[:, :10]
    return np.concatenate([ids, np.full((ids.shape[0], 10 - ids.shape[1]), -1, dtype=ids.dtype)], axis=1)


def predict_splits(
    predictor: Predictor, queries: dict[str, np.ndarray], k: int, query_batch: int
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Top-K for each split -> ({'<split>_ids', '<split>_scores'} arrays, {split: seconds}).

    k is clamped to the number of real entities (one notice on stderr); the arrays are (Q, k') wide."""
    k = clamp_k(k, predictor.num_entities, log=predictor.comm.rank == 0)
    arrays, seconds = {}, {}
    for split, hr in queries.items():
        start = time.perf_counter()
        ids, scores = predictor.topk(hr, k, query_batch=query_batch, progress=True, desc=f"top-{k} {split}")
        seconds[split] = time.perf_counter() - start
        arrays[f"{split}_ids"] = ids
        arrays[f"{split}_scores"] = scores
    return arrays, seconds


def curve_evaluator(val_hr: np.ndarray, val_t: np.ndarray, train_hrt: np.ndarray, queries: int, seed: int = 0):
    """Build ``evaluator(trainer) -> {'valid_mrr', 'train_mrr'}`` for the training curve.

    Uses a fixed sample of ``queries`` validation queries and of training triples (unfiltered
    ranking over all entities, MRR of the top 10 as ogb defines it).
    """
    from kge.predict.metrics import mrr

    rng = np.random.default_rng(seed)
    v = np.sort(rng.choice(len(val_hr), size=min(queries, len(val_hr)), replace=False))
    t = np.sort(rng.choice(len(train_hrt), size=min(queries, len(train_hrt)), replace=False))
    valid_hr, valid_t = np.asarray(val_hr[v]), np.asarray(val_t[v])
    sample = np.asarray(train_hrt[t])

    def evaluate(trainer) -> dict:
        model = trainer.model
        model.eval()
        try:
            # Every worker takes part: each scans its own shards, all get the merged top-K.
            predictor = Predictor(
                model,
                trainer.features,
                trainer.partition,
                trainer.device,
                trainer.config.predict_block,
                owned=trainer.owned,
                comm=trainer.comm,
            )
            batch = trainer.config.predict_batch
            k = clamp_k(10, predictor.num_entities, log=False)
            valid_ids, _ = predictor.topk(valid_hr, k, query_batch=batch)
            train_ids, _ = predictor.topk(sample[:, :2], k, query_batch=batch)
        finally:
            model.train()
        return {"valid_mrr": mrr(pad_top10(valid_ids), valid_t), "train_mrr": mrr(pad_top10(train_ids), sample[:, 2])}

    return evaluate
