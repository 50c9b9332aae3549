"""Single-worker BESS training loop with atomic checkpoints and exact resume.

Every step seeds its own generators from (seed, step), so a run resumed from a checkpoint draws
the same batches and dropout masks as an uninterrupted run and ends with identical parameters.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kge import atomic, losses
from kge.config import config_hash
from kge.device import resolve_device
from kge.features import FeatureStore
from kge.model import KGEModel
from kge.optim import SparseRowAdam
from kge.partition import Partition
from kge.sampling import BessSampler
from kge.shard import read_shard_meta

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
HISTORY_NAME = "history.json"


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 12_345) % (2**63 - 1)


def learning_rate(config: dict, step: int) -> float:
    """Base learning rate at ``step`` (0-based): linear decay to 0 at the last step, or constant."""
    if config["lr_decay"] == "linear":
        return config["learning_rate"] * (1.0 - step / config["steps"])
    return config["learning_rate"]


class Trainer:
    """Holds the model, optimisers, sampler and feature store of one training run."""

    def __init__(self, config: dict, shard_dir: str | Path, model_dir: str | Path):
        self.config = config
        self.model_dir = Path(model_dir)
        self.shard_dir = Path(shard_dir)
        self.device = resolve_device(config["device"])
        meta = read_shard_meta(shard_dir)
        self.num_entities = int(meta["num_entities"])
        self.num_relations = int(meta["num_relations"])
        self.partition = Partition.load(self.shard_dir / "partition.npz")
        self.features = FeatureStore(shard_dir, self.partition.n_shards)
        self.sampler = BessSampler(
            shard_dir, config["batch_size"], config["negatives"], rank=0, world_size=config["workers"],
            relation_power=config["relation_power"],
        )
        generator = torch.Generator().manual_seed(config["seed"])
        self.model = KGEModel(config, self.features.num_rows, self.num_relations, self.features.dim, generator)
        self.model.to(self.device)
        self.model.entity_table = self.model.entity_table.to(self.device)
        adam = config["adam"]
        self.entity_optimizer = SparseRowAdam(self.model.entity_table, adam["beta1"], adam["beta2"], adam["eps"])
        self.dense_optimizer = torch.optim.Adam(
            self.model.dense_param_groups(), lr=config["learning_rate"], betas=(adam["beta1"], adam["beta2"]), eps=adam["eps"]
        )
        self.step = 0
        # Wall time per phase of train_step (sample, gather, compute, optimizer), for `kge bench`.
        self.phase_seconds = {"sample": 0.0, "gather": 0.0, "compute": 0.0, "optimizer": 0.0}
        self._phase_start = 0.0
        self.history: list[dict] = []
        self.train_seconds = 0.0
        self.hash = config_hash(config)
        # The correction log((|E|-1)/N) undoes the uniform draw of the N shared negatives. In-batch
        # tails are drawn from the data's tail distribution, not uniformly: correcting them too
        # pushed popular entities down (miniature, DistMult, 1000 steps: validation MRR 0.054 with
        # the correction on every column, 0.089 on shared negatives only).
        self.correction = losses.sampling_correction(self.num_entities, config["negatives"], config["loss"]["correction_weight"])

    # ----- one step -------------------------------------------------------------------------
    def _phase(self, name: str | None) -> None:
        """Charge the time since the last mark to phase ``name`` (None only starts the clock)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # kernels run asynchronously; time what ran
        now = time.perf_counter()
        if name is not None:
            self.phase_seconds[name] += now - self._phase_start
        self._phase_start = now

    def train_step(self) -> float:
        """One BESS step on B triples and N shared negatives; returns the loss value."""
        config, model = self.config, self.model
        self._phase(None)
        seed = step_seed(config["seed"], self.step)
        batch = self.sampler.sample(torch.Generator().manual_seed(seed))
        self._phase("sample")
        torch.manual_seed(seed)  # dropout masks
        B = batch.head.shape[0]
        rows = self.partition.row_of(torch.cat([batch.head, batch.tail, batch.negatives]))
        unique_rows, inverse = torch.unique(rows, return_inverse=True)
        unique_rows = unique_rows.to(self.device)
        inverse = inverse.to(self.device)
        embedding_rows = model.entity_table[unique_rows].requires_grad_(True)
        embedding = embedding_rows[inverse]
        features = self.features.gather(rows).to(self.device) if model.use_features else None
        self._phase("gather")
        head_e, head_f = model.encode(embedding[:B], None if features is None else features[:B], "head")
        tail_e, tail_f = model.encode(embedding[B:], None if features is None else features[B:], "tail")
        relations = batch.relation.to(self.device)
        scores = model.scores(head_e, relations, tail_e)  # (B, B + N): batch tails, then shared negatives
        diagonal = torch.arange(B, device=self.device)
        positive = scores[diagonal, diagonal]
        negative_mask = torch.ones_like(scores, dtype=torch.bool)
        negative_mask[diagonal, diagonal] = False  # a query's own tail is its positive, not a negative
        loss_cfg = config["loss"]
        if not loss_cfg["in_batch_negatives"]:
            negative_mask[:, :B] = False
        if loss_cfg["type"] == "softmax":
            shift = torch.zeros(scores.shape[1], device=self.device)
            shift[B:] = self.correction
            loss = losses.softmax_loss(positive, scores + shift, negative_mask, correction=0.0)
        else:
            loss = losses.logsigmoid_loss(
                positive, scores, negative_mask, adversarial_scale=loss_cfg["adversarial_scale"],
                pos_weight=loss_cfg["positive_weight"], neg_weight=loss_cfg["negative_weight"],
            )
        reg = config["regularisation"]
        for key, tensors in (
            ("entity", [head_e, tail_e]),
            ("embedding", [embedding[:B], embedding[B:]]),
            ("feature", [head_f, tail_f]),
        ):
            if reg[key]["weight"] > 0:
                loss = loss + losses.l3_penalty(tensors, reg[key]["weight"], reg[key]["power"])
        self.dense_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._phase("compute")
        lr = learning_rate(config, self.step)
        for group in self.dense_optimizer.param_groups:
            group["lr"] = lr * group["lr_modifier"]
        self.dense_optimizer.step()
        self.entity_optimizer.step(unique_rows, embedding_rows.grad, lr * config["lr_modifiers"]["entity_embedding"])
        self._phase("optimizer")
        self.step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {self.step}; lower learning_rate")
        return value

    # ----- checkpoints ----------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "config_hash": self.hash,
            "step": self.step,
            "entity_table": self.model.entity_table.cpu(),
            "entity_optimizer": {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in self.entity_optimizer.state_dict().items()},
            "dense": self.model.state_dict(),
            "dense_optimizer": self.dense_optimizer.state_dict(),
            "history": self.history,
            "train_seconds": self.train_seconds,
        }

    def save_checkpoint(self) -> None:
        atomic.torch_save(self.model_dir / CHECKPOINT_NAME, self.state())
        atomic.save_json(self.model_dir / HISTORY_NAME, {"config": self.config, "history": self.history})

    def try_resume(self) -> bool:
        path = self.model_dir / CHECKPOINT_NAME
        if not path.exists():
            return False
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("config_hash") != self.hash:
            tqdm.write(f"kge train: {path} belongs to a different configuration; starting afresh", file=sys.stderr)
            return False
        self.model.entity_table.copy_(state["entity_table"])
        self.entity_optimizer.load_state_dict(state["entity_optimizer"])
        self.model.load_state_dict(state["dense"])
        self.dense_optimizer.load_state_dict(state["dense_optimizer"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        self.train_seconds = float(state["train_seconds"])
        tqdm.write(f"kge train: resumed from {path} at step {self.step}", file=sys.stderr)
        return True

    def final_model(self) -> dict:
        return {
            "format": "kge-model-v1",
            "config": self.config,
            "num_entities": self.num_entities,
            "num_relations": self.num_relations,
            "feature_dim": self.features.dim,
            "n_shards": self.partition.n_shards,
            "steps": self.step,
            "train_seconds": self.train_seconds,
            "parameters": self.model.parameter_count(self.num_entities),
            "history": self.history,
            "entity_table": self.model.entity_table.cpu(),
            "dense": self.model.state_dict(),
        }


def train(config: dict, shard_dir: str | Path, model_dir: str | Path, evaluator=None, progress: bool = True) -> dict:
    """Train (or resume) to ``config['steps']``; writes model_dir/model.pt atomically at the end.

    ``evaluator(trainer) -> dict`` is called every ``validate_every`` steps and at the end; its
    metrics (e.g. train and validation MRR) are appended to the history with the mean loss.
    """
    trainer = Trainer(config, shard_dir, model_dir)
    trainer.model_dir.mkdir(parents=True, exist_ok=True)
    trainer.try_resume()
    total = config["steps"]
    last_save = time.monotonic()
    running: list[float] = []
    bar = tqdm(total=total, initial=trainer.step, desc=f"train {config['score_fn']}", unit="step", disable=not progress, mininterval=2.0)
    log_every = max(1, min(100, total // 20))
    while trainer.step < total:
        start = time.perf_counter()
        running.append(trainer.train_step())
        trainer.train_seconds += time.perf_counter() - start
        bar.update(1)
        done = trainer.step == total
        every = config["validate_every"]
        evaluate = evaluator is not None and (done or (every and trainer.step % every == 0))
        if trainer.step % log_every == 0 or done or evaluate:
            entry = {"step": trainer.step, "loss": float(np.mean(running)), "lr": learning_rate(config, trainer.step - 1)}
            running.clear()
            if evaluate:
                entry.update(evaluator(trainer))
            trainer.history.append(entry)
            bar.set_postfix({k: round(v, 4) for k, v in entry.items() if k != "step"})
        if not done and (trainer.step % config["checkpoint_every"] == 0 or time.monotonic() - last_save > config["checkpoint_seconds"]):
            trainer.save_checkpoint()
            last_save = time.monotonic()
    bar.close()
    final = trainer.final_model()
    atomic.torch_save(trainer.model_dir / MODEL_NAME, final)
    atomic.save_json(trainer.model_dir / HISTORY_NAME, {"config": config, "history": trainer.history})
    (trainer.model_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
    return final
