"""The resolved model configuration as typed, immutable objects.

``resolve_model_config`` (kge.config.resolve) validates a user's settings against the schema, fills
in the defaults and returns a ``ModelConfig``; every stage (trainer, step, objectives, model,
sparsity, predictor, reports) reads it as attributes. The derived values that used to be
recomputed from keys in several modules are fields computed once here:

- ``ModelConfig.phase_one_steps``: steps of the two-phase schedule's first phase;
- ``ModelConfig.block_count``, ``active_blocks``, ``swap_count``, ``stored_values_per_entity``: the
  block-sparse layout of an entity row (kge.table.sparsity);
- ``LossConfig.adversarial``: the self-adversarial scale a of softmax(a s);
- ``ModelConfig.negatives_per_step(n_shards)`` and ``negatives_at(n_shards, step)``: the shared
  negative pool, which depends on the data's shard count.

On disk (model.pt, history.json, the pipeline's model_config JSON) a configuration stays the plain
nested dict of ``to_dict()``, key for key what it was before the typed objects existed, so the
files, and ``config_hash`` of them, are unchanged.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any


def _round_half_up(x: float) -> int:
    return int(x + 0.5)


class _Section:
    """from_dict / to_dict for a frozen dataclass whose fields are settings (init) or derived (not init)."""

    @classmethod
    def from_dict(cls, data: dict, path: str = ""):
        """A complete section (every key, no other) -> the typed object; ValueError naming the key
        otherwise (a user's settings are checked by the schema before they get here)."""
        if not isinstance(data, dict):
            raise ValueError(f"model config{' ' + path if path else ''}: expected a mapping, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        missing = [n for n in names if n not in data]
        unknown = [k for k in data if k not in names]
        if missing or unknown:
            where = f"model config{' section ' + path if path else ''}"
            raise ValueError(f"{where}: missing keys {missing}, unknown keys {unknown} (expected a resolved config)")
        hints = typing.get_type_hints(cls)
        values = {}
        for name in names:
            kind = hints[name]
            if isinstance(kind, type) and issubclass(kind, _Section):
                values[name] = kind.from_dict(data[name], f"{path}.{name}" if path else name)
            else:
                values[name] = data[name]
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The plain nested dict of the settings (derived fields left out), in declaration order."""
        out = {}
        for f in dataclasses.fields(self):
            if f.init:
                value = getattr(self, f.name)
                out[f.name] = value.to_dict() if isinstance(value, _Section) else value
        return out


@dataclass(frozen=True)
class TwoPhaseConfig(_Section):
    """A smaller shared-negative pool for the first ``fraction`` of the steps."""

    fraction: float
    negatives: int | None

    @property
    def enabled(self) -> bool:
        return self.fraction > 0


@dataclass(frozen=True)
class LossConfig(_Section):
    type: str  # softmax | logsigmoid
    adversarial_scale: float
    adversarial_temperature: float | None
    correction_weight: float
    in_batch_negatives: bool
    mask_false_negatives: bool
    positive_weight: float
    negative_weight: float
    # Derived: the self-adversarial scale a of softmax(a * s), 1 / temperature when a temperature is set.
    adversarial: float = field(init=False, repr=False)

    def __post_init__(self):
        temperature = self.adversarial_temperature
        object.__setattr__(
            self, "adversarial", 1.0 / float(temperature) if temperature else float(self.adversarial_scale)
        )


@dataclass(frozen=True)
class PenaltyConfig(_Section):
    """weight * sum |x|^power over one role's rows."""

    weight: float
    power: float


@dataclass(frozen=True)
class RegularizationConfig(_Section):
    entity: PenaltyConfig  # on the final entity embedding e
    embedding: PenaltyConfig  # on the trainable embedding e_S
    feature: PenaltyConfig  # on the projected feature M e_F


@dataclass(frozen=True)
class MlpConfig(_Section):
    hidden: int
    squeeze: bool
    residual: bool
    concat_embeddings: bool
    glu: bool
    norm: str  # none | batch | layer_proxy


@dataclass(frozen=True)
class FeaturesConfig(_Section):
    use: bool
    share_projection: bool
    dropout: float
    bias: bool
    weight: bool
    gated: bool
    projection: str  # dense | grouped | random
    groups: int
    mlp: MlpConfig


@dataclass(frozen=True)
class LrModifiersConfig(_Section):
    """Multipliers of the base learning rate per parameter group (None: the group's default)."""

    entity_embedding: float
    feature_projection: float
    relation: float
    head_feature_projection: float | None
    tail_feature_projection: float | None


@dataclass(frozen=True)
class AdamConfig(_Section):
    beta1: float
    beta2: float
    eps: float


@dataclass(frozen=True)
class SubspaceConfig(_Section):
    dim: int  # 0: off


@dataclass(frozen=True)
class SparsityConfig(_Section):
    density: float  # 1: dense
    block: int
    every: int  # 0: static mask
    prune_fraction: float

    @property
    def enabled(self) -> bool:
        """The entity table is block sparse (density < 1)."""
        return float(self.density) < 1.0

    def layout(self, dim: int) -> tuple[int, int, int]:
        """(n_blocks, k, n) of a row of width ``dim``: n_blocks = dim / block blocks, k = max(1,
        round(density * n_blocks)) active (half up), n = min(round(prune_fraction * k), n_blocks - k)
        pruned and regrown per event; (0, 0, 0) when dense."""
        if not self.enabled:
            return 0, 0, 0
        n_blocks = int(dim) // self.block
        active = max(1, _round_half_up(self.density * n_blocks))
        return n_blocks, active, min(_round_half_up(self.prune_fraction * active), n_blocks - active)


@dataclass(frozen=True)
class ModelConfig(_Section):
    """One model's complete, validated settings (kge/schemas/model.schema.json says what each means;
    kge/config/defaults.py holds the defaults) plus the values derived from them."""

    score_fn: str
    distance: int
    gamma: float
    dim: int
    init_scale: float
    batch_size: int
    negatives: int
    negatives_per_shard: int | None
    two_phase: TwoPhaseConfig
    inverse_relations: bool
    relation_power: float
    loss: LossConfig
    regularisation: RegularizationConfig
    features: FeaturesConfig
    learning_rate: float
    lr_decay: str
    lr_modifiers: LrModifiersConfig
    adam: AdamConfig
    subspace: SubspaceConfig
    sparsity: SparsityConfig
    steps: int
    workers: int
    exchange: str  # tails | scores
    dtype: str
    stochastic_rounding: bool
    loss_scale: float | str  # a number or "auto"
    device: str
    seed: int
    checkpoint_every: int
    checkpoint_seconds: float
    validate_every: int
    validate_queries: int
    predict_batch: int
    predict_block: int

    # ----- derived once, from the settings above --------------------------------------------
    phase_one_steps: int = field(init=False, repr=False)  # steps of phase one (0 when two_phase is off)
    # The block-sparse layout of a row (kge.table.sparsity); all 0 for a dense table.
    block_count: int = field(init=False, repr=False)  # n_blocks = dim / sparsity.block
    active_blocks: int = field(init=False, repr=False)  # k = max(1, round(density * n_blocks)), half up
    swap_count: int = field(init=False, repr=False)  # n = min(round(prune_fraction * k), n_blocks - k)
    stored_values_per_entity: int = field(init=False, repr=False)  # k * block when sparse, else dim

    def __post_init__(self):
        derive = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        derive("phase_one_steps", int(round(self.two_phase.fraction * self.steps)) if self.two_phase.enabled else 0)
        n_blocks, active, swap = self.sparsity.layout(self.dim)
        derive("block_count", n_blocks)
        derive("active_blocks", active)
        derive("swap_count", swap)
        derive("stored_values_per_entity", active * self.sparsity.block if self.sparsity.enabled else self.dim)

    def negatives_per_step(self, n_shards: int) -> int:
        """Shared negatives N per worker per step: negatives_per_shard x D when set (it takes
        precedence), else ``negatives``."""
        per_shard = self.negatives_per_shard
        return int(per_shard) * int(n_shards) if per_shard else int(self.negatives)

    def negatives_at(self, n_shards: int, step: int) -> int:
        """Shared negatives N at ``step`` (0-based): phase one's small pool for the first
        two_phase.fraction of the steps, the full pool (negatives_per_step) after."""
        if self.two_phase.enabled and step < self.phase_one_steps:
            return int(self.two_phase.negatives)
        return self.negatives_per_step(n_shards)

    def replace(self, **changes) -> ModelConfig:
        """A copy with top-level settings changed (derived fields recomputed, nothing validated)."""
        return dataclasses.replace(self, **changes)
