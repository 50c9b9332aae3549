"""Compare two default-pipeline results trees bit for bit: validation MRRs, predictions, entity tables,
dense parameters, loss histories, ensemble MRRs and submission files (issue 14: behaviour unchanged).

    python benchmarks/compare_runs.py BEFORE/results AFTER/results
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch


def strip(history: list[dict]) -> list[dict]:
    """A training history without its wall-clock fields."""
    return [{k: v for k, v in r.items() if "second" not in k and "time" not in k and k != "created"} for r in history]


def tensors(x, y, where: str):
    """(where, a, b) for every tensor in two nested dicts of the same shape."""
    if isinstance(x, torch.Tensor):
        yield where, x, y
    elif isinstance(x, dict):
        for key in x:
            yield from tensors(x[key], y[key], f"{where}.{key}")


def compare(a: Path, b: Path) -> tuple[int, list[str]]:
    problems, checked = [], 0
    for pa in sorted((a / "predictions").glob("*.json")):
        ma, mb = json.loads(pa.read_text()), json.loads((b / "predictions" / pa.name).read_text())
        checked += 1
        if ma["valid_mrr"] != mb["valid_mrr"]:
            problems.append(f"{pa.stem}: valid MRR {ma['valid_mrr']!r} vs {mb['valid_mrr']!r}")
    for pa in sorted((a / "predictions").glob("*.npz")):
        za, zb = np.load(pa), np.load(b / "predictions" / pa.name)
        for key in za.files:
            checked += 1
            if not np.array_equal(za[key], zb[key]):
                problems.append(f"{pa.name}:{key} differs")
    for pa in sorted((a / "models").glob("*/entities/*.pt")):
        ta, tb = torch.load(pa, weights_only=False), torch.load(b / pa.relative_to(a), weights_only=False)
        for where, x, y in tensors(ta, tb, str(pa.relative_to(a))):
            checked += 1
            if not torch.equal(x, y):
                problems.append(f"{where} differs")
    for pa in sorted((a / "models").glob("*/model.pt")):
        ta, tb = torch.load(pa, weights_only=False), torch.load(b / pa.relative_to(a), weights_only=False)
        for where, x, y in tensors(ta["dense"], tb["dense"], f"{pa.parent.name} dense"):
            checked += 1
            if not torch.equal(x, y):
                problems.append(f"{where} differs")
        checked += 1
        if strip(ta["history"]) != strip(tb["history"]):
            problems.append(f"{pa.parent.name} history differs")
    sa = json.loads((a / "ensemble/summary.json").read_text())
    sb = json.loads((b / "ensemble/summary.json").read_text())
    for key in ("ensemble_valid_mrr", "ensemble_heldout_mrr"):
        checked += 1
        if sa.get(key) != sb.get(key):
            problems.append(f"ensemble {key}: {sa.get(key)} vs {sb.get(key)}")
    for pa in sorted((a / "submission").glob("*.npz")):
        checked += 1
        za, zb = np.load(pa), np.load(b / "submission" / pa.name)
        if any(not np.array_equal(za[key], zb[key]) for key in za.files):
            problems.append(f"submission {pa.name} differs")
    return checked, problems


if __name__ == "__main__":
    checked, problems = compare(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{checked} items compared; {len(problems)} differ")
    print("\n".join(problems[:40]))
    sys.exit(1 if problems else 0)
