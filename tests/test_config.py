"""Model configuration: defaults, and one-line errors naming the key for bad settings."""

import dataclasses
import json
import pickle

import pytest

from kge.common.errors import KgeInputError
from kge.config import MODEL_DEFAULTS, ModelConfig, config_hash, deep_merge, load_model_config, resolve_model_config


def test_defaults_fill_nested_settings():
    cfg = resolve_model_config({"score_fn": "transe", "loss": {"type": "logsigmoid"}})
    assert cfg.loss.type == "logsigmoid"
    assert cfg.loss.positive_weight == MODEL_DEFAULTS["loss"]["positive_weight"]
    assert cfg.dim == MODEL_DEFAULTS["dim"]


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"scor_fn": "transe"}, "unknown key 'scor_fn'"),
        ({"loss": {"typ": "softmax"}}, "unknown key 'loss.typ'"),
        ({"score_fn": "transX"}, "key 'score_fn'"),
        ({"dim": "128"}, "key 'dim'"),
        ({"dim": 127}, "key 'dim'"),
        ({"learning_rate": 0}, "key 'learning_rate'"),
        ({"features": {"dropout": 1.5}}, "key 'features.dropout'"),
    ],
)
def test_bad_settings_name_the_key(overrides, fragment):
    with pytest.raises(KgeInputError) as err:
        resolve_model_config(overrides, where="config.yaml models.m")
    message = str(err.value)
    assert fragment in message and "models.m" in message and "\n" not in message


def test_hash_ignores_runtime_only_settings():
    a = resolve_model_config({"checkpoint_every": 10})
    b = resolve_model_config({"checkpoint_every": 99})
    c = resolve_model_config({"learning_rate": 0.5})
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_pipeline_defaults_fill_every_key_and_models_travel_with_their_defaults():
    import yaml
    from conftest import REPO

    from kge.config import with_pipeline_defaults

    defaults = yaml.safe_load((REPO / "config.yaml").read_text())
    # A config naming only the dataset and what it changes gets every other key from config.yaml.
    user = {"dataset": "import", "import": {"train": "t.tsv", "valid": "v.tsv"}, "ensemble": {"power": -1.0}}
    merged = with_pipeline_defaults(user, defaults)
    assert merged["threads_per_job"] == defaults["threads_per_job"] and merged["top_k"] == defaults["top_k"]
    assert merged["ensemble"]["power"] == -1.0 and merged["ensemble"]["powers"] == defaults["ensemble"]["powers"]
    assert merged["models"] == defaults["models"] and merged["model_defaults"] == defaults["model_defaults"]
    # Its own models: neither the default models nor the default model settings leak in.
    own = with_pipeline_defaults({"models": {"m": {"score_fn": "transe"}}}, defaults)
    assert own["models"] == {"m": {"score_fn": "transe"}} and "model_defaults" not in own
    own = with_pipeline_defaults({"models": {"m": None}, "model_defaults": {"dim": 8}}, defaults)
    assert own["model_defaults"] == {"dim": 8}
    assert user == {
        "dataset": "import",
        "import": {"train": "t.tsv", "valid": "v.tsv"},
        "ensemble": {"power": -1.0},
    }  # inputs untouched


def test_false_negative_mask_is_on_by_default_but_older_configs_read_as_off():
    """loss.mask_false_negatives: on for new configs; a config saved before the key existed trained
    without it, reads back as False, and keeps its hash (so its checkpoint resumes), while the
    same settings under the new default hash differently (they train differently)."""
    from kge.config import with_defaults

    new = resolve_model_config({"loss": {"type": "logsigmoid"}})
    assert new.loss.mask_false_negatives is True
    stored = new.to_dict()
    older = {**stored, "loss": {k: v for k, v in stored["loss"].items() if k != "mask_false_negatives"}}
    assert with_defaults(older)["loss"]["mask_false_negatives"] is False
    assert load_model_config(older).loss.mask_false_negatives is False
    off = resolve_model_config({"loss": {"type": "logsigmoid", "mask_false_negatives": False}})
    assert config_hash(older) == config_hash(with_defaults(older)) == config_hash(off) != config_hash(new)
    # The other later keys still read back as their (equal) defaults.
    assert with_defaults(older)["sparsity"] == MODEL_DEFAULTS["sparsity"]


# ----- the typed configuration ------------------------------------------------------------------
SETTINGS = [
    {},
    {"score_fn": "transe", "gamma": 12, "loss": {"type": "logsigmoid", "adversarial_temperature": 2.0}},
    {"sparsity": {"density": 0.5, "block": 8}, "two_phase": {"fraction": 0.3, "negatives": 64}},
    {"features": {"mlp": {"hidden": 16, "squeeze": True, "norm": "batch"}}, "loss_scale": "auto", "workers": 2},
    {
        "negatives_per_shard": 12,
        "lr_modifiers": {"head_feature_projection": 0.5},
        "regularisation": {"entity": {"weight": 0.1}},
    },
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_typed_config_stores_the_dict_it_resolved(settings):
    """to_dict() is the complete dict the untyped resolver returned (defaults deep-merged with the
    settings, key order included): what model.pt and history.json store, and what config_hash reads."""
    config = resolve_model_config(settings)
    merged = deep_merge(MODEL_DEFAULTS, settings)
    assert config.to_dict() == merged and json.dumps(config.to_dict()) == json.dumps(merged)
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert pickle.loads(pickle.dumps(config)) == config  # what spawned workers receive
    assert resolve_model_config(config) == config  # resolving again changes nothing


def test_config_hash_is_the_one_older_versions_computed():
    """A checkpoint written before the typed config resumes: its hash, recorded from commit 3d8b88a
    (the dict-based kge/config.py), is what a typed config of the same settings hashes to."""
    assert config_hash(resolve_model_config({})) == "210d9a5e40edb298"
    settings = {
        "score_fn": "transe",
        "loss": {"type": "logsigmoid", "adversarial_temperature": 2.0},
        "sparsity": {"density": 0.5, "block": 8},
        "two_phase": {"fraction": 0.3, "negatives": 64},
    }
    assert config_hash(resolve_model_config(settings)) == "ae51c4725fdedf92"


def test_derived_fields_are_computed_once_from_the_settings():
    config = resolve_model_config(
        {
            "dim": 32,
            "steps": 10,
            "sparsity": {"density": 0.6, "block": 4, "prune_fraction": 0.5},
            "two_phase": {"fraction": 0.34, "negatives": 8},
            "loss": {"adversarial_temperature": 4.0},
            "negatives_per_shard": 6,
        }
    )
    # 32 / 4 = 8 blocks; k = round(0.6 * 8 = 4.8) = 5; n = min(round(2.5) = 3 (half up), 8 - 5 = 3)
    assert (config.block_count, config.active_blocks, config.swap_count) == (8, 5, 3)
    assert config.stored_values_per_entity == 5 * 4
    assert config.phase_one_steps == 3  # round(0.34 * 10)
    assert config.loss.adversarial == 0.25  # 1 / temperature
    assert [config.negatives_at(4, step) for step in (0, 2, 3, 9)] == [8, 8, 24, 24]  # 6 per shard x 4 shards
    dense = resolve_model_config({"dim": 8, "loss": {"adversarial_scale": 1.5}})  # block 16 > dim: fine while dense
    assert (dense.block_count, dense.active_blocks, dense.stored_values_per_entity) == (0, 0, 8)
    assert dense.loss.adversarial == 1.5 and dense.negatives_per_step(4) == dense.negatives
    # replace() recomputes what depends on the changed setting.
    assert config.replace(steps=100).phase_one_steps == 34


def test_typed_config_is_immutable_and_complete():
    config = resolve_model_config({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dim = 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.loss.type = "logsigmoid"
    stored = config.to_dict()
    with pytest.raises(ValueError, match=r"missing keys \['dim'\]"):
        ModelConfig.from_dict({k: v for k, v in stored.items() if k != "dim"})
    with pytest.raises(ValueError, match=r"section loss: missing keys \[\], unknown keys \['typo'\]"):
        ModelConfig.from_dict({**stored, "loss": {**stored["loss"], "typo": 1}})


def test_trainer_takes_a_resolved_config_only(tmp_path):
    from kge.train.trainer import Trainer

    with pytest.raises(TypeError, match="resolve_model_config"):
        Trainer(resolve_model_config({}).to_dict(), tmp_path, tmp_path / "m")


def test_a_stored_config_this_version_cannot_read_names_its_file():
    """A model.pt or history.json whose config has a key this version does not know (written by a
    newer one): one line naming the file, not a traceback. (A key it lacks is filled in by
    with_defaults: older versions wrote fewer keys.)"""
    stored = resolve_model_config({}).to_dict()
    with pytest.raises(KgeInputError, match=r"^models/m/model\.pt: .*unknown keys \['new_key'\]") as err:
        load_model_config({**stored, "new_key": 1}, where="models/m/model.pt")
    assert "\n" not in str(err.value)
    with pytest.raises(KgeInputError, match=r"^h\.json: model config section loss: .*unknown keys \['typo'\]"):
        load_model_config({**stored, "loss": {**stored["loss"], "typo": 0}}, where="h.json")
    assert load_model_config(stored) == resolve_model_config({})
