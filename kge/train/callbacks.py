"""What the training loop does between steps, one callback per concern (hooks: ``kge.train.loop``).

``training_callbacks`` lists them in the order `kge train` runs them after each step:

- ``ValidationCallback``: ``evaluator(trainer) -> {metric: float}`` every ``validate_every`` steps
  and after the last, on every worker (it may use collectives); the metrics join this step's
  history entry.
- ``HistoryCallback``: every ``log_every`` steps, after the last and whenever metrics arrived, one
  entry ``{step, loss (mean since the last entry), lr, [negatives], metrics...}`` in
  ``trainer.history`` (which checkpoints and model.pt carry).
- ``ProgressBarCallback``: the tqdm bar on rank 0 (steps, the last entry as its postfix).
- ``ProgressFileCallback``: rank 0 rewrites model_dir/progress.json every ``PROGRESS_SECONDS``
  (read by `kge status`), and once more, ``state: done``, after the final model.
- ``CheckpointCallback``: a checkpoint every ``checkpoint_every`` steps or ``checkpoint_seconds``
  seconds after the last one, whichever comes first; never after the last step (model.pt follows).

Clocks are parameters (``clock``: seconds, monotonic), so tests drive them with a fake one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tqdm import tqdm

from kge.common import atomic
from kge.config import ModelConfig
from kge.train.checkpoint import PROGRESS_NAME
from kge.train.loop import Callback, StepEnd, TrainingLoop
from kge.train.schedule import learning_rate

PROGRESS_SECONDS = 10.0


class ValidationCallback(Callback):
    """``evaluator(trainer) -> dict`` every ``every`` steps (0: never) and after the last step."""

    def __init__(self, evaluator: Callable[[object], dict], every: int):
        self.evaluator = evaluator
        self.every = every

    def due(self, end: StepEnd) -> bool:
        return end.done or bool(self.every and end.step % self.every == 0)

    def after_step(self, loop: TrainingLoop, end: StepEnd) -> None:
        if not self.due(end):
            return
        loop.losses.settle(end.step)  # a non-finite loss stops training before any evaluation
        end.metrics = {**(end.metrics or {}), **self.evaluator(loop.trainer)}


class HistoryCallback(Callback):
    """Appends ``{step, loss, lr[, negatives], **metrics}`` to ``trainer.history``.

    ``loss``: the mean loss of the steps since the previous entry; ``lr``: the last step's base
    learning rate; ``negatives``: the last step's shared pool, with a two-phase schedule only."""

    def __init__(self, config: ModelConfig, n_shards: int, log_every: int):
        self.config = config
        self.n_shards = n_shards
        self.log_every = log_every
        self.two_phase = config.two_phase.enabled

    def due(self, end: StepEnd) -> bool:
        return end.step % self.log_every == 0 or end.done or end.metrics is not None

    def after_step(self, loop: TrainingLoop, end: StepEnd) -> None:
        if not self.due(end):
            return
        loop.losses.settle(end.step)
        entry = {"step": end.step, "loss": loop.losses.mean(), "lr": learning_rate(self.config, end.step - 1)}
        if self.two_phase:  # which pool the last step drew from
            entry["negatives"] = self.config.negatives_at(self.n_shards, end.step - 1)
        loop.losses.clear()
        entry.update(end.metrics or {})
        loop.trainer.history.append(entry)
        end.entry = entry


class ProgressBarCallback(Callback):
    """A tqdm bar of the steps (``enabled``: rank 0 with progress wanted), the last entry as postfix."""

    def __init__(self, description: str, enabled: bool):
        self.description = description
        self.enabled = enabled
        self.bar: tqdm | None = None

    def before_steps(self, loop: TrainingLoop) -> None:
        self.bar = tqdm(
            total=loop.total,
            initial=loop.trainer.step,
            desc=self.description,
            unit="step",
            disable=not self.enabled,
            mininterval=2.0,
        )

    def after_step(self, loop: TrainingLoop, end: StepEnd) -> None:
        self.bar.update(1)
        if end.entry is not None:
            self.bar.set_postfix({k: round(v, 4) for k, v in end.entry.items() if k != "step"})

    def after_steps(self, loop: TrainingLoop) -> None:
        self.bar.close()


class ProgressFileCallback(Callback):
    """model_dir/progress.json (atomically, rank 0 only): state, step, rate, ETA, last loss and MRR.

    Written after a step when more than ``every_seconds`` passed since the last write (so after the
    first step), and with ``state: done`` after the final model. The rate counts this session's
    steps only (a resumed run's earlier steps took no time here)."""

    def __init__(self, every_seconds: float = PROGRESS_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.every_seconds = every_seconds
        self.clock = clock
        self.last_write: float | None = None
        self.session_start, self.session_first_step = 0.0, 0  # set when the steps start

    def before_steps(self, loop: TrainingLoop) -> None:
        self.session_start, self.session_first_step = self.clock(), loop.trainer.step

    def after_step(self, loop: TrainingLoop, end: StepEnd) -> None:
        if self.last_write is None or self.clock() - self.last_write > self.every_seconds:
            self.write(loop, "training")
            self.last_write = self.clock()

    def after_final(self, loop: TrainingLoop, final: dict) -> None:
        self.write(loop, "done")

    def write(self, loop: TrainingLoop, state: str) -> None:
        trainer = loop.trainer
        elapsed = self.clock() - self.session_start
        rate = (trainer.step - self.session_first_step) / elapsed if elapsed > 0 else 0.0
        last = trainer.history[-1] if trainer.history else {}
        mrrs = [h for h in trainer.history if "valid_mrr" in h]
        atomic.save_json(
            trainer.model_dir / PROGRESS_NAME,
            {
                "state": state,
                "step": trainer.step,
                "steps": loop.total,
                "steps_per_second": rate,
                "eta_seconds": (loop.total - trainer.step) / rate if rate > 0 else None,
                "loss": last.get("loss"),
                "valid_mrr": mrrs[-1]["valid_mrr"] if mrrs else None,
                "train_seconds": trainer.train_seconds,
                "workers": trainer.world_size,
                "updated": time.time(),
            },
        )


class CheckpointCallback(Callback):
    """``trainer.save_checkpoint()`` every ``every_steps`` steps, or once ``every_seconds`` passed
    since the last save (or the start), whichever comes first; not after the last step.

    Every worker must take the same decision (the save has barriers): rank 0's is broadcast. The
    pending losses are read first, so no checkpoint holds parameters a non-finite loss has reached."""

    def __init__(self, every_steps: int, every_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self.clock = clock
        self.last_save = 0.0

    def before_steps(self, loop: TrainingLoop) -> None:
        self.last_save = self.clock()

    def due(self, end: StepEnd) -> bool:
        return end.step % self.every_steps == 0 or self.clock() - self.last_save > self.every_seconds

    def after_step(self, loop: TrainingLoop, end: StepEnd) -> None:
        if end.done or not loop.trainer.comm.broadcast_flag(self.due(end)):
            return
        loop.losses.settle(end.step)
        loop.trainer.save_checkpoint()
        self.last_save = self.clock()


def training_callbacks(trainer, evaluator: Callable[[object], dict] | None, progress: bool) -> list[Callback]:
    """`kge train`'s callbacks for ``trainer`` (its config's intervals), in the order they run."""
    config = trainer.config
    callbacks: list[Callback] = []
    if evaluator is not None:
        callbacks.append(ValidationCallback(evaluator, config.validate_every))
    log_every = max(1, min(100, config.steps // 20))
    callbacks.append(HistoryCallback(config, trainer.n_shards, log_every))
    callbacks.append(ProgressBarCallback(f"train {config.score_fn}", enabled=progress and trainer.is_main))
    if trainer.is_main:
        callbacks.append(ProgressFileCallback())
    callbacks.append(CheckpointCallback(config.checkpoint_every, config.checkpoint_seconds))
    return callbacks
