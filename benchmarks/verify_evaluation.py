# Usage: python benchmarks/verify_evaluation.py RUN_DIR DATASET_ROOT   (RUN_DIR holds results/; e.g. the worked example of docs/your-own-graph.md)
"""Independent check of results/evaluation/summary.json: brute-force filtered ranks (float64 score_triples over
every entity, explicit set of known triples) for every member, compared with the summary rows."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_evaluation import _brute_force

run, root = Path(sys.argv[1]), Path(sys.argv[2])
summary = json.loads((run / "results/evaluation/summary.json").read_text())
for row in summary["rows"][:-1]:
    heads = summary["head_prediction"][row["model"]]
    want = _brute_force(run / "results/models" / row["model"] / "model.pt", root, run / "results/shards", heads)["test"]
    ranks = np.concatenate([want["tail"], want["head"]])
    print(
        f"{row['model']:28s} summary MRR {row['both.realistic.mrr']:.6f} brute force {np.mean(1 / ranks):.6f} | "
        f"Hits@10 {row['both.realistic.hits@10']:.6f} vs {np.mean(ranks <= 10):.6f}"
    )
