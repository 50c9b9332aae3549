"""The prefetch thread (issue 13): step t + 1's sampling and id routing run ahead, and change nothing.

Every step is prepared from (seed, step, rank) alone, so a trainer that prepares ahead must draw the
same batches, reach the same losses and parameters as one that prepares inline, also across a
resume (which moves the step under a pending prefetch), and the training loop, which reads the loss
only when it logs, must still stop at the first non-finite loss.
"""

from __future__ import annotations

import pytest
import torch

from kge.config import resolve_model_config
from kge.train.trainer import Trainer, train

SETTINGS = {
    "score_fn": "distmult",
    "dim": 16,
    "batch_size": 32,
    "negatives": 32,
    "steps": 20,
    "learning_rate": 0.01,
    "checkpoint_every": 1000,
    "validate_every": 0,
    "features": {"dropout": 0.1},
    "loss": {"type": "softmax", "mask_false_negatives": True},
    "two_phase": {"fraction": 0.3, "negatives": 8},
}


def _trainer(shards, path, prefetch: bool, **overrides) -> Trainer:
    trainer = Trainer(resolve_model_config({**SETTINGS, **overrides}), shards, path)
    trainer._prefetch = prefetch
    return trainer


def _record(trainer: Trainer, steps: int) -> list:
    out = []
    for _ in range(steps):
        loss = trainer.train_step()
        batch = trainer.last_step["batch"]
        fn = trainer.last_step["false_negatives"]
        out.append((loss, [t.clone() for t in batch], trainer.last_step["served"].clone(), [t.clone() for t in fn]))
    return out


def _assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (loss_a, batch_a, served_a, fn_a), (loss_b, batch_b, served_b, fn_b) in zip(a, b):
        assert loss_a == loss_b
        assert all(torch.equal(x, y) for x, y in zip(batch_a, batch_b))
        assert torch.equal(served_a, served_b)
        assert all(torch.equal(x, y) for x, y in zip(fn_a, fn_b))


def _state(trainer: Trainer) -> list[torch.Tensor]:
    opt = trainer.entity_optimizer
    return [trainer.model.entity_table, opt.m, opt.v] + [p.detach() for p in trainer.dense_params]


def test_prefetching_draws_the_same_steps_as_inline(mini_shards, tmp_path):
    ahead = _trainer(mini_shards, tmp_path / "ahead", prefetch=True)
    inline = _trainer(mini_shards, tmp_path / "inline", prefetch=False)
    got, want = _record(ahead, 8), _record(inline, 8)  # crosses the two-phase boundary at step 6
    assert ahead._ahead is not None and ahead._ahead[0] == 8 and inline._ahead is None
    _assert_same(got, want)
    assert all(torch.equal(x, y) for x, y in zip(_state(ahead), _state(inline)))
    ahead.close()
    assert ahead._executor is None and ahead._ahead is None
    _assert_same(_record(ahead, 2), _record(inline, 2))  # usable after close: a new thread starts
    ahead.close()


def test_a_resume_discards_the_pending_prefetch(mini_shards, tmp_path):
    reference = _trainer(mini_shards, tmp_path / "reference", prefetch=False)
    want = _record(reference, 7)
    first = _trainer(mini_shards, tmp_path / "resumed", prefetch=True)
    _record(first, 3)
    first.save_checkpoint()  # step 3
    _record(first, 2)  # step 5 is now prepared ahead
    assert first._ahead[0] == 5
    assert first.try_resume() and first.step == 3  # back to step 3 under the pending prefetch
    _assert_same(_record(first, 4), want[3:])
    first.close()
    # A fresh process resuming the same checkpoint: the same steps again.
    again = _trainer(mini_shards, tmp_path / "resumed", prefetch=True)
    assert again.try_resume() and again.step == 3
    _assert_same(_record(again, 4), want[3:])
    assert all(torch.equal(x, y) for x, y in zip(_state(again), _state(reference)))
    again.close()


def test_two_workers_prepare_ahead_too(mini_shards, tmp_path):
    """W > 1 prepares the owner grouping and its inverse ahead; the requests still travel in the step."""
    config = resolve_model_config({**SETTINGS, "workers": 2})
    trainer = Trainer.__new__(Trainer)  # rank 0 of 2 without a process group: only what _prepare reads
    trainer.config, trainer.world_size, trainer.rank = config, 2, 0
    full = Trainer(resolve_model_config(SETTINGS), mini_shards, tmp_path / "one")
    trainer.n_shards, trainer.shard_size, trainer.partition = full.n_shards, full.shard_size, full.partition
    from kge.bess.sampling import BessSampler

    trainer.sampler = BessSampler(mini_shards, 32, 32, rank=0, world_size=2)
    trainer.model, trainer.features = full.model, full.features
    a, b = trainer._prepare(4), trainer._prepare(4)
    assert a.unique is None and a.features is None and a.unorder is not None
    assert torch.equal(a.requests, b.requests) and torch.equal(a.unorder, b.unorder)
    M = a.requests.numel()
    assert a.requests.shape == (2, M // 2) and torch.equal(torch.sort(a.unorder).values, torch.arange(M))
    full.close()


def test_the_loop_stops_at_the_first_non_finite_loss(mini_shards, tmp_path, monkeypatch):
    """The loop reads losses only when it logs or saves; it still names the step that went NaN."""
    real = Trainer.train_step

    def step(self, sync=True):
        loss = real(self, sync)
        return torch.tensor(float("nan")) if self.step == 4 else loss

    monkeypatch.setattr(Trainer, "train_step", step)
    config = resolve_model_config({**SETTINGS, "steps": 20})
    with pytest.raises(FloatingPointError, match="at step 4;"):
        train(config, mini_shards, tmp_path / "nan", progress=False)
