"""BESS training: one worker of D (or the only one), per-shard atomic checkpoints, exact resume.

Worker w of W owns the entity shards i with i % W == w (their rows, Adam state and features).
Per step it samples B triples whose heads it owns, B / D from each bucket (i, j), and N / D shared
negatives from each shard j; the tails it needs travel from their owners in one AllToAll (or, with
``exchange: scores``, its queries are all-gathered and the owners send back scores). Dense
parameters are replicated; their gradients are summed across workers with one all-reduce.

``Trainer`` builds one worker's state, chooses its exchange strategy and objective once, and
saves and resumes it; the step's phases are ``kge.train.step.StepPhases``. ``train`` runs the
loop of ``kge.train.loop`` with the callbacks of ``kge.train.callbacks``.

Every step seeds its own generators from (seed, step, rank), so a run resumed from a checkpoint
draws the same batches and dropout masks as an uninterrupted run and ends with identical parameters.

With ``sparsity.density`` < 1 the entity rows are block sparse (:mod:`kge.table.sparsity`): the
gradient's inactive blocks are zeroed before the sparse Adam step, and every ``sparsity.every``
steps each owned row prunes and regrows blocks; each shard's mask is part of its checkpoint.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm import tqdm

from kge.bess.features import FeatureStore
from kge.bess.partition import Partition, owned_shards
from kge.bess.sampling import BessSampler
from kge.bess.shard import read_shard_meta
from kge.common import atomic
from kge.common.errors import KgeInputError
from kge.config import ModelConfig, config_hash
from kge.dist.comm import LocalComm
from kge.dist.device import resolve_device
from kge.nn import losses
from kge.nn.model import KGEModel, init_entity_rows
from kge.table import sparsity
from kge.table.footprint import bytes_per_entity
from kge.table.sparse_adam import SparseRowAdam
from kge.train import checkpoint
from kge.train.callbacks import PROGRESS_SECONDS, training_callbacks
from kge.train.exchange import make_exchange
from kge.train.loop import TrainingLoop
from kge.train.objective import Penalties, make_objective
from kge.train.schedule import learning_rate, step_seed
from kge.train.step import Prepared, StepPhases, check_loss
from kge.train.timing import STEP_BUCKETS, PhaseTimer

MODEL_NAME, HISTORY_NAME, PROGRESS_NAME = checkpoint.MODEL_NAME, checkpoint.HISTORY_NAME, checkpoint.PROGRESS_NAME
# Names importers had from this module before the step, the loop and its callbacks moved out of it.
__all__ = [
    "HISTORY_NAME",
    "MODEL_NAME",
    "PROGRESS_NAME",
    "PROGRESS_SECONDS",
    "Prepared",
    "Trainer",
    "check_loss",
    "learning_rate",
    "step_seed",
    "train",
]


class Trainer(StepPhases):
    """One worker's model rows, optimisers, sampler and feature store (``comm`` None = the only worker),
    with its exchange strategy and objective; ``train_step`` runs one step (``StepPhases``)."""

    def __init__(self, config: ModelConfig, shard_dir: str | Path, model_dir: str | Path, comm=None):
        if not isinstance(config, ModelConfig):
            raise TypeError(
                f"Trainer: config must be a kge.config.ModelConfig (resolve_model_config), got {type(config).__name__}"
            )
        self.config = config
        self.comm = comm if comm is not None else LocalComm()
        self.rank, self.world_size = self.comm.rank, self.comm.world_size
        if config.workers != self.world_size:
            raise KgeInputError(f"workers: config asks for {config.workers} workers, {self.world_size} are running")
        self.model_dir = Path(model_dir)
        self.shard_dir = Path(shard_dir)
        self.device = getattr(self.comm, "device", None) or resolve_device(config.device)
        meta = read_shard_meta(shard_dir)
        self.num_entities = int(meta["num_entities"])
        self.num_relations = int(meta["num_relations"])
        self.partition = Partition.load(self.shard_dir / "partition.npz")
        self.n_shards, self.shard_size = self.partition.n_shards, self.partition.shard_size
        self.owned = owned_shards(self.n_shards, self.rank, self.world_size)
        self.features = FeatureStore(shard_dir, self.n_shards, shards=self.owned)
        self.negatives = config.negatives_per_step(self.n_shards)
        # Two-phase schedule: phase one's smaller pool must split over shards like the full one.
        small = config.two_phase.negatives if config.two_phase.enabled else None
        if small is not None and small % self.n_shards:
            raise KgeInputError(f"two_phase.negatives: {small} must be a multiple of the shard count {self.n_shards}")
        self.sampler = BessSampler(
            shard_dir,
            config.batch_size,
            self.negatives,
            rank=self.rank,
            world_size=self.world_size,
            relation_power=config.relation_power,
            inverse_relations=config.inverse_relations,
        )
        generator = torch.Generator().manual_seed(config.seed)  # dense parameters: identical on every worker
        # With inverse relations, relation r + R is the reverse of r: (t, r + R, h) for every (h, r, t).
        self.model_relations = self.sampler.num_model_relations
        self.model = KGEModel(config, self.model_relations, self.features.dim, generator)
        self.model.to(self.device)
        adam = config.adam
        self.entity_optimizer = SparseRowAdam(
            init_entity_rows(config, self.owned, self.shard_size).to(self.device),
            adam.beta1,
            adam.beta2,
            adam.eps,
            storage=config.dtype,
            stochastic_rounding=config.stochastic_rounding,
        )
        self.model.entity_table = self.entity_optimizer.table  # in the storage dtype
        # Block sparsity (density < 1): the mask of the owned rows; inactive blocks start at 0.
        self.sparsity = None
        if config.sparsity.enabled:
            self.sparsity = sparsity.BlockSparsity(config, self.owned, self.shard_size, self.device)
            self.sparsity.zero_inactive_([self.entity_optimizer.table])
        # Loss scaling as the submission did: Adam is scale invariant, so gradients are never
        # unscaled; the scale only lifts small gradients above fp16's underflow in stored m.
        scale = config.loss_scale
        self.loss_scale = float(config.batch_size * self.negatives) if scale == "auto" else float(scale)
        self.dense_params = [p for group in self.model.dense_param_groups() for p in group["params"]]
        self.dense_optimizer = torch.optim.Adam(
            self.model.dense_param_groups(),
            lr=config.learning_rate,
            betas=(adam.beta1, adam.beta2),
            eps=adam.eps,
        )
        self.step = 0
        # Wall time per phase of train_step, for `kge bench`; "exchange" is waiting on collectives.
        # On CUDA a timed phase synchronizes the device at both ends, which costs the overlap of the
        # step's kernels: there only `kge bench` switches the timer on (timer.enabled = True).
        self.timer = PhaseTimer(STEP_BUCKETS, self.device, enabled=self.device.type != "cuda")
        self.history: list[dict] = []
        self.train_seconds = 0.0
        self.hash = config_hash(config)
        # The correction log((|E|-1)/N) undoes the uniform draw of the N shared negatives. In-batch
        # tails are drawn from the data's tail distribution, not uniformly: correcting them too
        # pushed popular entities down (miniature, DistMult, 1000 steps: validation MRR 0.054 with
        # the correction on every column, 0.089 on shared negatives only).
        self.corrections = {
            n: losses.sampling_correction(self.num_entities, n, config.loss.correction_weight)
            for n in {self.negatives, small or self.negatives}
        }
        # How the scores come together and what loss they feed: decided here, once, not per step.
        self.exchange = make_exchange(config, self.model, self.comm)
        self.objective = make_objective(config, self.model)
        self.penalties = Penalties(config.regularisation)
        self.last_step: dict = {}  # the last step's indices, for parity checks and debugging
        # Step t + 1's sampling and id routing run in a background thread while step t computes.
        self._prefetch = os.environ.get("KGE_PREFETCH", "1") != "0"
        self._executor: ThreadPoolExecutor | None = None
        self._ahead = None  # (step, future) of the prefetched step

    @property
    def is_main(self) -> bool:
        return self.rank == 0

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
            atomic.save_json(self.model_dir / HISTORY_NAME, {"config": self.config.to_dict(), "history": self.history})
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
            "config": self.config.to_dict(),  # plain data: model.pt loads without kge.config
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
                "density": self.config.sparsity.density,
                "block": self.sparsity.block,
                "active_blocks": self.sparsity.k,
                "n_blocks": self.config.block_count,
                "bytes_per_entity": bytes_per_entity(self.config.dim, self.config.dtype, sparsity=self.config.sparsity),
            }
        if self.is_main:
            atomic.torch_save(self.model_dir / MODEL_NAME, final)
            atomic.save_json(self.model_dir / HISTORY_NAME, {"config": self.config.to_dict(), "history": self.history})
            checkpoint.remove_checkpoints(self.model_dir)
        self.comm.barrier()
        return final


def train(
    config: ModelConfig, shard_dir: str | Path, model_dir: str | Path, evaluator=None, progress: bool = True, comm=None
) -> dict:
    """Train (or resume) to ``config.steps``; writes model_dir/model.pt atomically at the end.

    ``evaluator(trainer) -> dict`` is called (on every worker) every ``validate_every`` steps and
    at the end; its metrics (e.g. train and validation MRR) are appended to the history with the
    mean loss. ``comm`` is this worker's communicator (None: the only worker). Returns model.pt's
    contents. The loop and what it does between steps: ``kge.train.loop``, ``kge.train.callbacks``.
    """
    trainer = Trainer(config, shard_dir, model_dir, comm)
    trainer.model_dir.mkdir(parents=True, exist_ok=True)
    trainer.try_resume()
    return TrainingLoop(trainer, config.steps, training_callbacks(trainer, evaluator, progress)).run()
