"""The training loop and its callbacks (kge.train.loop, kge.train.callbacks) on a fake trainer and clock:
each callback fires at the steps its contract names."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kge.config import resolve_model_config
from kge.dist.comm import LocalComm
from kge.train.callbacks import (
    CheckpointCallback,
    HistoryCallback,
    ProgressFileCallback,
    ValidationCallback,
    training_callbacks,
)
from kge.train.checkpoint import PROGRESS_NAME
from kge.train.loop import PendingLosses, TrainingLoop


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeTrainer:
    """What the loop and the callbacks read: a step counter whose steps take ``seconds_per_step``
    on ``clock``, losses 1, 2, 3 ... (``nan_at``: that step's loss is NaN), and records of saves."""

    def __init__(self, tmp_path, clock: FakeClock, seconds_per_step: float = 1.0, nan_at: int | None = None):
        self.step, self.clock, self.seconds_per_step, self.nan_at = 0, clock, seconds_per_step, nan_at
        self.comm, self.world_size, self.is_main, self.model_dir = LocalComm(), 1, True, tmp_path
        self.n_shards = 2
        self.history, self.train_seconds, self.checkpoints, self.closed = [], 0.0, [], False
        self.config = resolve_model_config({"steps": 10})

    def train_step(self, sync: bool = True):
        self.step += 1
        self.clock.now += self.seconds_per_step
        return torch.tensor(float("nan") if self.step == self.nan_at else float(self.step))

    def save_checkpoint(self):
        self.checkpoints.append(self.step)

    def close(self):
        self.closed = True

    def save_final(self) -> dict:
        return {"steps": self.step}


def test_checkpoints_by_steps_and_by_seconds_whichever_comes_first(tmp_path):
    clock = FakeClock()
    trainer = FakeTrainer(tmp_path, clock, seconds_per_step=4.0)
    final = TrainingLoop(trainer, 20, [CheckpointCallback(every_steps=5, every_seconds=10.0, clock=clock)]).run()
    # 12 s after the start (step 3); step 5; 12 s after step 5 (step 8); 10; 13; 15; 18; never after step 20.
    assert trainer.checkpoints == [3, 5, 8, 10, 13, 15, 18] and final == {"steps": 20} and trainer.closed


def test_checkpoint_decisions_are_rank_zeros(tmp_path):
    class Rank1Comm(LocalComm):  # rank 0 decided: no checkpoint, whatever this worker's clock says
        def broadcast_flag(self, flag: bool) -> bool:
            return False

    clock = FakeClock()
    trainer = FakeTrainer(tmp_path, clock, seconds_per_step=100.0)
    trainer.comm = Rank1Comm()
    TrainingLoop(trainer, 6, [CheckpointCallback(every_steps=2, every_seconds=1.0, clock=clock)]).run()
    assert trainer.checkpoints == []


def test_history_and_validation_entries(tmp_path):
    trainer = FakeTrainer(tmp_path, FakeClock())
    validated = []

    def evaluator(t):
        validated.append(t.step)
        return {"valid_mrr": t.step / 100}

    callbacks = [ValidationCallback(evaluator, every=4), HistoryCallback(trainer.config, 2, log_every=3)]
    TrainingLoop(trainer, 10, callbacks).run()
    assert validated == [4, 8, 10]  # every 4 steps and after the last
    assert [h["step"] for h in trainer.history] == [3, 4, 6, 8, 9, 10]  # every 3, at validations, the last
    assert [h["loss"] for h in trainer.history] == [2.0, 4.0, 5.5, 7.5, 9.0, 10.0]  # means since the last entry
    assert [h.get("valid_mrr") for h in trainer.history] == [None, 0.04, None, 0.08, None, 0.1]
    assert list(trainer.history[1]) == ["step", "loss", "lr", "valid_mrr"]
    assert trainer.history[-1]["lr"] == pytest.approx(trainer.config.learning_rate * (1 - 9 / 10))


def test_a_non_finite_loss_stops_training_before_validation_or_checkpoint(tmp_path):
    trainer = FakeTrainer(tmp_path, FakeClock(), nan_at=3)
    validated = []
    callbacks = [
        ValidationCallback(lambda t: validated.append(t.step) or {}, every=4),
        HistoryCallback(trainer.config, 2, log_every=100),
        CheckpointCallback(every_steps=4, every_seconds=1e9),
    ]
    with pytest.raises(FloatingPointError, match="at step 3;"):
        TrainingLoop(trainer, 10, callbacks).run()
    assert validated == [] and trainer.checkpoints == [] and trainer.step == 4 and trainer.closed


def test_pending_losses_are_read_once_and_checked():
    pending = PendingLosses()
    for value in (1.0, 2.0, float("inf")):
        pending.append(torch.tensor(value))
    with pytest.raises(FloatingPointError, match="loss became inf at step 7;"):
        pending.settle(step=7)
    pending = PendingLosses()
    pending.append(torch.tensor(1.0))
    pending.append(3.0)
    pending.settle(step=2)
    assert pending.values == [1.0, 3.0] and pending.mean() == 2.0


def test_progress_file_every_so_many_seconds_and_done(tmp_path, monkeypatch):
    clock = FakeClock()
    trainer = FakeTrainer(tmp_path, clock, seconds_per_step=3.0)
    writes = []
    callback = ProgressFileCallback(every_seconds=10.0, clock=clock)
    real_write = callback.write

    def write(loop, state):
        writes.append((loop.trainer.step, state))
        real_write(loop, state)

    monkeypatch.setattr(callback, "write", write)
    TrainingLoop(trainer, 10, [HistoryCallback(trainer.config, 2, log_every=5), callback]).run()
    # After the first step, then once more than 10 s passed (3 s a step), and "done" at the end.
    assert writes == [(1, "training"), (5, "training"), (9, "training"), (10, "done")]
    progress = json.loads((tmp_path / PROGRESS_NAME).read_text())
    assert progress["state"] == "done" and progress["step"] == progress["steps"] == 10
    assert progress["loss"] == 8.0 and math.isclose(progress["steps_per_second"], 1 / 3)


def test_training_callbacks_follow_the_config(tmp_path):
    trainer = FakeTrainer(tmp_path, FakeClock())
    names = [type(c).__name__ for c in training_callbacks(trainer, None, progress=False)]
    assert names == ["HistoryCallback", "ProgressBarCallback", "ProgressFileCallback", "CheckpointCallback"]
    trainer.is_main = False
    names = [type(c).__name__ for c in training_callbacks(trainer, lambda t: {}, progress=True)]
    assert names == ["ValidationCallback", "HistoryCallback", "ProgressBarCallback", "CheckpointCallback"]
