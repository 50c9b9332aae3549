"""Compare two default-pipeline results trees bit for bit: validation MRRs, predictions, entity tables,
dense parameters, loss histories, ensemble MRRs and submission files (issue 14: behaviour unchanged).

    python benchmarks/compare_runs.py BEFORE/results AFTER/results
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

a, b = Path(sys.argv[1]), Path(sys.argv[2])
problems, checked = [], 0
for pa in sorted((a / "predictions").glob("*.json")):
    ma, mb = json.loads(pa.read_text()), json.loads((b / "predictions" / pa.name).read_text())
    checked += 1
    if ma["valid_mrr"] != mb["valid_mrr"]:
        problems.append(f"{pa.stem}: valid MRR {ma['valid_mrr']!r} vs {mb['valid_mrr']!r}")
for pa in sorted((a / "predictions").glob("*.npz")):
    za, zb = np.load(pa), np.load(b / "predictions" / pa.name)
    for k in za.files:
        checked += 1
        if not np.array_equal(za[k], zb[k]):
            problems.append(f"{pa.name}:{k} differs")
for pa in sorted((a / "models").glob("*/entities/*.pt")):
    ta, tb = torch.load(pa, weights_only=False), torch.load(b / pa.relative_to(a), weights_only=False)

    def walk(x, y, where):
        global checked
        if isinstance(x, torch.Tensor):
            checked += 1
            if not torch.equal(x, y):
                problems.append(f"{where} differs")
        elif isinstance(x, dict):
            for k in x:
                walk(x[k], y[k], f"{where}.{k}")

    walk(ta, tb, str(pa.relative_to(a)))
for pa in sorted((a / "models").glob("*/model.pt")):
    ta, tb = torch.load(pa, weights_only=False), torch.load(b / pa.relative_to(a), weights_only=False)
    for k, v in ta.get("dense", ta).items() if isinstance(ta.get("dense"), dict) else []:
        if isinstance(v, torch.Tensor):
            checked += 1
            if not torch.equal(v, tb["dense"][k]):
                problems.append(f"{pa.parent.name} dense {k} differs")


def strip(history):
    """A history without its wall-clock fields."""
    return [{k: v for k, v in r.items() if "second" not in k and "time" not in k and k != "created"} for r in history]


for pa in sorted((a / "models").glob("*/model.pt")):
    ha = torch.load(pa, weights_only=False)["history"]
    hb = torch.load(b / pa.relative_to(a), weights_only=False)["history"]
    strip = lambda h: [
        {k: v for k, v in r.items() if "second" not in k and "time" not in k and k != "created"} for r in h
    ]
    checked += 1
    if strip(ha) != strip(hb):
        problems.append(f"{pa.parent.name} history differs: {strip(ha)[:1]} vs {strip(hb)[:1]}")
sa, sb = json.loads((a / "ensemble/summary.json").read_text()), json.loads((b / "ensemble/summary.json").read_text())
for key in ("ensemble_valid_mrr", "ensemble_heldout_mrr"):
    checked += 1
    if sa.get(key) != sb.get(key):
        problems.append(f"ensemble {key}: {sa.get(key)} vs {sb.get(key)}")
for pa in sorted((a / "submission").glob("*.npz")):
    checked += 1
    za, zb = np.load(pa), np.load(b / "submission" / pa.name)
    if any(not np.array_equal(za[k], zb[k]) for k in za.files):
        problems.append(f"submission {pa.name} differs")
print(f"{checked} items compared; {len(problems)} differ")
print("\n".join(problems[:40]))
