"""The KGE model: entity encoder e = e_S + M e_F, relation parameters and scoring.

The entity table e_S is a plain tensor (a worker's shards' rows, see ``init_entity_rows``) set by
its owner (trainer or loader) and updated by :class:`kge.optim.SparseRowAdam`; everything small and
dense (relations, TransH normals, the feature projections) is an ``nn.Parameter`` updated by
``torch.optim.Adam`` and replicated on every worker.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kge import scoring


def init_entity_rows(config: dict, shards: list[int], shard_size: int) -> torch.Tensor:
    """Initial e_S rows of ``shards`` concatenated -> (len(shards) * S, d) float32.

    Each shard draws from its own generator seeded by (seed, shard), so the initial table does
    not depend on how many workers share the shards (a D-worker run and its single-process
    reference start from the same rows).
    """
    d, scale = config["dim"], config["init_scale"]
    parts = []
    for shard in shards:
        generator = torch.Generator().manual_seed(config["seed"] * 100_003 + shard * 7_919 + 17)
        parts.append(torch.randn(shard_size, d, generator=generator) * scale)
    return torch.cat(parts) if parts else torch.zeros(0, d)


class KGEModel(nn.Module):
    def __init__(self, config: dict, num_relations: int, feature_dim: int, generator: torch.Generator):
        super().__init__()
        self.config = config
        d = config["dim"]
        self.score_fn = config["score_fn"]
        self.p = config["distance"]
        self.gamma = float(config["gamma"])
        scale = config["init_scale"]
        self.entity_table = torch.zeros(0, d)  # set by the trainer / loader: this worker's rows
        rel_dim = scoring.relation_dim(self.score_fn, d)
        if self.score_fn == "rotate":
            # Relations are phases: uniform over the circle.
            rel = (torch.rand(num_relations, rel_dim, generator=generator) * 2 - 1) * math.pi
        else:
            rel = torch.randn(num_relations, rel_dim, generator=generator) * scale
            if self.score_fn in ("distmult", "complex"):
                rel = rel + 1.0 / math.sqrt(d)  # start near a useful product instead of near zero
        self.relation = nn.Parameter(rel)
        self.normal = nn.Parameter(torch.randn(num_relations, d, generator=generator)) if scoring.uses_normal(self.score_fn) else None
        features = config["features"]
        self.use_features = features["use"]
        if self.use_features:
            bound = 1.0 / math.sqrt(feature_dim)
            self.head_projection = nn.Parameter((torch.rand(d, feature_dim, generator=generator) * 2 - 1) * bound)
            self.tail_projection = (
                self.head_projection
                if features["share_projection"]
                else nn.Parameter((torch.rand(d, feature_dim, generator=generator) * 2 - 1) * bound)
            )
            self.dropout = nn.Dropout(features["dropout"])

    def dense_param_groups(self) -> list[dict]:
        """Adam parameter groups carrying their learning-rate modifiers."""
        mods = self.config["lr_modifiers"]
        groups = [{"params": [self.relation] + ([self.normal] if self.normal is not None else []), "lr_modifier": mods["relation"]}]
        if self.use_features:
            projections = [self.head_projection] if self.tail_projection is self.head_projection else [self.head_projection, self.tail_projection]
            groups.append({"params": projections, "lr_modifier": mods["feature_projection"]})
        return groups

    def encode(self, embedding: torch.Tensor, features: torch.Tensor | None, role: str) -> tuple[torch.Tensor, torch.Tensor]:
        """embedding (n, d) e_S rows, features (n, F) -> (e (n, d), M e_F (n, d) or zeros)."""
        if not self.use_features:
            return embedding, torch.zeros_like(embedding)
        projection = self.head_projection if role == "head" else self.tail_projection
        projected = self.dropout(features @ projection.T)
        return embedding + projected, projected

    def scores(self, heads: torch.Tensor, relations: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
        """heads (B, d) encoded, relations (B,) ids, tails (M, d) encoded -> (B, M) scores."""
        normal = self.normal.index_select(0, relations) if self.normal is not None else None
        return scoring.score_matrix(
            self.score_fn, heads, self.relation.index_select(0, relations), tails, p=self.p, gamma=self.gamma, normal=normal
        )

    def query(self, heads: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
        """heads (B, d) encoded, relations (B,) ids -> query vectors (B, d) (scoring.query_vectors)."""
        normal = self.normal.index_select(0, relations) if self.normal is not None else None
        return scoring.query_vectors(self.score_fn, heads, self.relation.index_select(0, relations), normal)

    def score_queries(self, query: torch.Tensor, relations: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
        """query (B, d) from ``query``, relations (B,) ids, tails (M, d) encoded -> (B, M) scores."""
        normal = self.normal.index_select(0, relations) if self.normal is not None else None
        return scoring.score_queries(self.score_fn, query, tails, p=self.p, gamma=self.gamma, normal=normal)

    def parameter_count(self, num_entities: int) -> int:
        """Trainable parameters of one model: entity rows of real entities plus dense parameters."""
        dense = sum(p.numel() for group in self.dense_param_groups() for p in group["params"])
        return num_entities * self.config["dim"] + dense
