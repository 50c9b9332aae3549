"""Per-stage wall time, peak RSS and bytes on disk of the scaled pipeline runs, and the fitted growth.

    PYTHONPATH=$PWD python benchmarks/scale_table.py --runs 512:results/scale-f512 128:results/scale-f128 \
        32:results/scale-f32 [--data-dir data]

Reads Snakemake's benchmark files (s = wall seconds, max_rss = peak RSS of the job's process tree in
MB) and sizes the outputs with the bytes of their files. Prints a Markdown table per stage and F,
then for each stage the least-squares fit of log(time) and log(memory) against log(entities): the
exponent says how the stage grows (1 = linear in the graph).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

REAL_ENTITIES = 91_230_610

STAGES = [  # (stage, benchmark file pattern, output paths whose bytes count for it)
    ("generate + check", "dataset.tsv", ["{data}"]),
    ("shard", "shard.tsv", ["{results}/shards"]),
    ("train distmult_softmax (1 worker)", "train/distmult_softmax.tsv", ["{results}/models/distmult_softmax"]),
    ("train transe_l2_softmax (2 workers)", "train/transe_l2_softmax.tsv", ["{results}/models/transe_l2_softmax"]),
    ("predict distmult_softmax", "predict/distmult_softmax.tsv", ["{results}/predictions/distmult_softmax.npz"]),
    (
        "predict transe_l2_softmax (2 workers)",
        "predict/transe_l2_softmax.tsv",
        ["{results}/predictions/transe_l2_softmax.npz"],
    ),
    ("evaluate distmult_softmax", "evaluate/distmult_softmax.tsv", ["{results}/evaluation/distmult_softmax.npz"]),
    ("evaluate transe_l2_softmax", "evaluate/transe_l2_softmax.tsv", ["{results}/evaluation/transe_l2_softmax.npz"]),
    ("ensemble", "ensemble.tsv", ["{results}/ensemble"]),
]


def _bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _benchmark(path: Path) -> tuple[float, float] | None:
    if not path.is_file():
        return None
    with open(path) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return float(rows[-1]["s"]), float(rows[-1]["max_rss"]) / 1000.0  # seconds, GB


def _fit(xs: list[float], ys: list[float]) -> float | None:
    """Slope of log y against log x (least squares); None with fewer than two points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="F:RESULTS_DIR pairs")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args()
    runs = []
    for item in args.runs:
        fraction, results = item.split(":", 1)
        runs.append((float(fraction), Path(results)))
    runs.sort(key=lambda r: -r[0])
    print("| stage | F | entities | wall s | peak RSS GB | disk GB |")
    print("|---|---|---|---|---|---|")
    rows = []
    for stage, bench, outputs in STAGES:
        for fraction, results in runs:
            measured = _benchmark(results / "benchmarks" / bench)
            if measured is None:
                continue
            data = Path(args.data_dir) / f"scaled-f{fraction:g}-s0"
            disk = sum(_bytes(Path(o.format(results=results, data=data))) for o in outputs) / 1e9
            entities = round(REAL_ENTITIES / fraction)
            rows.append(
                {
                    "stage": stage,
                    "F": fraction,
                    "entities": entities,
                    "seconds": measured[0],
                    "peak_rss_gb": measured[1],
                    "disk_gb": disk,
                }
            )
            print(f"| {stage} | {fraction:g} | {entities:,} | {measured[0]:.0f} | {measured[1]:.2f} | {disk:.2f} |")
    print()
    print("| stage | time ~ E^a: a | peak RSS ~ E^b: b |")
    print("|---|---|---|")
    for stage, _bench, _outputs in STAGES:
        mine = [r for r in rows if r["stage"] == stage]
        a = _fit([r["entities"] for r in mine], [r["seconds"] for r in mine])
        b = _fit([r["entities"] for r in mine], [r["peak_rss_gb"] for r in mine])
        if a is not None:
            print(f"| {stage} | {a:.2f} | {b:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
