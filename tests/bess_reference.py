"""Single-process reference of a W-worker BESS step, and the worker side of the parity test.

The reference holds the whole entity table and simulates the W workers in one autograd graph:
every worker's tail embeddings are encoded by their owner into a [source, destination, c, d]
send tensor, and the AllToAll is its transpose (received[dst][src] = send[src][dst]). It shares
only the building blocks with kge.train.trainer (encoder, scoring functions, losses, sparse Adam, each
tested on its own against hand computations), not the exchange logic under test.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from kge.bess.features import FeatureStore
from kge.bess.partition import Partition
from kge.bess.shard import read_shard_meta
from kge.nn import losses
from kge.nn.model import KGEModel, init_entity_rows
from kge.table import sparsity
from kge.table.sparse_adam import SparseRowAdam
from kge.train import subspace
from kge.train.trainer import learning_rate


def reference_steps(config: dict, shard_dir: Path, batches: list[list]) -> dict:
    """Run len(batches) steps; batches[step][worker] is that worker's sampled Batch.

    Returns {"losses": [float per step], "dense_grads": [{name: grad} per step],
    "table": final (D*S, d) table, "dense": final dense state_dict}.
    """
    meta = read_shard_meta(shard_dir)
    partition = Partition.load(Path(shard_dir) / "partition.npz")
    D, S, W = partition.n_shards, partition.shard_size, config.workers
    features = FeatureStore(shard_dir, D)
    relations = int(meta["num_relations"]) * (2 if config.inverse_relations else 1)
    model = KGEModel(config, relations, features.dim, torch.Generator().manual_seed(config.seed))
    table = init_entity_rows(config, list(range(D)), S)
    adam = config.adam
    sparse = SparseRowAdam(table, adam.beta1, adam.beta2, adam.eps)
    # Block sparsity: one mask over all D shards (kge.table.sparsity, tested on its own in test_sparsity).
    blocks = sparsity.BlockSparsity(config, list(range(D)), S, "cpu") if config.sparsity.enabled else None
    if blocks is not None:
        blocks.zero_inactive_([table])
    dense_opt = torch.optim.Adam(
        model.dense_param_groups(), lr=config.learning_rate, betas=(adam.beta1, adam.beta2), eps=adam.eps
    )
    out = {"losses": [], "dense_grads": []}
    for step, worker_batches in enumerate(batches):
        # The pool of this step (two-phase schedules draw a smaller one first).
        correction = losses.sampling_correction(
            int(meta["num_entities"]), config.negatives_at(D, step), config.loss.correction_weight
        )
        leaf = table.clone().requires_grad_(True)
        touched = []
        # Targets of every worker and their owners.
        heads, targets, owners = [], [], []
        for batch in worker_batches:
            heads.append(partition.row_of(batch.head))
            t = partition.row_of(torch.cat([batch.tail, batch.negatives]))
            targets.append(t)
            owners.append(torch.div(t, S, rounding_mode="floor") % W)
            touched += [heads[-1], t]
        M = targets[0].shape[0]
        c = M // W
        # send[src][dst]: the tails dst needs from src, encoded by src, in dst's column order.
        send = [[None] * W for _ in range(W)]
        tail_parts = {k: [] for k in ("e", "s", "f")}
        for dst in range(W):
            for src in range(W):
                rows = targets[dst][owners[dst] == src]
                assert rows.shape[0] == c, "BESS blocks must be balanced"
                emb = leaf[rows]
                e, f = model.encode(emb, features.gather(rows) if model.use_features else None, "tail")
                send[src][dst] = e
                tail_parts["e"].append(e)
                tail_parts["s"].append(emb)
                tail_parts["f"].append(f)
        sent = torch.stack([torch.stack(row) for row in send])  # (src, dst, c, d)
        received = sent.transpose(0, 1)  # the AllToAll: (dst, src, c, d)
        total = 0.0
        head_parts = {k: [] for k in ("e", "s", "f")}
        for i, batch in enumerate(worker_batches):
            B = batch.head.shape[0]
            tails = torch.empty(M, config.dim)
            for src in range(W):
                tails = tails.index_put((torch.nonzero(owners[i] == src).squeeze(1),), received[i, src])
            emb = leaf[heads[i]]
            head_e, head_f = model.encode(emb, features.gather(heads[i]) if model.use_features else None, "head")
            head_parts["e"].append(head_e)
            head_parts["s"].append(emb)
            head_parts["f"].append(head_f)
            scores = model.scores(head_e, batch.relation, tails)
            diag = torch.arange(B)
            mask = torch.ones_like(scores, dtype=torch.bool)
            mask[diag, diag] = False
            if not config.loss.in_batch_negatives:
                mask[:, :B] = False
            if config.loss.mask_false_negatives:  # dense id compare, not the trainer's sparse pairs
                mask &= batch.tail.unsqueeze(1) != torch.cat([batch.tail, batch.negatives]).unsqueeze(0)
            if config.loss.type == "softmax":
                shift = torch.cat([torch.zeros(B), torch.full((M - B,), correction)])
                loss = losses.softmax_loss(scores[diag, diag], scores + shift, mask)
            else:
                lc = config.loss
                loss = losses.logsigmoid_loss(
                    scores[diag, diag],
                    scores,
                    mask,
                    lc.adversarial,
                    lc.positive_weight,
                    lc.negative_weight,
                )
            total = total + loss
        reg = config.regularisation
        for key, part in (("entity", "e"), ("embedding", "s"), ("feature", "f")):
            penalty = getattr(reg, key)
            if penalty.weight > 0:
                total = total + losses.l3_penalty(head_parts[part] + tail_parts[part], penalty.weight, penalty.power)
        total = total / W
        dense_opt.zero_grad(set_to_none=True)
        total.backward()
        # The same projection as kge.train.trainer (one kge function): what is under test here is the exchange.
        subspace.project_gradients_(
            [p for g in dense_opt.param_groups for p in g["params"]], config.subspace.dim, config.seed, step
        )
        out["losses"].append(float(total.detach()))
        out["dense_grads"].append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        lr = learning_rate(config, step)
        for group in dense_opt.param_groups:
            group["lr"] = lr * group["lr_modifier"]
        dense_opt.step()
        rows = torch.unique(torch.cat(touched))
        grad = leaf.grad[rows] if blocks is None else blocks.mask_gradient(rows, leaf.grad[rows])
        sparse.step(rows, grad, lr * config.lr_modifiers.entity_embedding)
        if blocks is not None and blocks.event_due(step + 1):
            blocks.prune_and_regrow_(step + 1, table, [sparse.m, sparse.v])
    out["table"] = table
    out["mask"] = None if blocks is None else blocks.mask
    out["dense"] = {k: v.clone() for k, v in model.state_dict().items()}
    return out


def _join_gloo(rank: int, world_size: int, init_file: str):
    """A spawned test worker joins the gloo group (file rendezvous) -> its communicator."""
    import torch.distributed as dist

    from kge.dist.comm import ProcessGroupComm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    return ProcessGroupComm(torch.device("cpu"))


def _save_and_leave(results, path: str) -> None:
    import torch.distributed as dist

    torch.save(results, path)
    dist.barrier()
    dist.destroy_process_group()


def parity_worker(
    rank: int, world_size: int, init_file: str, configs: list[dict], shard_dir: str, out_dir: str, steps: int
) -> None:
    """One spawned worker: run ``steps`` distributed steps of every config, save what it saw."""
    from kge.train.trainer import Trainer

    comm = _join_gloo(rank, world_size, init_file)
    results = []
    for n, config in enumerate(configs):
        trainer = Trainer(config, shard_dir, Path(out_dir) / f"model{n}", comm)
        record = {"batches": [], "losses": [], "dense_grads": []}
        for _ in range(steps):
            record["losses"].append(trainer.train_step())
            record["batches"].append(trainer.last_step["batch"])
            record["dense_grads"].append(
                {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
            )
            pairs = trainer.last_step["false_negatives"]  # (rows, cols) masked this step, or None
            record.setdefault("false_negatives", []).append(
                None if pairs is None else (pairs[0].clone(), pairs[1].clone())
            )
        record["owned"] = trainer.owned
        record["table"] = trainer.model.entity_table.clone()
        record["mask"] = None if trainer.sparsity is None else trainer.sparsity.mask.clone()
        record["dense"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        results.append(record)
    _save_and_leave(results, os.path.join(out_dir, f"rank{rank}.pt"))


def reference_topk(config: dict, shard_dir: Path, hr: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force: the full (Q, D*S) score matrix of the initial model, padding masked, torch.topk.

    Returns (entity ids (Q, k), scores (Q, k)).
    """
    meta = read_shard_meta(shard_dir)
    partition = Partition.load(Path(shard_dir) / "partition.npz")
    features = FeatureStore(shard_dir, partition.n_shards)
    relations = int(meta["num_relations"]) * (2 if config.inverse_relations else 1)
    model = KGEModel(config, relations, features.dim, torch.Generator().manual_seed(config.seed))
    table = init_entity_rows(config, list(range(partition.n_shards)), partition.shard_size)
    row_entity = torch.from_numpy(np.concatenate(partition.shard_entities))
    with torch.no_grad():
        all_rows = torch.arange(table.shape[0])
        feats = features.gather(all_rows) if model.use_features else None
        tails = model.encode(table, feats, "tail")[0]
        head_rows = partition.row_of(hr[:, 0])
        heads = model.encode(table[head_rows], features.gather(head_rows) if model.use_features else None, "head")[0]
        scores = model.scores(heads, hr[:, 1], tails).masked_fill(row_entity < 0, float("-inf"))
        top_s, top_rows = torch.topk(scores, k, dim=1)
    return row_entity[top_rows], top_s


def topk_worker(
    rank: int, world_size: int, init_file: str, configs: list[dict], shard_dir: str, out_dir: str, hr, k: int
) -> None:
    """One spawned worker: sharded top-K of every config's initial model for queries ``hr``."""
    from kge.predict.predictor import Predictor
    from kge.train.trainer import Trainer

    comm = _join_gloo(rank, world_size, init_file)
    results = []
    for n, config in enumerate(configs):
        trainer = Trainer(config, shard_dir, Path(out_dir) / f"model{n}", comm)
        predictor = Predictor(
            trainer.model,
            trainer.features,
            trainer.partition,
            trainer.device,
            block_rows=97,
            owned=trainer.owned,
            comm=comm,
        )
        results.append(predictor.topk(hr.numpy(), k, query_batch=64))
    _save_and_leave(results, os.path.join(out_dir, f"topk{rank}.pt"))
