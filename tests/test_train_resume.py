"""Training: the loss falls, and a run killed at any moment resumes to the identical model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

SETTINGS = {
    "score_fn": "complex",
    "dim": 32,
    "batch_size": 64,
    "negatives": 64,
    "steps": 80,
    "learning_rate": 0.01,
    "checkpoint_every": 5,
    "validate_every": 0,
    "validate_queries": 200,
    "features": {"dropout": 0.1},
}


def _train_cmd(config_path, root, shards, out):
    return [
        sys.executable,
        "-m",
        "kge",
        "train",
        "--config",
        str(config_path),
        "--root",
        str(root),
        "--shard-dir",
        str(shards),
        "--out",
        str(out),
        "--threads",
        "1",
    ]


def _model_config(settings: dict, tmp_path):
    """`kge config model` of ``settings`` -> the config path."""
    config_path = tmp_path / "config.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "kge",
            "config",
            "model",
            "--name",
            "m",
            "--json",
            json.dumps(settings),
            "--out",
            str(config_path),
        ],
        check=True,
    )
    return config_path


def _wait_for(path, proc) -> None:
    """Until ``path`` exists (a checkpoint was committed), ``proc`` ended, or two minutes passed."""
    deadline = time.monotonic() + 120
    while not path.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)


def _assert_identical_models(reference_dir, resumed_dir, steps: int) -> dict:
    """Both finished with ``steps`` steps, equal entity rows and dense parameters; no checkpoint left."""
    from kge.train.checkpoint import load_entity_rows

    reference = torch.load(reference_dir / "model.pt", weights_only=False)
    resumed = torch.load(resumed_dir / "model.pt", weights_only=False)
    assert resumed["steps"] == reference["steps"] == steps
    assert torch.equal(
        load_entity_rows(resumed_dir / "model.pt", resumed), load_entity_rows(reference_dir / "model.pt", reference)
    )
    for key, value in reference["dense"].items():
        assert torch.equal(resumed["dense"][key], value), key
    assert not (resumed_dir / "checkpoint").exists()
    return reference


def test_killed_run_resumes_to_identical_model(mini_root, mini_shards, tmp_path):
    config_path = _model_config(SETTINGS, tmp_path)
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    subprocess.run(_train_cmd(config_path, mini_root, mini_shards, reference_dir), check=True, capture_output=True)

    # Kill with SIGKILL once a checkpoint exists (no chance to clean up), then rerun the same command.
    proc = subprocess.Popen(_train_cmd(config_path, mini_root, mini_shards, resumed_dir), stderr=subprocess.PIPE)
    checkpoint = resumed_dir / "checkpoint" / "latest.json"
    _wait_for(checkpoint, proc)
    assert proc.poll() is None, "training ended before it could be killed; raise steps"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (resumed_dir / "model.pt").exists(), "a killed run must not leave a finished-looking model"
    killed_at = json.loads(checkpoint.read_text())["step"]
    assert 0 < killed_at < SETTINGS["steps"]

    rerun = subprocess.run(
        _train_cmd(config_path, mini_root, mini_shards, resumed_dir), check=True, capture_output=True, text=True
    )
    assert "resumed from" in rerun.stderr and f"at step {killed_at}" in rerun.stderr

    reference = _assert_identical_models(reference_dir, resumed_dir, SETTINGS["steps"])
    losses = [h["loss"] for h in reference["history"]]
    assert losses[-1] < losses[0], "training should reduce the loss"
    assert "valid_mrr" in reference["history"][-1]


def test_stale_checkpoint_of_other_config_is_not_used(mini_root, mini_shards, tmp_path):
    from kge.config import resolve_model_config
    from kge.train.trainer import Trainer

    cfg = resolve_model_config(dict(SETTINGS, steps=10))
    first = Trainer(cfg, mini_shards, tmp_path)
    first.train_step()
    first.save_checkpoint()
    assert Trainer(cfg, mini_shards, tmp_path).try_resume()
    other = Trainer(resolve_model_config(dict(SETTINGS, steps=10, learning_rate=0.5)), mini_shards, tmp_path)
    assert not other.try_resume()


def _children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (from /proc)."""
    out = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(stat))
    return out


def test_killed_worker_group_restarts_and_resumes_to_identical_model(mini_root, mini_shards, tmp_path):
    """W = 2 workers under torchrun: SIGKILL one worker after a checkpoint; torchrun restarts the
    group, both workers resume from the last complete per-shard checkpoint, and the final model
    equals an uninterrupted two-worker run bit for bit."""
    settings = dict(SETTINGS, workers=2, steps=120, checkpoint_every=10, features={"dropout": 0.0})
    config_path = _model_config(settings, tmp_path)
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    subprocess.run(_train_cmd(config_path, mini_root, mini_shards, reference_dir), check=True, capture_output=True)

    launcher = subprocess.Popen(
        _train_cmd(config_path, mini_root, mini_shards, resumed_dir), stderr=subprocess.PIPE, text=True
    )
    _wait_for(resumed_dir / "checkpoint" / "latest.json", launcher)
    workers = _children(launcher.pid)  # `kge train` exec'd into torchrun, whose children are the workers
    assert launcher.poll() is None and len(workers) == 2, "training ended before a worker could be killed; raise steps"
    os.kill(workers[1], signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, stderr[-3000:]
    assert "resumed from" in stderr

    _assert_identical_models(reference_dir, resumed_dir, settings["steps"])
