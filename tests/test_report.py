"""Report pieces: wall time per rule from benchmark files, per-model figures, and `kge status`."""

from __future__ import annotations

import json
import time

from kge.common import atomic
from kge.report.plots import family_figure, model_curves, read_benchmarks, timing_figure
from kge.report.status import model_states, status_text

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _bench(path, seconds, rss="100.5"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t0\t1\n")


def test_timing_table_sums_jobs_per_rule(tmp_path):
    bench = tmp_path / "benchmarks"
    _bench(bench / "train" / "a.tsv", 10.0)
    _bench(bench / "train" / "b.tsv", 50.0, rss="300")
    _bench(bench / "predict" / "a.tsv", 6.0, rss="NA")
    _bench(bench / "shard.tsv", 3.0)
    rows = read_benchmarks(bench)
    assert {(r["rule"], r["job"], r["seconds"]) for r in rows} == {
        ("train", "a", 10.0),
        ("train", "b", 50.0),
        ("predict", "a", 6.0),
        ("shard", "shard", 3.0),
    }
    timing_figure(bench, tmp_path / "timing.png", tmp_path / "timing.md")
    table = (tmp_path / "timing.md").read_text().splitlines()
    assert table[2] == "| train | 2 | 1.0 | 30.0 | 50.0 | b | 300 |"  # the slowest rule first
    assert table[3].startswith("| predict | 1 | 0.1 | 6.0 | 6.0 | a | |")
    assert (tmp_path / "timing.png").stat().st_size > 0


def test_model_curves_and_family_figure(tmp_path):
    histories = []
    for name, score_fn in (("m1", "distmult"), ("m2", "transe")):
        path = tmp_path / "models" / name / "history.json"
        path.parent.mkdir(parents=True)
        config = {"score_fn": score_fn, "dim": 8, "loss": {"type": "softmax"}, "learning_rate": 0.01}
        path.write_text(
            json.dumps(
                {
                    "config": config,
                    "history": [
                        {"step": 5, "loss": 1.0},
                        {"step": 10, "loss": 0.5, "train_mrr": 0.2, "valid_mrr": 0.1},
                    ],
                }
            )
        )
        histories.append(str(path))
    model_curves(histories, tmp_path / "curves")
    assert sorted(p.name for p in (tmp_path / "curves").iterdir()) == ["m1.png", "m2.png"]
    summary = tmp_path / "summary.json"
    summary.write_text(
        json.dumps(
            {
                "members": [
                    {"model": "m1", "score_fn": "distmult", "loss": "softmax", "valid_mrr": 0.1},
                    {"model": "m2", "score_fn": "transe", "loss": "logsigmoid", "valid_mrr": 0.05},
                ]
            }
        )
    )
    family_figure(summary, tmp_path / "families.png")
    assert (tmp_path / "families.png").stat().st_size > 0


def test_status_states(tmp_path):
    models = tmp_path / "models"
    for name in ("done", "running", "killed", "waiting"):
        (models / name).mkdir(parents=True)
    (models / "done" / "model.pt").write_bytes(b"x")
    atomic.save_json(
        models / "done" / "history.json",
        {"config": {"steps": 100}, "history": [{"step": 100, "loss": 0.3, "valid_mrr": 0.2}]},
    )
    now = time.time()
    progress = {
        "state": "training",
        "step": 40,
        "steps": 100,
        "steps_per_second": 2.0,
        "eta_seconds": 30.0,
        "loss": 0.7,
        "valid_mrr": 0.1,
        "train_seconds": 20.0,
        "workers": 1,
    }
    atomic.save_json(models / "running" / "progress.json", {**progress, "updated": now - 5})
    atomic.save_json(models / "killed" / "progress.json", {**progress, "updated": now - 3600})
    states = {r["model"]: r for r in model_states(tmp_path, now)}
    assert {k: v["state"] for k, v in states.items()} == {
        "done": "done",
        "running": "training",
        "killed": "stalled",
        "waiting": "pending",
    }
    assert states["done"]["step"] == 100 and states["done"]["valid_mrr"] == 0.2
    text = status_text(tmp_path, now)
    assert "40/100  40%" in text and "0m30s" in text and text.endswith("1 done, 1 training, 1 stalled, 1 pending")


def test_training_writes_progress(mini_shards, tmp_path):
    from kge.config import resolve_model_config
    from kge.train.trainer import train

    config = resolve_model_config({"score_fn": "distmult", "dim": 8, "batch_size": 64, "negatives": 64, "steps": 4})
    train(config, mini_shards, tmp_path / "models" / "m", progress=False)
    progress = json.loads((tmp_path / "models" / "m" / "progress.json").read_text())
    assert progress["state"] == "done" and progress["step"] == progress["steps"] == 4
    assert model_states(tmp_path)[0]["state"] == "done"
