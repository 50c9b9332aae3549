"""Dynamic block sparsity of the entity table (config ``sparsity``), against hand computations:
exactly k active blocks per row, smallest-norm pruning, zero-init regrowth from the inactive set,
inactive entries exactly 0 through real training (fp32 and fp16 with stochastic rounding),
bit-exact resume across a prune event, density 1 = the dense model bit for bit, stored parameters."""

from __future__ import annotations

import pytest
import torch

from kge.common.errors import KgeInputError
from kge.config import ModelConfig, config_hash, resolve_model_config
from kge.nn.model import KGEModel
from kge.table import sparsity
from kge.table.footprint import bytes_per_entity

BLOCK = 8
SETTINGS = {
    "score_fn": "complex",
    "dim": 32,
    "batch_size": 64,
    "negatives": 64,
    "steps": 8,
    "learning_rate": 0.01,
    "features": {"dropout": 0.1},
}
# n_blocks = 4, k = 2, one block pruned and regrown per row after steps 3 and 6.
SPARSE = {"density": 0.5, "block": BLOCK, "every": 3, "prune_fraction": 0.5}


def _config(**sparse) -> ModelConfig:
    return resolve_model_config(dict(SETTINGS, sparsity=dict(SPARSE, **sparse)))


def _state(trainer) -> list[torch.Tensor]:
    """Table, m and v (or sqrt v) of a trainer's owned rows."""
    return [trainer.entity_optimizer.table, *sparsity.optimizer_state_tensors(trainer.entity_optimizer)]


# ----- configuration -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"dim": 24, "sparsity": {"density": 0.5, "block": 16}}, "sparsity.block' = 16 must divide dim = 24"),
        ({"sparsity": {"density": 0.0}}, "key 'sparsity.density'"),
        ({"sparsity": {"prune_fraction": 1.0}}, "key 'sparsity.prune_fraction'"),
        ({"sparsity": {"every": -1}}, "key 'sparsity.every'"),
        ({"sparsity": {"blocks": 4}}, "unknown key 'sparsity.blocks'"),
    ],
)
def test_bad_sparsity_settings_name_the_key(overrides, fragment):
    with pytest.raises(KgeInputError) as err:
        resolve_model_config(overrides, where="models.m")
    assert fragment in str(err.value) and "models.m" in str(err.value)


def test_dense_default_keeps_old_hash_and_any_block():
    dense = resolve_model_config({"dim": 8})  # block 16 does not divide 8: irrelevant while dense
    old = {k: v for k, v in dense.to_dict().items() if k != "sparsity"}  # a config written before the key existed
    assert config_hash(dense) == config_hash(old)
    assert config_hash(resolve_model_config({"dim": 8, "sparsity": {"density": 0.5, "block": 4}})) != config_hash(dense)


def test_schema_describes_every_sparsity_key():
    import json
    from importlib import resources

    node = json.loads(resources.files("kge").joinpath("schemas/model.schema.json").read_text())["properties"][
        "sparsity"
    ]
    assert node["additionalProperties"] is False and node.get("description")
    assert sorted(node["properties"]) == ["block", "density", "every", "prune_fraction"]
    assert all(p.get("description") for p in node["properties"].values())


def test_counts_and_stored_bytes():
    config = _config()
    assert (config.block_count, config.active_blocks, config.swap_count) == (4, 2, 1)
    # k = max(1, round half up): 0.3 * 4 = 1.2 -> 1; 0.01 * 4 -> 1 (never 0); 0.625 * 4 = 2.5 -> 3.
    assert [_config(density=d).active_blocks for d in (0.3, 0.01, 0.625)] == [1, 1, 3]
    # At most n_blocks - k blocks can be regrown: k = 3 of 4 leaves one.
    assert _config(density=0.75, prune_fraction=0.9).swap_count == 1
    fp16 = resolve_model_config(dict(SETTINGS, dtype="float16", sparsity=SPARSE))
    # 16 values x 2 bytes, 2 uint8 block indices, m and sqrt v for the 16 values.
    assert bytes_per_entity(32, "float16", sparsity=fp16.sparsity, optimizer="adam") == {
        "values": 32,
        "indices": 2,
        "scale": 0,
        "m": 32,
        "v": 32,
        "feature": 0,
        "total": 98,
    }
    dense = resolve_model_config(SETTINGS)
    assert bytes_per_entity(dense.dim, dense.dtype, sparsity=dense.sparsity)["total"] == 32 * 4


def test_parameter_count_matches_dense_model_of_half_the_dim():
    sparse = KGEModel(
        resolve_model_config({"dim": 32, "sparsity": {"density": 0.5, "block": 8}}),
        3,
        10,
        torch.Generator().manual_seed(0),
    )
    dense = KGEModel(resolve_model_config({"dim": 16}), 3, 10, torch.Generator().manual_seed(0))
    entities = 1000

    def entity_part(model):
        return model.parameter_count(entities) - model.parameter_count(0)

    assert entity_part(sparse) == entity_part(dense) == entities * 16


# ----- mask mechanics ------------------------------------------------------------------------
def test_initial_mask_has_k_blocks_per_row_and_depends_on_the_shard_only():
    config = _config()
    both = sparsity.initial_mask(config, [0, 1], 50)
    assert both.shape == (100, 4) and both.dtype == torch.bool
    assert (both.sum(1) == 2).all()
    # The same shard gets the same mask whichever worker (set of shards) it belongs to.
    assert torch.equal(both[50:], sparsity.initial_mask(config, [1], 50))
    assert not torch.equal(both[:50], both[50:])
    assert not torch.equal(
        both, sparsity.initial_mask(resolve_model_config(dict(SETTINGS, seed=1, sparsity=SPARSE)), [0, 1], 50)
    )


def _brute_force_pruned(table: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """Each row's n active blocks of smallest L2 norm (ties: lower index), by sorting in Python."""
    out = torch.zeros_like(mask)
    blocks = mask.shape[1]
    for r in range(mask.shape[0]):
        norms = [(float(table[r, b * BLOCK : (b + 1) * BLOCK].double().norm()), b) for b in range(blocks) if mask[r, b]]
        for _, b in sorted(norms)[:n]:
            out[r, b] = True
    return out


def test_prune_picks_smallest_norm_blocks_and_regrows_among_inactive():
    g = torch.Generator().manual_seed(3)
    S, blocks, k, n = 12, 6, 4, 2
    table = torch.randn(S, blocks * BLOCK, generator=g) * torch.rand(S, blocks, generator=g).repeat_interleave(BLOCK, 1)
    mask = sparsity.random_mask(S, blocks, k, g)
    table.masked_fill_(~sparsity.expand(mask, BLOCK), 0)
    # Row 0: blocks 0-3 active, block 1 exactly 0 (a regrown block never touched since): pruned first.
    mask[0] = torch.tensor([True, True, True, True, False, False])
    table[0, 4 * BLOCK :] = 0
    table[0, BLOCK : 2 * BLOCK] = 0
    pruned, regrown = sparsity.choose_prune_and_regrow(table, mask, n, torch.Generator().manual_seed(0))
    assert torch.equal(pruned, _brute_force_pruned(table, mask, n))
    assert pruned[0, 1]
    assert (pruned.sum(1) == n).all() and (regrown.sum(1) == n).all()
    assert not (pruned & ~mask).any() and not (regrown & mask).any()  # pruned were active, regrown inactive
    # Deterministic in the generator (seeded from seed, step, shard in training).
    again = sparsity.choose_prune_and_regrow(table, mask, n, torch.Generator().manual_seed(0))[1]
    assert torch.equal(regrown, again)


def test_events_keep_k_blocks_zero_regrown_state_and_leave_the_rest():
    config = _config(every=1)
    shards, S = [0, 1], 20
    sp = sparsity.BlockSparsity(config, shards, S, "cpu")
    g = torch.Generator().manual_seed(5)
    table, m, v = (torch.randn(2 * S, 32, generator=g) for _ in range(3))
    sp.zero_inactive_([table, m, v])
    for step in range(1, 6):
        before_mask, before = sp.mask.clone(), [t.clone() for t in (table, m, v)]
        expected_pruned = torch.cat(
            [_brute_force_pruned(table[i * S : (i + 1) * S], before_mask[i * S : (i + 1) * S], 1) for i in range(2)]
        )
        sp.prune_and_regrow_(step, table, [m, v])
        pruned, regrown = before_mask & ~sp.mask, sp.mask & ~before_mask
        assert torch.equal(pruned, expected_pruned)
        assert (sp.mask.sum(1) == 2).all() and (regrown.sum(1) == 1).all()
        changed = sparsity.expand(pruned | regrown, BLOCK)
        kept = sparsity.expand(sp.mask & before_mask, BLOCK)
        for tensor, old in zip((table, m, v), before):
            assert (tensor[changed] == 0).all()  # pruned and regrown: value and Adam state 0
            assert (tensor[~sparsity.expand(sp.mask, BLOCK)] == 0).all()
            assert torch.equal(tensor[kept], old[kept])
        # Train a little: regrown blocks become nonzero before the next event.
        for tensor in (table, m, v):
            tensor.add_(torch.randn(tensor.shape, generator=g) * sparsity.expand(sp.mask, BLOCK))
    assert sp.event_due(3) and not sp.event_due(config.steps)  # never after the last step


# ----- training --------------------------------------------------------------------------------
@pytest.mark.parametrize("storage", [{"dtype": "float32"}, {"dtype": "float16", "stochastic_rounding": True}])
def test_inactive_entries_stay_zero_through_training(mini_shards, tmp_path, storage):
    from kge.train.trainer import Trainer

    config = resolve_model_config(dict(SETTINGS, **storage, sparsity=dict(SPARSE, every=2)))
    trainer = Trainer(config, mini_shards, tmp_path)
    start = trainer.entity_optimizer.table.clone()
    for _ in range(config.steps):
        trainer.train_step()
        inactive = ~sparsity.expand(trainer.sparsity.mask, BLOCK)
        assert (trainer.sparsity.mask.sum(1) == 2).all()
        for tensor in _state(trainer):
            assert (tensor[inactive] == 0).all() and not tensor[inactive].signbit().any()
    active = ~inactive
    assert (trainer.entity_optimizer.table != start)[active].any()  # training moved the active entries
    assert (trainer.entity_optimizer.m[active] != 0).any()


@pytest.mark.parametrize("checkpoint_step", [2, 4])
def test_resume_across_a_prune_event_is_bit_exact(mini_shards, tmp_path, checkpoint_step):
    """Events after steps 3 and 6: a checkpoint at 2 (initial mask) or 4 (after one event) resumes
    to the model, Adam state and mask of an uninterrupted run."""
    from kge.train.trainer import Trainer

    config = _config()
    reference = Trainer(config, mini_shards, tmp_path / "reference")
    for _ in range(config.steps):
        reference.train_step()
    first = Trainer(config, mini_shards, tmp_path / "resumed")
    for _ in range(checkpoint_step):
        first.train_step()
    first.save_checkpoint()
    resumed = Trainer(config, mini_shards, tmp_path / "resumed")
    assert resumed.try_resume() and resumed.step == checkpoint_step
    assert torch.equal(resumed.sparsity.mask, first.sparsity.mask)
    while resumed.step < config.steps:
        resumed.train_step()
    assert torch.equal(resumed.sparsity.mask, reference.sparsity.mask)
    assert not torch.equal(
        reference.sparsity.mask, sparsity.initial_mask(config, reference.owned, reference.shard_size)
    )
    for got, want in zip(_state(resumed), _state(reference)):
        assert torch.equal(got, want)
    for key, value in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_density_one_is_the_dense_model_bit_for_bit(mini_shards, tmp_path):
    from kge.train.trainer import Trainer

    dense = Trainer(resolve_model_config(dict(SETTINGS, steps=3)), mini_shards, tmp_path / "dense")
    switched = Trainer(
        resolve_model_config(dict(SETTINGS, steps=3, sparsity={"density": 1.0, "block": 8, "every": 1})),
        mini_shards,
        tmp_path / "switched",
    )
    assert switched.sparsity is None
    for _ in range(3):
        assert dense.train_step() == switched.train_step()
    for got, want in zip(_state(switched), _state(dense)):
        assert torch.equal(got, want)
    for key, value in dense.model.state_dict().items():
        assert torch.equal(switched.model.state_dict()[key], value), key
