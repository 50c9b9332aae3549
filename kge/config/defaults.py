"""Every model setting's default, in one place (the schema kge/schemas/model.schema.json says what
each key means), and the values that reproduce models trained before a key existed."""

from __future__ import annotations

from typing import Any

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
