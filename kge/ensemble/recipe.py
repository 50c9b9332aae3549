"""The winning 85-model recipe as pipeline config, derived from the submission's configurations.

``wikiwiki-85-configs-and-results.json`` is column-oriented: key -> {"0".."84" -> value}, keys such
as ``config.model.score_fn``. :func:`recipe_models` maps each entry onto kge's model settings;
:func:`write_recipe` writes the whole Snakemake config (``workflow/ensembles/wikikg90mv2-85.yaml``).

Where the JSON has no value (null) the original code's default applied, which the JSON does not
record; the filled values are in ``NULL_FILLS`` and explained there. Fields that describe the IPU
execution only (program steps, read/write and prediction batch sizes, logging) are not mapped.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from kge.common import atomic
from kge.common.errors import KgeInputError
from kge.nn.scorers import recipe_scorer

# The submission's common settings: 16 workers on 16 shards, fp16 storage, Adam (0.9, 0.999, 1e-8).
SHARDS = 16

# JSON null -> the value used, and why.
NULL_FILLS = {
    "config.training.n_step": (5_000_000, "the submission's common step count (74 of 85 models)"),
    "config.training.loss.type": (
        "softmax",
        "RECIPE.md's TransE row counts 16 softmax + 7 log-sigmoid = 23 of 25; "
        "the two unrecorded TransE models are read as the majority, softmax",
    ),
    "config.training.loss_scale": ("auto", "B x N, BESS.md's default loss scale"),
    "config.training.learning_rate_decay.type": ("none", "no decay recorded: a constant learning rate"),
    "config.training.loss.correction_weight": (1.0, "RECIPE.md's sampled softmax always adds the correction"),
    "config.model.negative_adversarial_scale": (0.0, "uniform negative weights (a = 0)"),
    "config.model.feature_dropout": (0.0, "no dropout"),
    "config.model.share_feature_networks": (
        True,
        "the three unrecorded models set a single 'feature_projection' "
        "learning-rate modifier, which only a shared projection has",
    ),
    "regularisation weight": (0.0, "no penalty"),
    "regularisation power": (3.0, "L3"),
    "lr modifier": (1.0, "no modifier"),
    "config.model.use_feature_weight": (False, "RECIPE.md's encoder e = e_S + M e_F has no feature weight"),
    "config.model.use_bias": (False, "RECIPE.md's encoder has no bias"),
    "config.model.gated_features": (False, "no gate"),
    "feature mlp switch": (False, "switch off"),
}

_PENALTIES = {
    "entity": "hidden_regularisation",
    "embedding": "embedding_regularisation",
    "feature": "feature_regularisation",
}


def load_columns(path: str | Path) -> dict:
    """The column-oriented JSON -> {key: {index: value}} (errors name the file)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise KgeInputError(f"{p}: not found") from None
    except json.JSONDecodeError as err:
        raise KgeInputError(f"{p}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or "config.model.score_fn" not in data:
        raise KgeInputError(f"{p}: expected the column-oriented configs JSON (key 'config.model.score_fn' missing)")
    return data


def _fill(value, key: str):
    return NULL_FILLS[key][0] if value is None else value


def model_name(index: int, entry: dict) -> str:
    """A readable, unique model name: wikiwiki_07_complex_logsigmoid."""
    loss = _fill(entry["config.training.loss.type"], "config.training.loss.type")
    return f"wikiwiki_{index:02d}_{entry['config.model.score_fn'].lower()}_{loss}"


def entry_settings(entry: dict) -> dict:
    """One model's JSON fields ({key: value}) -> kge model settings, every setting the recipe fixes
    written out explicitly (JSON nulls filled from NULL_FILLS)."""
    scorer = recipe_scorer(entry["config.model.score_fn"])  # rejects a name no registry entry maps
    score_fn = scorer.name
    distance = entry["config.model.distance_fn"]
    if (distance == "MatMul") != scorer.dot:
        raise KgeInputError(f"{score_fn} with distance_fn {distance}: not a combination of the recipe")
    loss_type = _fill(entry["config.training.loss.type"], "config.training.loss.type")
    loss = {
        "type": loss_type,
        "correction_weight": float(
            _fill(entry.get("config.training.loss.correction_weight"), "config.training.loss.correction_weight")
        ),
    }
    if entry.get("config.data.negative_adversarial_sampling"):
        loss["adversarial_temperature"] = float(entry["config.model.negative_adversarial_temperature"])
    else:
        loss["adversarial_scale"] = float(
            _fill(entry["config.model.negative_adversarial_scale"], "config.model.negative_adversarial_scale")
        )
    regularisation = {}
    for ours, theirs in _PENALTIES.items():
        regularisation[ours] = {
            "weight": float(_fill(entry.get(f"config.training.{theirs}.weight"), "regularisation weight")),
            "power": float(_fill(entry.get(f"config.training.{theirs}.power"), "regularisation power")),
        }
    modifiers = {
        "entity_embedding": float(
            _fill(entry.get("config.training.learning_rate_modifiers.entity_embedding"), "lr modifier")
        ),
        "feature_projection": float(
            _fill(entry.get("config.training.learning_rate_modifiers.feature_projection"), "lr modifier")
        ),
    }
    for role in ("head", "tail"):
        value = entry.get(f"config.training.learning_rate_modifiers.{role}_feature_projection")
        if value is not None:
            modifiers[f"{role}_feature_projection"] = float(value)
    switch = "feature mlp switch"
    features = {
        "use": entry["config.data.entity_feature_mapping"] == "full",
        "share_projection": bool(
            _fill(entry["config.model.share_feature_networks"], "config.model.share_feature_networks")
        ),
        "dropout": float(_fill(entry["config.model.feature_dropout"], "config.model.feature_dropout")),
        "bias": bool(_fill(entry.get("config.model.use_bias"), "config.model.use_bias")),
        "weight": bool(_fill(entry.get("config.model.use_feature_weight"), "config.model.use_feature_weight")),
        "gated": bool(_fill(entry.get("config.model.gated_features"), "config.model.gated_features")),
        "mlp": {
            "hidden": int(entry["config.model.feature_mlp_size"] or 0),
            "squeeze": bool(_fill(entry.get("config.model.feature_mlp_squeeze"), switch)),
            "residual": bool(_fill(entry.get("config.model.feature_mlp_residual"), switch)),
            "concat_embeddings": bool(_fill(entry.get("config.model.feature_mlp_concat_embeddings"), switch)),
            "glu": bool(_fill(entry.get("config.model.feature_mlp_glu"), switch)),
        },
    }
    settings = {
        "score_fn": score_fn,
        "distance": {"L1": 1, "L2": 2}.get(distance, 1),
        "gamma": float(entry["config.model.gamma"]),
        "dim": int(entry["config.model.embedding_size"]),
        "batch_size": int(entry["config.data.batch_size"]),
        "negatives_per_shard": int(entry["config.data.a2a_size"]),
        "inverse_relations": entry.get("config.data.triple_augmentation.type") == "inverse_relations",
        "relation_power": 1.0 / 3.0 if entry["config.data.sampling_strategy.type"] == "cubic_root" else 1.0,
        "loss": loss,
        "regularisation": regularisation,
        "features": features,
        "learning_rate": float(entry["config.training.learning_rate"]),
        "lr_decay": _fill(
            entry.get("config.training.learning_rate_decay.type"), "config.training.learning_rate_decay.type"
        ),
        "lr_modifiers": modifiers,
        "adam": {
            "beta1": float(entry["config.training.adam_beta_m"] or 0.9),
            "beta2": float(entry["config.training.adam_beta_v"] or 0.999),
            "eps": float(entry["config.training.adam_epsilon"] or 1e-8),
        },
        "steps": int(_fill(entry["config.training.n_step"], "config.training.n_step")),
        "workers": int(entry["config.model.n_shard"]),
        "dtype": entry["config.execution.dtype"],
        "loss_scale": _fill(entry["config.training.loss_scale"], "config.training.loss_scale"),
        "seed": int(entry["config.model.seed"]),
        "validate_every": int(entry["config.training.validation_interval"] or 250_000),
    }
    if isinstance(settings["loss_scale"], float) and settings["loss_scale"].is_integer():
        settings["loss_scale"] = int(settings["loss_scale"])
    if entry.get("config.training.weight_decay"):
        raise KgeInputError("weight_decay > 0: not part of the recipe (kge's Adam has no weight decay)")
    return settings


def recipe_models(columns: dict) -> dict[str, dict]:
    """{model name: kge settings} for every entry, in the JSON's order (best validation MRR first)."""
    indices = sorted(columns["config.model.score_fn"], key=int)
    models = {}
    for index in indices:
        entry = {key: values.get(index) for key, values in columns.items()}
        models[model_name(int(index), entry)] = entry_settings(entry)
    return models


HEADER = """\
# The OGB-LSC 2022 WikiKG90Mv2 winning ensemble ("wikiwiki"): the 85 model configurations, derived
# field by field from the submission's configurations (workflow/ensembles/wikiwiki-85-configs-and-results.json,
# a copy of ../shared/reference/'s) by
#   kge recipe --json workflow/ensembles/wikiwiki-85-configs-and-results.json --out workflow/ensembles/wikikg90mv2-85.yaml
# (kge/ensemble/recipe.py; tests/test_recipe.py checks every entry against the JSON). A --configfile replaces
# config.yaml, so this file is complete. Full run (16 workers per model, real WikiKG90Mv2):
#   snakemake --configfile workflow/ensembles/wikikg90mv2-85.yaml
# The same 85 configurations on the miniature, steps scaled down (docs/recipe.md):
#   snakemake --configfile workflow/ensembles/wikikg90mv2-85.yaml workflow/ensembles/scale-mini.yaml
# JSON nulls are filled as kge/ensemble/recipe.py NULL_FILLS says. Reported validation MRR per model: {mrrs}
"""


def recipe_config(columns: dict) -> dict:
    """The complete Snakemake config of the recipe."""
    return {
        "dataset": "wikikg90mv2",
        "data_dir": "data",
        "results_dir": "results/wikikg90mv2-85",
        "mini": {"seed": 0, "scale": 1.0},
        "shards": {"count": SHARDS, "seed": 0},
        "threads_per_job": 1,
        "launcher": None,
        "top_k": 100,
        "scale": {"steps": 1.0, "min_steps": 1, "workers": None},
        "model_defaults": {"validate_queries": 2000, "checkpoint_every": 10000, "checkpoint_seconds": 600.0},
        "models": recipe_models(columns),
        # RECIPE.md's ensemble: equal weights, p = -0.5, K = 100; the power sweep is reported beside it.
        "ensemble": {
            "power": -0.5,
            "top_k": 100,
            "tune_power": False,
            "powers": [-2.0, -1.0, -0.75, -0.5, -0.25, 0.5, 1.0],
            "weight_exponents": [0],
            "members": None,
        },
    }


def write_recipe(json_path: str | Path, out: str | Path) -> dict:
    columns = load_columns(json_path)
    config = recipe_config(columns)
    mrrs = columns["summary.valid_mrr"]
    low, high = min(mrrs.values()), max(mrrs.values())
    text = HEADER.format(mrrs=f"{low:.4f} - {high:.4f}") + yaml.safe_dump(
        config, sort_keys=False, width=120, default_flow_style=None
    )
    atomic.save_text(out, text)
    return config
