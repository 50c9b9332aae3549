"""`kge bench train|predict`: throughput against the machine's own fp32 matmul rate, one JSON line.

Ratios are measured in one process, because these machines are noisy: the matmul rate is measured
right before the workload, on the same threads and device.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kge.config import ModelConfig, resolve_model_config
from kge.dist.device import resolve_device
from kge.nn import fused_distance
from kge.nn.scorers import get_scorer

FEATURE_FLOPS_PER_ROW = 4  # encoder: forward x @ M.T (2nFd) + weight gradient (2nFd); features need no gradient


def matmul_gflops(device: torch.device, n: int = 1024, seconds: float = 1.0) -> float:
    """Sustained fp32 GFLOP/s of an (n x n) @ (n x n) matmul on ``device``."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    sync()
    return 2.0 * n**3 * count / (time.perf_counter() - start) / 1e9


def _generate(root: Path, shards: Path, scale: float, n_shards: int) -> tuple[Path, Path]:
    """The miniature of ``scale`` at ``root`` and its ``n_shards`` shards, each made unless complete
    (the dataset's release marker and shard_meta.json are written last)."""
    from kge.bess.shard import shard_dataset
    from kge.data.layout import MARKER_NAME, dataset_dir
    from kge.data.mini import generate_mini

    if not (dataset_dir(root) / MARKER_NAME).exists():
        generate_mini(root, seed=0, scale=scale, progress=False)
    if not (shards / "shard_meta.json").exists():
        shard_dataset(root, shards, n_shards, seed=0, progress=False)
    return root, shards


def cached_data(scale: float, n_shards: int) -> tuple[Path, Path]:
    """A generated miniature and its shards in a reusable cache directory (for multi-process runs,
    whose workers must all read the same files)."""
    base = Path(tempfile.gettempdir()) / "kge-bench-cache" / f"mini-scale{scale:g}"
    return _generate(base / "data", base / f"shards{n_shards}", scale, n_shards)


def _data(root, shard_dir, scale: float, n_shards: int, tmp: Path) -> tuple[Path, Path]:
    """Use the given dataset and shards, or generate a miniature of ``scale`` into ``tmp``."""
    if root and shard_dir:
        return Path(root), Path(shard_dir)
    return _generate(tmp / "data", tmp / "shards", scale, n_shards)


def _model_config(
    score_fn: str,
    dim: int,
    batch: int,
    negatives: int,
    workers: int,
    device: str,
    exchange: str = "tails",
    distance: int | None = None,
    loss: str = "softmax",
    features: bool = True,
) -> ModelConfig:
    """A bench model's config; ``distance`` None: L1 for TransE, L2 for TransH and RotatE (the
    recipe's majority per family); ``features`` False: embeddings only."""
    if distance is None:
        distance = get_scorer(score_fn).bench_p
    return resolve_model_config(
        {
            "score_fn": score_fn,
            "dim": dim,
            "batch_size": batch,
            "negatives": negatives,
            "workers": workers,
            "exchange": exchange,
            "device": device,
            "steps": 10**9,
            "loss": {"type": loss, "in_batch_negatives": True},
            "distance": distance,
            "features": {"use": bool(features)},
        },
        where="kge bench",
    )


def bench_train(
    score_fn: str,
    dim: int,
    batch: int,
    negatives: int,
    workers: int = 1,
    steps: int = 30,
    warmup: int = 3,
    root=None,
    shard_dir=None,
    scale: float = 0.2,
    n_shards: int = 2,
    device: str = "auto",
    comm=None,
    exchange: str = "tails",
    distance: int | None = None,
    loss: str = "softmax",
    features: bool = True,
) -> dict | None:
    """Time ``steps`` training steps after ``warmup``; scored pairs are B x (B + N) per step and worker.

    ``features=False`` trains the embeddings alone (no 768-d feature encoder). ``first_step_s`` is
    the first step's wall time (one-off costs: allocator warm-up, the prefetch thread's start).

    With ``comm`` (one of W workers launched by torchrun) every worker times its own steps, the
    matmul rates measured concurrently by all workers are summed (the machine's rate under the
    same load), throughput counts all W workers, and only rank 0 returns the result.
    """
    from kge.dist.comm import LocalComm
    from kge.train.trainer import Trainer

    comm = comm if comm is not None else LocalComm()
    dev = getattr(comm, "device", None) or resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="kge-bench-") as tmp:
        root, shard_dir = _data(root, shard_dir, scale, n_shards, Path(tmp))
        trainer = Trainer(
            _model_config(score_fn, dim, batch, negatives, workers, device, exchange, distance, loss, features),
            shard_dir,
            Path(tmp) / "model",
            comm,
        )
        # The first step pays one-off costs (loading or building the native kernels, the prefetch
        # thread's start, allocator warm-up).
        first = time.perf_counter()
        trainer.train_step()
        first = time.perf_counter() - first
        for _ in range(warmup - 1):
            trainer.train_step()
        comm.barrier()
        rate = matmul_gflops(dev)
        comm.barrier()
        trainer.phase_seconds = dict.fromkeys(trainer.phase_seconds, 0.0)
        trainer.timer.enabled = True  # off by default on CUDA (it synchronizes the device per phase)
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        seconds = time.perf_counter() - start
        trainer.close()
    if comm.world_size > 1:
        # Sum over workers: matmul rate and seconds (phases averaged below); the slowest worker sets the pace.
        totals = torch.tensor([rate, seconds] + list(trainer.phase_seconds.values()), dtype=torch.float64, device=dev)
        comm.all_reduce_([totals])
        rate = float(totals[0])
        seconds = float(totals[1]) / comm.world_size
        trainer.phase_seconds = {k: float(v) / comm.world_size for k, v in zip(trainer.phase_seconds, totals[2:])}
        if comm.rank != 0:
            return None
    batch_all = batch * comm.world_size
    columns = batch + negatives
    # The scorer's forward FLOPs per scored pair (B x M per step; DistMult: a d-wide multiply-add, 2d)
    # and per folded query (RESCAL's h^T R: 2 d^2), backward twice that (gradients of both operands).
    scoring_flops = get_scorer(score_fn).train_flops(dim, batch_all * steps, batch_all * columns * steps)
    feature_flops = (
        FEATURE_FLOPS_PER_ROW * (batch + columns) * comm.world_size * trainer.features.dim * dim * steps
        if trainer.model.use_features
        else 0.0
    )
    compute = trainer.phase_seconds["compute"]
    return {
        "bench": "train",
        "score_fn": score_fn,
        "distance": trainer.config.distance if trainer.model.scorer.distance else None,
        "loss": trainer.config.loss.type,
        "dim": dim,
        "batch": batch,
        "negatives": negatives,
        "workers": workers,
        "exchange": exchange,
        "features": bool(trainer.model.use_features),
        "steps": steps,
        "distance_kernels": fused_distance.backend_for(torch.zeros(1, device=dev)),
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "triples_per_s": batch_all * steps / seconds,
        "scored_pairs_per_s": batch_all * columns * steps / seconds,
        "matmul_gflops": rate,
        "model_gflops": (scoring_flops + feature_flops) / seconds / 1e9,
        "fraction_of_matmul": (scoring_flops + feature_flops) / seconds / 1e9 / rate,
        "compute_fraction_of_matmul": (scoring_flops + feature_flops) / compute / 1e9 / rate if compute else None,
        "phase_share": {k: v / seconds for k, v in trainer.phase_seconds.items()},
        "step_ms": 1e3 * seconds / steps,
        "first_step_s": first,
        "seconds": seconds,
    }


def bench_predict(
    score_fn: str,
    dim: int,
    queries: int = 2000,
    k: int = 100,
    root=None,
    shard_dir=None,
    scale: float = 1.0,
    n_shards: int = 2,
    device: str = "auto",
    query_batch: int = 1000,
    block: int = 65536,
    distance: int | None = None,
) -> dict:
    """Time top-``k`` over every entity for ``queries`` random (head, relation) queries."""
    from kge.bess.shard import read_shard_meta
    from kge.predict.predictor import Predictor
    from kge.train.trainer import Trainer

    dev = resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="kge-bench-") as tmp:
        root, shard_dir = _data(root, shard_dir, scale, n_shards, Path(tmp))
        d = int(read_shard_meta(shard_dir)["n_shards"])  # the given shards may have another D
        # Training sizes are irrelevant here; the smallest valid ones keep the sampler cheap.
        trainer = Trainer(
            _model_config(score_fn, dim, d * d, d, 1, device, distance=distance), shard_dir, Path(tmp) / "model"
        )
        trainer.model.eval()
        rng = np.random.default_rng(0)
        hr = np.stack(
            [rng.integers(0, trainer.num_entities, queries), rng.integers(0, trainer.num_relations, queries)], 1
        )
        predictor = Predictor(trainer.model, trainer.features, trainer.partition, dev, block)
        predictor.topk(hr[: min(queries, query_batch)], k, query_batch=query_batch)  # warm-up
        rate = matmul_gflops(dev)
        start = time.perf_counter()
        predictor.topk(hr, k, query_batch=query_batch)
        seconds = time.perf_counter() - start
    flops = get_scorer(score_fn).predict_flops(dim, queries, queries * trainer.num_entities)
    return {
        "bench": "predict",
        "score_fn": score_fn,
        "distance": trainer.config.distance if trainer.model.scorer.distance else None,
        "dim": dim,
        "queries": queries,
        "entities": trainer.num_entities,
        "k": k,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "queries_per_s": queries / seconds,
        "matmul_gflops": rate,
        "scoring_gflops": flops / seconds / 1e9,
        "fraction_of_matmul": flops / seconds / 1e9 / rate,
        "seconds": seconds,
    }
