"""Our training step against PyTorch-BigGraph's on one graph, in one process window (issue 13).

PyTorch-BigGraph 1.0.0 is not a project dependency: install it into its own environment, which sees
the project's packages (torch, kge's requirements) through --system-site-packages:

    python -m venv --system-site-packages /work/venvs/pbg
    /work/venvs/pbg/bin/pip install torchbiggraph==1.0.0 'setuptools<81'   # PBG imports pkg_resources
    cd /work/wt-step && PYTHONPATH=$PWD taskset -c 1 /work/venvs/pbg/bin/python benchmarks/pbg_bench.py

Same work per positive on both sides: d = 256, one side scored (PBG ``disable_lhs_negs``), 2,000
scored columns per positive: PBG's chunk of ``num_batch_negs`` = 512 positives scored against each
other plus ``num_uniform_negs`` = 1,488 uniform entities, ours B = 512 positives against the B batch
tails plus N = 1,488 shared negatives. Softmax loss on both. One torch thread, the process pinned by
the caller (taskset). Per workload the rounds alternate: PBG, ours, then the scoring-matmul bound
(forward B x M scores and the two backward matmuls alone, on tensors of the step's shape): the
bound in positives/s is B / (time of those three matmuls). Medians over rounds.

What each side times: PBG's ``Trainer.process_one_batch`` (forward, loss, backward, Adagrad on the
relation parameters, RowAdagrad on the touched rows; its edge batches are built before timing,
so PBG's shuffling and bucket I/O are not counted); ours the whole ``Trainer.train_step`` (BESS
sampling included, sparse Adam: a per-coordinate optimiser, heavier than PBG's one scalar per row).
The miniature's training triples feed both (PBG with dynamic relations, one entity type).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (name, PBG operator, PBG comparator or None, our score_fn, our distance (None: dot product), our features)
WORKLOADS = [
    ("distmult", "diagonal", "dot", "distmult", None, False),
    ("complex", "complex_diagonal", "dot", "complex", None, False),
    ("transe", "translation", "l2", "transe", 1, False),  # PBG's TransE is L2; ours L1 (the recipe's, 21 of 25)
    ("transe l2", "translation", "l2", "transe", 2, False),  # the same distance on both sides
    ("distmult + features", None, None, "distmult", None, True),  # PBG has no feature encoder
]


def load_triples(shard_dir: Path) -> tuple[np.ndarray, int, int]:
    from kge.bess.shard import read_shard_meta, triples_dataset

    meta = read_shard_meta(shard_dir)
    table = triples_dataset(shard_dir).to_table(columns=["h", "r", "t"])
    hrt = np.stack([table.column(c).to_numpy().astype(np.int64) for c in ("h", "r", "t")], 1)
    return hrt, int(meta["num_entities"]), int(meta["num_relations"])


class PbgSide:
    """PyTorch-BigGraph's own model, loss and optimisers, driven batch by batch."""

    def __init__(
        self,
        operator: str,
        comparator: str,
        hrt: np.ndarray,
        num_entities: int,
        num_relations: int,
        dim: int,
        batch: int,
        negatives: int,
        tmp: Path,
    ):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources deprecation
            from torchbiggraph.config import parse_config
            from torchbiggraph.edgelist import EdgeList
            from torchbiggraph.entitylist import EntityList
            from torchbiggraph.model import make_model
            from torchbiggraph.row_adagrad import RowAdagrad
            from torchbiggraph.train import Trainer
            from torchbiggraph.types import Partition, Side
        (tmp / "dynamic_rel_count.txt").write_text(str(num_relations))
        self.config = {
            "entity_path": str(tmp),
            "edge_paths": [],
            "checkpoint_path": str(tmp / "checkpoints"),
            "entities": {"all": {"num_partitions": 1}},
            "relations": [{"name": "all", "lhs": "all", "rhs": "all", "operator": operator}],
            "dynamic_relations": True,
            "global_emb": False,
            "dimension": dim,
            "comparator": comparator,
            "loss_fn": "softmax",
            "lr": 0.1,
            "batch_size": batch,
            "num_batch_negs": batch,
            "num_uniform_negs": negatives,
            "disable_lhs_negs": True,
            "workers": 1,
        }
        config = parse_config(self.config)
        self.model = make_model(config)
        generator = torch.Generator().manual_seed(0)
        embeddings = torch.nn.Parameter(torch.randn(num_entities, dim, generator=generator) * 1e-3)
        self.model.set_embeddings("all", embeddings, Side.LHS)
        self.model.set_embeddings("all", embeddings, Side.RHS)
        self.trainer = Trainer(
            global_optimizer=torch.optim.Adagrad(list(self.model.parameters()), lr=0.1),
            loss_fn="softmax",
            margin=0.1,
            relations=config.relations,
        )
        self.trainer.entity_optimizers[("all", Partition(0))] = RowAdagrad([embeddings], lr=0.1)
        order = np.random.default_rng(0).permutation(len(hrt))
        self.edges = torch.from_numpy(hrt[order])
        self.batch = batch
        self.offset = 0
        self._edge_list = lambda e: EdgeList(
            EntityList.from_tensor(e[:, 0].contiguous()),
            EntityList.from_tensor(e[:, 2].contiguous()),
            e[:, 1].contiguous(),
        )

    def batches(self, n: int) -> list:
        out = []
        for _ in range(n):
            if self.offset + self.batch > len(self.edges):
                self.offset = 0
            out.append(self._edge_list(self.edges[self.offset : self.offset + self.batch]))
            self.offset += self.batch
        return out

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` batches (edge lists built beforehand)."""
        batches = self.batches(steps)
        start = time.perf_counter()
        for edges in batches:
            self.trainer.process_one_batch(self.model, edges)
        return time.perf_counter() - start


class OurSide:
    def __init__(
        self,
        score_fn: str,
        distance: int | None,
        features: bool,
        shard_dir: Path,
        dim: int,
        batch: int,
        negatives: int,
        tmp: Path,
    ):
        from kge.report.bench import _model_config
        from kge.train.trainer import Trainer

        config = _model_config(score_fn, dim, batch, negatives, 1, "cpu", "tails", distance=distance, features=features)
        self.trainer = Trainer(config, shard_dir, tmp / "model")
        start = time.perf_counter()
        self.trainer.train_step()
        self.first_step_s = time.perf_counter() - start

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.trainer.train_step()
        return time.perf_counter() - start


def scoring_matmuls(batch: int, columns: int, dim: int, repeats: int) -> float:
    """Seconds per step of the scoring matmuls alone: S = Q T^T, then S T and S^T Q (backward)."""
    g = torch.Generator().manual_seed(0)
    q, t = torch.randn(batch, dim, generator=g), torch.randn(columns, dim, generator=g)
    s = q @ t.T
    best = []
    for _ in range(repeats):
        start = time.perf_counter()
        s = torch.mm(q, t.T)
        torch.mm(s, t)
        torch.mm(s.T, q)
        best.append(time.perf_counter() - start)
    return statistics.median(best)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--negatives", type=int, default=1488)
    p.add_argument("--steps", type=int, default=10, help="steps per side per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--scale", type=float, default=0.2, help="miniature scale (kge.report.bench.cached_data)")
    p.add_argument("--only", nargs="*", default=None, help="workload names to run (default: all)")
    p.add_argument("--json", default=None, help="append the result as one JSON line here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", module="torchbiggraph")  # float(loss) on a tensor needing grad, sparse COO
    from kge.report.bench import cached_data

    _, shard_dir = cached_data(args.scale, 2)
    hrt, num_entities, num_relations = load_triples(shard_dir)
    B, N, d = args.batch, args.negatives, args.dim
    rows = []
    with tempfile.TemporaryDirectory(prefix="pbg-bench-") as tmp:
        for name, operator, comparator, score_fn, distance, features in WORKLOADS:
            if args.only and name not in args.only:
                continue
            work = Path(tmp) / name.replace(" ", "_").replace("+", "f")
            work.mkdir()
            pbg = PbgSide(operator, comparator, hrt, num_entities, num_relations, d, B, N, work) if operator else None
            ours = OurSide(score_fn, distance, features, shard_dir, d, B, N, work)
            if pbg:
                pbg.run(args.warmup)
            ours.run(args.warmup - 1)
            pbg_rates, our_rates, bounds = [], [], []
            for _ in range(args.rounds):
                if pbg:
                    pbg_rates.append(B * args.steps / pbg.run(args.steps))
                our_rates.append(B * args.steps / ours.run(args.steps))
                bounds.append(B / scoring_matmuls(B, B + N, d, args.steps))
            ours.trainer.close()
            row = {
                "workload": name,
                "pbg": f"{operator}/{comparator}" if pbg else None,
                "ours": score_fn + (f" L{distance}" if distance else "") + (" + 768-d features" if features else ""),
                "pbg_positives_per_s": statistics.median(pbg_rates) if pbg else None,
                "our_positives_per_s": statistics.median(our_rates),
                "matmul_bound_positives_per_s": statistics.median(bounds),
                "our_first_step_s": ours.first_step_s,
                "rounds": {"pbg": pbg_rates, "ours": our_rates, "bound": bounds},
            }
            row["ours_over_pbg"] = row["our_positives_per_s"] / row["pbg_positives_per_s"] if pbg else None
            row["ours_over_bound"] = row["our_positives_per_s"] / row["matmul_bound_positives_per_s"]
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "rounds"}), file=sys.stderr, flush=True)
    result = {
        "bench": "pbg",
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "dim": d,
        "batch": B,
        "negatives": N,
        "columns_per_positive": B + N,
        "entities": num_entities,
        "relations": num_relations,
        "triples": len(hrt),
        "threads": torch.get_num_threads(),
        "cpus": sorted(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "steps": args.steps,
        "rounds": args.rounds,
        "rows": rows,
    }
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    print(
        "| workload | PBG | PBG positives/s | ours | ours positives/s | ours / PBG | scoring-matmul bound | ours / bound |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        pbg_rate = f"{r['pbg_positives_per_s']:,.0f}" if r["pbg"] else "n/a (no features)"
        ratio = f"{r['ours_over_pbg']:.2f}" if r["pbg"] else "n/a"
        print(
            f"| {r['workload']} | {r['pbg'] or '-'} | {pbg_rate} | {r['ours']} | {r['our_positives_per_s']:,.0f} | {ratio} | "
            f"{r['matmul_bound_positives_per_s']:,.0f} | {r['ours_over_bound']:.2f} |"
        )


if __name__ == "__main__":
    main()
