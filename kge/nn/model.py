"""The KGE model: entity encoder e = e_S + M e_F (optionally through an MLP), relations and scoring.

The entity table e_S is a plain tensor (a worker's shards' rows, see ``init_entity_rows``) set by
its owner (trainer or loader) and updated by :class:`kge.table.sparse_adam.SparseRowAdam`; everything small and
dense (relations, TransH normals, the feature projections) is an ``nn.Parameter`` updated by
``torch.optim.Adam`` and replicated on every worker.

Encoder variants (config ``features``): the projection M is dense (d, F), grouped (GroupBERT's
block-diagonal linear layer: G blocks (d/G, F/G), stored (G, d/G, F/G)) or a fixed random
Gaussian (d, F) buffer; the MLP's hidden layer may be batch-normalized or layer-normalized with
Proxy Normalization after its activation (``features.mlp.norm``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kge.common.errors import KgeInputError
from kge.config import FeaturesConfig, ModelConfig
from kge.nn import scoring
from kge.nn.scorers import get_scorer

PROXY_POINTS = 256  # quasi-Gaussian points per channel of the Proxy Normalization proxy
NORM_EPS = 1e-5  # of BatchNorm, LayerNorm and Proxy Normalization
BATCH_NORM_MOMENTUM = 0.1  # running <- (1 - momentum) running + momentum batch (torch's BatchNorm1d)


def init_entity_rows(config: ModelConfig, shards: list[int], shard_size: int) -> torch.Tensor:
    """Initial e_S rows of ``shards`` concatenated -> (len(shards) * S, d) float32.

    Each shard draws from its own generator seeded by (seed, shard), so the initial table does
    not depend on how many workers share the shards (a D-worker run and its single-process
    reference start from the same rows).
    """
    d, scale = config.dim, config.init_scale
    # Drawn in place into the one output: no per-shard temporaries (freed heap blocks of that size
    # stay in the process, 2.4x the table's bytes measured at 178,000 rows).
    rows = torch.empty(len(shards) * shard_size, d)
    for k, shard in enumerate(shards):
        generator = torch.Generator().manual_seed(config.seed * 100_003 + shard * 7_919 + 17)
        part = rows[k * shard_size : (k + 1) * shard_size]
        torch.randn(shard_size, d, generator=generator, out=part)
        part.mul_(scale)
    return rows


def gaussian_proxy_points(n: int = PROXY_POINTS) -> torch.Tensor:
    """(n,) deterministic quasi-Gaussian sample: the midpoint quantiles Phi^-1((i + 1/2) / n), shifted and
    rescaled to mean 0 and variance 1 exactly (so affine functions of the proxy get their moments exactly)."""
    z = torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n)
    z = (z - z.mean()) / z.std(unbiased=False)
    return z.float()


def proxy_statistics(
    weight: torch.Tensor, bias: torch.Tensor, glu: bool, points: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the activation of the Gaussian proxy Y_c ~ N(bias_c, weight_c^2), per channel.

    weight, bias (C,): the LayerNorm's affine parameters; points (P,) from ``gaussian_proxy_points``.
    ReLU: C channels -> mean, var (C,), the moments of ReLU(Y_c) over the P points. GLU: the first
    C/2 channels a and the last C/2 gates b are independent proxies, so the moments of a * sigmoid(b)
    factorise: E = E[a] E[s], Var = E[a^2] E[s^2] - E^2 -> (C/2,) each. Differentiable in weight and bias.
    """
    proxy = bias[:, None] + weight[:, None] * points[None, :]  # (C, P)
    if not glu:
        activated = torch.relu(proxy)
        return activated.mean(1), activated.var(1, unbiased=False)
    a, b = proxy.chunk(2, dim=0)
    s = torch.sigmoid(b)
    mean = a.mean(1) * s.mean(1)
    return mean, ((a * a).mean(1) * (s * s).mean(1) - mean * mean).clamp_min(0.0)


class FeatureExtras(nn.Module):
    """The optional parts of one role's feature branch (config ``features``); none by default.

    bias b (d,): M e_F + b. MLP (``mlp.hidden`` H > 0): input x = M e_F (``squeeze``) or e_F,
    prefixed by e_S with ``concat_embeddings``; hidden ReLU(W1 x) or GLU (W1a x) * sigmoid(W1b x);
    output W2 h (d,), plus M e_F with ``residual``. gate g (d,): f * sigmoid(g). weight alpha:
    alpha * f.

    ``mlp.norm`` on the hidden layer, with C = H (2H for GLU) pre-activation channels u = W1 x + b1
    (n, C). batch (no b1, which BatchNorm cancels): BN(u) = weight * (u - mu) / sqrt(var + eps) + bias
    with mu, var (C,) over the n rows of this call in training (the running averages, updated with
    momentum 0.1, in eval mode), then the activation. layer_proxy: y = LayerNorm(u) with affine
    weight, bias (C,) (statistics over the C channels of each row), h = act(y) (n, H), then Proxy
    Normalization (h - E[act(Y)]) / sqrt(Var[act(Y)] + eps) with the proxy Y ~ N(bias, weight^2)
    per channel (``proxy_statistics``): every row is normalized on its own, in training and eval alike.
    """

    def __init__(self, features: FeaturesConfig, d: int, feature_dim: int, generator: torch.Generator):
        super().__init__()
        mlp = features.mlp
        self.bias = nn.Parameter(torch.zeros(d)) if features.bias else None
        self.hidden = mlp.hidden
        self.squeeze, self.residual, self.concat, self.glu = (
            mlp.squeeze,
            mlp.residual,
            mlp.concat_embeddings,
            mlp.glu,
        )
        self.norm = mlp.norm if self.hidden else "none"
        self.replaces_embedding = bool(self.hidden and self.concat)
        if self.hidden:
            width_in = (d if self.squeeze else feature_dim) + (d if self.concat else 0)
            width_hidden = 2 * self.hidden if self.glu else self.hidden

            def linear(n_in, n_out):  # torch's default init, from the model's generator
                bound = 1.0 / math.sqrt(n_in)
                return (
                    nn.Parameter((torch.rand(n_out, n_in, generator=generator) * 2 - 1) * bound),
                    nn.Parameter((torch.rand(n_out, generator=generator) * 2 - 1) * bound),
                )

            self.w1, self.b1 = linear(width_in, width_hidden)
            self.w2, self.b2 = linear(self.hidden, d)
            if self.norm == "batch":  # BatchNorm removes any per-channel shift: b1's gradient would be rounding noise
                self.b1 = None
            if self.norm != "none":  # affine parameters of the normalization (C,), identity at start
                self.norm_weight = nn.Parameter(torch.ones(width_hidden))
                self.norm_bias = nn.Parameter(torch.zeros(width_hidden))
            if self.norm == "batch":  # saved with the model: prediction normalizes with them
                self.register_buffer("running_mean", torch.zeros(width_hidden))
                self.register_buffer("running_var", torch.ones(width_hidden))
            elif self.norm == "layer_proxy":  # a constant, rebuilt on load: not in state_dict
                self.register_buffer("proxy_points", gaussian_proxy_points(), persistent=False)
        self.gate = nn.Parameter(torch.zeros(d)) if features.gated else None  # sigmoid(0) = 1/2 at start
        self.weight = nn.Parameter(torch.ones(())) if features.weight else None

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
        if self.norm == "batch":
            h = torch.nn.functional.batch_norm(
                h,
                self.running_mean,
                self.running_var,
                self.norm_weight,
                self.norm_bias,
                training=self.training,
                momentum=BATCH_NORM_MOMENTUM,
                eps=NORM_EPS,
            )
        elif self.norm == "layer_proxy":
            h = torch.nn.functional.layer_norm(h, (h.shape[1],), self.norm_weight, self.norm_bias, eps=NORM_EPS)
        if self.glu:
            a, b = h.chunk(2, dim=1)
            h = a * torch.sigmoid(b)
        else:
            h = torch.relu(h)
        if self.norm == "layer_proxy":
            mean, var = proxy_statistics(self.norm_weight, self.norm_bias, self.glu, self.proxy_points)
            h = (h - mean) / torch.sqrt(var + NORM_EPS)
        out = torch.nn.functional.linear(h, self.w2, self.b2)
        return out + projected if self.residual else out

    def running_statistics(self) -> list[torch.Tensor]:
        """BatchNorm's running mean and variance (C,) each, or [] (averaged over workers by the trainer)."""
        return [self.running_mean, self.running_var] if self.norm == "batch" else []

    def scale(self, branch: torch.Tensor) -> torch.Tensor:
        """Gate and scalar weight on the (dropped-out) branch (n, d)."""
        if self.gate is not None:
            branch = branch * torch.sigmoid(self.gate)
        if self.weight is not None:
            branch = branch * self.weight
        return branch


class KGEModel(nn.Module):
    def __init__(self, config: ModelConfig, num_relations: int, feature_dim: int, generator: torch.Generator):
        super().__init__()
        self.config = config
        d = config.dim
        self.score_fn = config.score_fn
        self.scorer = get_scorer(self.score_fn)  # its formula, relation width and init (kge/nn/scorers.py)
        self.p = config.distance
        self.gamma = float(config.gamma)
        self.entity_table = torch.zeros(0, d)  # set by the trainer / loader: this worker's rows
        scoring.relation_dim(self.score_fn, d)  # checks d (even for [re | im] halves)
        self.relation = nn.Parameter(self.scorer.init_relation(num_relations, d, config.init_scale, generator))
        # TransH's per-relation normals w_r (drawn after the relations: the generator's order is kept).
        init_normal = self.scorer.init_normal
        self.normal = nn.Parameter(init_normal(num_relations, d, generator)) if init_normal is not None else None
        features = config.features
        self.use_features = features.use
        self.share_projection = features.share_projection
        if self.use_features:
            # M per role, or one shared: dense (d, F) or grouped (G, d/G, F/G) parameters, or a random
            # (d, F) buffer; kept as direct attributes (the saved models' keys head_/tail_projection).
            # The optional parts of the feature branch live in FeatureExtras.
            mlp = features.mlp
            self.projects = not (mlp.hidden and not mlp.squeeze)  # an unsqueezed MLP reads e_F itself
            self.projection_kind = features.projection
            groups = features.groups if self.projection_kind == "grouped" else 1
            if d % groups or feature_dim % groups:
                raise KgeInputError(
                    f"features.groups = {groups} must divide both dim = {d} and the feature width {feature_dim}"
                )

            def projection():
                if not self.projects:
                    return None
                if self.projection_kind == "random":  # N(0, 1/F): rows of M e_F keep the scale of |e_F|
                    return torch.randn(d, feature_dim, generator=generator) / math.sqrt(feature_dim)
                bound = 1.0 / math.sqrt(feature_dim // groups)  # torch's default init, fan-in F/G
                shape = (
                    (groups, d // groups, feature_dim // groups)
                    if self.projection_kind == "grouped"
                    else (d, feature_dim)
                )
                return nn.Parameter((torch.rand(shape, generator=generator) * 2 - 1) * bound)

            def extras():
                return FeatureExtras(features, d, feature_dim, generator)

            head = projection()
            tail = head if self.share_projection else projection()
            for name, value in (("head_projection", head), ("tail_projection", tail)):
                if self.projection_kind == "random" and value is not None:
                    self.register_buffer(name, value)  # fixed: in state_dict, no gradient, no optimizer state
                else:
                    setattr(self, name, value)
            self.head_extras = extras()
            self.tail_extras = self.head_extras if self.share_projection else extras()
            self.dropout = nn.Dropout(features.dropout)

    def dense_param_groups(self) -> list[dict]:
        """Adam parameter groups carrying their learning-rate modifiers."""
        mods = self.config.lr_modifiers
        groups = [
            {
                "params": [self.relation] + ([self.normal] if self.normal is not None else []),
                "lr_modifier": mods.relation,
            }
        ]
        if self.use_features:
            roles = [("feature_projection", self.head_projection, self.head_extras)]
            if not self.share_projection:
                roles = [
                    ("head_feature_projection", self.head_projection, self.head_extras),
                    ("tail_feature_projection", self.tail_projection, self.tail_extras),
                ]
            for key, projection, extras in roles:
                trained = isinstance(projection, nn.Parameter)  # a random projection is a buffer
                params = ([projection] if trained else []) + list(extras.parameters())
                if not params:  # a fixed random projection and nothing else: no group
                    continue
                modifier = getattr(mods, key)
                groups.append(
                    {"params": params, "lr_modifier": modifier if modifier is not None else mods.feature_projection}
                )
        return groups

    def running_statistics(self) -> list[torch.Tensor]:
        """The buffers that training updates (BatchNorm running statistics), once each; [] by default."""
        if not self.use_features:
            return []
        extras = [self.head_extras] if self.share_projection else [self.head_extras, self.tail_extras]
        return [t for e in extras for t in e.running_statistics()]

    def project(self, features: torch.Tensor, role: str) -> torch.Tensor | None:
        """features (n, F) -> M e_F (n, d) for ``role`` (None when the branch has no M).

        Grouped: the F inputs split into G chunks of F/G, chunk g mapped by block g (d/G, F/G) to
        outputs [g d/G, (g + 1) d/G).
        """
        projection = self.head_projection if role == "head" else self.tail_projection
        if projection is None:
            return None
        if projection.dim() == 2:
            return features @ projection.T
        groups, out, width = projection.shape
        chunks = features.reshape(features.shape[0], groups, width)  # (n, G, F/G)
        return torch.einsum("ngf,gof->ngo", chunks, projection).reshape(features.shape[0], groups * out)

    def encode(
        self, embedding: torch.Tensor, features: torch.Tensor | None, role: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """embedding (n, d) e_S rows, features (n, F) -> (e (n, d), feature branch f (n, d) or zeros).

        Plain: f = dropout(M e_F) and e = e_S + f. Optional parts (config ``features``): a bias
        in M e_F + b, an MLP, a per-dimension gate, a learned scalar weight; with
        ``mlp.concat_embeddings`` the MLP reads [e_S, x] and its output is e itself.
        """
        if not self.use_features:
            return embedding, torch.zeros_like(embedding)
        extras = self.head_extras if role == "head" else self.tail_extras
        projected = self.project(features, role)
        branch = extras(embedding, features, projected)
        branch = extras.scale(self.dropout(branch))
        if extras.replaces_embedding:
            return branch, branch
        return embedding + branch, branch

    def scores(self, heads: torch.Tensor, relations: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
        """heads (B, d) encoded, relations (B,) ids, tails (M, d) encoded -> (B, M) scores."""
        normal = self.normal.index_select(0, relations) if self.normal is not None else None
        return scoring.score_matrix(
            self.score_fn,
            heads,
            self.relation.index_select(0, relations),
            tails,
            p=self.p,
            gamma=self.gamma,
            normal=normal,
        )

    def query(self, heads: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
        """heads (B, d) encoded, relations (B,) ids -> query vectors (B, dq) (scoring.query_vectors; dq =
        ``Scorer.query_dim(d)``)."""
        normal = self.normal.index_select(0, relations) if self.normal is not None else None
        return scoring.query_vectors(self.score_fn, heads, self.relation.index_select(0, relations), normal)

    def head_query(self, tails: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
        """tails (B, d) encoded (tail role), relations (B,) ids -> query vectors (B, dq) that score
        candidate heads (encoded in the head role) with ``score_queries`` (scoring.head_query_vectors)."""
        normal = self.normal.index_select(0, relations) if self.normal is not None else None
        return scoring.head_query_vectors(self.score_fn, tails, self.relation.index_select(0, relations), normal)

    def score_queries(self, query: torch.Tensor, relations: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
        """query (B, dq) from ``query``, relations (B,) ids, tails (M, d) encoded -> (B, M) scores."""
        normal = self.normal.index_select(0, relations) if self.normal is not None else None
        return scoring.score_queries(self.score_fn, query, tails, p=self.p, gamma=self.gamma, normal=normal)

    def parameter_count(self, num_entities: int) -> int:
        """Stored trainable parameters of one model: entity rows of real entities plus dense parameters.

        A block-sparse table (``sparsity.density`` < 1) stores k * block values per row, not dim:
        the count a dense model of dim = k * block matches (block indices are not parameters).
        """
        dense = sum(p.numel() for group in self.dense_param_groups() for p in group["params"])
        return num_entities * self.config.stored_values_per_entity + dense
