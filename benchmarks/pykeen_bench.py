"""Optional side-by-side benchmark: PyKEEN DistMult (sLCWA) against `kge` BESS training, one JSON line.

Both run in this one process, on the same graph (the embedded miniature's train_hrt), the same
dimension, fp32, CPU, the same torch threads. The unit is the scored (positive, negative) pair:

* ours: B x (B + N) pairs per step (every positive is scored against the batch's B tails and the
  N shared negatives), timed by kge.report.bench.bench_train over ``--steps`` steps after 3 warm-up steps;
  run twice, with the 768-d feature encoder (the real model) and with features disabled (a plain
  DistMult table, like PyKEEN's).
* PyKEEN: B x K pairs per step (each positive against its own K corrupted triples from the basic
  negative sampler), for each K in ``--negs``. PyKEEN trains on a fixed subset of
  (warmup + steps + 1) x B shuffled triples for one epoch (drop_last); a callback stamps the time at
  every ``pre_batch`` and the rate is taken between the stamps of batch ``warmup`` and batch
  ``warmup + steps``, so it covers exactly ``steps`` whole batches: data loading and negative
  sampling, forward, backward, optimizer step and PyKEEN's post-update constraint, and none of the
  epoch set-up or tear-down.

    pip install pykeen   # optional; not a project dependency
    PYTHONPATH=. python benchmarks/pykeen_bench.py --scale 0.2 --dim 128 --steps 30 --pykeen-steps 10 \\
        --out benchmarks/results/pykeen_cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _data(root, shard_dir, scale: float, tmp: Path) -> tuple[Path, Path]:
    from kge.bess.shard import shard_dataset
    from kge.data.mini import generate_mini

    if root is None:
        root = tmp / "data"
        generate_mini(root, seed=0, scale=scale, progress=False)
    if shard_dir is None:
        shard_dir = tmp / "shards"
        shard_dataset(root, shard_dir, 2, seed=0, progress=False)
    return Path(root), Path(shard_dir)


def bench_ours(root: Path, shard_dir: Path, dim: int, batch: int, negatives: int, steps: int, features: bool) -> dict:
    """kge.report.bench.bench_train; with ``features=False`` its model config is re-resolved with features.use = false."""
    import kge.report.bench as kb
    from kge.config import deep_merge, resolve_model_config

    original = kb._model_config
    if not features:

        def no_features(*args, **kwargs):
            settings = deep_merge(original(*args, **kwargs).to_dict(), {"features": {"use": False}})
            return resolve_model_config(settings, where="pykeen_bench")

        kb._model_config = no_features
    try:
        result = kb.bench_train(
            "distmult", dim, batch, negatives, steps=steps, root=root, shard_dir=shard_dir, device="cpu"
        )
    finally:
        kb._model_config = original
    result["features"] = features
    return result


def bench_pykeen(
    triples: np.ndarray,
    num_entities: int,
    num_relations: int,
    dim: int,
    batch: int,
    k: int,
    steps: int,
    warmup: int,
    lean: bool,
    loss: str,
    seed: int = 0,
) -> dict:
    """PyKEEN DistMult, sLCWA, basic negative sampler with ``k`` negatives per positive, Adam."""
    from pykeen.models import DistMult
    from pykeen.training import SLCWATrainingLoop
    from pykeen.training.callbacks import TrainingCallback
    from pykeen.triples import CoreTriplesFactory

    class Stamps(TrainingCallback):
        def __init__(self):
            super().__init__()
            self.t: list[float] = []

        def pre_batch(self, **kwargs):
            self.t.append(time.perf_counter())

    n_batches = warmup + steps + 1
    rng = np.random.default_rng(seed)
    subset = triples[rng.permutation(len(triples))[: n_batches * batch]]
    if len(subset) < n_batches * batch:
        raise SystemExit(
            f"graph has {len(triples)} training triples; need {n_batches * batch} for {n_batches} batches of {batch}"
        )
    factory = CoreTriplesFactory(
        torch.as_tensor(subset, dtype=torch.long), num_entities=num_entities, num_relations=num_relations
    )
    # lean: no unit-norm entity constraint (a full-table renormalisation after every step) and no relation
    # regulariser, PyKEEN's cheapest DistMult; otherwise PyKEEN's defaults for DistMult.
    extra = dict(entity_constrainer=None, regularizer=None) if lean else {}
    model = DistMult(triples_factory=factory, embedding_dim=dim, loss=loss, random_seed=seed, **extra)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loop = SLCWATrainingLoop(
        model=model,
        triples_factory=factory,
        optimizer=optimizer,
        negative_sampler="basic",
        negative_sampler_kwargs=dict(num_negs_per_pos=k),
    )
    stamps = Stamps()
    loop.train(
        triples_factory=factory,
        num_epochs=1,
        batch_size=batch,
        drop_last=True,
        use_tqdm=False,
        use_tqdm_batch=False,
        callbacks=[stamps],
        pin_memory=False,
        num_workers=0,
    )
    if len(stamps.t) < warmup + steps + 1:
        raise RuntimeError(f"PyKEEN ran {len(stamps.t)} batches, expected {n_batches}")
    seconds = stamps.t[warmup + steps] - stamps.t[warmup]
    return {
        "k": k,
        "lean": lean,
        "loss": loss,
        "steps": steps,
        "triples_per_s": batch * steps / seconds,
        "scored_pairs_per_s": batch * k * steps / seconds,
        "seconds": seconds,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=float, default=0.2, help="miniature scale when --root is not given")
    p.add_argument("--root", help="dataset root (OGB layout); default: generate the miniature")
    p.add_argument("--shard-dir", help="shards of --root (D any); default: shard it with D = 2")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--negatives", type=int, default=1024, help="ours: shared negatives N")
    p.add_argument("--negs", type=int, nargs="+", default=[1, 64, 256], help="PyKEEN: num_negs_per_pos values")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--pykeen-steps", type=int, help="PyKEEN timed batches per run (default: --steps); large K is slow")
    p.add_argument("--warmup", type=int, default=3, help="PyKEEN warm-up batches (ours: bench_train's 3)")
    p.add_argument(
        "--loss",
        default="crossentropy",
        help="PyKEEN loss (crossentropy: softmax over the positive and its K negatives)",
    )
    p.add_argument(
        "--no-lean", action="store_true", help="skip the lean PyKEEN variant (no constrainer, no regulariser)"
    )
    p.add_argument("--threads", type=int, help="torch threads for both (default: torch's default)")
    p.add_argument("--out", help="append the JSON line to this file")
    a = p.parse_args(argv)

    import warnings

    import pykeen

    from kge.data.layout import open_dataset
    from kge.report.bench import matmul_gflops

    if a.threads:
        torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")  # PyKEEN's loader asks for it; no accelerator here
    with tempfile.TemporaryDirectory(prefix="pykeen-bench-") as tmp:
        root, shard_dir = _data(a.root, a.shard_dir, a.scale, Path(tmp))
        ds = open_dataset(root)
        triples = np.asarray(ds.train_hrt, dtype=np.int64)
        num_entities, num_relations = int(ds.num_entities), int(ds.num_relations)

        rate_before = matmul_gflops(torch.device("cpu"))
        ours = [
            bench_ours(root, shard_dir, a.dim, a.batch, a.negatives, a.steps, features) for features in (True, False)
        ]
        runs = []
        for lean in [False] if a.no_lean else [False, True]:
            for k in a.negs:
                runs.append(
                    bench_pykeen(
                        triples,
                        num_entities,
                        num_relations,
                        a.dim,
                        a.batch,
                        k,
                        a.pykeen_steps or a.steps,
                        a.warmup,
                        lean,
                        a.loss,
                    )
                )
                print(json.dumps({"pykeen_run": runs[-1]}), file=sys.stderr, flush=True)
        rate_after = matmul_gflops(torch.device("cpu"))

    best = max(runs, key=lambda r: r["scored_pairs_per_s"])
    best_triples = max(runs, key=lambda r: r["triples_per_s"])
    keep = ("triples_per_s", "scored_pairs_per_s", "matmul_gflops", "fraction_of_matmul", "seconds")
    result = {
        "bench": "pykeen_side_by_side",
        "score_fn": "distmult",
        "dim": a.dim,
        "batch": a.batch,
        "graph": {
            "root": str(a.root) if a.root else f"mini scale={a.scale} seed=0",
            "entities": num_entities,
            "relations": num_relations,
            "train_triples": len(triples),
        },
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pykeen_version": pykeen.get_version(),
        "machine": platform.machine(),
        "matmul_gflops": {"before": rate_before, "after": rate_after},
        "ours": {
            ("features" if o["features"] else "no_features"): {
                "negatives": a.negatives,
                "steps": a.steps,
                **{k: o[k] for k in keep},
            }
            for o in ours
        },
        "pykeen": runs,
        "pykeen_best_pairs": {
            "k": best["k"],
            "lean": best["lean"],
            "scored_pairs_per_s": best["scored_pairs_per_s"],
            "triples_per_s": best["triples_per_s"],
        },
        "pykeen_best_triples": {
            "k": best_triples["k"],
            "lean": best_triples["lean"],
            "triples_per_s": best_triples["triples_per_s"],
        },
    }
    for name, o in result["ours"].items():
        result[f"ratio_pairs_{name}"] = o["scored_pairs_per_s"] / best["scored_pairs_per_s"]
        result[f"ratio_triples_{name}"] = o["triples_per_s"] / best_triples["triples_per_s"]
    result["reaches_100x_pairs"] = result["ratio_pairs_features"] >= 100
    line = json.dumps(result)
    print(line)
    if a.out:
        with open(a.out, "a") as f:
            f.write(line + "\n")
    return result


if __name__ == "__main__":
    main()
