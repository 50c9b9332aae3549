"""The step as phases (kge.train.step): the exchange and the objective chosen once when the trainer is
built, the phases run in order, and their wall time goes through the phase timer."""

from __future__ import annotations

import time

import pytest
import torch

from kge.config import resolve_model_config
from kge.train.exchange import DotOperands, DotTailsExchange, ScoresExchange, TailsExchange
from kge.train.objective import DotLogSigmoid, DotSoftmax, LogSigmoid, Softmax
from kge.train.timing import STEP_BUCKETS, PhaseTimer
from kge.train.trainer import Trainer

SETTINGS = {
    "dim": 16,
    "batch_size": 32,
    "negatives": 32,
    "steps": 10,
    "learning_rate": 0.01,
    "checkpoint_every": 1000,
    "validate_every": 0,
}

# (scorer, loss, exchange) -> (exchange class, objective class, what the objective consumes)
CHOICES = {
    ("distmult", "softmax", "tails"): (DotTailsExchange, DotSoftmax, DotOperands),
    ("distmult", "logsigmoid", "tails"): (DotTailsExchange, DotLogSigmoid, DotOperands),
    ("distmult", "softmax", "scores"): (ScoresExchange, Softmax, torch.Tensor),
    ("distmult", "logsigmoid", "scores"): (ScoresExchange, LogSigmoid, torch.Tensor),
    ("transe", "softmax", "tails"): (TailsExchange, Softmax, torch.Tensor),
    ("transe", "logsigmoid", "tails"): (TailsExchange, LogSigmoid, torch.Tensor),
    ("transe", "softmax", "scores"): (ScoresExchange, Softmax, torch.Tensor),
    ("transe", "logsigmoid", "scores"): (ScoresExchange, LogSigmoid, torch.Tensor),
}


def _trainer(shards, path, **settings) -> Trainer:
    trainer = Trainer(resolve_model_config({**SETTINGS, **settings}), shards, path)
    trainer._prefetch = False  # no thread to outlive the test
    return trainer


@pytest.mark.parametrize("score_fn, loss, exchange", list(CHOICES))
def test_exchange_and_objective_are_chosen_once_from_the_config(mini_shards, tmp_path, score_fn, loss, exchange):
    want_exchange, want_objective, consumes = CHOICES[score_fn, loss, exchange]
    trainer = _trainer(mini_shards, tmp_path, score_fn=score_fn, loss={"type": loss}, exchange=exchange)
    assert type(trainer.exchange) is want_exchange and type(trainer.objective) is want_objective
    chosen = trainer.exchange, trainer.objective
    seen = []
    objective = trainer.objective

    def spy(scored, correction, false_negatives):
        seen.append(type(scored))
        return objective(scored, correction, false_negatives)

    trainer.objective = spy
    for _ in range(2):
        assert torch.isfinite(torch.tensor(trainer.train_step()))
    assert seen == [consumes, consumes] and trainer.exchange is chosen[0] and objective is chosen[1]


def test_the_step_runs_its_phases_in_order(mini_shards, tmp_path, monkeypatch):
    trainer = _trainer(mini_shards, tmp_path, features={"dropout": 0.1})
    order = []
    phases = ["sample", "route", "gather", "encode", "exchange_and_score", "loss", "backward", "reduce", "update"]
    for name in phases:
        method = getattr(trainer, name)

        def wrapped(*args, _method=method, _name=name, **kwargs):
            order.append(_name)
            return _method(*args, **kwargs)

        monkeypatch.setattr(trainer, name, wrapped)
    trainer.train_step()
    assert order == phases and trainer.step == 1
    assert set(trainer.last_step) == {"batch", "served", "false_negatives"}


def test_phase_timer_charges_each_phase_only_when_enabled():
    timer = PhaseTimer(("a", "b"))
    with timer.phase("a"):
        time.sleep(0.01)
    with timer.phase("b"):
        pass
    assert list(timer.seconds) == ["a", "b"] and timer.seconds["a"] >= 0.01 > timer.seconds["b"] >= 0.0
    with pytest.raises(ValueError), timer.phase("b"):  # a failed phase charges nothing, the error goes on
        time.sleep(0.01)
        raise ValueError
    assert timer.seconds["b"] < 0.01
    off = PhaseTimer(("a",), enabled=False)
    with off.phase("a"):
        time.sleep(0.01)
    assert off.seconds == {"a": 0.0}


def test_the_trainer_times_every_bucket_and_bench_can_reset_them(mini_shards, tmp_path):
    trainer = _trainer(mini_shards, tmp_path)
    assert list(trainer.phase_seconds) == list(STEP_BUCKETS)
    start = time.perf_counter()
    trainer.train_step()
    wall = time.perf_counter() - start
    assert all(v > 0 for v in trainer.phase_seconds.values()) and sum(trainer.phase_seconds.values()) <= wall
    trainer.phase_seconds = dict.fromkeys(trainer.phase_seconds, 0.0)  # as `kge bench` resets them
    assert set(trainer.phase_seconds.values()) == {0.0}
    trainer.train_step()
    assert all(v > 0 for v in trainer.phase_seconds.values())
    trainer.timer.enabled = False
    before = dict(trainer.phase_seconds)
    trainer.train_step()
    assert trainer.phase_seconds == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_timer_is_off_on_cuda_until_bench_switches_it_on(mini_shards, tmp_path):
    """A timed phase synchronizes the device; training on CUDA must not pay that for nobody."""
    trainer = Trainer(resolve_model_config({**SETTINGS, "device": "cuda"}), mini_shards, tmp_path / "cuda")
    assert trainer.device.type == "cuda" and not trainer.timer.enabled
    trainer.train_step()
    assert set(trainer.phase_seconds.values()) == {0.0}
    trainer.close()
