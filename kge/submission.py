"""The OGB submission: checked predictions written by ogb's own evaluator, plus metadata."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from kge.errors import KgeInputError

SUBMISSION_ROWS = {"test-dev": 15000, "test-challenge": 10000}


def submission_filename(mode: str) -> str:
    return f"t_pred_wikikg90m-v2_{mode}.npz"


def check_predictions(t_pred: np.ndarray, num_entities: int, mode: str) -> np.ndarray:
    """(Q, 10) ids -> int64 array, after the checks save_test_submission does not make."""
    t_pred = np.asarray(t_pred)
    expected = (SUBMISSION_ROWS[mode], 10)
    if t_pred.shape != expected:
        raise KgeInputError(f"{mode} predictions: shape {t_pred.shape}, expected {expected} (ogb's submission format)")
    if not np.issubdtype(t_pred.dtype, np.integer):
        raise KgeInputError(f"{mode} predictions: dtype {t_pred.dtype}, expected integer entity ids")
    bad = (t_pred < 0) | (t_pred >= num_entities)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise KgeInputError(f"{mode} predictions: row {row} has ids outside [0, {num_entities}): {t_pred[row].tolist()}")
    ordered = np.sort(t_pred, axis=1)
    dup_rows = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
    if len(dup_rows):
        raise KgeInputError(f"{mode} predictions: row {int(dup_rows[0])} repeats an entity (ogb scores such a file 0)")
    return t_pred.astype(np.int64)


def write_submission(t_pred: np.ndarray, num_entities: int, mode: str, out_dir: str | Path) -> Path:
    """Check, then let ogb's ``save_test_submission`` write the file; rename it into place at the end."""
    from ogb.lsc import WikiKG90Mv2Evaluator

    t_pred = check_predictions(t_pred, num_entities, mode)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / submission_filename(mode)
    with tempfile.TemporaryDirectory(prefix=".tmp-submission-", dir=out_dir) as tmp:
        WikiKG90Mv2Evaluator().save_test_submission({"h,r->t": {"t_pred_top10": t_pred}}, tmp, mode)
        written = Path(tmp) / submission_filename(mode)
        reread = np.load(written)["t_pred_top10"]
        if not np.array_equal(reread.astype(np.int64), t_pred):
            raise RuntimeError(f"{written}: ogb wrote predictions that differ from ours (id overflow?)")
        shutil.move(str(written), target)  # same filesystem: an atomic rename
    return target


def _commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_submission(root, ensemble_dir, out_dir, answers: str | None = None) -> dict:
    """Write both submission files from the ensemble, and metadata.json for the leaderboard form."""
    import json
    import platform

    import ogb
    import torch

    from kge import __version__, atomic
    from kge.data.layout import open_dataset
    from kge.ensemble import mrr

    ensemble_dir, out_dir = Path(ensemble_dir), Path(out_dir)
    summary_path = ensemble_dir / "summary.json"
    if not summary_path.exists():
        raise KgeInputError(f"{summary_path}: missing; run `kge ensemble` first")
    summary = json.loads(summary_path.read_text())
    ds = open_dataset(root, check=False)
    files = {}
    with np.load(ensemble_dir / "ensemble.npz") as npz:
        predictions = {mode: npz[mode] for mode in SUBMISSION_ROWS}
    for mode, t_pred in predictions.items():
        files[mode] = str(write_submission(t_pred, ds.num_entities, mode, out_dir))
    members = summary["members"]
    metadata = {
        "validation_mrr": summary["ensemble_valid_mrr"],
        "ogb_version": ogb.__version__,
        "number_of_models": len(members),
        "parameters_per_model": {m["model"]: m["parameters"] for m in members},
        "parameters_total": int(sum(m["parameters"] for m in members)),
        "hardware": sorted({m["hardware"] for m in members}),
        "train_seconds": float(sum(m["train_seconds"] for m in members)),
        "inference_seconds": float(sum(sum(m["inference_seconds"].values()) for m in members)),
        "ensemble": {"power": summary["power"], "top_k": summary["top_k"], "best_member_valid_mrr": summary["best_member_valid_mrr"]},
        "files": files,
        "versions": {"kge": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "commit": _commit(),
    }
    if answers:
        # The miniature keeps its test answers outside the OGB folder; report test MRR with them.
        answers_dir = Path(answers)
        for mode in SUBMISSION_ROWS:
            path = answers_dir / f"{mode}_t.npy"
            if path.exists():
                metadata[f"{mode}_mrr"] = mrr(predictions[mode], np.load(path))
    atomic.save_json(out_dir / "metadata.json", metadata)
    print(json.dumps({k: v for k, v in metadata.items() if k.endswith("mrr")}))
    return metadata
