"""Model configuration: the defaults (``defaults``), the typed ``ModelConfig`` every stage reads
(``model``), and its resolution from a user's settings (``resolve``)."""

from kge.config.defaults import LATER_KEYS, MODEL_DEFAULTS
from kge.config.model import (
    AdamConfig,
    FeaturesConfig,
    LossConfig,
    LrModifiersConfig,
    MlpConfig,
    ModelConfig,
    PenaltyConfig,
    RegularizationConfig,
    SparsityConfig,
    SubspaceConfig,
    TwoPhaseConfig,
)
from kge.config.resolve import (
    config_hash,
    deep_merge,
    load_model_config,
    resolve_model_config,
    scale_settings,
    validate,
    with_defaults,
    with_pipeline_defaults,
)

__all__ = [
    "LATER_KEYS",
    "MODEL_DEFAULTS",
    "AdamConfig",
    "FeaturesConfig",
    "LossConfig",
    "LrModifiersConfig",
    "MlpConfig",
    "ModelConfig",
    "PenaltyConfig",
    "RegularizationConfig",
    "SparsityConfig",
    "SubspaceConfig",
    "TwoPhaseConfig",
    "config_hash",
    "deep_merge",
    "load_model_config",
    "resolve_model_config",
    "scale_settings",
    "validate",
    "with_defaults",
    "with_pipeline_defaults",
]
