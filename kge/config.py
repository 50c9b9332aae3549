"""Model configuration: defaults, deep merge, JSON-schema validation with one-line errors."""

from __future__ import annotations

import copy
import hashlib
import json
from importlib import resources
from typing import Any

import jsonschema

from kge.common.errors import KgeInputError
from kge.nn.scorers import SCORERS
from kge.table import sparsity

# Defaults follow the submission where it had one setting (Adam betas, cube-root sampling,
# 0.5/0.5 log-sigmoid halves, linear decay) and the miniature's budget otherwise.
MODEL_DEFAULTS: dict[str, Any] = {
    "score_fn": "distmult",
    "distance": 1,
    "gamma": 10.0,
    "dim": 128,
    "init_scale": 0.01,
    "batch_size": 512,
    "negatives": 512,
    "negatives_per_shard": None,
    "two_phase": {"fraction": 0.0, "negatives": None},
    "inverse_relations": False,
    "relation_power": 1.0 / 3.0,
    "loss": {
        "type": "softmax",
        "adversarial_scale": 0.0,
        "adversarial_temperature": None,
        "correction_weight": 1.0,
        "in_batch_negatives": True,
        "mask_false_negatives": True,
        "positive_weight": 0.5,
        "negative_weight": 0.5,
    },
    "regularisation": {
        "entity": {"weight": 0.0, "power": 3.0},
        "embedding": {"weight": 0.0, "power": 3.0},
        "feature": {"weight": 0.0, "power": 3.0},
    },
    "features": {
        "use": True,
        "share_projection": False,
        "dropout": 0.0,
        "bias": False,
        "weight": False,
        "gated": False,
        "projection": "dense",
        "groups": 4,
        "mlp": {
            "hidden": 0,
            "squeeze": False,
            "residual": False,
            "concat_embeddings": False,
            "glu": False,
            "norm": "none",
        },
    },
    "learning_rate": 1e-3,
    "lr_decay": "linear",
    "lr_modifiers": {
        "entity_embedding": 1.0,
        "feature_projection": 1.0,
        "relation": 1.0,
        "head_feature_projection": None,
        "tail_feature_projection": None,
    },
    "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
    "subspace": {"dim": 0},
    "sparsity": {"density": 1.0, "block": 16, "every": 0, "prune_fraction": 0.3},
    "steps": 1000,
    "workers": 1,
    "exchange": "tails",
    "dtype": "float32",
    "stochastic_rounding": False,
    "loss_scale": 1.0,
    "device": "auto",
    "seed": 0,
    "checkpoint_every": 200,
    "checkpoint_seconds": 120.0,
    "validate_every": 0,
    "validate_queries": 2000,
    "predict_batch": 1000,
    "predict_block": 65536,
}

# Keys added after models were first trained, with the value that reproduces the older behaviour.
# config_hash leaves them out while they hold that value (older checkpoints still resume) and
# with_defaults fills that value into a config read from an older model.pt. Usually it is also the
# default; loss.mask_false_negatives is not: the masking is on by default, so a new run's hash
# differs from an older checkpoint's (which trained without it and must not be resumed as if masked),
# while an older config read back says, truthfully, that it trained without the mask.
LATER_KEYS: dict[tuple[str, ...], Any] = {
    ("features", "projection"): "dense",
    ("features", "groups"): 4,
    ("features", "mlp", "norm"): "none",
    ("subspace",): {"dim": 0},
    ("two_phase",): {"fraction": 0.0, "negatives": None},
    ("sparsity",): {"density": 1.0, "block": 16, "every": 0, "prune_fraction": 0.3},
    ("loss", "mask_false_negatives"): False,
}


def _schema() -> dict:
    """The model schema, with the ``score_fn`` enum taken from the scorer registry (adding a scorer
    there is all the schema needs)."""
    schema = json.loads(resources.files("kge").joinpath("schemas/model.schema.json").read_text())
    schema["properties"]["score_fn"]["enum"] = list(SCORERS)
    return schema


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


def resolve_model_config(overrides: dict, where: str = "model config") -> dict:
    """Validate user overrides, then fill in defaults. Returns the complete model config."""
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
    sparsity.check_config(config, where)
    if mlp["norm"] != "none" and not mlp["hidden"]:
        raise KgeInputError(
            f"{where}: key 'features.mlp.norm' = {mlp['norm']} normalizes the MLP's hidden layer; set 'features.mlp.hidden' > 0"
        )
    return config


def with_defaults(config: dict) -> dict:
    """A complete config saved by an older version (without LATER_KEYS) -> the same config with the
    LATER_KEYS values (what it was trained with) where it lacks them, MODEL_DEFAULTS elsewhere."""
    older: dict = {}
    for (*parents, key), value in LATER_KEYS.items():
        node = older
        for parent in parents:
            node = node.setdefault(parent, {})
        node[key] = copy.deepcopy(value)
    return deep_merge(deep_merge(MODEL_DEFAULTS, older), config)


def negatives_per_step(config: dict, n_shards: int) -> int:
    """Shared negatives N per worker per step: negatives_per_shard x D when set (it takes precedence), else 'negatives'."""
    per_shard = config.get("negatives_per_shard")
    return int(per_shard) * int(n_shards) if per_shard else int(config["negatives"])


def negatives_at(config: dict, n_shards: int, step: int) -> int:
    """Shared negatives N at ``step`` (0-based): phase one's small pool for the first
    two_phase.fraction of the steps, the full pool (negatives_per_step) after."""
    two_phase = config.get("two_phase") or {}
    if two_phase.get("fraction", 0.0) > 0 and step < phase_one_steps(config):
        return int(two_phase["negatives"])
    return negatives_per_step(config, n_shards)


def phase_one_steps(config: dict) -> int:
    """Steps in phase one of the two-phase schedule (0 when it is off)."""
    two_phase = config.get("two_phase") or {}
    return int(round(two_phase.get("fraction", 0.0) * config["steps"]))


def adversarial_scale(loss_config: dict) -> float:
    """The self-adversarial scale a of softmax(a * s): 1 / temperature when a temperature is set."""
    temperature = loss_config.get("adversarial_temperature")
    return 1.0 / float(temperature) if temperature else float(loss_config["adversarial_scale"])


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


def config_hash(config: dict) -> str:
    """Stable digest of the settings that change training (used to refuse a stale checkpoint)."""
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
