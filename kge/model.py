"""The KGE model: entity encoder e = e_S + M e_F (optionally through an MLP), relations and scoring.

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


class FeatureExtras(nn.Module):
    """The optional parts of one role's feature branch (config ``features``); none by default.

    bias b (d,): M e_F + b. MLP (``mlp.hidden`` H > 0): input x = M e_F (``squeeze``) or e_F,
    prefixed by e_S with ``concat_embeddings``; hidden ReLU(W1 x) or GLU (W1a x) * sigmoid(W1b x);
    output W2 h (d,), plus M e_F with ``residual``. gate g (d,): f * sigmoid(g). weight alpha:
    alpha * f.
    """

    def __init__(self, features: dict, d: int, feature_dim: int, generator: torch.Generator):
        super().__init__()
        mlp = features["mlp"]
        self.bias = nn.Parameter(torch.zeros(d)) if features["bias"] else None
        self.hidden = mlp["hidden"]
        self.squeeze, self.residual, self.concat, self.glu = mlp["squeeze"], mlp["residual"], mlp["concat_embeddings"], mlp["glu"]
        self.replaces_embedding = bool(self.hidden and self.concat)
        if self.hidden:
            width_in = (d if self.squeeze else feature_dim) + (d if self.concat else 0)
            width_hidden = 2 * self.hidden if self.glu else self.hidden

            def linear(n_in, n_out):  # torch's default init, from the model's generator
                bound = 1.0 / math.sqrt(n_in)
                return (nn.Parameter((torch.rand(n_out, n_in, generator=generator) * 2 - 1) * bound),
                        nn.Parameter((torch.rand(n_out, generator=generator) * 2 - 1) * bound))

            self.w1, self.b1 = linear(width_in, width_hidden)
            self.w2, self.b2 = linear(self.hidden, d)
        self.gate = nn.Parameter(torch.zeros(d)) if features["gated"] else None  # sigmoid(0) = 1/2 at start
        self.weight = nn.Parameter(torch.ones(())) if features["weight"] else None

    def forward(self, embedding: torch.Tensor, features: torch.Tensor, projected: torch.Tensor | None) -> torch.Tensor:
        """e_S (n, d), e_F (n, F), M e_F (n, d) or None -> the branch before dropout (n, d)."""
        if projected is not None and self.bias is not None:
            projected = projected + self.bias
        if not self.hidden:
            return projected
        x = projected if self.squeeze else features
        if self.concat:
            x = torch.cat([embedding, x], dim=1)
        h = torch.nn.functional.linear(x, self.w1, self.b1)
        if self.glu:
            a, b = h.chunk(2, dim=1)
            h = a * torch.sigmoid(b)
        else:
            h = torch.relu(h)
        out = torch.nn.functional.linear(h, self.w2, self.b2)
        return out + projected if self.residual else out

    def scale(self, branch: torch.Tensor) -> torch.Tensor:
        """Gate and scalar weight on the (dropped-out) branch (n, d)."""
        if self.gate is not None:
            branch = branch * torch.sigmoid(self.gate)
        if self.weight is not None:
            branch = branch * self.weight
        return branch


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
        self.share_projection = features["share_projection"]
        if self.use_features:
            # M: (d, F) per role, or one shared. Kept as direct parameters (the saved models' keys);
            # the optional parts of the feature branch live in FeatureExtras.
            mlp = features["mlp"]
            self.projects = not (mlp["hidden"] and not mlp["squeeze"])  # an unsqueezed MLP reads e_F itself
            bound = 1.0 / math.sqrt(feature_dim)

            def projection():
                return nn.Parameter((torch.rand(d, feature_dim, generator=generator) * 2 - 1) * bound) if self.projects else None

            def extras():
                return FeatureExtras(features, d, feature_dim, generator)

            self.head_projection = projection()
            self.tail_projection = self.head_projection if self.share_projection else projection()
            self.head_extras = extras()
            self.tail_extras = self.head_extras if self.share_projection else extras()
            self.dropout = nn.Dropout(features["dropout"])

    def dense_param_groups(self) -> list[dict]:
        """Adam parameter groups carrying their learning-rate modifiers."""
        mods = self.config["lr_modifiers"]
        groups = [{"params": [self.relation] + ([self.normal] if self.normal is not None else []), "lr_modifier": mods["relation"]}]
        if self.use_features:
            roles = [("feature_projection", self.head_projection, self.head_extras)]
            if not self.share_projection:
                roles = [
                    ("head_feature_projection", self.head_projection, self.head_extras),
                    ("tail_feature_projection", self.tail_projection, self.tail_extras),
                ]
            for key, projection, extras in roles:
                params = ([projection] if projection is not None else []) + list(extras.parameters())
                modifier = mods.get(key)
                groups.append({"params": params, "lr_modifier": modifier if modifier is not None else mods["feature_projection"]})
        return groups

    def encode(self, embedding: torch.Tensor, features: torch.Tensor | None, role: str) -> tuple[torch.Tensor, torch.Tensor]:
        """embedding (n, d) e_S rows, features (n, F) -> (e (n, d), feature branch f (n, d) or zeros).

        Plain: f = dropout(M e_F) and e = e_S + f. Optional parts (config ``features``): a bias
        in M e_F + b, an MLP, a per-dimension gate, a learned scalar weight; with
        ``mlp.concat_embeddings`` the MLP reads [e_S, x] and its output is e itself.
        """
        if not self.use_features:
            return embedding, torch.zeros_like(embedding)
        head = role == "head"
        projection = self.head_projection if head else self.tail_projection
        extras = self.head_extras if head else self.tail_extras
        projected = features @ projection.T if projection is not None else None
        branch = extras(embedding, features, projected)
        branch = extras.scale(self.dropout(branch))
        if extras.replaces_embedding:
            return branch, branch
        return embedding + branch, branch

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
