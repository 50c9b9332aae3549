"""The ensemble's tuning grid: one rank-power ensemble per (power, weights) pair against
``rank_power_grid``, which groups each chunk of queries once for the whole grid. Both in one process,
on the same synthetic member lists; the answers must be identical.

    python benchmarks/tune_grid_bench.py                      # the recipe's size: 85 members
    python benchmarks/tune_grid_bench.py --members 8 --queries 7500

Synthetic lists: each query has a pool of 400 candidate ids out of 91 M, and each member lists a
random 100 of them, so members overlap as real ones do. The grid is config.yaml's: 7 powers x 4
weight exponents. Prints CPU seconds of each and their ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from kge.ensemble.rank_power import mrr_weights, rank_power_ensemble, rank_power_grid

POWERS = (-2.0, -1.0, -0.75, -0.5, -0.25, 0.5, 1.0)
EXPONENTS = (0.0, 2.0, 4.0, 8.0)


def member_lists(members: int, queries: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """``members`` (queries, width) int64 id lists drawn from a shared per-query pool of 4 x width."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 91_000_000, (queries, 4 * width))
    return [np.take_along_axis(pool, np.argsort(rng.random(pool.shape), axis=1)[:, :width], 1) for _ in range(members)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=85)
    parser.add_argument("--queries", type=int, default=7500, help="the tuning half of 15,000 validation queries")
    parser.add_argument("--width", type=int, default=100)
    args = parser.parse_args()
    preds = member_lists(args.members, args.queries, args.width)
    member_mrr = np.random.default_rng(1).uniform(0.1, 0.2, args.members)
    settings = [(p, mrr_weights(member_mrr, g)) for p in POWERS for g in EXPONENTS]

    start = time.process_time()
    per_pair = [rank_power_ensemble(preds, p, top=10, weights=w) for p, w in settings]
    per_pair_s = time.process_time() - start
    start = time.process_time()
    grid = rank_power_grid(preds, settings, top=10)
    grid_s = time.process_time() - start

    assert all(np.array_equal(a, b) for a, b in zip(per_pair, grid)), "the grid's answers differ"
    print(
        f"{args.members} members x {args.queries} queries x {args.width}, {len(settings)} pairs: "
        f"per pair {per_pair_s:.1f} CPU-s, grid {grid_s:.1f} CPU-s, {per_pair_s / grid_s:.1f}x; answers identical"
    )


if __name__ == "__main__":
    main()
