"""One BESS training step as named phases, each a method of ``StepPhases``.

    sample -> route -> gather -> encode -> exchange_and_score -> loss -> backward -> reduce -> update

Shapes: B triples and N shared negatives per worker, M = B + N target columns (the B tails
first, then the negatives), c = M / W of them on each of the W workers (equal by construction of
the sampler), U distinct local rows read by the step, d the embedding width, F the feature width.

The exchange strategy (``kge.train.exchange``) and the objective (``kge.train.objective``) are
objects chosen when the trainer is built; the step only calls them. Wall time per phase goes to
``self.timer`` (``kge.train.timing.PhaseTimer``, read by `kge bench`).

The sample phase's work needs neither a collective nor a parameter, so step t + 1's runs in a
background thread while step t computes (``KGE_PREFETCH=0`` in the environment: inline).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch

from kge.bess.partition import locate_rows
from kge.bess.sampling import Batch
from kge.nn import losses
from kge.table import sparsity
from kge.train import subspace
from kge.train.exchange import DotOperands
from kge.train.schedule import learning_rate, step_seed


def check_loss(loss: torch.Tensor | float, step: int) -> float:
    """The loss as a float; FloatingPointError if it is not finite (``step``: the steps done)."""
    value = float(loss)
    if not math.isfinite(value):
        raise FloatingPointError(f"loss became {value} at step {step}; lower learning_rate")
    return value


class Prepared(NamedTuple):
    """One step's parameter-free work (``StepPhases._prepare``)."""

    step: int
    negatives: int  # this step's shared negatives N
    batch: Batch
    head_local: torch.Tensor  # (B,) the heads' local rows (all ours)
    requests: torch.Tensor  # (W, c) the local rows asked of each worker, owner-grouped
    unorder: torch.Tensor | None  # (M,) owner-grouped -> batch column order; None with one worker
    false_negatives: tuple | None
    unique: tuple | None  # one worker: torch.unique(local rows, return_inverse=True)
    features: torch.Tensor | None  # one worker with features: the local rows' features


class Gathered(NamedTuple):
    """The table rows a step reads (and updates): ``gather``'s output."""

    rows: torch.Tensor  # (U,) distinct local rows, on the device
    embeddings: torch.Tensor  # (U, d) float32 leaf: their e_S; its gradient is the rows' update
    heads: torch.Tensor  # (B, d) the heads' e_S
    tails: torch.Tensor  # (W c, d) e_S of the rows the workers asked of us, block u = worker u's
    features: torch.Tensor | None  # (B + W c, F) the same rows' features, heads first; None without features


class Encoded(NamedTuple):
    """``encode``'s output: e = e_S + f and the feature branch f of every row the step uses."""

    heads: torch.Tensor  # (B, d) e of the heads
    head_branch: torch.Tensor  # (B, d) f of the heads (zeros without features)
    tails: torch.Tensor  # (W c, d) e of the tails we serve, block u = the c tails worker u asked for
    tail_branch: torch.Tensor  # (W c, d) f of those tails
    relations: torch.Tensor  # (B,) the queries' relation ids, on the device


class StepPhases:
    """The phases of one worker's BESS step. ``kge.train.trainer.Trainer`` builds what they read:
    ``config, comm, device, rank, world_size, step, sampler, partition, n_shards, shard_size,
    model, features, corrections, exchange, objective, penalties, loss_scale, dense_params,
    dense_optimizer, entity_optimizer, sparsity, timer`` and the prefetch state
    ``_prefetch, _executor, _ahead``."""

    # ----- sample -----------------------------------------------------------------------------
    def _prepare(self, step: int) -> Prepared:
        """Everything of ``step`` that needs no collective and no parameter: the batch (seeded by
        (seed, step, rank) alone), its rows' owners and local rows, the false-negative pairs and,
        with one worker (whose requests are its own rows), the unique rows and their features.
        Pure in ``step``: run ahead in the prefetch thread or inline, it gives the same tensors."""
        config, W, S = self.config, self.world_size, self.shard_size
        n_negatives = config.negatives_at(self.n_shards, step)
        batch = self.sampler.sample(torch.Generator().manual_seed(step_seed(config.seed, step, self.rank)), n_negatives)
        _, head_local = locate_rows(self.partition.row_of(batch.head), S, W)  # heads are all ours
        columns = torch.cat([batch.tail, batch.negatives])
        owner, target_local = locate_rows(self.partition.row_of(columns), S, W)
        M = owner.shape[0]
        # Columns grouped by owner: (W, c); one worker owns them all, in batch order already.
        order = None if W == 1 else torch.argsort(owner, stable=True)
        unorder = None if W == 1 else torch.argsort(order)  # back from owner-grouped to batch order
        requests = (target_local if order is None else target_local[order]).view(W, M // W)
        # Columns (in batch order, both exchanges) holding query b's own tail id again: not its
        # negatives. A sparse (rows, cols) list, found on the CPU ids; None with the switch off.
        false_negatives = None
        if config.loss.mask_false_negatives:
            false_negatives = losses.false_negative_pairs(batch.tail, columns)
        unique = features = None
        if W == 1:  # served == requests: the rows to gather are known before any exchange
            local_rows = torch.cat([head_local, requests.reshape(-1)])
            unique = torch.unique(local_rows, return_inverse=True)
            if self.model.use_features:
                features = self.features.gather(local_rows)
        return Prepared(step, n_negatives, batch, head_local, requests, unorder, false_negatives, unique, features)

    def sample(self) -> Prepared:
        """This step's ``_prepare``, from the prefetch thread when it ran ahead; queues the next step.

        Only the step's index selects the work, so a resume (which moves ``self.step``) discards a
        stale prefetch and prepares inline. ``KGE_PREFETCH=0`` in the environment: always inline."""
        ahead = self._ahead
        self._ahead = None
        prepared = None
        if ahead is not None and ahead[0] == self.step:
            prepared = ahead[1].result()
        elif ahead is not None:
            ahead[1].cancel()
        if prepared is None:
            prepared = self._prepare(self.step)
        if self._prefetch:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kge-prefetch")
            self._ahead = (self.step + 1, self._executor.submit(self._prepare, self.step + 1))
        return prepared

    def close(self) -> None:
        """Stop the prefetch thread (the trainer stays usable: a later step prepares inline and
        starts a new one)."""
        if self._ahead is not None:
            self._ahead[1].cancel()
            self._ahead = None
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    # ----- route ------------------------------------------------------------------------------
    def route(self, prepared: Prepared) -> torch.Tensor:
        """requests (W, c) local rows we ask of each worker -> served (W, c), the local rows of ours
        each worker asked for (one AllToAll of int64 ids; the identity with one worker)."""
        served = self.comm.all_to_all_ints(prepared.requests.to(self.device)).cpu()
        self.last_step = {"batch": prepared.batch, "served": served, "false_negatives": prepared.false_negatives}
        return served

    # ----- gather and encode ------------------------------------------------------------------
    def gather(self, prepared: Prepared, served: torch.Tensor) -> Gathered:
        """The heads' (B,) and the served (W, c) local rows -> their e_S rows, read once per distinct
        row into a float32 leaf (U, d), and their features (B + W c, F)."""
        B = prepared.head_local.shape[0]
        local_rows = torch.cat([prepared.head_local, served.reshape(-1)])
        rows, inverse = (
            prepared.unique if prepared.unique is not None else torch.unique(local_rows, return_inverse=True)
        )
        rows = rows.to(self.device)
        embeddings = self.model.entity_table.index_select(0, rows).float().requires_grad_(True)
        inverse = inverse.to(self.device)
        # Heads and tails gathered apart: backward is two index_add_ into the rows' gradient, not
        # slice gradients zero-filled to (B + M, d) and summed.
        heads = embeddings.index_select(0, inverse[:B])
        tails = embeddings.index_select(0, inverse[B:])
        features = None
        if self.model.use_features:
            features = prepared.features if prepared.features is not None else self.features.gather(local_rows)
            features = features.to(self.device)
        return Gathered(rows, embeddings, heads, tails, features)

    def _seed_dropout(self, seed: int) -> None:
        """The step's dropout masks: the default generator of the training device, seeded as
        torch.manual_seed(seed) seeds it. (torch.manual_seed itself also queues a lazy seed call per
        uninitialised accelerator backend, each formatting a stack trace: ~0.4 ms a step on CPU,
        and a queue that grows every step.)"""
        torch.random.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)  # the current device's generator, as torch.manual_seed seeds it

    def encode(self, gathered: Gathered, batch: Batch, seed: int) -> Encoded:
        """e_S (B, d) heads and (W c, d) served tails, with their features -> e = e_S + f in each role.

        Tails are encoded where they live, by their owner, whichever worker asked for them."""
        self._seed_dropout(seed)  # this step's dropout masks, the same on a resumed run
        B = gathered.heads.shape[0]
        features = gathered.features
        heads, head_branch = self.model.encode(gathered.heads, None if features is None else features[:B], "head")
        tails, tail_branch = self.model.encode(gathered.tails, None if features is None else features[B:], "tail")
        relations = batch.relation.to(self.device)
        return Encoded(heads, head_branch, tails, tail_branch, relations)

    # ----- exchange and score; loss -----------------------------------------------------------
    def exchange_and_score(self, encoded: Encoded, prepared: Prepared) -> torch.Tensor | DotOperands:
        """The exchange strategy's collectives and scores: (B, M) scores in batch column order, or
        (for a fused objective) the DotOperands queries (B, dq) and tails (M, d) it multiplies."""
        served_tails = encoded.tails.view(self.world_size, -1, encoded.tails.shape[1])  # (W, c, d)
        unorder = None if prepared.unorder is None else prepared.unorder.to(self.device)
        return self.exchange.exchange_and_score(self.model, encoded.heads, encoded.relations, served_tails, unorder)

    def loss(self, scored: torch.Tensor | DotOperands, encoded: Encoded, gathered: Gathered, prepared: Prepared):
        """The objective on ``scored`` with the pool's sampling correction, plus the penalties -> 0-d."""
        loss = self.objective(scored, self.corrections[prepared.negatives], prepared.false_negatives)
        rows = {
            "entity": [encoded.heads, encoded.tails],
            "embedding": [gathered.heads, gathered.tails],
            "feature": [encoded.head_branch, encoded.tail_branch],
        }
        return self.penalties.add_to(loss, rows)

    def backward(self, loss: torch.Tensor) -> None:
        """Gradients of ``loss * loss_scale / W``: the objective is the mean over workers (their
        dense gradients are summed in ``reduce``); the scale keeps small gradients above fp16's
        underflow in stored Adam moments and is never undone (Adam is scale invariant)."""
        self.dense_optimizer.zero_grad(set_to_none=True)
        (loss * (self.loss_scale / self.world_size)).backward()

    # ----- reduce and update ------------------------------------------------------------------
    def reduce(self, loss: torch.Tensor) -> torch.Tensor:
        """Sum the dense gradients, the loss / W (-> (1,), returned) and the BatchNorm running
        statistics over workers, in one all-reduce."""
        W = self.world_size
        for p in self.dense_params:
            if p.grad is None:  # every worker must contribute the same tensors to the all-reduce
                p.grad = torch.zeros_like(p)
        loss_sum = loss.detach().reshape(1) / W
        # BatchNorm running statistics (none by default) were updated by each worker's own batches:
        # averaged in the same all-reduce, so every replica keeps the same buffers.
        running_stats = self.model.running_statistics()
        self.comm.all_reduce_([p.grad for p in self.dense_params] + [loss_sum] + running_stats)
        if W > 1:
            for buffer in running_stats:
                buffer.div_(W)
        return loss_sum

    def update(self, gathered: Gathered, seed: int) -> None:
        """Adam on the dense parameters and sparse row Adam on the U rows the step read (with block
        sparsity: their inactive blocks kept at zero, and the step's prune-and-regrow if due)."""
        config = self.config
        # Random-subspace optimisation: P P^T g with P drawn from (seed, step, tensor), alike on every worker.
        subspace.project_gradients_(self.dense_params, config.subspace.dim, config.seed, self.step)
        lr = learning_rate(config, self.step)
        for group in self.dense_optimizer.param_groups:
            group["lr"] = lr * group["lr_modifier"]
        self.dense_optimizer.step()
        rounding = torch.Generator(device=self.device).manual_seed(seed) if config.stochastic_rounding else None
        entity_grad = gathered.embeddings.grad
        if self.sparsity is not None:  # zero gradient, zero m and v: inactive blocks get a zero update
            entity_grad = self.sparsity.mask_gradient(gathered.rows, entity_grad)
        self.entity_optimizer.step(
            gathered.rows, entity_grad, lr * config.lr_modifiers.entity_embedding, generator=rounding
        )
        if self.sparsity is not None and self.sparsity.event_due(self.step + 1):
            self.sparsity.prune_and_regrow_(
                self.step + 1, self.entity_optimizer.table, sparsity.optimizer_state_tensors(self.entity_optimizer)
            )

    # ----- the step ---------------------------------------------------------------------------
    @property
    def phase_seconds(self) -> dict[str, float]:
        """Wall seconds per bucket of the phases so far (``timing.STEP_BUCKETS``); assignable."""
        return self.timer.seconds

    @phase_seconds.setter
    def phase_seconds(self, seconds: dict[str, float]) -> None:
        self.timer.seconds = dict(seconds)

    def train_step(self, sync: bool = True) -> float | torch.Tensor:
        """One BESS step; returns the loss summed over workers' queries / W (the same on every worker).

        ``sync=False`` returns the loss as a 0-d tensor on the device, unchecked, so the step ends
        without waiting for the device (the caller checks it with ``check_loss`` when it reads it).
        """
        seed = step_seed(self.config.seed, self.step, self.rank)
        phase = self.timer.phase
        with phase("sample"):
            prepared = self.sample()
        with phase("exchange"):
            served = self.route(prepared)
        with phase("gather"):
            gathered = self.gather(prepared, served)
        with phase("compute"):
            encoded = self.encode(gathered, prepared.batch, seed)
            scored = self.exchange_and_score(encoded, prepared)
            loss = self.loss(scored, encoded, gathered, prepared)
            self.backward(loss)
        with phase("exchange"):
            loss_sum = self.reduce(loss)
        with phase("optimizer"):
            self.update(gathered, seed)
        self.step += 1
        if not sync:
            return loss_sum.reshape(())
        return check_loss(loss_sum, self.step)
