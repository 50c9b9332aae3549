"""Resolving a model configuration: deep merge over the defaults, JSON-schema validation with
one-line errors, the cross-key checks, and the typed ``ModelConfig`` that comes out."""

from __future__ import annotations

import copy
import hashlib
import json
from importlib import resources

import jsonschema

from kge.common.errors import KgeInputError
from kge.config.defaults import LATER_KEYS, MODEL_DEFAULTS
from kge.config.model import ModelConfig


def _schema() -> dict:
    """The model schema (its ``score_fn`` enum lists the scorer registry's names; a test keeps them equal)."""
    return json.loads(resources.files("kge").joinpath("schemas/model.schema.json").read_text())


def deep_merge(base: dict, override: dict) -> dict:
    """Return base updated by override, recursing into nested dicts (neither input is changed)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def validate(config: dict, schema: dict, where: str) -> None:
    """Raise KgeInputError naming the offending key path for the first schema violation."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        path = ".".join(str(p) for p in err.absolute_path)
        if err.validator == "additionalProperties":
            # jsonschema's text lists the unexpected keys; name them with their allowed siblings.
            allowed = sorted(err.schema.get("properties", {}))
            extra = sorted(set(err.instance) - set(allowed))
            key = ".".join(filter(None, [path, extra[0] if extra else ""]))
            raise KgeInputError(f"{where}: unknown key '{key}'; expected one of {', '.join(allowed)}")
        raise KgeInputError(f"{where}: key '{path or '<root>'}': {err.message}")


def resolve_model_config(overrides: dict | ModelConfig, where: str = "model config") -> ModelConfig:
    """Validate a user's settings, fill in the defaults, check the keys that depend on each other
    -> the typed, complete ``ModelConfig`` (KgeInputError naming the key for the first problem).
    A ``ModelConfig`` (already resolved) is validated again from its settings."""
    if isinstance(overrides, ModelConfig):
        overrides = overrides.to_dict()
    if not isinstance(overrides, dict):
        raise KgeInputError(f"{where}: expected a mapping of model settings, got {type(overrides).__name__}")
    schema = _schema()
    validate(overrides, schema, where)
    config = deep_merge(MODEL_DEFAULTS, overrides)
    validate(config, schema, where)
    for key in ("batch_size", "negatives"):
        if config[key] % config["workers"]:
            raise KgeInputError(
                f"{where}: key '{key}' = {config[key]} must be a multiple of workers = {config['workers']}"
            )
    loss = overrides.get("loss", {})
    if loss.get("adversarial_temperature") is not None and loss.get("adversarial_scale"):
        raise KgeInputError(
            f"{where}: set one of 'loss.adversarial_scale' and 'loss.adversarial_temperature', not both"
        )
    features = config["features"]
    mlp = features["mlp"]
    if mlp["hidden"] and mlp["residual"] and not mlp["squeeze"]:
        raise KgeInputError(
            f"{where}: key 'features.mlp.residual' needs 'features.mlp.squeeze' (the residual is M e_F)"
        )
    if features["projection"] != "dense" and mlp["hidden"] and not mlp["squeeze"]:
        raise KgeInputError(
            f"{where}: key 'features.projection' = {features['projection']} needs a projection M, but an MLP "
            "without 'features.mlp.squeeze' reads the raw feature e_F; set squeeze or projection: dense"
        )
    if features["projection"] == "grouped" and config["dim"] % features["groups"]:
        raise KgeInputError(
            f"{where}: key 'features.groups' = {features['groups']} must divide dim = {config['dim']} "
            "(each group maps F / groups inputs to dim / groups outputs)"
        )
    two_phase = config["two_phase"]
    if two_phase["fraction"] > 0 and not two_phase["negatives"]:
        raise KgeInputError(
            f"{where}: key 'two_phase.fraction' = {two_phase['fraction']} needs 'two_phase.negatives' (phase one's pool)"
        )
    if two_phase["fraction"] > 0 and two_phase["negatives"] % config["workers"]:
        raise KgeInputError(
            f"{where}: key 'two_phase.negatives' = {two_phase['negatives']} must be a multiple of workers = {config['workers']}"
        )
    sparse = config["sparsity"]
    if sparse["density"] < 1.0 and config["dim"] % sparse["block"]:
        raise KgeInputError(
            f"{where}: key 'sparsity.block' = {sparse['block']} must divide dim = {config['dim']} "
            "(each row is split into dim / block blocks)"
        )
    if mlp["norm"] != "none" and not mlp["hidden"]:
        raise KgeInputError(
            f"{where}: key 'features.mlp.norm' = {mlp['norm']} normalizes the MLP's hidden layer; set 'features.mlp.hidden' > 0"
        )
    return ModelConfig.from_dict(config)


def with_defaults(config: dict) -> dict:
    """A complete config saved by an older version (without LATER_KEYS) -> the same config with the
    LATER_KEYS values (what it was trained with) where it lacks them, MODEL_DEFAULTS elsewhere
    (a plain dict; ``load_model_config`` gives the typed one)."""
    older: dict = {}
    for (*parents, key), value in LATER_KEYS.items():
        node = older
        for parent in parents:
            node = node.setdefault(parent, {})
        node[key] = copy.deepcopy(value)
    return deep_merge(deep_merge(MODEL_DEFAULTS, older), config)


def scale_settings(settings: dict, scale: dict | None) -> dict:
    """A model's (unresolved) settings under the pipeline's ``scale`` option (None: unchanged).

    steps -> max(min_steps, round(steps * factor)); validate_every shrinks by the same factor (at
    least 1, 0 stays 0); workers is capped at scale['workers']. Checkpoints keep their interval
    (and checkpoint_seconds still applies).
    """
    if not scale:
        return settings
    factor = float(scale.get("steps", 1.0))
    out = dict(settings)
    steps = int(settings.get("steps", MODEL_DEFAULTS["steps"]))
    out["steps"] = max(int(scale.get("min_steps", 1)), round(steps * factor))
    every = int(settings.get("validate_every", MODEL_DEFAULTS["validate_every"]))
    out["validate_every"] = every and min(out["steps"], max(1, round(every * factor)))
    if scale.get("workers"):
        out["workers"] = min(int(settings.get("workers", 1)), int(scale["workers"]))
    return out


def with_pipeline_defaults(user: dict, defaults: dict) -> dict:
    """A user's pipeline config over the defaults (the repository's config.yaml): every key the user
    leaves out keeps its default, nested mappings merge key by key, except that ``models`` and
    ``model_defaults`` travel together: a config that lists its own models gets none of the default
    models and none of the default model settings (so they cannot leak into, say, the 85-model recipe)."""
    if "models" in user:
        defaults = {k: v for k, v in defaults.items() if k not in ("models", "model_defaults")}
    merged = deep_merge(defaults, {k: v for k, v in user.items() if k != "models"})
    if "models" in user:
        merged["models"] = copy.deepcopy(user["models"])
    return merged


def load_model_config(saved: dict | ModelConfig, where: str = "saved model config") -> ModelConfig:
    """The config stored in a model.pt or history.json (by this or an older version) -> ``ModelConfig``;
    a stored config this version cannot read (say, one with keys a newer version added) is a
    KgeInputError naming ``where`` (the file)."""
    if isinstance(saved, ModelConfig):
        return saved
    try:
        return ModelConfig.from_dict(with_defaults(saved))
    except ValueError as err:
        raise KgeInputError(f"{where}: {err}") from None


def config_hash(config: dict | ModelConfig) -> str:
    """Stable digest of the settings that change training (used to refuse a stale checkpoint)."""
    if isinstance(config, ModelConfig):
        config = config.to_dict()
    # Workers and the exchange variant change how a step is computed, not what is trained: a
    # checkpoint resumes under another worker count (shards are owned by shard index).
    ignored = (
        "checkpoint_every",
        "checkpoint_seconds",
        "device",
        "predict_batch",
        "predict_block",
        "workers",
        "exchange",
    )
    relevant = {k: v for k, v in config.items() if k not in ignored}
    relevant = copy.deepcopy(relevant)
    for (*parents, key), default in LATER_KEYS.items():  # at their default: the hash they had before these keys existed
        node = relevant
        for parent in parents:
            node = node.get(parent, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and node.get(key, default) == default:
            node.pop(key, None)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
