"""Fused log-sigmoid loss (DistMult/ComplEx) against the masked composition: milliseconds per
forward + backward of loss(query @ tails.T) at the reference shape, both timed in one process.

    python benchmarks/loss_bench.py            # B=1024, M=2048, d=128, a=2, torch's default threads
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from kge.nn.losses import dot_logsigmoid_loss, logsigmoid_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--columns", type=int, default=2048, help="M = B in-batch tails + N shared negatives")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--adversarial-scale", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    B, M = args.batch, args.columns
    query = torch.randn(B, args.dim, requires_grad=True)
    tails = torch.randn(M, args.dim, requires_grad=True)
    diagonal = torch.arange(B)

    def fused():
        dot_logsigmoid_loss(query, tails, args.adversarial_scale, 0.5, 0.5, True).backward()

    def composition():
        scores = query @ tails.T
        mask = torch.ones(B, M, dtype=torch.bool)
        mask[diagonal, diagonal] = False
        logsigmoid_loss(scores.diagonal(), scores, mask, args.adversarial_scale, 0.5, 0.5).backward()

    result = {"batch": B, "columns": M, "dim": args.dim, "threads": torch.get_num_threads()}
    for rnd in (1, 2):  # alternate, twice, so both see the same machine state
        for name, fn in (("fused", fused), ("composition", composition)):
            for _ in range(3):
                fn()
            start = time.perf_counter()
            for _ in range(args.repeats):
                fn()
            result[f"{name}_ms_round{rnd}"] = (time.perf_counter() - start) / args.repeats * 1000
    print(json.dumps(result))


if __name__ == "__main__":
    main()
