"""Fixed per-step cost (issue 13, item 6) and each change of the step, before/after in one process.

    cd /work/wt-step && PYTHONPATH=$PWD taskset -c 1 python benchmarks/step_overhead.py                 # B = N = 16, d = 128
    cd /work/wt-step && PYTHONPATH=$PWD taskset -c 1 python benchmarks/step_overhead.py --batch 512 --negatives 1488 --dim 256 --no-features --steps 10

Variants of one Trainer configuration, each its own Trainer, stepped in alternating blocks of
``--steps`` steps for ``--rounds`` rounds; medians of ms per step. The "before" pieces are the
previous code, restored by patching: torch.manual_seed per step (dropout), the 17-pass float32
sparse Adam, no prefetch thread, and a float(loss) per step (``train_step()`` instead of the
loop's ``train_step(sync=False)``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def legacy_adam_step(self, rows, grad, lr, generator=None):
    """The float32 SparseRowAdam.step before issue 13 (17 passes over the touched rows)."""
    self.step_count += 1
    m = self.m.index_select(0, rows).mul_(self.beta1).add_(grad, alpha=1 - self.beta1)
    v = self.v.index_select(0, rows).mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
    self.m.index_copy_(0, rows, m)
    self.v.index_copy_(0, rows, v)
    bias1 = 1 - self.beta1**self.step_count
    bias2 = 1 - self.beta2**self.step_count
    update = (m.div_(bias1)).div_((v.div_(bias2)).sqrt_().add_(self.eps))
    self.table.index_copy_(0, rows, self.table.index_select(0, rows).sub_(update.mul_(lr)))


VARIANTS = {
    # name: (legacy seeding, legacy adam, prefetch, sync per step)
    "before (all old)": (True, True, False, True),
    "+ seeding fix": (False, True, False, True),
    "+ 11-pass Adam": (False, False, False, True),
    "+ no per-step sync": (False, False, False, False),
    "+ prefetch thread (all new)": (False, False, True, False),
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--score-fn", default="distmult")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--negatives", type=int, default=16)
    p.add_argument("--no-features", action="store_true")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default=None, help="append the result as one JSON line here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from kge.report.bench import _model_config, cached_data
    from kge.train.trainer import Trainer

    _, shards = cached_data(0.2, 2)
    config = _model_config(args.score_fn, args.dim, args.batch, args.negatives, 1, "cpu", "tails", not args.no_features)
    trainers, times = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (legacy_seed, legacy_adam, prefetch, sync) in VARIANTS.items():
            t = Trainer(config, shards, Path(tmp) / str(len(trainers)))
            t._prefetch = prefetch
            if legacy_seed:
                t._seed_dropout = lambda seed: torch.manual_seed(seed)
            if legacy_adam:
                t.entity_optimizer.step = types.MethodType(legacy_adam_step, t.entity_optimizer)
            for _ in range(5):
                t.train_step(sync=sync)
            trainers[name], times[name] = (t, sync), []
        for _ in range(args.rounds):
            for name, (t, sync) in trainers.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    t.train_step(sync=sync)
                times[name].append(1e3 * (time.perf_counter() - start) / args.steps)
        for t, _ in trainers.values():
            t.close()
    result = {
        "bench": "step_overhead",
        "score_fn": args.score_fn,
        "dim": args.dim,
        "batch": args.batch,
        "negatives": args.negatives,
        "features": not args.no_features,
        "threads": 1,
        "steps": args.steps,
        "rounds": args.rounds,
        "ms_per_step": {k: statistics.median(v) for k, v in times.items()},
        "all": times,
    }
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    base = result["ms_per_step"]["before (all old)"]
    print("| variant | ms per step (median) | vs before |")
    print("|---|---|---|")
    for k, v in result["ms_per_step"].items():
        print(f"| {k} | {v:.3f} | {v / base:.2f} |")


if __name__ == "__main__":
    main()
