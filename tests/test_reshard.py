"""`kge reshard`: a checkpoint or model moves between partitions with every entity's state intact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kge.bess.partition import Partition
from kge.config import resolve_model_config

SETTINGS = {
    "score_fn": "distmult",
    "dim": 16,
    "batch_size": 32,
    "negatives": 16,
    "steps": 6,
    "learning_rate": 0.05,
    "checkpoint_every": 1000,
    "validate_every": 0,
}


@pytest.fixture(scope="module")
def shards4(mini_root, tmp_path_factory):
    from kge.bess.shard import shard_dataset

    out = tmp_path_factory.mktemp("reshard4") / "shards"
    shard_dataset(mini_root, out, 4, seed=3, progress=False)
    return out


def _by_entity(partition: Partition, table: torch.Tensor) -> torch.Tensor:
    """(D*S, d) table in partition row order -> (E, d) in global entity id order."""
    return table[torch.from_numpy(partition.row_of(np.arange(partition.num_entities)))]


def _full(trainer, key: str) -> torch.Tensor:
    return trainer.model.entity_table if key == "rows" else getattr(trainer.entity_optimizer, key)


@pytest.mark.parametrize("storage", ["float32", "bfloat16"])
def test_checkpoint_moves_to_another_partition_and_resumes(mini_shards, shards4, tmp_path, storage):
    from kge.train.reshard import reshard
    from kge.train.trainer import Trainer

    config = resolve_model_config(dict(SETTINGS, dtype=storage))
    trainer = Trainer(config, mini_shards, tmp_path / "d2")
    for _ in range(3):
        trainer.train_step()
    trainer.save_checkpoint()
    for path in (tmp_path / "d2" / "checkpoint").glob("step_*/shard_*.pt"):  # a shard's rows only, not the table
        state = torch.load(path, weights_only=False)
        assert state["rows"].untyped_storage().nbytes() == state["rows"].numel() * state["rows"].element_size()
        assert state["rows"].shape[0] == trainer.shard_size
    assert reshard(tmp_path / "d2", mini_shards, shards4, tmp_path / "d4", progress=False) == "checkpoint"

    moved = Trainer(config, shards4, tmp_path / "d4")
    assert moved.try_resume() and moved.step == 3
    p2, p4 = Partition.load(mini_shards / "partition.npz"), Partition.load(shards4 / "partition.npz")
    assert p2.n_shards == 2 and p4.n_shards == 4
    keys = ["rows", "m", "v"] if storage == "float32" else ["rows", "m", "sqrt_v"]
    for key in keys:
        assert torch.equal(_by_entity(p4, _full(moved, key)), _by_entity(p2, _full(trainer, key))), key
        padding = torch.from_numpy(np.concatenate(p4.shard_entities) < 0)
        assert not _full(moved, key)[padding].any(), f"{key}: padding rows must be zero"
    assert moved.entity_optimizer.step_count == trainer.entity_optimizer.step_count
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(moved.model.state_dict()[name], value)
    moved.train_step()  # and it trains on under D = 4

    # Round trip back to D = 2: every real row is exactly where it started.
    assert reshard(tmp_path / "d4", shards4, mini_shards, tmp_path / "back", progress=False) == "checkpoint"
    back = Trainer(config, mini_shards, tmp_path / "back")
    assert back.try_resume()
    for key in keys:
        assert torch.equal(_by_entity(p2, _full(back, key)), _by_entity(p2, _full(trainer, key))), key


def test_trained_model_moves_and_predicts_the_same(mini_root, mini_shards, shards4, tmp_path):
    from kge.bess.features import FeatureStore
    from kge.data.layout import open_dataset
    from kge.predict.predictor import Predictor, load_model
    from kge.train.reshard import reshard
    from kge.train.trainer import train

    train(resolve_model_config(SETTINGS), mini_shards, tmp_path / "d2", progress=False)
    assert reshard(tmp_path / "d2", mini_shards, shards4, tmp_path / "d4", progress=False) == "model"
    hr = np.asarray(open_dataset(mini_root, check=False).val_hr[:200])
    results = []
    for model_dir, shards in ((tmp_path / "d2", mini_shards), (tmp_path / "d4", shards4)):
        model, _, device = load_model(model_dir / "model.pt", "cpu")
        partition = Partition.load(shards / "partition.npz")
        predictor = Predictor(model, FeatureStore(shards, partition.n_shards), partition, device)
        results.append(predictor.topk(hr, 10))
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)
    assert (results[0][0] == results[1][0]).mean() > 0.99  # ids equal up to exact score ties


def test_a_model_refuses_shards_of_another_partition(mini_root, mini_shards, shards4, tmp_path, capsys):
    """kge predict (and evaluate, quantise, kge.load_model, through load_trained_partition) on shards of
    another partition: a one-line error naming the shard directory and the model, nothing written."""
    from kge.cli.main import main
    from kge.common.errors import KgeInputError
    from kge.train.checkpoint import load_trained_partition, read_model
    from kge.train.trainer import train

    train(resolve_model_config(SETTINGS), mini_shards, tmp_path / "d2", progress=False)
    model = tmp_path / "d2" / "model.pt"
    saved = read_model(model)
    assert load_trained_partition(mini_shards, saved, model).n_shards == 2
    with pytest.raises(KgeInputError, match="not the partition .* was trained on; see `kge reshard`$"):
        load_trained_partition(shards4, saved, model)
    out, metrics = tmp_path / "p.npz", tmp_path / "p.json"
    argv = [
        "predict",
        "--model",
        model,
        "--root",
        mini_root,
        "--shard-dir",
        shards4,
        "--out",
        out,
        "--metrics",
        metrics,
    ]
    assert main([str(a) for a in argv]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [f"kge: error: {shards4}: not the partition {model} was trained on; see `kge reshard`"]
    assert not out.exists() and not metrics.exists()


def test_refuses_another_graph_and_wrong_source(mini_shards, shards4, tmp_path):
    from kge.common.errors import KgeInputError
    from kge.train.reshard import reshard
    from kge.train.trainer import Trainer

    trainer = Trainer(resolve_model_config(SETTINGS), mini_shards, tmp_path / "m")
    trainer.train_step()
    trainer.save_checkpoint()
    with pytest.raises(KgeInputError, match="another partition"):
        reshard(tmp_path / "m", shards4, mini_shards, tmp_path / "out", progress=False)
    with pytest.raises(KgeInputError, match="must differ"):
        reshard(tmp_path / "m", mini_shards, shards4, tmp_path / "m", progress=False)
