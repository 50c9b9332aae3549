"""Two-phase (progressive) schedule: a small negative pool for most steps, the full pool at the end."""

from __future__ import annotations

import math

import pytest
import torch

from kge.common.errors import KgeInputError
from kge.config import resolve_model_config
from kge.train.trainer import Trainer

BASE = {
    "score_fn": "distmult",
    "dim": 16,
    "batch_size": 32,
    "negatives": 64,
    "steps": 10,
    "learning_rate": 0.01,
    "checkpoint_every": 1000,
    "loss": {"type": "softmax", "in_batch_negatives": False},
}


def _trainer(settings, shard_dir, tmp_path, name):
    return Trainer(resolve_model_config(settings), shard_dir, tmp_path / name)


def _run(trainer, steps):
    losses, pools = [], []
    for _ in range(steps):
        losses.append(trainer.train_step())
        pools.append(trainer.last_step["batch"].negatives.shape[0])
    return losses, pools


def _state(trainer):
    return [trainer.model.entity_table.clone()] + [p.detach().clone() for p in trainer.dense_params]


def test_phase_boundary_and_pool_sizes():
    config = resolve_model_config({**BASE, "two_phase": {"fraction": 0.7, "negatives": 8}})
    assert config.phase_one_steps == 7
    assert [config.negatives_at(2, s) for s in range(10)] == [8] * 7 + [64] * 3
    off = resolve_model_config(BASE)
    assert off.phase_one_steps == 0 and {off.negatives_at(2, s) for s in range(10)} == {64}
    per_shard = resolve_model_config(
        {**BASE, "negatives_per_shard": 48, "two_phase": {"fraction": 0.5, "negatives": 4}}
    )
    assert [per_shard.negatives_at(2, s) for s in (4, 5)] == [4, 96]  # the full pool is a2a x D


def test_steps_draw_the_scheduled_pool_with_its_correction(mini_shards, tmp_path):
    trainer = _trainer({**BASE, "two_phase": {"fraction": 0.5, "negatives": 8}}, mini_shards, tmp_path, "m")
    _, pools = _run(trainer, 10)
    assert pools == [8] * 5 + [64] * 5
    # log((|E| - 1) / N) for each pool: the correction follows the pool the step drew.
    E = trainer.num_entities
    assert trainer.corrections[8] == pytest.approx(math.log((E - 1) / 8))
    assert trainer.corrections[64] == pytest.approx(math.log((E - 1) / 64))


def test_phase_one_is_the_small_pool_run_and_equal_pools_change_nothing(mini_shards, tmp_path):
    # Phase one trains exactly as a run configured with the small pool throughout ...
    two_phase = _trainer({**BASE, "two_phase": {"fraction": 0.5, "negatives": 8}}, mini_shards, tmp_path, "a")
    small = _trainer({**BASE, "negatives": 8}, mini_shards, tmp_path, "b")
    assert _run(two_phase, 5)[0] == _run(small, 5)[0]
    for x, y in zip(_state(two_phase), _state(small)):
        assert torch.equal(x, y)
    # ... then switches to the full pool, so the runs part.
    assert _run(two_phase, 1)[1] == [64] and _run(small, 1)[1] == [8]
    # A phase-one pool as large as the full one is the plain run, bit for bit.
    same = _trainer({**BASE, "two_phase": {"fraction": 0.5, "negatives": 64}}, mini_shards, tmp_path, "c")
    plain = _trainer(BASE, mini_shards, tmp_path, "d")
    assert _run(same, 8)[0] == _run(plain, 8)[0]
    for x, y in zip(_state(same), _state(plain)):
        assert torch.equal(x, y)


def test_bad_two_phase_settings_are_refused(mini_shards, tmp_path):
    with pytest.raises(KgeInputError, match="two_phase.negatives"):
        resolve_model_config({**BASE, "two_phase": {"fraction": 0.5}})
    with pytest.raises(KgeInputError, match="two_phase.fraction"):
        resolve_model_config({**BASE, "two_phase": {"fraction": 1.0, "negatives": 8}})
    with pytest.raises(KgeInputError, match="shard count"):
        _trainer({**BASE, "two_phase": {"fraction": 0.5, "negatives": 7}}, mini_shards, tmp_path, "e")
