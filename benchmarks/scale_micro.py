"""Two micro-measurements quoted in benchmarks/scale.md (one thread each):

    PYTHONPATH=$PWD python benchmarks/scale_micro.py l2                       # a top-K block of TransE L2
    PYTHONPATH=$PWD python benchmarks/scale_micro.py gather --shard-dir results/scale-f128/shards

l2: seconds to score 1,000 queries against 65,536 tails (d = 128) with `score_queries` (fresh tensors
per block) and with `l2_distance_scores_into` (two reused buffers), and that both are bit-identical.
gather: milliseconds per gather of 1,536 random rows (a training step's rows) from FeatureStore held
in memory and memory-mapped (shards 0 and 2 of 4, as one worker of two owns them).
"""

import argparse
import time

import numpy as np
import torch


def _time(fn, repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def l2() -> None:
    from kge.nn import scoring

    q, t = torch.randn(1000, 128), torch.randn(65536, 128)
    t_sq = (t * t).sum(-1)
    out, scratch = torch.empty(1000, 65536), torch.empty(1000, 65536)
    fresh = _time(lambda: scoring.score_queries("transe", q, t, p=2, gamma=8.0, tails_sq=t_sq), 3)
    reused = _time(lambda: scoring.l2_distance_scores_into(q, t, t_sq, 8.0, out, scratch), 3)
    same = torch.equal(
        scoring.score_queries("transe", q, t, p=2, gamma=8.0, tails_sq=t_sq),
        scoring.l2_distance_scores_into(q, t, t_sq, 8.0, out, scratch),
    )
    print(f"score_queries {fresh:.2f} s a block; l2_distance_scores_into {reused:.2f} s; bit-identical: {same}")


def gather(shard_dir: str) -> None:
    import kge.bess.features as features
    from kge.bess.partition import Partition

    n_shards = Partition.load(f"{shard_dir}/partition.npz").n_shards
    rng = np.random.default_rng(0)
    for limit, name in ((1 << 40, "in memory"), (0, "memory-mapped")):
        features.IN_MEMORY_LIMIT_BYTES = limit
        store = features.FeatureStore(shard_dir, n_shards, shards=[0, 2])
        rows = [torch.from_numpy(np.sort(rng.integers(0, store.num_rows, 1536))) for _ in range(300)]
        seconds = _time(lambda: [store.gather(r) for r in rows], 1) / len(rows)  # noqa: B023 (called here)
        print(f"{name}: {seconds * 1e3:.2f} ms per 1,536-row gather")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["l2", "gather"])
    parser.add_argument("--shard-dir")
    args = parser.parse_args()
    torch.set_num_threads(1)
    l2() if args.what == "l2" else gather(args.shard_dir)


if __name__ == "__main__":
    main()
