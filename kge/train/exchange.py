"""How a step's scores come together across W workers: one class per exchange strategy, chosen once.

Each worker encodes, in the tail role, the target columns the other workers asked it for:
``served_tails`` (W, c, d), block u holding the c = M / W columns worker u asked for, in
owner-grouped order. The strategies differ in what crosses the wire:

- ``TailsExchange`` (config ``exchange: tails``): one AllToAll moves the tails to the workers that
  asked for them; each scores its own B queries against its M = B + N columns.
- ``DotTailsExchange``: the same move, for scorers whose scores are ``query @ tails.T``
  (``Scorer.dot``): it hands the (queries, tails) operands to a fused objective
  (:mod:`kge.train.objective`), which does the matmul and the loss in one function.
- ``ScoresExchange`` (``exchange: scores``): the (B, dq) queries are all-gathered, every owner
  scores all W * B queries against the tails it holds, and one AllToAll returns (W, B, c) scores.

With one worker (``kge.dist.comm.LocalComm``) every collective is the identity: the tails are
scored where they were encoded, and ``unorder`` is None (the columns are in batch order already).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from kge.config import ModelConfig
from kge.nn.model import KGEModel


class DotOperands(NamedTuple):
    """What a fused dot objective multiplies: scores (B, M) = queries @ tails.T, never materialised."""

    queries: torch.Tensor  # (B, dq) the batch's query vectors (KGEModel.query)
    tails: torch.Tensor  # (M, d) the encoded target columns, in batch order


class TailsExchange:
    """``exchange: tails``: the encoded tails travel to the queries (one differentiable AllToAll)."""

    def __init__(self, comm):
        self.comm = comm

    def tails(self, served_tails: torch.Tensor, unorder: torch.Tensor | None) -> torch.Tensor:
        """served_tails (W, c, d) -> this worker's M = W * c target columns (M, d), in batch order.

        ``unorder`` (M,): owner-grouped position -> batch column (None with one worker)."""
        M = served_tails.shape[0] * served_tails.shape[1]
        received = self.comm.all_to_all(served_tails).reshape(M, -1)  # (M, d) in owner-grouped order
        return received if unorder is None else received.index_select(0, unorder)

    def exchange_and_score(
        self,
        model: KGEModel,
        heads: torch.Tensor,
        relations: torch.Tensor,
        served_tails: torch.Tensor,
        unorder: torch.Tensor | None,
    ) -> torch.Tensor | DotOperands:
        """heads (B, d) encoded, relations (B,) ids, served_tails (W, c, d) -> scores (B, M = W c)."""
        return model.scores(heads, relations, self.tails(served_tails, unorder))


class DotTailsExchange(TailsExchange):
    """``exchange: tails`` with a dot-product scorer: the move only; the fused objective scores."""

    def exchange_and_score(
        self,
        model: KGEModel,
        heads: torch.Tensor,
        relations: torch.Tensor,
        served_tails: torch.Tensor,
        unorder: torch.Tensor | None,
    ) -> DotOperands:
        """heads (B, d), relations (B,), served_tails (W, c, d) -> DotOperands((B, dq), (M, d))."""
        tails = self.tails(served_tails, unorder)  # moved first, as the other strategies order it
        return DotOperands(model.query(heads, relations), tails)


class ScoresExchange:
    """``exchange: scores``: the queries travel to the tails, and the scores come back."""

    def __init__(self, comm):
        self.comm = comm

    def exchange_and_score(
        self,
        model: KGEModel,
        heads: torch.Tensor,
        relations: torch.Tensor,
        served_tails: torch.Tensor,
        unorder: torch.Tensor | None,
    ) -> torch.Tensor:
        """heads (B, d) encoded, relations (B,) ids, served_tails (W, c, d) -> scores (B, M = W c)."""
        W = served_tails.shape[0]
        B = heads.shape[0]
        queries = self.comm.all_gather(model.query(heads, relations))  # (W, B, dq): every worker's queries
        query_relations = self.comm.all_gather_ints(relations)  # (W, B)
        # Worker u's queries against the tails it asked of us: (W, B, c).
        served_scores = torch.stack(
            [model.score_queries(queries[u], query_relations[u], served_tails[u]) for u in range(W)]
        )
        received = self.comm.all_to_all(served_scores)  # (W, B, c): our queries against worker v's tails
        scores = received.permute(1, 0, 2).reshape(B, W * served_tails.shape[1])
        return scores if unorder is None else scores[:, unorder]


def fuses_dot(config: ModelConfig, model: KGEModel) -> bool:
    """Whether the step scores and takes the loss in one fused function: dot-product scores
    (``Scorer.dot``) whose tails move to the queries, so the whole (M, d) tail block is at hand."""
    return config.exchange == "tails" and model.scorer.dot


def make_exchange(config: ModelConfig, model: KGEModel, comm) -> TailsExchange | ScoresExchange:
    """The exchange strategy of ``config.exchange`` (``tails`` | ``scores``) for ``model``'s scorer."""
    if config.exchange == "scores":
        return ScoresExchange(comm)
    return DotTailsExchange(comm) if fuses_dot(config, model) else TailsExchange(comm)
