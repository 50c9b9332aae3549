"""The training loop: step the trainer to the last step, hand every step to the callbacks in order.

What happens between steps (validation, the history, the progress bar and file, checkpoints)
lives in callbacks (``kge.train.callbacks``), each deciding for itself when it is due. The loop
owns one piece of state they share: the losses since the last history entry (``PendingLosses``).

Hooks, in the order the loop calls them::

    before_steps(loop)                       once, before the first step (after any resume)
    after_step(loop, end: StepEnd)           after every step, callbacks in list order
    after_steps(loop)                        once, after the last step (not after an error)
    after_final(loop, final: dict)           once, after the final model is saved

The trainer's side of the contract: ``step`` (the steps done), ``train_step(sync=False)`` (a 0-d
loss tensor), ``train_seconds`` (the loop adds each step's wall time), ``close()`` (stops the
prefetch thread, also after an error) and ``save_final() -> dict`` (model.pt's contents).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from kge.train.step import check_loss


@dataclass
class StepEnd:
    """What the callbacks of one step share. ``metrics``: what was measured at this step (None if
    nothing; ``ValidationCallback`` puts its metrics here, ``HistoryCallback`` copies them into the
    entry); ``entry``: the history entry written at this step, if any (set by ``HistoryCallback``)."""

    step: int  # the steps done, this one included
    done: bool  # the last step
    metrics: dict | None = None
    entry: dict | None = None


class PendingLosses:
    """Each step's loss since the last history entry: 0-d device tensors until they are read.

    Reading a loss waits for the device, so the loop reads them only when it logs or saves, all at
    once (``settle``), and still names the step whose loss went non-finite first."""

    def __init__(self):
        self.values: list[torch.Tensor | float] = []

    def append(self, loss: torch.Tensor | float) -> None:
        self.values.append(loss)

    def settle(self, step: int) -> None:
        """Read the unread losses from the device, once, and check each; ``step``: the steps done
        (the last value's step). FloatingPointError at the first non-finite one."""
        pending = [k for k, value in enumerate(self.values) if torch.is_tensor(value)]
        if not pending:
            return
        read = torch.stack([self.values[k] for k in pending]).cpu().tolist()
        first = step - len(self.values) + 1
        for k, value in zip(pending, read):
            self.values[k] = check_loss(value, first + k)

    def mean(self) -> float:
        """The mean of the settled losses."""
        return float(np.mean(self.values))

    def clear(self) -> None:
        self.values.clear()


class Callback:
    """One concern of the training loop; every hook is optional (see the module docstring)."""

    def before_steps(self, loop: TrainingLoop) -> None:
        pass

    def after_step(self, loop: TrainingLoop, end: StepEnd) -> None:
        pass

    def after_steps(self, loop: TrainingLoop) -> None:
        pass

    def after_final(self, loop: TrainingLoop, final: dict) -> None:
        pass


class TrainingLoop:
    """Steps ``trainer`` until ``trainer.step == total``, calling ``callbacks`` around each step."""

    def __init__(self, trainer, total: int, callbacks: list[Callback]):
        self.trainer = trainer
        self.total = total
        self.callbacks = list(callbacks)
        self.losses = PendingLosses()

    def run(self) -> dict:
        """Train to ``total``, save the final model; returns what ``trainer.save_final`` returns."""
        trainer = self.trainer
        for callback in self.callbacks:
            callback.before_steps(self)
        try:
            while trainer.step < self.total:
                start = time.perf_counter()
                self.losses.append(trainer.train_step(sync=False))  # no host-device sync: read when logged
                trainer.train_seconds += time.perf_counter() - start
                end = StepEnd(step=trainer.step, done=trainer.step == self.total)
                for callback in self.callbacks:
                    callback.after_step(self, end)
        finally:
            trainer.close()
        for callback in self.callbacks:
            callback.after_steps(self)
        final = trainer.save_final()
        for callback in self.callbacks:
            callback.after_final(self, final)
        return final
