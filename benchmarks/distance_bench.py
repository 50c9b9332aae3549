"""Distance models against DistMult at the same shape, measured in one process (issue 13, item 4).

For each distance variant (TransE, TransH, RotatE x L1, L2) and loss, the training rate of
``kge.report.bench.bench_train`` is divided by DistMult's rate at the same shape, measured right before
and right after it in the same process (the mean of that bracket): this machine is shared and
noisy, so only such ratios compare. The same for top-K prediction (``bench_predict``).

    python benchmarks/distance_bench.py --out benchmarks/results/distance_bench.json
    # the code before the fused kernels, same harness (see benchmarks/bench.md):
    git worktree add /tmp/before <commit> && PYTHONPATH=/tmp/before python benchmarks/distance_bench.py --label before ...

Paper shape by default: d = 256, B = 512, N = 1,536, one thread. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time

import torch

VARIANTS = [("transe", 1), ("transe", 2), ("transh", 1), ("transh", 2), ("rotate", 1), ("rotate", 2)]


def _compatible(bench):
    """An older checkout's bench functions take no distance or loss: set them through its config builder."""
    if "distance" in inspect.signature(bench.bench_train).parameters:
        return
    wanted = {}
    original = bench._model_config

    def model_config(*args, **kwargs):
        config = original(*args, **kwargs)
        config["distance"] = wanted.get("distance") or config["distance"]
        config["loss"]["type"] = wanted.get("loss", "softmax")
        return config

    bench._model_config = model_config
    for name in ("bench_train", "bench_predict"):
        fn = getattr(bench, name)

        def wrapped(*args, _fn=fn, distance=None, loss="softmax", **kwargs):
            wanted.update(distance=distance, loss=loss)
            return _fn(*args, **kwargs)

        setattr(bench, name, wrapped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--negatives", type=int, default=1536)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--losses", default="softmax,logsigmoid")
    parser.add_argument("--variants", default=",".join(f"{fn}:{p}" for fn, p in VARIANTS))
    parser.add_argument(
        "--queries", type=int, default=2000, help="top-K queries per prediction run (0: skip prediction)"
    )
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--label", default="after")
    parser.add_argument("--out", default=None, help="JSON lines appended here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from kge.report import bench

    _compatible(bench)
    root, shards = bench.cached_data(scale=0.2, n_shards=2)  # one dataset for every run (training)
    variants = [(v.split(":")[0], int(v.split(":")[1])) for v in args.variants.split(",")]
    shape = dict(
        dim=args.dim, batch=args.batch, negatives=args.negatives, steps=args.steps, root=root, shard_dir=shards
    )
    rows = []

    def train(score_fn, distance, loss):
        return bench.bench_train(
            score_fn,
            shape["dim"],
            shape["batch"],
            shape["negatives"],
            steps=shape["steps"],
            root=root,
            shard_dir=shards,
            distance=distance,
            loss=loss,
        )

    for loss in args.losses.split(","):
        for score_fn, p in variants:
            before = train("distmult", None, loss)
            run = train(score_fn, p, loss)
            after = train("distmult", None, loss)
            reference = (before["triples_per_s"] + after["triples_per_s"]) / 2
            rows.append(
                {
                    "label": args.label,
                    "bench": "train",
                    "score_fn": score_fn,
                    "distance": p,
                    "loss": loss,
                    "triples_per_s": run["triples_per_s"],
                    "distmult_triples_per_s": reference,
                    "ratio": run["triples_per_s"] / reference,
                    "first_step_s": run.get("first_step_s"),
                    "distance_kernels": run.get("distance_kernels"),
                    "phase_share": run["phase_share"],
                    "matmul_gflops": run["matmul_gflops"],
                    **{k: v for k, v in shape.items() if k in ("dim", "batch", "negatives", "steps")},
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.queries:
        mini_root, mini_shards = bench.cached_data(scale=1.0, n_shards=2)  # 30,000 entities
        for score_fn, p in variants:
            pred = dict(queries=args.queries, k=args.top_k, root=mini_root, shard_dir=mini_shards)
            before = bench.bench_predict("distmult", args.dim, **pred)
            run = bench.bench_predict(score_fn, args.dim, distance=p, **pred)
            after = bench.bench_predict("distmult", args.dim, **pred)
            reference = (before["queries_per_s"] + after["queries_per_s"]) / 2
            rows.append(
                {
                    "label": args.label,
                    "bench": "predict",
                    "score_fn": score_fn,
                    "distance": p,
                    "dim": args.dim,
                    "k": args.top_k,
                    "entities": run["entities"],
                    "queries_per_s": run["queries_per_s"],
                    "distmult_queries_per_s": reference,
                    "ratio": run["queries_per_s"] / reference,
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            for row in rows:
                f.write(
                    json.dumps(
                        {**row, "date": time.strftime("%Y-%m-%d %H:%M"), "pythonpath": os.environ.get("PYTHONPATH", "")}
                    )
                    + "\n"
                )
    print(f"| {args.label} | variant | loss | triples/s (or queries/s) | DistMult, same shape | ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        rate = r.get("triples_per_s", r.get("queries_per_s"))
        ref = r.get("distmult_triples_per_s", r.get("distmult_queries_per_s"))
        what = r.get("loss", f"top-{r.get('k')}")
        print(
            f"| {r['bench']} | {r['score_fn']} L{r['distance']} | {what} | {rate:,.0f} | {ref:,.0f} | {r['ratio']:.2f} |"
        )


if __name__ == "__main__":
    main()
