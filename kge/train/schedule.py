"""What each training step runs with, from (config, step, rank) alone: its seed and its learning rate.

Nothing here depends on what earlier steps did, which is what makes a resumed run draw the same
batches and dropout masks, and take the same learning rates, as an uninterrupted one.
"""

from __future__ import annotations

from kge.config import ModelConfig


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """Seed of worker ``rank``'s generators at ``step`` (rank 0 of 1 is the single-worker run)."""
    return (seed * 1_000_003 + step * 7_919 + 12_345 + rank * 0x9E3779B97F4A7C15) % (2**63 - 1)


def learning_rate(config: ModelConfig, step: int) -> float:
    """Base learning rate at ``step`` (0-based): linear decay to 0 at the last step, or constant."""
    if config.lr_decay == "linear":
        return config.learning_rate * (1.0 - step / config.steps)
    return config.learning_rate
