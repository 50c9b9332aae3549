"""BESS training: one worker of D (or the only one), per-shard atomic checkpoints, exact resume.

Worker w of W owns the entity shards i with i % W == w (their rows, Adam state and features).
Per step it samples B triples whose heads it owns, B / D from each bucket (i, j), and N / D shared
negatives from each shard j; the tails it needs travel from their owners in one AllToAll (or, with
``exchange: scores``, its queries are all-gathered and the owners send back scores). Dense
parameters are replicated; their gradients are summed across workers with one all-reduce.

Every step seeds its own generators from (seed, step, rank), so a run resumed from a checkpoint
draws the same batches and dropout masks as an uninterrupted run and ends with identical parameters.

With ``sparsity.density`` < 1 the entity rows are block sparse (:mod:`kge.table.sparsity`): the
gradient's inactive blocks are zeroed before the sparse Adam step, and every ``sparsity.every``
steps each owned row prunes and regrows blocks; each shard's mask is part of its checkpoint.
"""

from __future__ import annotations

import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from kge.bess.features import FeatureStore
from kge.bess.partition import Partition, locate_rows, owned_shards
from kge.bess.sampling import Batch, BessSampler
from kge.bess.shard import read_shard_meta
from kge.common import atomic
from kge.common.errors import KgeInputError
from kge.config import adversarial_scale, config_hash, negatives_at, negatives_per_step
from kge.dist.comm import LocalComm
from kge.dist.device import resolve_device
from kge.nn import losses
from kge.nn.model import KGEModel, init_entity_rows
from kge.table import sparsity
from kge.table.footprint import bytes_per_entity
from kge.table.sparse_adam import SparseRowAdam
from kge.train import checkpoint, subspace

MODEL_NAME, HISTORY_NAME, PROGRESS_NAME = checkpoint.MODEL_NAME, checkpoint.HISTORY_NAME, checkpoint.PROGRESS_NAME
PROGRESS_SECONDS = 10.0


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """Seed of worker ``rank``'s generators at ``step`` (rank 0 of 1 is the single-worker run)."""
    return (seed * 1_000_003 + step * 7_919 + 12_345 + rank * 0x9E3779B97F4A7C15) % (2**63 - 1)


class Prepared(NamedTuple):
    """One step's parameter-free work (``Trainer._prepare``)."""

    step: int
    negatives: int  # this step's shared negatives N
    batch: Batch
    head_local: torch.Tensor  # (B,) the heads' local rows (all ours)
    requests: torch.Tensor  # (W, c) the local rows asked of each worker, owner-grouped
    unorder: torch.Tensor | None  # (M,) owner-grouped -> batch column order; None with one worker
    false_negatives: tuple | None
    unique: tuple | None  # one worker: torch.unique(local rows, return_inverse=True)
    features: torch.Tensor | None  # one worker with features: the local rows' features


def check_loss(loss: torch.Tensor | float, step: int) -> float:
    """The loss as a float; FloatingPointError if it is not finite (``step``: the steps done)."""
    value = float(loss)
    if not math.isfinite(value):
        raise FloatingPointError(f"loss became {value} at step {step}; lower learning_rate")
    return value


def learning_rate(config: dict, step: int) -> float:
    """Base learning rate at ``step`` (0-based): linear decay to 0 at the last step, or constant."""
    if config["lr_decay"] == "linear":
        return config["learning_rate"] * (1.0 - step / config["steps"])
    return config["learning_rate"]


class Trainer:
    """One worker's model rows, optimisers, sampler and feature store (``comm`` None = the only worker)."""

    def __init__(self, config: dict, shard_dir: str | Path, model_dir: str | Path, comm=None):
        self.config = config
        self.comm = comm if comm is not None else LocalComm()
        self.rank, self.world_size = self.comm.rank, self.comm.world_size
        if config["workers"] != self.world_size:
            raise KgeInputError(f"workers: config asks for {config['workers']} workers, {self.world_size} are running")
        self.model_dir = Path(model_dir)
        self.shard_dir = Path(shard_dir)
        self.device = getattr(self.comm, "device", None) or resolve_device(config["device"])
        meta = read_shard_meta(shard_dir)
        self.num_entities = int(meta["num_entities"])
        self.num_relations = int(meta["num_relations"])
        self.partition = Partition.load(self.shard_dir / "partition.npz")
        self.n_shards, self.shard_size = self.partition.n_shards, self.partition.shard_size
        self.owned = owned_shards(self.n_shards, self.rank, self.world_size)
        self.features = FeatureStore(shard_dir, self.n_shards, shards=self.owned)
        self.negatives = negatives_per_step(config, self.n_shards)
        # Two-phase schedule: phase one's smaller pool must split over shards like the full one.
        small = config["two_phase"]["negatives"] if config["two_phase"]["fraction"] > 0 else None
        if small is not None and small % self.n_shards:
            raise KgeInputError(f"two_phase.negatives: {small} must be a multiple of the shard count {self.n_shards}")
        self.sampler = BessSampler(
            shard_dir,
            config["batch_size"],
            self.negatives,
            rank=self.rank,
            world_size=self.world_size,
            relation_power=config["relation_power"],
            inverse_relations=config["inverse_relations"],
        )
        generator = torch.Generator().manual_seed(config["seed"])  # dense parameters: identical on every worker
        # With inverse relations, relation r + R is the reverse of r: (t, r + R, h) for every (h, r, t).
        self.model_relations = self.sampler.num_model_relations
        self.model = KGEModel(config, self.model_relations, self.features.dim, generator)
        self.model.to(self.device)
        adam = config["adam"]
        self.entity_optimizer = SparseRowAdam(
            init_entity_rows(config, self.owned, self.shard_size).to(self.device),
            adam["beta1"],
            adam["beta2"],
            adam["eps"],
            storage=config["dtype"],
            stochastic_rounding=config["stochastic_rounding"],
        )
        self.model.entity_table = self.entity_optimizer.table  # in the storage dtype
        # Block sparsity (density < 1): the mask of the owned rows; inactive blocks start at 0.
        self.sparsity = None
        if sparsity.is_sparse(config):
            self.sparsity = sparsity.BlockSparsity(config, self.owned, self.shard_size, self.device)
            self.sparsity.zero_inactive_([self.entity_optimizer.table])
        # Loss scaling as the submission did: Adam is scale invariant, so gradients are never
        # unscaled; the scale only lifts small gradients above fp16's underflow in stored m.
        scale = config["loss_scale"]
        self.loss_scale = float(config["batch_size"] * self.negatives) if scale == "auto" else float(scale)
        self.dense_params = [p for group in self.model.dense_param_groups() for p in group["params"]]
        self.dense_optimizer = torch.optim.Adam(
            self.model.dense_param_groups(),
            lr=config["learning_rate"],
            betas=(adam["beta1"], adam["beta2"]),
            eps=adam["eps"],
        )
        self.step = 0
        # Wall time per phase of train_step, for `kge bench`; "exchange" is waiting on collectives.
        self.phase_seconds = {"sample": 0.0, "gather": 0.0, "compute": 0.0, "exchange": 0.0, "optimizer": 0.0}
        self._phase_start = 0.0
        self.history: list[dict] = []
        self.train_seconds = 0.0
        self.hash = config_hash(config)
        # The correction log((|E|-1)/N) undoes the uniform draw of the N shared negatives. In-batch
        # tails are drawn from the data's tail distribution, not uniformly: correcting them too
        # pushed popular entities down (miniature, DistMult, 1000 steps: validation MRR 0.054 with
        # the correction on every column, 0.089 on shared negatives only).
        self.corrections = {
            n: losses.sampling_correction(self.num_entities, n, config["loss"]["correction_weight"])
            for n in {self.negatives, small or self.negatives}
        }
        self.last_step: dict = {}  # the last step's indices, for parity checks and debugging
        # Step t + 1's sampling and id routing run in a background thread while step t computes.
        self._prefetch = os.environ.get("KGE_PREFETCH", "1") != "0"
        self._executor: ThreadPoolExecutor | None = None
        self._ahead = None  # (step, future) of the prefetched step

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ----- one step -------------------------------------------------------------------------
    def _phase(self, name: str | None) -> None:
        """Charge the time since the last mark to phase ``name`` (None only starts the clock)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # kernels run asynchronously; time what ran
        now = time.perf_counter()
        if name is not None:
            self.phase_seconds[name] += now - self._phase_start
        self._phase_start = now

    def _prepare(self, step: int) -> Prepared:
        """Everything of ``step`` that needs no collective and no parameter: the batch (seeded by
        (seed, step, rank) alone), its rows' owners and local rows, the false-negative pairs and,
        with one worker (whose requests are its own rows), the unique rows and their features.
        Pure in ``step``: run ahead in the prefetch thread or inline, it gives the same tensors."""
        config, W, S = self.config, self.world_size, self.shard_size
        n_negatives = negatives_at(config, self.n_shards, step)
        batch = self.sampler.sample(
            torch.Generator().manual_seed(step_seed(config["seed"], step, self.rank)), n_negatives
        )
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
        if config["loss"]["mask_false_negatives"]:
            false_negatives = losses.false_negative_pairs(batch.tail, columns)
        unique = features = None
        if W == 1:  # served == requests: the rows to gather are known before any exchange
            local_rows = torch.cat([head_local, requests.reshape(-1)])
            unique = torch.unique(local_rows, return_inverse=True)
            if self.model.use_features:
                features = self.features.gather(local_rows)
        return Prepared(step, n_negatives, batch, head_local, requests, unorder, false_negatives, unique, features)

    def _prepared(self) -> Prepared:
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

    def _seed_dropout(self, seed: int) -> None:
        """The step's dropout masks: the default generator of the training device, seeded as
        torch.manual_seed(seed) seeds it. (torch.manual_seed itself also queues a lazy seed call per
        uninitialised accelerator backend, each formatting a stack trace: ~0.4 ms a step on CPU,
        and a queue that grows every step.)"""
        torch.random.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)  # the current device's generator, as torch.manual_seed seeds it

    def train_step(self, sync: bool = True) -> float | torch.Tensor:
        """One BESS step; returns the loss summed over workers' queries / W (the same on every worker).

        ``sync=False`` returns the loss as a 0-d tensor on the device, unchecked, so the step ends
        without waiting for the device (the caller checks it with ``check_loss`` when it reads it).

        Shapes: B triples and N shared negatives per worker, M = B + N target columns, of which
        c = M / W live on each worker (equal by construction of the sampler).
        """
        config, model, comm, device = self.config, self.model, self.comm, self.device
        W = self.world_size
        self._phase(None)
        seed = step_seed(config["seed"], self.step, self.rank)
        prepared = self._prepared()
        batch, head_local, false_negatives = prepared.batch, prepared.head_local, prepared.false_negatives
        correction = self.corrections[prepared.negatives]
        self._phase("sample")
        self._seed_dropout(seed)  # dropout masks
        B = batch.head.shape[0]
        M = prepared.requests.numel()
        served = comm.all_to_all_ints(prepared.requests.to(device)).cpu()  # (W, c): our rows each worker needs
        self.last_step = {"batch": batch, "served": served}
        self._phase("exchange")
        local_rows = torch.cat([head_local, served.reshape(-1)])
        unique_rows, inverse = (
            prepared.unique if prepared.unique is not None else torch.unique(local_rows, return_inverse=True)
        )
        unique_rows = unique_rows.to(device)
        embedding_rows = model.entity_table.index_select(0, unique_rows).float().requires_grad_(True)
        inverse = inverse.to(device)
        # Heads and tails gathered apart: backward is two index_add_ into the rows' gradient, not
        # slice gradients zero-filled to (B + M, d) and summed.
        head_s = embedding_rows.index_select(0, inverse[:B])
        tail_s = embedding_rows.index_select(0, inverse[B:])
        features = None
        if model.use_features:
            features = (prepared.features if prepared.features is not None else self.features.gather(local_rows)).to(
                device
            )
        self._phase("gather")
        head_e, head_f = model.encode(head_s, None if features is None else features[:B], "head")
        # Tails are encoded where they live: (W * c, d), block u = the tails worker u asked for.
        tail_e, tail_f = model.encode(tail_s, None if features is None else features[B:], "tail")
        relations = batch.relation.to(device)
        served_tails = tail_e.view(W, M // W, -1)
        # Back from owner-grouped to batch column order (one worker: already in order).
        unorder = None if prepared.unorder is None else prepared.unorder.to(device)
        loss_cfg = config["loss"]
        adversarial = adversarial_scale(loss_cfg)
        fused = model.scorer.dot  # scores = query @ tails.T: the matmul and the loss in one function
        self.last_step["false_negatives"] = false_negatives
        loss = scores = None
        if config["exchange"] == "tails":
            received = comm.all_to_all(served_tails).reshape(M, -1)  # (M, d) in owner-grouped order
            if unorder is not None:
                received = received.index_select(0, unorder)
            if fused and loss_cfg["type"] == "softmax":  # dot-product scores: matmuls and loss in one function
                loss = losses.dot_softmax_loss(
                    model.query(head_e, relations),
                    received,
                    correction,
                    loss_cfg["in_batch_negatives"],
                    false_negatives,
                )
            elif fused:
                loss = losses.dot_logsigmoid_loss(
                    model.query(head_e, relations),
                    received,
                    adversarial,
                    loss_cfg["positive_weight"],
                    loss_cfg["negative_weight"],
                    loss_cfg["in_batch_negatives"],
                    false_negatives,
                )
            else:
                scores = model.scores(head_e, relations, received)  # (B, B + N)
        else:
            queries = comm.all_gather(model.query(head_e, relations))  # (W, B, d)
            query_relations = comm.all_gather_ints(relations)  # (W, B)
            served_scores = torch.stack(
                [model.score_queries(queries[u], query_relations[u], served_tails[u]) for u in range(W)]
            )
            received = comm.all_to_all(served_scores)  # (W, B, c): our queries against worker v's tails
            scores = received.permute(1, 0, 2).reshape(B, M)
            if unorder is not None:
                scores = scores[:, unorder]
        if loss is None and loss_cfg["type"] == "softmax":
            # One softmax pass over (B, M); the correction only on the shared negatives.
            loss = losses.batch_softmax_loss(scores, correction, loss_cfg["in_batch_negatives"], false_negatives)
        elif loss is None:
            # Closed-form gradient of the self-adversarial log-sigmoid (equal to losses.logsigmoid_loss
            # with the diagonal, in-batch columns if off, and false negatives masked).
            loss = losses.batch_logsigmoid_loss(
                scores,
                adversarial,
                loss_cfg["positive_weight"],
                loss_cfg["negative_weight"],
                loss_cfg["in_batch_negatives"],
                false_negatives,
            )
        # Penalties on heads here and on tails where they are encoded: summed over workers this is
        # every worker's (heads, tails, negatives), as in one process.
        reg = config["regularisation"]
        for key, tensors in (
            ("entity", [head_e, tail_e]),
            ("embedding", [head_s, tail_s]),
            ("feature", [head_f, tail_f]),
        ):
            if reg[key]["weight"] > 0:
                loss = loss + losses.l3_penalty(tensors, reg[key]["weight"], reg[key]["power"])
        self.dense_optimizer.zero_grad(set_to_none=True)
        # The objective is the mean over workers: each backpropagates loss / W, dense gradients are summed.
        (loss * (self.loss_scale / W)).backward()
        self._phase("compute")
        for p in self.dense_params:
            if p.grad is None:  # every worker must contribute the same tensors to the all-reduce
                p.grad = torch.zeros_like(p)
        loss_sum = loss.detach().reshape(1) / W
        # BatchNorm running statistics (none by default) were updated by each worker's own batches:
        # averaged in the same all-reduce, so every replica keeps the same buffers.
        running_stats = model.running_statistics()
        comm.all_reduce_([p.grad for p in self.dense_params] + [loss_sum] + running_stats)
        if W > 1:
            for buffer in running_stats:
                buffer.div_(W)
        self._phase("exchange")
        # Random-subspace optimisation: P P^T g with P drawn from (seed, step, tensor), alike on every worker.
        subspace.project_gradients_(self.dense_params, config["subspace"]["dim"], config["seed"], self.step)
        lr = learning_rate(config, self.step)
        for group in self.dense_optimizer.param_groups:
            group["lr"] = lr * group["lr_modifier"]
        self.dense_optimizer.step()
        rounding = torch.Generator(device=device).manual_seed(seed) if config["stochastic_rounding"] else None
        entity_grad = embedding_rows.grad
        if self.sparsity is not None:  # zero gradient, zero m and v: inactive blocks get a zero update
            entity_grad = self.sparsity.mask_gradient(unique_rows, entity_grad)
        self.entity_optimizer.step(
            unique_rows, entity_grad, lr * config["lr_modifiers"]["entity_embedding"], generator=rounding
        )
        if self.sparsity is not None and self.sparsity.event_due(self.step + 1):
            self.sparsity.prune_and_regrow_(
                self.step + 1, self.entity_optimizer.table, sparsity.optimizer_state_tensors(self.entity_optimizer)
            )
        self._phase("optimizer")
        self.step += 1
        if not sync:
            return loss_sum.reshape(())
        return check_loss(loss_sum, self.step)

    # ----- checkpoints ----------------------------------------------------------------------
    def _shard_rows(self, k: int) -> slice:
        return slice(k * self.shard_size, (k + 1) * self.shard_size)

    def shard_states(self) -> dict[int, dict]:
        """This worker's shards: rows and Adam state, each (S, d); with sparsity the block mask (S, n_blocks)."""
        opt = self.entity_optimizer.state_dict()
        out = {}
        for k, shard in enumerate(self.owned):
            rows = self._shard_rows(k)
            state = {key: (v[rows] if torch.is_tensor(v) and v.dim() == 2 else v) for key, v in opt.items()}
            out[shard] = {"rows": self.model.entity_table[rows], "optimizer": state}
            if self.sparsity is not None:
                out[shard][sparsity.MASK_KEY] = self.sparsity.shard_mask(k)
        return out

    def _meta(self) -> dict:
        return {
            "config_hash": self.hash,
            "n_shards": self.n_shards,
            "num_entities": self.num_entities,
            "partition_seed": self.partition.seed,
        }

    def save_checkpoint(self) -> None:
        """Every worker writes its shards; after a barrier rank 0 commits (dense state, latest.json)."""
        checkpoint.save_shard_states(self.model_dir, self.step, self.shard_states())
        self.comm.barrier()
        if self.is_main:
            dense = {
                "step": self.step,
                "dense": self.model.state_dict(),
                "dense_optimizer": self.dense_optimizer.state_dict(),
                "entity_step_count": self.entity_optimizer.step_count,
                "history": self.history,
                "train_seconds": self.train_seconds,
            }
            checkpoint.commit(self.model_dir, self.step, dense, self._meta())
            atomic.save_json(self.model_dir / HISTORY_NAME, {"config": self.config, "history": self.history})
        self.comm.barrier()  # nobody runs ahead while rank 0 prunes the older step

    def try_resume(self) -> bool:
        """Load the last complete checkpoint if it belongs to this configuration and partition."""
        found = checkpoint.latest(self.model_dir)
        usable = found is not None and all(found[1].get(k) == v for k, v in self._meta().items())
        if found is not None and not usable and self.is_main:
            tqdm.write(
                f"kge train: {found[0]} belongs to a different configuration or partition; starting afresh",
                file=sys.stderr,
            )
        if not self.comm.broadcast_flag(usable):
            return False
        directory, _ = found
        dense = torch.load(directory / "dense.pt", map_location="cpu", weights_only=False)
        for k, shard in enumerate(self.owned):
            state = checkpoint.load_shard_state(directory, shard)
            rows = self._shard_rows(k)
            self.model.entity_table[rows] = state["rows"].to(self.device)
            self.entity_optimizer.load_rows(rows, state["optimizer"])
            if self.sparsity is not None:
                if sparsity.MASK_KEY not in state:
                    raise KgeInputError(
                        f"{directory}: shard {shard} has no sparsity mask, but this run is block sparse"
                    )
                self.sparsity.load_shard_mask(k, state[sparsity.MASK_KEY])
        self.entity_optimizer.step_count = int(dense["entity_step_count"])
        self.model.load_state_dict(dense["dense"])
        self.dense_optimizer.load_state_dict(dense["dense_optimizer"])
        self.step = int(dense["step"])
        self.history = list(dense["history"])
        self.train_seconds = float(dense["train_seconds"])
        if self.is_main:
            tqdm.write(f"kge train: resumed from {directory} at step {self.step}", file=sys.stderr)
        return True

    def save_final(self) -> dict:
        """Every worker writes its entity shards; then rank 0 writes model.pt (last: it marks completion)."""
        checkpoint.save_entity_shards(
            self.model_dir, {shard: self.model.entity_table[self._shard_rows(k)] for k, shard in enumerate(self.owned)}
        )
        self.comm.barrier()
        final = {
            "format": checkpoint.MODEL_FORMAT,
            "config": self.config,
            "num_entities": self.num_entities,
            "num_relations": self.model_relations,
            "feature_dim": self.features.dim,
            "n_shards": self.n_shards,
            "shard_size": self.shard_size,
            "partition_seed": self.partition.seed,
            "entity_files": checkpoint.entity_files(self.n_shards),
            "steps": self.step,
            "train_seconds": self.train_seconds,
            "parameters": self.model.parameter_count(self.num_entities),
            "history": self.history,
            "dense": self.model.state_dict(),
        }
        if self.sparsity is not None:  # the rows already hold the zeros; this says how sparse they are
            final["sparsity"] = {
                "density": self.config["sparsity"]["density"],
                "block": self.sparsity.block,
                "active_blocks": self.sparsity.k,
                "n_blocks": sparsity.block_count(self.config),
                "bytes_per_entity": bytes_per_entity(
                    self.config["dim"], self.config["dtype"], sparsity=self.config["sparsity"]
                ),
            }
        if self.is_main:
            atomic.torch_save(self.model_dir / MODEL_NAME, final)
            atomic.save_json(self.model_dir / HISTORY_NAME, {"config": self.config, "history": self.history})
            checkpoint.remove_checkpoints(self.model_dir)
        self.comm.barrier()
        return final


def train(
    config: dict, shard_dir: str | Path, model_dir: str | Path, evaluator=None, progress: bool = True, comm=None
) -> dict:
    """Train (or resume) to ``config['steps']``; writes model_dir/model.pt atomically at the end.

    ``evaluator(trainer) -> dict`` is called (on every worker) every ``validate_every`` steps and
    at the end; its metrics (e.g. train and validation MRR) are appended to the history with the
    mean loss. ``comm`` is this worker's communicator (None: the only worker).
    """
    trainer = Trainer(config, shard_dir, model_dir, comm)
    trainer.model_dir.mkdir(parents=True, exist_ok=True)
    trainer.try_resume()
    total = config["steps"]
    last_save = time.monotonic()
    running: list[float] = []
    bar = tqdm(
        total=total,
        initial=trainer.step,
        desc=f"train {config['score_fn']}",
        unit="step",
        disable=not progress or not trainer.is_main,
        mininterval=2.0,
    )
    log_every = max(1, min(100, total // 20))
    session_start, session_first_step, last_progress = time.monotonic(), trainer.step, 0.0

    def write_progress(state: str) -> None:
        """model_dir/progress.json (rank 0, atomically): step, rate, ETA, last loss and MRRs."""
        elapsed = time.monotonic() - session_start
        rate = (trainer.step - session_first_step) / elapsed if elapsed > 0 else 0.0
        last = trainer.history[-1] if trainer.history else {}
        mrrs = [h for h in trainer.history if "valid_mrr" in h]
        atomic.save_json(
            trainer.model_dir / PROGRESS_NAME,
            {
                "state": state,
                "step": trainer.step,
                "steps": total,
                "steps_per_second": rate,
                "eta_seconds": (total - trainer.step) / rate if rate > 0 else None,
                "loss": last.get("loss"),
                "valid_mrr": mrrs[-1]["valid_mrr"] if mrrs else None,
                "train_seconds": trainer.train_seconds,
                "workers": trainer.world_size,
                "updated": time.time(),
            },
        )

    def settle() -> None:
        """Read the losses since the last entry from the device, once, and check each (the step
        that went non-finite is named as it would have been at once); before any log or save."""
        pending = [k for k, value in enumerate(running) if torch.is_tensor(value)]
        if not pending:
            return
        values = torch.stack([running[k] for k in pending]).cpu().tolist()
        first = trainer.step - len(running) + 1
        for k, value in zip(pending, values):
            running[k] = check_loss(value, first + k)

    try:
        while trainer.step < total:
            start = time.perf_counter()
            running.append(trainer.train_step(sync=False))  # no host-device sync: read when logged
            trainer.train_seconds += time.perf_counter() - start
            bar.update(1)
            done = trainer.step == total
            every = config["validate_every"]
            evaluate = evaluator is not None and (done or (every and trainer.step % every == 0))
            if trainer.step % log_every == 0 or done or evaluate:
                settle()
                entry = {
                    "step": trainer.step,
                    "loss": float(np.mean(running)),
                    "lr": learning_rate(config, trainer.step - 1),
                }
                if config["two_phase"]["fraction"] > 0:  # which pool the last step drew from
                    entry["negatives"] = negatives_at(config, trainer.n_shards, trainer.step - 1)
                running.clear()
                if evaluate:
                    entry.update(evaluator(trainer))
                trainer.history.append(entry)
                bar.set_postfix({k: round(v, 4) for k, v in entry.items() if k != "step"})
            if trainer.is_main and time.monotonic() - last_progress > PROGRESS_SECONDS:
                write_progress("training")
                last_progress = time.monotonic()
            due = (
                trainer.step % config["checkpoint_every"] == 0
                or time.monotonic() - last_save > config["checkpoint_seconds"]
            )
            # Every worker must take the same decision (the save has barriers): rank 0's clock decides.
            if not done and trainer.comm.broadcast_flag(due):
                settle()  # never checkpoint parameters that a non-finite loss has reached
                trainer.save_checkpoint()
                last_save = time.monotonic()
    finally:
        trainer.close()
    bar.close()
    final = trainer.save_final()
    if trainer.is_main:
        write_progress("done")
    return final
