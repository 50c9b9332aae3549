"""16-bit storage of the entity table and Adam state in training: what is stored, that it learns,
that stochastic rounding resumes exactly, and what loss scaling does."""

from __future__ import annotations

import pytest
import torch

from kge.config import resolve_model_config
from kge.table.footprint import bytes_per_entity

SETTINGS = {
    "score_fn": "distmult",
    "dim": 32,
    "batch_size": 64,
    "negatives": 64,
    "steps": 40,
    "learning_rate": 0.02,
    "checkpoint_every": 1000,
    "validate_every": 0,
    "features": {"use": False},
}


def _loss_drop(trainer, steps: int) -> tuple[float, float]:
    losses = [trainer.train_step() for _ in range(steps)]
    return sum(losses[:5]) / 5, sum(losses[-5:]) / 5


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_sixteen_bit_storage_trains_like_fp32(mini_shards, tmp_path, dtype):
    from kge.train.trainer import Trainer

    fp32 = Trainer(resolve_model_config(SETTINGS), mini_shards, tmp_path / "fp32")
    low = Trainer(
        resolve_model_config(dict(SETTINGS, dtype=dtype, loss_scale="auto", stochastic_rounding=True)),
        mini_shards,
        tmp_path / dtype,
    )
    assert low.model.entity_table.dtype == getattr(torch, dtype)
    assert low.entity_optimizer.sqrt_v.dtype == getattr(torch, dtype) and low.entity_optimizer.v is None
    assert low.loss_scale == 64 * 64
    first32, last32 = _loss_drop(fp32, 40)
    first16, last16 = _loss_drop(low, 40)
    assert last16 < first16, "16-bit storage must still learn"
    # Same data, same initial rows (rounded): the curves stay close.
    assert abs(last16 - last32) < 0.05 * last32
    # Stored rows are exactly representable (nothing kept in hidden fp32).
    assert torch.equal(low.model.entity_table.float().to(low.model.entity_table.dtype), low.model.entity_table)


def test_stochastic_rounding_resumes_bit_exactly(mini_shards, tmp_path):
    from kge.train.trainer import Trainer

    config = resolve_model_config(dict(SETTINGS, dtype="float16", loss_scale="auto", stochastic_rounding=True))
    straight = Trainer(config, mini_shards, tmp_path / "a")
    for _ in range(8):
        straight.train_step()
    first = Trainer(config, mini_shards, tmp_path / "b")
    for _ in range(4):
        first.train_step()
    first.save_checkpoint()
    resumed = Trainer(config, mini_shards, tmp_path / "b")
    assert resumed.try_resume() and resumed.step == 4
    for _ in range(4):
        resumed.train_step()
    assert torch.equal(resumed.model.entity_table, straight.model.entity_table)
    assert torch.equal(resumed.entity_optimizer.sqrt_v, straight.entity_optimizer.sqrt_v)


def test_final_model_is_stored_in_the_storage_dtype(mini_shards, tmp_path):
    from kge.predict.predictor import load_model
    from kge.train.checkpoint import load_entity_rows
    from kge.train.trainer import train

    train(resolve_model_config(dict(SETTINGS, steps=3, dtype="bfloat16")), mini_shards, tmp_path, progress=False)
    saved = torch.load(tmp_path / "model.pt", weights_only=False)
    rows = load_entity_rows(tmp_path / "model.pt", saved)
    assert rows.dtype == torch.bfloat16 and rows.shape[1] == 32
    for path in (tmp_path / "entities").glob("shard_*.pt"):  # each file holds its shard only
        shard = torch.load(path, weights_only=True)
        assert shard.untyped_storage().nbytes() == shard.numel() * 2 == saved["shard_size"] * 32 * 2
    model, _, _ = load_model(tmp_path / "model.pt", "cpu")
    assert model.entity_table.dtype == torch.float32  # compute in fp32
    assert torch.equal(model.entity_table, rows.float())


def test_bytes_per_entity_of_the_submission_layout():
    """fp16 embedding + m + sqrt(v) at d = 256 and a 768-d fp16 feature: 3*256*2 + 768*2 bytes."""
    row = bytes_per_entity(256, "float16", optimizer="adam", feature_dim=768)
    assert row["total"] == 3 * 256 * 2 + 768 * 2
    assert bytes_per_entity(256, "float32", optimizer="adam", feature_dim=768)["total"] == 3 * 256 * 4 + 768 * 2


def test_loss_scale_leaves_adam_updates_unchanged_but_lifts_gradients(mini_shards, tmp_path):
    """Adam is scale invariant: with eps negligible, scaled and unscaled runs take the same step."""
    from kge.train.trainer import Trainer

    plain = Trainer(resolve_model_config(dict(SETTINGS, adam={"eps": 1e-30})), mini_shards, tmp_path / "p")
    scaled = Trainer(
        resolve_model_config(dict(SETTINGS, adam={"eps": 1e-30}, loss_scale=1024.0)), mini_shards, tmp_path / "s"
    )
    assert plain.train_step() == pytest.approx(scaled.train_step(), rel=1e-6)  # the reported loss is unscaled
    grad_plain = plain.model.relation.grad
    torch.testing.assert_close(scaled.model.relation.grad, grad_plain * 1024.0, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(scaled.model.entity_table, plain.model.entity_table, rtol=1e-5, atol=1e-7)
