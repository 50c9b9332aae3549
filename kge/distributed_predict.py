"""Top-K over all entities with the entity table sharded across W workers (BESS inference).

Queries are grouped by the shard of their head: the owner encodes each query's head; the encoded
heads of a query batch are combined with one all-reduce (every other worker contributes zeros, so
the sum is exact); every worker then scans its own entity rows in blocks with a running top-K,
and the W per-worker candidate lists ((Q, k) each) are all-gathered and merged into the global
top-K. With one worker (``LocalComm``) this is plain single-process top-K.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from kge.comm import LocalComm
from kge.features import FeatureStore
from kge.model import KGEModel
from kge.partition import Partition, locate_rows
from kge.topk import blocked_topk, merge_topk

TAIL_CACHE_LIMIT_BYTES = 2 << 30


class ShardedPredictor:
    """One worker's part of top-K inference.

    model.entity_table: (len(owned) * S, d) this worker's rows (any float dtype; fp32 compute);
    features: the FeatureStore of the same shards; owned: the shard ids, in local row order.
    """

    def __init__(self, model: KGEModel, features: FeatureStore, partition: Partition, owned: list[int],
                 device: torch.device, comm=None, block_rows: int = 16384):
        self.model, self.features, self.partition, self.device = model, features, partition, device
        self.comm = comm if comm is not None else LocalComm()
        self.owned, self.block_rows = list(owned), block_rows
        self.local_entity = torch.from_numpy(np.concatenate([partition.shard_entities[i] for i in self.owned]).astype(np.int64))
        self.num_rows = int(self.local_entity.shape[0])
        self.valid_rows = (self.local_entity >= 0).to(device)
        self._tail_cache = None
        if self.num_rows * model.config["dim"] * 4 <= TAIL_CACHE_LIMIT_BYTES:
            self._tail_cache = torch.cat([self._tail_block(s, min(s + block_rows, self.num_rows)) for s in range(0, self.num_rows, block_rows)])

    @torch.no_grad()
    def _tail_block(self, start: int, stop: int) -> torch.Tensor:
        """Encoded tails of local rows [start, stop) -> (stop - start, d) float32."""
        embedding = self.model.entity_table[start:stop].float()
        features = self.features.block(start, stop).to(self.device) if self.model.use_features else None
        return self.model.encode(embedding, features, "tail")[0]

    @torch.no_grad()
    def encode_heads(self, heads: torch.Tensor) -> torch.Tensor:
        """heads (Q,) global ids -> encoded heads (Q, d), identical on every worker."""
        owner, local = locate_rows(self.partition.row_of(heads), self.partition.shard_size, self.comm.world_size)
        mine = torch.nonzero(owner == self.comm.rank).squeeze(1)
        out = torch.zeros(heads.shape[0], self.model.config["dim"], device=self.device)
        if mine.numel():
            rows = local[mine]
            embedding = self.model.entity_table[rows.to(self.device)].float()
            features = self.features.gather(rows).to(self.device) if self.model.use_features else None
            out[mine.to(self.device)] = self.model.encode(embedding, features, "head")[0]
        self.comm.all_reduce_([out])
        return out

    @torch.no_grad()
    def topk(self, hr: np.ndarray, k: int, query_batch: int = 1000, progress: bool = False, desc: str = "predict") -> tuple[np.ndarray, np.ndarray]:
        """hr (Q, 2) global (head, relation) -> (entity ids (Q, k) int64, scores (Q, k) float32), best first.

        Every worker returns the same merged result.
        """
        hr_t = torch.as_tensor(np.array(hr, dtype=np.int64))
        ids_out = np.empty((len(hr_t), k), dtype=np.int64)
        scores_out = np.empty((len(hr_t), k), dtype=np.float32)
        show = progress and self.comm.rank == 0
        for start in tqdm(range(0, len(hr_t), query_batch), desc=desc, unit="batch", disable=not show, mininterval=2.0):
            batch = hr_t[start : start + query_batch]
            heads = self.encode_heads(batch[:, 0])
            relations = batch[:, 1].to(self.device)
            query = self.model.query(heads, relations)

            def block_scores(lo: int, hi: int) -> torch.Tensor:
                tails = self._tail_cache[lo:hi] if self._tail_cache is not None else self._tail_block(lo, hi)
                return self.model.score_queries(query, relations, tails)

            scores, rows = blocked_topk(block_scores, self.num_rows, k, block_rows=self.block_rows, valid_rows=self.valid_rows)
            entity = self.local_entity[rows.cpu()].to(self.device)
            if self.comm.world_size > 1:
                all_scores = self.comm.all_gather(scores.contiguous())  # (W, Q, k)
                all_ids = self.comm.all_gather_ints(entity.contiguous())  # (W, Q, k)
                scores, entity = merge_topk([(all_scores[w], all_ids[w]) for w in range(self.comm.world_size)], k)
            stop = start + len(batch)
            ids_out[start:stop] = entity.cpu().numpy()
            scores_out[start:stop] = scores.float().cpu().numpy()
        return ids_out, scores_out
