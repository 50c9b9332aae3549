"""Model configuration: defaults, and one-line errors naming the key for bad settings."""

import pytest

from kge.common.errors import KgeInputError
from kge.config import MODEL_DEFAULTS, config_hash, resolve_model_config


def test_defaults_fill_nested_settings():
    cfg = resolve_model_config({"score_fn": "transe", "loss": {"type": "logsigmoid"}})
    assert cfg["loss"]["type"] == "logsigmoid"
    assert cfg["loss"]["positive_weight"] == MODEL_DEFAULTS["loss"]["positive_weight"]
    assert cfg["dim"] == MODEL_DEFAULTS["dim"]


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
    assert new["loss"]["mask_false_negatives"] is True
    older = {**new, "loss": {k: v for k, v in new["loss"].items() if k != "mask_false_negatives"}}
    assert with_defaults(older)["loss"]["mask_false_negatives"] is False
    off = resolve_model_config({"loss": {"type": "logsigmoid", "mask_false_negatives": False}})
    assert config_hash(older) == config_hash(with_defaults(older)) == config_hash(off) != config_hash(new)
    # The other later keys still read back as their (equal) defaults.
    assert with_defaults(older)["sparsity"] == MODEL_DEFAULTS["sparsity"]
