"""`kge status`: where every model of a run stands, from the files training writes as it goes.

A model is done when model.pt exists, training while its progress.json is fresh, stalled when
progress.json has not been updated for a while (a killed job: the next run resumes it from its
last checkpoint), started when only a checkpoint's history is there, and pending otherwise.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from kge.common.tables import format_duration, text_table
from kge.train.checkpoint import MODEL_NAME, PROGRESS_NAME

STALE_SECONDS = 120.0


def model_states(results_dir: str | Path, now: float | None = None) -> list[dict]:
    """One dict per model directory under results_dir/models: name, state, step, steps, loss, MRR, ETA."""
    now = time.time() if now is None else now
    rows = []
    for model_dir in sorted(p for p in (Path(results_dir) / "models").glob("*") if p.is_dir()):
        progress_path = model_dir / PROGRESS_NAME
        progress = json.loads(progress_path.read_text()) if progress_path.exists() else {}
        live = bool(progress)  # progress.json is rewritten every few seconds while training runs
        history_path = model_dir / "history.json"
        if not progress and history_path.exists():  # written at each checkpoint and at the end
            data = json.loads(history_path.read_text())
            history = data["history"]
            mrrs = [h["valid_mrr"] for h in history if "valid_mrr" in h]
            if history:
                progress = {
                    "step": history[-1]["step"],
                    # Only this one number, read leniently: status also looks at trees other versions wrote.
                    "steps": data["config"]["steps"],
                    "loss": history[-1]["loss"],
                    "valid_mrr": mrrs[-1] if mrrs else None,
                    "updated": history_path.stat().st_mtime,
                }
        if (model_dir / MODEL_NAME).exists():
            state = "done"
        elif live:
            state = "training" if now - progress["updated"] < STALE_SECONDS else "stalled"
        elif progress:
            state = "started"  # a checkpoint's history but no progress file: liveness unknown
        else:
            state = "pending"
        rows.append(
            {
                "model": model_dir.name,
                "state": state,
                **{
                    k: progress.get(k)
                    for k in ("step", "steps", "loss", "valid_mrr", "steps_per_second", "eta_seconds", "train_seconds")
                },
            }
        )
    return rows


def status_text(results_dir: str | Path, now: float | None = None) -> str:
    rows = model_states(results_dir, now)
    if not rows:
        return f"{results_dir}/models: no model has started"
    cells = []
    for r in rows:
        step = f"{r['step']}/{r['steps']}" if r["step"] is not None else "-"
        pct = f" {100 * r['step'] / r['steps']:3.0f}%" if r["step"] is not None and r["steps"] else ""
        loss = f"{r['loss']:.4f}" if r["loss"] is not None else "-"
        mrr = f"{r['valid_mrr']:.4f}" if r["valid_mrr"] is not None else "-"
        rate = f"{r['steps_per_second']:.1f}" if r["steps_per_second"] else "-"
        eta = format_duration(r["eta_seconds"], compact=True) if r["state"] == "training" else "-"
        cells.append([r["model"], r["state"], step + pct, loss, mrr, rate, eta])
    columns = ["model", "state", "step", "loss", "valid MRR", "steps/s", "ETA"]
    lines = text_table(columns, cells, "<<>>>>>", widths=[40, 9, 17, 8, 9, 8, 8])
    counts = {s: sum(r["state"] == s for r in rows) for s in ("done", "training", "stalled", "started", "pending")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return "\n".join(lines)
