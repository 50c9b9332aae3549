"""The OGB submission: checked predictions written by ogb's own evaluator, plus metadata."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from kge.common.errors import KgeInputError
from kge.common.tables import format_duration

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
        raise KgeInputError(
            f"{mode} predictions: row {row} has ids outside [0, {num_entities}): {t_pred[row].tolist()}"
        )
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
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


VERSIONED_PACKAGES = ("ogb", "torch", "numpy", "pandas", "pyarrow", "snakemake", "kge")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None where one is missing)."""
    import platform
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def leaderboard_text(metadata: dict) -> str:
    """The OGB-LSC submission form's fields, ready to paste, from ``metadata.json``'s contents."""
    lines = [
        "OGB-LSC WikiKG90Mv2 submission (fields of the leaderboard form)",
        "",
        f"Validation MRR: {metadata['validation_mrr']:.4f}",
        f"  (ensemble power and weights tuned on half of the validation queries; MRR on the other half: {metadata['validation_heldout_mrr']:.4f})",
    ]
    for mode in SUBMISSION_ROWS:
        if f"{mode}_mrr" in metadata:
            lines.append(f"{mode} MRR (local answers, not the official test): {metadata[f'{mode}_mrr']:.4f}")
    lines += [
        f"Number of models in the ensemble: {metadata['number_of_models']}",
        f"#Parameters: {metadata['parameters_total']:,} in total (largest model {max(metadata['parameters_per_model'].values()):,})",
        f"Hardware: {'; '.join(metadata['hardware'])}",
        f"Training time: {format_duration(metadata['train_seconds'])} summed over models",
        f"Inference time: {format_duration(metadata['inference_seconds'])} summed over models and splits",
        f"Ensemble: rank-power mean, power {metadata['ensemble']['power']}, top-{metadata['ensemble']['top_k']} per model"
        + (
            f", members weighted by (MRR / best)^{metadata['ensemble']['weight_exponent']:g}"
            if metadata["ensemble"].get("weight_exponent")
            else ""
        ),
        "Package versions: " + ", ".join(f"{k} {v}" for k, v in metadata["versions"].items() if v),
        f"Code commit: {metadata['commit'] or 'unknown (not a git checkout)'}",
        "Files: " + ", ".join(Path(f).name for f in metadata["files"].values()),
    ]
    return "\n".join(lines) + "\n"


def run_submission(root, ensemble_dir, out_dir, answers: str | None = None) -> dict:
    """Write both submission files from the ensemble, metadata.json, and leaderboard.txt (the form's
    fields, ready to paste)."""
    import json

    import ogb

    from kge.common import atomic
    from kge.data.layout import open_dataset
    from kge.predict.metrics import mrr

    ensemble_dir, out_dir = Path(ensemble_dir), Path(out_dir)
    summary_path = ensemble_dir / "summary.json"
    if not summary_path.exists():
        raise KgeInputError(f"{summary_path}: missing; run `kge ensemble` first")
    summary = json.loads(summary_path.read_text())
    ds = open_dataset(root, check=False)
    files = {}
    with np.load(ensemble_dir / "ensemble.npz") as npz:
        predictions = {mode: npz[mode][:, :10] for mode in SUBMISSION_ROWS}  # the ensemble keeps ensemble.top_k
    for mode, t_pred in predictions.items():
        files[mode] = str(write_submission(t_pred, ds.num_entities, mode, out_dir))
    members = summary["members"]
    metadata = {
        "validation_mrr": summary["ensemble_valid_mrr"],
        # Power and weights were chosen on half of validation: this half chose nothing.
        "validation_heldout_mrr": summary["ensemble_heldout_mrr"],
        "ogb_version": ogb.__version__,
        "number_of_models": len(members),
        "parameters_per_model": {m["model"]: m["parameters"] for m in members},
        "parameters_total": int(sum(m["parameters"] for m in members)),
        "hardware": sorted({m["hardware"] for m in members}),
        "train_seconds": float(sum(m["train_seconds"] for m in members)),
        "inference_seconds": float(sum(sum(m["inference_seconds"].values()) for m in members)),
        "ensemble": {
            "power": summary["power"],
            "top_k": summary["top_k"],
            "weight_exponent": summary.get("weight_exponent", 0.0),
            "best_member_valid_mrr": summary["best_member_valid_mrr"],
        },
        "files": files,
        "versions": package_versions(),
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
    atomic.save_text(out_dir / "leaderboard.txt", leaderboard_text(metadata))
    print(json.dumps({k: v for k, v in metadata.items() if k.endswith("mrr")}))
    return metadata
