"""Shared fixtures: one small miniature and its shards per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mini_root(tmp_path_factory) -> Path:
    """A 0.1-scale miniature (queries keep the real 15000/15000/10000 counts)."""
    from kge.data.mini import generate_mini

    root = tmp_path_factory.mktemp("mini")
    generate_mini(root, seed=0, scale=0.1, progress=False)
    return root


@pytest.fixture(scope="session")
def mini_shards(mini_root, tmp_path_factory) -> Path:
    from kge.bess.shard import shard_dataset

    out = tmp_path_factory.mktemp("shards") / "shards"
    shard_dataset(mini_root, out, 2, seed=0, progress=False)
    return out
